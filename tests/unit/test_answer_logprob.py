"""The dense reward metric: the gold answer's log-likelihood under the frozen generator.

It must equal a hand computation (one unbatched forward, full log-softmax) on a tiny model, take
the best alias, never share cache entries with answers, reward the searcher's context minus
naive RAG's, and be refused before training when the generator cannot compute it.
"""

from __future__ import annotations

import math

import pytest

from s3_ray.clients.generator import GeneratorClient
from s3_ray.config import RewardConfig
from s3_ray.generation import CachedGenerator, ResponseCache, TransformersGenerator, build_answer_messages
from s3_ray.generation.fit import ChatTemplateCounter
from s3_ray.generation.likelihood import AnswerLogprobUnsupported
from s3_ray.reward import BaselineCache, BaselineError, BaselineRecord, BaselineSettings, RewardScorer
from s3_ray.types import Passage, QAItem, Trajectory

P1 = Passage("p1", '"Ada Lovelace"\nAda was a mathematician born in London.')
P2 = Passage("p2", '"Charles Babbage"\nBabbage designed engines in Walworth.')
P3 = Passage("p3", '"Walworth"\nWalworth is a district.')


@pytest.fixture(scope="module")
def tiny() -> TransformersGenerator:
    import torch

    gen = TransformersGenerator("tiny-random", max_new_tokens=4, batch_size=2, max_context_tokens=200)
    torch.manual_seed(3)
    for p in gen.model.parameters():  # spread the random weights so log-probs differ between contexts
        p.data.normal_(0.0, 0.3)
    return gen


def by_hand(gen: TransformersGenerator, messages: list[dict[str, str]], answer: str) -> float:
    """Mean log-probability of `answer`'s tokens after the fitted prompt: one row, every position."""
    import torch

    counter = ChatTemplateCounter(gen.tokenizer)
    prompt, _ = gen.fit(messages)
    ans = counter.encode(answer)
    ids = torch.tensor([prompt + ans])
    with torch.inference_mode():
        logp = torch.log_softmax(gen.model(input_ids=ids).logits[0].float(), dim=-1)
    return float(sum(logp[len(prompt) + k - 1, t] for k, t in enumerate(ans)) / len(ans))


def test_equals_a_hand_computation_batched_with_padding(tiny: TransformersGenerator) -> None:
    prompts = [build_answer_messages("Where was Ada born?", [P1]),
               build_answer_messages("Where did Babbage design engines, and who was he?", [P2, P3, P1]),
               build_answer_messages("Who?", [])]
    answers = [["London"], ["Walworth district"], ["Ada Lovelace"]]
    got = tiny.answer_logprobs(prompts, answers)
    want = [by_hand(tiny, m, a[0]) for m, a in zip(prompts, answers)]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(v < 0 for v in got)
    assert tiny.answer_logprobs(prompts[:1], answers[:1]) == pytest.approx(got[:1], abs=1e-5)


def test_takes_the_best_alias_and_depends_on_the_context(tiny: TransformersGenerator) -> None:
    m = build_answer_messages("Where was Ada born?", [P1])
    a, b = by_hand(tiny, m, "London"), by_hand(tiny, m, "the city of London")
    [best] = tiny.answer_logprobs([m], [["London", "the city of London"]])
    assert best == pytest.approx(max(a, b), abs=1e-4)
    [other] = tiny.answer_logprobs([build_answer_messages("Where was Ada born?", [P2])], [["London"]])
    assert other != pytest.approx(a, abs=1e-6)


def test_bad_answers_name_the_entry(tiny: TransformersGenerator) -> None:
    m = build_answer_messages("Q?", [P1])
    with pytest.raises(ValueError, match=r"answers\[0\]\[1\]"):
        tiny.answer_logprobs([m], [["ok", ""]])
    with pytest.raises(ValueError, match="2 prompts but 1 answer lists"):
        tiny.answer_logprobs([m, m], [["ok"]])


