"""Batched multi-turn rollout: many episodes advance in lock step, one turn at a time.

Per turn: ONE `policy.generate` over every live episode, then ONE `retriever.search` for all the
episodes that asked a query in that turn. Finished episodes drop out. Token bookkeeping follows
what the policy actually saw: searcher tokens are appended as generated (loss_mask 1), and the
environment's observations and nudges are tokenized and appended with loss_mask 0, so
`prompt_ids + response_ids` is exactly the next turn's input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from s3_ray.agent.episode import Episode
from s3_ray.agent.policy import Policy
from s3_ray.agent.prompt import build_searcher_messages, encode_prompt
from s3_ray.config import RolloutConfig, SearcherConfig
from s3_ray.types import Passage, QAItem, SearchHit, Trajectory

if TYPE_CHECKING:  # annotations only: importing the package loads all its backends
    from s3_ray.retrieval.base import Retriever


def _search(retriever: Retriever, queries: list[str], k: int) -> list[list[SearchHit]]:
    """Call the retriever once and check that it answered every query."""
    results = retriever.search(queries, k)
    if len(results) != len(queries):
        raise ValueError(f"retriever returned {len(results)} hit lists for {len(queries)} queries")
    return results


def initial_passages(items: Sequence[QAItem], retriever: Retriever, k: int) -> list[list[Passage]]:
    """Naive top-k documents for every question, in one retriever call (empty lists when k == 0)."""
    if k == 0 or not items:
        return [[] for _ in items]
    return [[h.passage for h in hits[:k]] for hits in _search(retriever, [it.search_text for it in items], k)]


def run_rollout(
    items: list[QAItem],
    policy: Policy,
    tokenizer: Any,
    retriever: Retriever,
    budget: RolloutConfig,
    searcher_cfg: SearcherConfig,
    init_passages: list[list[Passage]] | None = None,
) -> list[Trajectory]:
    """Run one episode per item and return their trajectories (same order as `items`).

    Each policy input is left-truncated to `searcher_cfg.max_prompt_tokens` (whatever the policy
    is); the trajectory itself keeps every token.
    """
    if init_passages is None:
        init_passages = initial_passages(items, retriever, budget.init_k)
    if len(init_passages) != len(items):
        raise ValueError(f"init_passages has {len(init_passages)} lists for {len(items)} items")

    episodes = [Episode(item, docs, budget) for item, docs in zip(items, init_passages)]
    trajs = [
        Trajectory(
            item=item,
            prompt_ids=encode_prompt(tokenizer, build_searcher_messages(item.search_text, docs, budget)),
            init_passages=list(docs),
        )
        for item, docs in zip(items, init_passages)
    ]

    behaviour: list[list[float] | None] = [[] for _ in items]  # None once a turn came without log-probs

    def append(i: int, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
        trajs[i].response_ids.extend(ids)
        trajs[i].loss_mask.extend([mask] * len(ids))
        row = behaviour[i]
        if row is not None:
            if mask == 0:
                row.extend([0.0] * len(ids))
            elif logprobs is not None and len(logprobs) == len(ids):
                row.extend(logprobs)
            else:
                behaviour[i] = None

    def env_ids(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    max_generations = budget.max_turns + 2  # == Episode.max_generations
    try:
        for _ in range(max_generations):
            active = [i for i, ep in enumerate(episodes) if not ep.done]
            if not active:
                break
            limit = searcher_cfg.max_prompt_tokens
            outputs = policy.generate([(trajs[i].prompt_ids + trajs[i].response_ids)[-limit:] for i in active])
            if len(outputs) != len(active):
                raise ValueError(f"policy returned {len(outputs)} turns for {len(active)} sequences")
            # the log-probs the engine sampled with and the version of its weights, when it reports them
            sampled = getattr(policy, "last_logprobs", None)
            sampled = sampled if isinstance(sampled, list) and len(sampled) == len(active) else [None] * len(active)
            version = int(getattr(policy, "version", 0))
            searching: list[tuple[int, str]] = []
            for i, ids, lps in zip(active, outputs, sampled):
                append(i, list(ids), 1, lps)
                trajs[i].turn_versions.append(version)
                query = episodes[i].step(tokenizer.decode(list(ids), skip_special_tokens=True))
                if query is not None:
                    searching.append((i, query))
                elif episodes[i].needs_nudge:
                    append(i, env_ids(episodes[i].nudge()), 0)
            if searching:
                k = max(episodes[i].retrieval_k for i, _ in searching)
                hits = _search(retriever, [q for _, q in searching], k)
                for (i, _), episode_hits in zip(searching, hits):
                    append(i, env_ids(episodes[i].observe(episode_hits)), 0)
    finally:  # a policy may keep state (a KV cache) for the episodes of this batch only
        release = getattr(policy, "reset_cache", None)
        if callable(release):
            release()

    for ep, traj, row in zip(episodes, trajs, behaviour):
        traj.behaviour_logprobs = row
        if not ep.done:
            raise RuntimeError(f"episode {ep.item.id!r} still live after {max_generations} generations")
        traj.turns = ep.turns
        traj.context = ep.context()
        traj.metrics = {
            "searches": float(ep.searches),
            "malformed": float(sum(1 for t in ep.turns if t.malformed is not None)),
            "turns": float(len(ep.turns)),
            "context_docs": float(len(traj.context)),
            "response_tokens": float(len(traj.response_ids)),
            "completed": 1.0 if ep.end_reason == "complete" else 0.0,
        }
    return trajs


def rollout_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Batch means of the per-trajectory metrics, plus the share of malformed turns.

    >>> from s3_ray.types import TurnRecord
    >>> t = Trajectory(QAItem("q", "Q?", ("a",)), [1], turns=[TurnRecord("x", malformed="no_action"),
    ...                TurnRecord("y")], metrics={"searches": 1.0, "turns": 2.0})
    >>> s = rollout_stats([t]); s["malformed_rate"], s["searches_mean"]
    (0.5, 1.0)
    """
    if not trajs:
        return {}
    keys = sorted({k for t in trajs for k in t.metrics})
    out = {f"{k}_mean": sum(t.metrics.get(k, 0.0) for t in trajs) / len(trajs) for k in keys}
    total_turns = sum(len(t.turns) for t in trajs)
    out["malformed_rate"] = sum(t.num_malformed for t in trajs) / total_turns if total_turns else 0.0
    out["trajectories"] = float(len(trajs))
    return out
