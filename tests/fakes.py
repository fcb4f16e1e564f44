"""In-memory stand-ins for tests: a keyword-overlap retriever that records its calls."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from s3_ray.types import Passage, RewardResult, SearchHit, Trajectory

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


FAKE_PASSAGES: tuple[Passage, ...] = (
    Passage("p1", '"Alder Town"\nAlder Town lies on the river Wend and was founded in 1820.'),
    Passage("p2", '"Wend River"\nThe river Wend flows through Alder Town and Birch Falls.'),
    Passage("p3", '"Birch Falls"\nBirch Falls is a town whose mayor is Clara Holt.'),
    Passage("p4", '"Clara Holt"\nClara Holt was born in Alder Town and became mayor in 2001.'),
    Passage("p5", '"Holt Company"\nThe Holt company was founded by Clara Holt in Birch Falls.'),
    Passage("p6", '"Cedar Works"\nCedar Works makes river boats; its headquarters is in Birch Falls.'),
    Passage("p7", '"Dune Port"\nDune Port is a harbour town with no river.'),
    Passage("p8", '"Elm Mill"\nElm Mill was the first company founded on the river Wend.'),
)


class FakeRetriever:
    """Ranks passages by the number of query words they share (ties: corpus order).

    Every call is appended to `calls` as (queries, k), so tests can count batched requests.
    Passages with no shared word are still returned (after the others) so that `k` is honoured
    whenever the corpus is large enough, like a real dense retriever.
    """

    def __init__(self, passages: tuple[Passage, ...] = FAKE_PASSAGES) -> None:
        self.passages = list(passages)
        self.calls: list[tuple[list[str], int]] = []

    def search(self, queries: list[str], k: int) -> list[list[SearchHit]]:
        self.calls.append((list(queries), k))
        out: list[list[SearchHit]] = []
        for q in queries:
            qw = _words(q)
            scored = [(len(qw & _words(p.contents)), -i, p) for i, p in enumerate(self.passages)]
            scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
            out.append([SearchHit(p, float(s)) for s, _, p in scored[:k]])
        return out


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for a test's Serve HTTP proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bm25_index(tmp_path: Path, passages: tuple[Passage, ...] | list[Passage] = FAKE_PASSAGES) -> str:
    """Write `passages` as a corpus under tmp_path and build a BM25 index; returns its folder."""
    from s3_ray.config import RetrievalConfig
    from s3_ray.data.corpus import write_corpus
    from s3_ray.retrieval import build_index

    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, list(passages))
    index_dir = str(tmp_path / "index")
    build_index(corpus, RetrievalConfig(index_dir=index_dir), progress=False)
    return index_dir


class LowTokenScorer:
    """Reward = share of the searcher's generated tokens whose id lies in the lower half of the
    vocabulary (the upper half with `low=False`): about 0.5 for a random model, 1.0 for one that
    learned it; retrieved text is masked out, so only what the policy wrote counts."""

    def __init__(self, vocab: int, low: bool = True) -> None:
        self.half = vocab // 2
        self.low = low

    def score(self, trajs: list[Trajectory]) -> list[RewardResult]:
        out = []
        for t in trajs:
            own = [tok for tok, m in zip(t.response_ids, t.loss_mask) if m]
            reward = sum((tok < self.half) == self.low for tok in own) / len(own) if own else 0.0
            out.append(RewardResult(reward, {"genacc": reward}))
        return out
