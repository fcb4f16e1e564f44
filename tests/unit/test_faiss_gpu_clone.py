"""How a dense index is copied to GPUs: fp16 vectors (`GpuClonerOptions.useFloat16`), split over
the replica's GPUs when it has fewer shard files than GPUs (`index_cpu_to_all_gpus`, `shard`), and
refused before any copy when a GPU lacks the room. faiss-gpu is not installed here: a fake GPU API
over the real CPU faiss records every option the cloner gets."""

from __future__ import annotations

import types
from pathlib import Path

import faiss
import pytest

from s3_ray.config import ConfigError, load_config
from s3_ray.retrieval import DenseRetriever, FaissParams
from s3_ray.retrieval import dense as dense_module
from s3_ray.retrieval.faiss_build import FAISS_SCRATCH_BYTES, FaissBuildError

from test_dense import CORPUS, EXPECTED, QUERIES, HashEncoder

GIB = 1 << 30


class FakeGpuFaiss:
    """The CPU faiss module plus faiss-gpu's cloning API; a 'GPU' index is the CPU index itself."""

    def __init__(self, n_gpus: int) -> None:
        self.n = n_gpus
        self.calls: list[tuple] = []

    def __getattr__(self, name: str):
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return self.n

    def StandardGpuResources(self) -> object:  # noqa: N802 - faiss's names
        return object()

    def GpuClonerOptions(self) -> types.SimpleNamespace:  # noqa: N802
        return types.SimpleNamespace(useFloat16=False)

    def GpuMultipleClonerOptions(self) -> types.SimpleNamespace:  # noqa: N802
        return types.SimpleNamespace(useFloat16=False, shard=False)

    def index_cpu_to_gpu(self, resources, device, index, co=None):
        self.calls.append(("one", device, None if co is None else vars(co).copy()))
        return index

    def index_cpu_to_all_gpus(self, index, co=None, ngpu=-1):
        self.calls.append(("all", ngpu, None if co is None else vars(co).copy()))
        return index


def _folder(tmp_path: Path, shards: int) -> Path:
    enc = HashEncoder()
    r = DenseRetriever.build(CORPUS, enc.encode_passages([p.contents for p in CORPUS]), enc,
                             FaissParams(num_shards=shards))
    r.save(tmp_path / "dense")
    return tmp_path / "dense"


def _patch(monkeypatch: pytest.MonkeyPatch, n_gpus: int, free: int = 80 * GIB) -> FakeGpuFaiss:
    fake = FakeGpuFaiss(n_gpus)
    monkeypatch.setattr(dense_module, "import_faiss", lambda: fake)
    monkeypatch.setattr(dense_module, "gpu_free_bytes", lambda n: [free] * n)
    return fake


def test_one_index_file_is_split_over_the_replicas_gpus_in_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _patch(monkeypatch, n_gpus=2)
    r = DenseRetriever.load(_folder(tmp_path, 1), HashEncoder(), faiss_gpu=True)
    assert r.on_gpu
    assert fake.calls == [("all", 2, {"useFloat16": True, "shard": True})]
    assert [h[0].passage.id for h in r.search(QUERIES, 1)] == EXPECTED


def test_one_gpu_gets_fp16_and_fp32_stays_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, 1)
    fake = _patch(monkeypatch, n_gpus=1)
    DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True)
    assert fake.calls == [("one", 0, {"useFloat16": True})]
    fake.calls.clear()
    DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True, fp16=False)
    assert fake.calls == [("one", 0, {"useFloat16": False})]


def test_as_many_files_as_gpus_go_round_robin_in_fp16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _patch(monkeypatch, n_gpus=2)
    DenseRetriever.load(_folder(tmp_path, 3), HashEncoder(), faiss_gpu="auto")
    assert fake.calls == [("one", 0, {"useFloat16": True}), ("one", 1, {"useFloat16": True}),
                          ("one", 0, {"useFloat16": True})]


def test_an_index_a_gpu_cannot_hold_is_refused_before_any_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, 1)
    need = len(CORPUS) * HashEncoder().dim * 2  # fp16 Flat vectors, all on one GPU
    fake = _patch(monkeypatch, n_gpus=1, free=need + FAISS_SCRATCH_BYTES - 1)
    with pytest.raises(FaissBuildError, match=r"needs .* GiB on GPU 0 .*serve.retriever_gpus.*ivfpq"):
        DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True)
    assert fake.calls == []
    _patch(monkeypatch, n_gpus=1, free=need + FAISS_SCRATCH_BYTES)
    assert DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True).on_gpu


def test_wiki18_sized_flat_index_fits_a_24_gib_gpu_only_split_in_fp16() -> None:
    """The paper index (21M x 768) by the same bytes rule the loader applies."""
    from s3_ray.retrieval.faiss_build import check_gpu_room

    n, dim = 21_015_324, 768
    fp16, fp32 = n * dim * 2, n * dim * 4
    for need in ([fp32], [fp16], [fp32 // 2] * 2):
        with pytest.raises(FaissBuildError):
            check_gpu_room(need, [23 * GIB] * len(need))   # an A10G's free memory
    check_gpu_room([fp16 // 2] * 2, [23 * GIB] * 2)          # fp16 over two GPUs: 15 GiB each


def test_config_refuses_replicas_packed_onto_one_gpu_with_a_gpu_index() -> None:
    base = ["retrieval.backend=dense", "retrieval.faiss_gpu=true"]
    with pytest.raises(ConfigError, match=r"serve.retriever_gpus=0.5 packs retriever replicas"):
        load_config(None, [*base, "serve.retriever_gpus=0.5"])
    assert load_config(None, [*base, "serve.retriever_gpus=2"]).serve.retriever_gpus == 2
    assert load_config(None, ["retrieval.backend=dense", "serve.retriever_gpus=0.5"])  # auto: host memory allowed
    paper = load_config(Path(__file__).resolve().parents[2] / "jobs/configs/s3_paper.yaml")
    assert paper.serve.retriever_gpus >= 1 and paper.retrieval.faiss_gpu_fp16
