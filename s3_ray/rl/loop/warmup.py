"""Supervised *format* warm-up for small searchers that do not follow the tag protocol zero-shot.

The demonstrations teach the shape of a turn and nothing about the task: the query is the
question itself (or its first clause), never an answer-bearing rewrite, and the selected ids are
random. RL then has a policy whose turns parse, and learns *what* to search from the reward.

With `follow_fraction` > 0 some search turns instead query a *name read in the initial documents*
(a capitalised span of their text that the question does not contain), picked at random. No label
is used: the demonstration shows the move a multi-hop question needs (search the entity a passage
points to), not which entity is right, so a small searcher samples second-hop queries often enough
for Gain Beyond RAG to tell good ones from bad ones.

With `rollout.select_initial` the initial documents reach the generator only if the first turn
keeps them, so every demonstration then says which it keeps: the initial documents that are evidence
(`initial_evidence`: the question's supporting passages where the data names them, then passages
that name a gold answer), as the proof's oracle does. This is the one place a label enters the
warm-up, and only when the setting is on; a random keep would teach the searcher to hand the
generator noise. A question with no evidence among its initial documents keeps none of them (and
searches rather than stopping with an empty context).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from s3_ray.config import RolloutConfig
from s3_ray.rl.algo.batch import DEFAULT_LOGITS_CHUNK, first_trained_position, grid_logprobs
from s3_ray.types import Passage, QAItem

_CLAUSE_SPLIT = re.compile(r"[,;:]\s+")
_NAME = re.compile(r"[A-Z][\w'-]*(?:\s+(?:of\s+)?[A-Z][\w'-]*)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\(\s*)$")


def first_clause(question: str, min_words: int = 3) -> str:
    """The question up to its first , ; or : when that part has at least `min_words` words.

    >>> first_clause("Who directed the film, released in 1999, about a hacker?")
    'Who directed the film'
    >>> first_clause("Where, exactly, is it?")
    'Where, exactly, is it?'
    """
    head = _CLAUSE_SPLIT.split(question.strip(), maxsplit=1)[0].strip()
    return head if len(head.split()) >= min_words else question.strip()


def document_names(passages: Sequence[Passage], question: str) -> list[str]:
    """Capitalised names in the passages' text (title lines skipped) that the question lacks.

    A lone capitalised word that starts a sentence is skipped ("The", "Records"); names the
    question already contains are skipped (searching them again finds the same passages).
    Order of first appearance, no duplicates.

    >>> docs = [Passage("a", '"Thaevdunport"\\nThaevdunport is a town in Qlaikeim Vale. '
    ...                       'Records go back to 1316. The mayor is Anselm Dreilthairk.')]
    >>> document_names(docs, "In which year was the mayor of Thaevdunport born?")
    ['Qlaikeim Vale', 'Anselm Dreilthairk']
    """
    asked = question.lower()
    names: list[str] = []
    for p in passages:
        body = p.contents.split("\n", 1)[1] if "\n" in p.contents else p.contents
        for m in _NAME.finditer(body):
            name = m.group(0).strip()
            if " " not in name and _SENTENCE_START.search(body[: m.start()]):
                continue
            if name.lower() in asked or name in names:
                continue
            names.append(name)
    return names


def search_turn(query: str) -> str:
    """The first-turn demonstration: keep searching, with the query in the protocol's JSON.

    >>> print(search_turn('who "wrote" it'))
    <query>{"query": "who \\"wrote\\" it"}</query>
    """
    return f"<query>{json.dumps({'query': query})}</query>"


def final_turn(ids: Sequence[int]) -> str:
    """The stopping demonstration: select documents of the last block, then stop.

    >>> print(final_turn([2, 1]))
    <important_info>[2, 1]</important_info>
    <search_complete>True</search_complete>
    """
    return f"<important_info>[{', '.join(str(i) for i in ids)}]</important_info>\n<search_complete>True</search_complete>"


def follow_turn(ids: Sequence[int], query: str) -> str:
    """A demonstration that keeps documents of the last block and searches a name read there.

    >>> print(follow_turn([1], "Anselm Dreilthairk"))
    <important_info>[1]</important_info>
    <query>{"query": "Anselm Dreilthairk"}</query>
    """
    return f"<important_info>[{', '.join(str(i) for i in ids)}]</important_info>\n{search_turn(query)}"


def initial_evidence(item: QAItem, passages: Sequence[Passage], keep: int) -> list[int]:
    """1-based ids of the passages that are evidence for `item`, at most `keep`: its supporting
    passages (`meta["support"]`, passage ids) first, then passages whose title or text names a gold
    answer (`span_match`), each group in block order.

    >>> item = QAItem("q", "Who is the mayor of the town where Mabun Mills is headquartered?",
    ...               ("Hugo Bumtel", "Bumtel"), {"support": ["w1", "w2"]})
    >>> docs = [Passage("w7", '"Other"\\nNothing.'), Passage("w9", '"Letters"\\nSent to Hugo Bumtel.'),
    ...         Passage("w1", '"Mabun Mills"\\nIts headquarters are in Bimham.')]
    >>> initial_evidence(item, docs, 2), initial_evidence(item, docs, 1), initial_evidence(item, docs[:1], 2)
    ([3, 2], [3], [])
    """
    from s3_ray.reward.metrics import span_match

    support = {str(s) for s in item.meta.get("support") or []}
    gold = [i for i, p in enumerate(passages, start=1) if p.id in support]
    named = [i for i, p in enumerate(passages, start=1)
             if i not in gold and span_match(p.contents, item.golden_answers)]
    return (gold + named)[: max(0, keep)]


def format_demonstrations(
    items: Sequence[QAItem],
    init_passages: Sequence[Sequence[Passage]],
    budget: RolloutConfig,
    rng: random.Random,
    stop_fraction: float = 0.25,
    follow_fraction: float = 0.0,
    follow_docs: int | None = None,
) -> list[str]:
    """One target turn per item, to follow that item's first searcher prompt.

    Mostly a search turn (the query is the question or its first clause); with probability
    `stop_fraction` a stopping turn that keeps 1..`budget.keep_per_turn` random documents of the
    init block (ids 1..len(init block)), so both endings of an episode are seen. Of the search
    turns, a share `follow_fraction` keeps random documents and queries a random name from
    `document_names` of the first `follow_docs` initial documents (None: all of them) instead
    (when they hold one). The top-ranked documents are the ones about the question's own entity,
    so their names are the candidates a second hop starts from; which one is right is left to RL.

    With `budget.select_initial` every turn keeps `initial_evidence` instead of random documents
    (a search turn too, so it reads `<important_info>[...]</important_info>` then the query), and
    a question with no evidence in its initial documents searches instead of stopping.
    """
    if follow_docs is not None and follow_docs < 1:
        raise ValueError(f"follow_docs must be >= 1 (or None for all), got {follow_docs}")
    if len(items) != len(init_passages):
        raise ValueError(f"{len(items)} items but {len(init_passages)} init-passage lists")
    if not 0.0 <= stop_fraction <= 1.0:
        raise ValueError(f"stop_fraction must be in [0, 1], got {stop_fraction}")
    if not 0.0 <= follow_fraction <= 1.0:
        raise ValueError(f"follow_fraction must be in [0, 1], got {follow_fraction}")
    targets = []
    for item, docs in zip(items, init_passages):
        if not item.question.strip():
            raise ValueError(f"item {item.id!r} has an empty question")
        k = min(budget.keep_per_turn, len(docs))
        kept = sorted(rng.sample(range(1, len(docs) + 1), rng.randint(1, k) if k > 0 else 0))
        names = document_names(list(docs)[:follow_docs], item.question) if follow_fraction > 0 else []
        select = budget.select_initial
        if select:
            kept = initial_evidence(item, docs, budget.keep_per_turn)
        if rng.random() < stop_fraction and (kept or not select):
            targets.append(final_turn(kept))
        elif names and rng.random() < follow_fraction:
            targets.append(follow_turn(kept, rng.choice(names)))
        else:
            query = item.question.strip() if rng.random() < 0.5 else first_clause(item.question)
            targets.append(follow_turn(kept, query) if select else search_turn(query))
    return targets


def warmup_step(model: Any, tokenizer: Any, retriever: Any, items: Sequence[QAItem], budget: RolloutConfig,
                rng: random.Random, optimizer: torch.optim.Optimizer, follow_fraction: float = 0.0,
                stop_fraction: float = 0.25,
                follow_docs: int | None = None, logits_chunk: int = DEFAULT_LOGITS_CHUNK) -> float:
    """One warm-up step on `items`: their initial documents (one retrieval call), one demonstration
    each after the real first searcher prompt, one `sft_step`. Returns the loss."""
    from s3_ray.agent.prompt import build_searcher_messages, encode_prompt

    hits = retriever.search([q.search_text for q in items], budget.init_k)
    init = [[h.passage for h in row] for row in hits]
    targets = format_demonstrations(items, init, budget, rng, stop_fraction=stop_fraction,
                                    follow_fraction=follow_fraction, follow_docs=follow_docs)
    prompts = [encode_prompt(tokenizer, build_searcher_messages(q.search_text, docs, budget))
               for q, docs in zip(items, init)]
    return sft_step(model, tokenizer, prompts, targets, optimizer, logits_chunk=logits_chunk)


def sft_step(
    model: Any,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    target_texts: Sequence[str],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float = 1.0,
    logits_chunk: int = DEFAULT_LOGITS_CHUNK,
) -> float:
    """One supervised step: mean cross-entropy over target tokens (+ EOS) only; returns the loss.

    The EOS after each target teaches the turn to end where the protocol expects it. The token
    log-probs come from `grid_logprobs` (under `training_autocast`, `logits_chunk` tokens of
    logits at a time), as in the RL update.
    """
    if len(prompts_ids) != len(target_texts) or not prompts_ids:
        raise ValueError(f"need equal, non-empty prompts and targets; got {len(prompts_ids)} and {len(target_texts)}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; the warm-up needs one to end each turn")
    rows = []
    for i, (prompt, text) in enumerate(zip(prompts_ids, target_texts)):
        if not prompt:
            raise ValueError(f"prompt {i} is empty")
        target = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [eos]
        rows.append((list(prompt), target))
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    trained = torch.zeros((len(rows), width - 1), dtype=torch.long)  # token grid: entry t scores token t + 1
    for i, (prompt, target) in enumerate(rows):
        ids = prompt + target
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        trained[i, len(prompt) - 1 : len(ids) - 1] = 1
    optimizer.zero_grad(set_to_none=True)
    start = first_trained_position(trained)
    logp = grid_logprobs(model, input_ids, attention, 1.0, start, chunk=logits_chunk).logprobs
    mask = trained[:, start:].to(logp.device, logp.dtype)
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())