def test_cache_keeps_log_likelihoods_apart_from_answers(tiny: TransformersGenerator, tmp_path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite")
    gen = CachedGenerator(tiny, cache)
    m = build_answer_messages("Where was Ada born?", [P1])
    answer = gen.generate([m])
    lp = gen.answer_logprobs([m], [["London"]])
    assert len(cache) == 2  # one answer, one log-likelihood: distinct keys for the same messages
    assert gen.generate([m]) == answer and gen.answer_logprobs([m], [["London"]]) == lp
    assert gen.hits == 2
    lp_other = gen.answer_logprobs([m], [["Paris"]])  # other gold answers: another entry
    assert len(cache) == 3 and lp_other != lp
    # a fresh instance over the same file answers from disk without the model
    reread = CachedGenerator(_NoModel(tiny), ResponseCache(tmp_path / "c.sqlite"))
    assert reread.answer_logprobs([m], [["London"]]) == lp and reread.generate([m]) == answer


class _NoModel:
    """The tiny model's identity without its weights: any miss would fail."""

    def __init__(self, like: TransformersGenerator) -> None:
        self.model_id, self.decoding = like.model_id, like.decoding

    def generate(self, prompts):  # noqa: ANN001
        raise AssertionError("cache miss")

    def answer_logprobs(self, prompts, answers):  # noqa: ANN001
        raise AssertionError("cache miss")


class _AnswersOnly:
    """A generator without log-likelihoods (like an OpenAI-compatible server without prompt log-probs)."""

    model_id = "plain"
    decoding = {"greedy": True}

    def generate(self, prompts):  # noqa: ANN001
        return ["x" for _ in prompts]


SETTINGS = BaselineSettings(generator="tiny-random", init_k=1, retriever="fake", backend="transformers",
                            decoding="d")


def _baseline(tmp_path, generator: str = "tiny-random") -> BaselineCache:
    cache = BaselineCache(tmp_path / "train.jsonl", BaselineSettings(**{**SETTINGS.__dict__, "generator": generator}))
    cache.append([BaselineRecord(id="q0", question="Where was Ada born?", answer="no", genacc=0.0, em=0.0,
                                 context_ids=["p2"])])
    return cache


def _traj(context: list[Passage], init: list[Passage] | None = None) -> Trajectory:
    item = QAItem(id="q0", question="Where was Ada born?", golden_answers=("London",))
    return Trajectory(item=item, prompt_ids=[1], init_passages=init or [P2], context=context)


@pytest.mark.parametrize("metric", ["answer_logprob", "mixed"])
def test_scorer_rewards_the_gain_over_naive_rag(tiny: TransformersGenerator, tmp_path, metric: str) -> None:
    client = GeneratorClient.in_process(tiny)
    cfg = RewardConfig(metric=metric, logprob_weight=0.5)
    scorer = RewardScorer(client, _baseline(tmp_path), cfg)
    scorer.check_metric()
    trajs = [_traj([P2, P1]), _traj([P2]), _traj([P2, P3])]
    res = scorer.score(trajs)
    m = build_answer_messages
    naive = by_hand(tiny, m("Where was Ada born?", [P2]), "London")
    for t, r in zip(trajs, res):
        lp = by_hand(tiny, m("Where was Ada born?", t.context), "London")
        assert r.metrics["answer_logprob"] == pytest.approx(lp, abs=1e-4)
        assert r.metrics["baseline_answer_logprob"] == pytest.approx(naive, abs=1e-4)
        gbr = r.metrics["gbr"]
        want = lp - naive if metric == "answer_logprob" else gbr + 0.5 * (lp - naive)
        assert r.reward == pytest.approx(want, abs=1e-4)
    assert res[1].metrics["logprob_gain"] == pytest.approx(0.0, abs=1e-5)  # the naive context itself
    assert len({round(r.reward, 6) for r in res}) == 3  # dense: three contexts, three rewards


def test_scorer_refuses_initial_documents_that_are_not_the_baseline_context(tiny, tmp_path) -> None:
    scorer = RewardScorer(GeneratorClient.in_process(tiny), _baseline(tmp_path), RewardConfig(metric="answer_logprob"))
    with pytest.raises(BaselineError, match="initial documents"):
        scorer.score([_traj([P1], init=[P1])])


def test_initial_documents_in_another_order_are_scored_in_the_baseline_order(tiny, tmp_path) -> None:
    """BM25 ties can come back in either order: same documents, same naive context, baseline's order."""
    cache = BaselineCache(tmp_path / "train.jsonl", SETTINGS)
    cache.append([BaselineRecord(id="q0", question="Where was Ada born?", answer="no", genacc=0.0, em=0.0,
                                 context_ids=["p2", "p1"])])
    scorer = RewardScorer(GeneratorClient.in_process(tiny), cache, RewardConfig(metric="answer_logprob"))
    [r] = scorer.score([_traj([P3], init=[P1, P2])])
    naive = by_hand(tiny, build_answer_messages("Where was Ada born?", [P2, P1]), "London")
    swapped = by_hand(tiny, build_answer_messages("Where was Ada born?", [P1, P2]), "London")
    assert naive != pytest.approx(swapped, abs=1e-6)  # the order matters to the generator
    assert r.metrics["baseline_answer_logprob"] == pytest.approx(naive, abs=1e-4)


def test_genacc_metric_never_asks_for_log_likelihoods(tmp_path) -> None:
    scorer = RewardScorer(GeneratorClient.in_process(_AnswersOnly()), _baseline(tmp_path, "plain"), RewardConfig())
    scorer.check_metric()
    [r] = scorer.score([_traj([P1])])
    assert "answer_logprob" not in r.metrics and r.reward == 0.0


def test_a_generator_without_log_likelihoods_is_refused_before_training(tmp_path) -> None:
    from s3_ray.console.errors import is_known

    scorer = RewardScorer(GeneratorClient.in_process(_AnswersOnly()), _baseline(tmp_path, "plain"),
                          RewardConfig(metric="mixed"))
    with pytest.raises(AnswerLogprobUnsupported, match="reward.metric=mixed needs") as info:
        scorer.check_metric()
    assert is_known(info.value) and "\n" not in str(info.value)
    # run_training checks it before Ray is touched
    from s3_ray.config import S3Config
    from s3_ray.rl.ray_train.launch import run_training

    with pytest.raises(AnswerLogprobUnsupported):
        run_training(S3Config(), [], None, scorer)


def test_mean_log_probability_is_finite_and_bounded(tiny: TransformersGenerator) -> None:
    [v] = tiny.answer_logprobs([build_answer_messages("Q?", [P1])], [["a b c d e f g"]])
    assert math.isfinite(v) and v < 0
