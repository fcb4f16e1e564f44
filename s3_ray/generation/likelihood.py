"""The gold answer's log-likelihood under the frozen generator: a dense reward behind Gain Beyond RAG.

GenAcc is 0 or 1, so a group of rollouts whose contexts all miss (or all hold) the answer carries
no signal. The generator's teacher-forced log-likelihood of the gold answer given the context
differs between any two contexts and points where GenAcc points (a context holding the answer
raises it): the reward `answer_logprob` is that value for the searcher's context minus the same
for naive RAG's context (`s3_ray.reward.gain`).

Per prompt the value is the **mean token log-probability** of a gold answer written as the
assistant's reply (the prompt rendered with its generation header, then the answer's tokens),
and the **best over the gold aliases** (any alias is a correct answer). Means, not sums, so a
long alias is not penalised for its length.

`answer_logprobs` is the backend method (transformers and vLLM; the OpenAI-compatible backend
where the server returns prompt log-probs); `answer_loglik` below is the transformers
computation, batched with left padding so only the answer's positions go through the LM head.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from s3_ray.generation.base import Messages, validate_prompts
from s3_ray.generation.fit import ChatTemplateCounter

METRIC_KEY = "answer_logprob"
"""Added to a backend's `decoding` for cache keys: a log-likelihood never reads as an answer."""


class AnswerLogprobUnsupported(RuntimeError):
    """The generator cannot score a given answer (e.g. a server without prompt log-probs)."""


def validate_answers(n_prompts: int, answers: Sequence[Sequence[str]]) -> None:
    """Raise a ValueError naming the first bad entry: one non-empty list of non-empty strings per prompt.

    >>> validate_answers(1, [["Paris"]])
    >>> validate_answers(2, [["Paris"]])
    Traceback (most recent call last):
    ...
    ValueError: 2 prompts but 1 answer lists
    >>> validate_answers(1, [[" "]])
    Traceback (most recent call last):
    ...
    ValueError: answers[0][0] must be a non-empty string, got ' '
    """
    if len(answers) != n_prompts:
        raise ValueError(f"{n_prompts} prompts but {len(answers)} answer lists")
    for i, alts in enumerate(answers):
        if isinstance(alts, str) or not alts:
            raise ValueError(f"answers[{i}] must be a non-empty list of strings, got {alts!r}")
        for j, a in enumerate(alts):
            if not isinstance(a, str) or not a.strip():
                raise ValueError(f"answers[{i}][{j}] must be a non-empty string, got {a!r}")


def best_of(values: list[float], owners: list[int], n: int) -> list[float]:
    """The maximum of `values` per owner index 0..n-1.

    >>> best_of([-2.0, -0.5, -1.0], [0, 0, 1], 2)
    [-0.5, -1.0]
    """
    out = [float("-inf")] * n
    for v, o in zip(values, owners):
        out[o] = max(out[o], v)
    return out


def answer_loglik(model: Any, rows: list[tuple[list[int], list[int]]], batch_size: int = 8) -> list[float]:
    """Mean log-probability of each row's answer ids after its prompt ids, teacher forced.

    Rows are sorted by length and left padded, with position ids counted from each row's first
    real token (so padding changes nothing), and only the last `max answer length` positions go
    through the LM head, in fp32 for the log-softmax.
    """
    import torch

    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    device = next(model.parameters()).device
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        seqs = [rows[i][0] + rows[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        keep = max(len(rows[i][1]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=keep + 1, use_cache=False).logits
        # logits[:, j] predicts the token at width - (keep + 1) + j + 1
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        for r, i in enumerate(idx):
            ans = rows[i][1]
            tgt = torch.tensor(ans, dtype=torch.long, device=logp.device)
            lp = logp[r, keep - len(ans):].gather(-1, tgt[:, None]).squeeze(-1)
            out[i] = float(lp.mean())
    return out


def chat_answer_rows(counter: Any, prompt_ids: Sequence[list[int]], answers: Sequence[Sequence[str]]
                     ) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """(rows, owners): one (prompt ids, answer ids) row per alias, and the prompt each belongs to.

    `counter.encode` tokenizes an alias as it would follow the generation header (no special
    tokens); an alias that tokenizes to nothing is skipped.
    """
    rows: list[tuple[list[int], list[int]]] = []
    owners: list[int] = []
    for i, (ids, alts) in enumerate(zip(prompt_ids, answers)):
        for alias in dict.fromkeys(a.strip() for a in alts):
            ans = list(counter.encode(alias))
            if ans:
                rows.append((list(ids), ans))
                owners.append(i)
    return rows, owners


Rows = list[tuple[list[int], list[int]]]


def score_with_tokenizer(backend: Any, prompts: list[Messages], answers: list[list[str]],
                         score_rows: Callable[[Rows], list[float]]) -> list[float]:
    """`answer_logprobs` of a backend that holds the model's tokenizer (transformers, vLLM): check
    the inputs, fit each prompt exactly as `generate` does, make one (prompt, answer) row per alias,
    score the rows with `score_rows` under the backend's lock (its seconds counted in its stats),
    and keep the best alias per prompt."""
    validate_prompts(prompts)
    validate_answers(len(prompts), answers)
    if not prompts:
        return []
    with backend._lock:
        start = time.perf_counter()
        encoded = [backend.fit(m)[0] for m in prompts]
        rows, owners = chat_answer_rows(ChatTemplateCounter(backend.tokenizer), encoded, answers)
        values = score_rows(rows)
        backend._stats["scored_answers"] = backend._stats.get("scored_answers", 0) + len(rows)
        backend._stats["seconds"] += time.perf_counter() - start
    return best_of(values, owners, len(prompts))
