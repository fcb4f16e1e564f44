"""Keeping a batch's KV cache from one searcher turn to the next (prefix reuse for `HFPolicy`).

Every turn of an episode re-sends the whole episode so far (prompt, earlier turns, retrieved
documents). Without reuse the model re-reads all of it each turn, and on a CPU that prefill is most
of a rollout's time. With reuse, a turn only feeds what is new since the cache was filled: the
observation appended by the rollout (and the tail of the turn that was generated but not fed).

Layout. The cache holds, per row, a left-padded block per call: `[pad][prompt][turn 1][stop pads]`
then `[pad][new tokens][turn 2][stop pads]` ... Padding and the tokens generated after a row's
turn ended are masked out (attention 0), so they sit as *holes* between a row's real tokens;
position ids come from the attention mask (cumulative sum), as transformers computes them for
left padding, so every real token keeps its true position. Greedy outputs equal a full re-prefill
(tests check it token for token).

A call reuses the cache only when every new sequence extends, in order, the content of a cached
row (the rollout drops finished episodes and appends observations, which keeps that true);
anything else (a new batch, a truncated prompt, another model state) starts over with a full
prefill, so reuse never changes what is generated, only how fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def match_rows(cached: Sequence[Sequence[int]], seqs: Sequence[Sequence[int]]) -> list[int] | None:
    """For each new sequence, the index of the cached row it extends (rows in order), else None.

    A row is extended when the sequence starts with the row's content and is longer. Rows are
    matched in order (finished episodes drop out between turns, none are reordered).

    >>> match_rows([[1, 2], [3], [4, 5]], [[1, 2, 9], [4, 5, 6, 7]])
    [0, 2]
    >>> match_rows([[1, 2], [3]], [[3, 1], [1, 2, 9]]) is None     # reordered
    True
    >>> match_rows([[1, 2]], [[1, 2]]) is None                     # nothing new to feed
    True
    """
    out: list[int] = []
    j = 0
    for seq in seqs:
        while j < len(cached) and not (len(seq) > len(cached[j]) and list(seq[: len(cached[j])]) == list(cached[j])):
            j += 1
        if j == len(cached):
            return None
        out.append(j)
        j += 1
    return out


@dataclass
class TurnCache:
    """The KV cache after a call, with each row's real content and the attention mask over it."""

    past: Any                  # a transformers Cache holding `width` positions
    ids: Any                   # (B, width) token ids of the cached positions
    mask: Any                  # (B, width) 1 where a position holds a row's real token
    rows: list[list[int]]      # per row: the token sequence the unmasked positions spell

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    def extend(self, seqs: Sequence[Sequence[int]], pad_id: int, max_width: int) -> tuple[Any, Any, Any] | None:
        """(input_ids, attention_mask, past) that continue `seqs` from this cache, or None.

        None when a sequence extends no cached row, or when the padded layout would grow past
        `max_width` positions (holes accumulate; a fresh prefill is cheaper then).
        """
        import torch

        picks = match_rows(self.rows, seqs)
        if picks is None:
            return None
        new = [list(seq[len(self.rows[j]):]) for seq, j in zip(seqs, picks)]
        block = max(len(n) for n in new)
        if self.width + block > max_width:
            return None
        device = self.ids.device
        index = torch.tensor(picks, dtype=torch.long, device=device)
        if picks != list(range(len(self.rows))):
            self.past.batch_select_indices(index)
        ids = torch.full((len(new), block), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(new), block), dtype=torch.long, device=device)
        for i, n in enumerate(new):
            ids[i, block - len(n):] = torch.tensor(n, dtype=torch.long, device=device)
            mask[i, block - len(n):] = 1
        return (torch.cat([self.ids[index], ids], dim=1), torch.cat([self.mask[index], mask], dim=1), self.past)


def after_generate(past: Any, input_ids: Any, mask: Any, seqs: Sequence[Sequence[int]],
                   turns: Sequence[Sequence[int]], generated: Any) -> TurnCache | None:
    """The cache to keep after a call that fed `input_ids` (with `mask`) and produced `generated`.

    `turns[i]` is what row i returns (its generated tokens up to the stop, without trailing pad /
    eos). Positions past a row's turn are masked; the last generated column is not in the cache
    (it was sampled, never fed), so a turn that reaches it keeps that token for the next feed.
    Returns None when the cache does not hold the expected positions (then nothing is reused).
    """
    import torch

    width_in = int(input_ids.shape[1])
    cached = past.get_seq_length() if past is not None else 0
    fed = cached - width_in  # generated tokens that went through the model
    if past is None or fed < 0 or fed > generated.shape[1]:
        return None
    ids = torch.cat([input_ids, generated[:, :fed]], dim=1)
    gen_mask = torch.zeros((len(seqs), fed), dtype=torch.long, device=mask.device)
    rows = []
    for i, (seq, turn) in enumerate(zip(seqs, turns)):
        kept = min(len(turn), fed)
        gen_mask[i, :kept] = 1
        rows.append(list(seq) + list(turn[:kept]))
    return TurnCache(past=past, ids=ids, mask=torch.cat([mask, gen_mask], dim=1), rows=rows)
