"""Supervised *format* warm-up for small searchers that do not follow the tag protocol zero-shot.

The demonstrations teach the shape of a turn and nothing about the task: the query is the
question itself (or its first clause), never an answer-bearing rewrite, and the selected ids are
random. RL then has a policy whose turns parse, and learns *what* to search from the reward.

With `follow_fraction` > 0 some search turns instead query a *name read in the initial documents*
(a capitalised span of their text that the question does not contain), picked at random. No label
is used: the demonstration shows the move a multi-hop question needs (search the entity a passage
points to), not which entity is right, so a small searcher samples second-hop queries often enough
for Gain Beyond RAG to tell good ones from bad ones.
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
        if rng.random() < stop_fraction:
            targets.append(final_turn(kept))
        elif names and rng.random() < follow_fraction:
            targets.append(follow_turn(kept, rng.choice(names)))
        else:
            query = item.question.strip() if rng.random() < 0.5 else first_clause(item.question)
            targets.append(search_turn(query))
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
