"""Where faiss puts a dense index (`retrieval.faiss_gpu`), with the device count and faiss's GPU
support faked, and the one-faiss-build rule at import (the extras and setup.sh: test_packaging)."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import faiss
import pytest

from s3_ray.config import ConfigError, RetrievalConfig, load_config
from s3_ray.data.corpus import write_corpus
from s3_ray.retrieval import DenseRetriever, FaissParams, build_index, load_retriever
from s3_ray.retrieval import dense as dense_module
from s3_ray.retrieval.faiss_build import (
    FaissBuildError,
    faiss_gpus,
    gpus_for_shards,
    installed_builds,
    require_one_build,
)

from test_dense import CORPUS, EXPECTED, QUERIES, HashEncoder


def _never() -> int:
    raise AssertionError("CUDA's device count was asked although faiss already told")


@pytest.mark.parametrize(("mode", "faiss_count", "visible", "hnsw", "expected"), [
    # auto: GPUs when faiss can use them, host memory otherwise, never an error
    ("auto", 2, _never, False, 2),
    ("auto", 2, _never, True, 0),              # faiss has no GPU HNSW
    ("auto", None, lambda: 0, False, 0),       # CPU-only machine: the demo's case
    ("auto", None, lambda: 2, False, 0),       # CPU build on a GPU machine: warned, see below
    ("auto", 0, lambda: 0, False, 0),          # GPU build, no GPU given to this process
    # true: GPUs required
    (True, 3, _never, False, 3),
    (True, None, lambda: 2, False, "CUDA shows 2 GPU.*CPU build.*dense-gpu"),
    (True, None, lambda: 0, False, "no GPU is visible.*CPU build.*faiss_gpu: auto"),
    (True, 0, lambda: 0, False, "sees no GPU in this process.*serve.retriever_gpus"),
    (True, 0, lambda: 1, False, "CUDA shows 1 GPU.*sees none of them"),
    (True, 2, _never, True, "cannot run an hnsw index on a GPU"),
    # false: host memory whatever is installed
    (False, 4, _never, False, 0),
    (False, None, _never, True, 0),
])
def test_gpus_for_shards_decides_from_the_mode_and_what_faiss_can_do(mode, faiss_count, visible, hnsw,
                                                                      expected) -> None:
    if isinstance(expected, int):
        assert gpus_for_shards(mode, faiss_count, visible, hnsw=hnsw) == expected
    else:
        with pytest.raises(FaissBuildError, match=f"retrieval.faiss_gpu: true.*{expected}"):
            gpus_for_shards(mode, faiss_count, visible, hnsw=hnsw)


def test_auto_warns_when_a_gpu_is_there_but_faiss_cannot_use_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="s3_ray.retrieval.faiss_build"):
        assert gpus_for_shards("auto", None, lambda: 0, hnsw=False) == 0
        assert not caplog.records                  # CPU-only machine: nothing to say
        assert gpus_for_shards("auto", None, lambda: 2, hnsw=False) == 0
    [record] = caplog.records
    assert "CPU build" in record.getMessage() and "dense-gpu" in record.getMessage()
    assert "retrieval.faiss_gpu: false" in record.getMessage()


def test_faiss_gpus_reads_the_build() -> None:
    assert faiss_gpus(types.SimpleNamespace()) is None                           # faiss-cpu
    gpu_build = types.SimpleNamespace(StandardGpuResources=object, get_num_gpus=lambda: 2)
    assert faiss_gpus(gpu_build) == 2
    # the installed module agrees with the installed distribution
    assert installed_builds() in (["faiss-cpu"], ["faiss-gpu"])
    assert (faiss_gpus(faiss) is None) == (installed_builds() == ["faiss-cpu"])


def test_installed_builds_and_the_one_build_rule() -> None:
    held = {"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.14.1"}

    def version(name: str) -> str:
        if name not in held:
            import importlib.metadata

            raise importlib.metadata.PackageNotFoundError(name)
        return held[name]

    assert installed_builds(version) == ["faiss-cpu", "faiss-gpu-cu12"]
    with pytest.raises(FaissBuildError, match=r"faiss-cpu and faiss-gpu-cu12 are both installed.*"
                                              r"pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu"):
        require_one_build(installed_builds(version))
    require_one_build(["faiss-gpu"])
    require_one_build([])


class _FakeGpuFaiss:
    """The real (CPU) faiss module plus what a GPU build adds; 'moving' a shard records its device."""

    def __init__(self, n_gpus: int) -> None:
        self._n = n_gpus
        self.placed: list[int] = []

    def __getattr__(self, name: str):
        return getattr(faiss, name)

    def get_num_gpus(self) -> int:
        return self._n

    def StandardGpuResources(self) -> object:  # noqa: N802 - faiss's name
        return object()

    def GpuClonerOptions(self) -> types.SimpleNamespace:  # noqa: N802 - faiss's name
        return types.SimpleNamespace(useFloat16=False)

    def index_cpu_to_gpu(self, resources: object, device: int, index, co=None):
        self.placed.append(device)
        return index


def _saved_index(tmp_path: Path, params: FaissParams) -> Path:
    enc = HashEncoder()
    r = DenseRetriever.build(CORPUS, enc.encode_passages([p.contents for p in CORPUS]), enc, params)
    r.save(tmp_path / "dense")
    return tmp_path / "dense"


def test_load_spreads_shards_over_the_gpus_faiss_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _saved_index(tmp_path, FaissParams(num_shards=3))
    fake = _FakeGpuFaiss(n_gpus=2)
    monkeypatch.setattr(dense_module, "import_faiss", lambda: fake)
    monkeypatch.setattr(dense_module, "cuda_device_count", _never)
    monkeypatch.setattr(dense_module, "gpu_free_bytes", lambda n: [80 << 30] * n)
    for mode in ("auto", True):
        fake.placed.clear()
        r = DenseRetriever.load(folder, HashEncoder(), faiss_gpu=mode)
        assert r.on_gpu and fake.placed == [0, 1, 0]                     # round-robin over 2 GPUs
        assert [h[0].passage.id for h in r.search(QUERIES, 1)] == EXPECTED
    fake.placed.clear()
    assert not DenseRetriever.load(folder, HashEncoder(), faiss_gpu=False).on_gpu and fake.placed == []


def test_load_with_a_cpu_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _saved_index(tmp_path, FaissParams(num_shards=2))
    monkeypatch.setattr(dense_module, "faiss_gpus", lambda _faiss: None)    # a CPU build, whatever is installed
    monkeypatch.setattr(dense_module, "cuda_device_count", lambda: 0)
    r = DenseRetriever.load(folder, HashEncoder())                          # the default, on a CPU machine
    assert not r.on_gpu and [h[0].passage.id for h in r.search(QUERIES, 1)] == EXPECTED
    monkeypatch.setattr(dense_module, "cuda_device_count", lambda: 1)
    assert not DenseRetriever.load(folder, HashEncoder(), faiss_gpu="auto").on_gpu
    with pytest.raises(FaissBuildError, match="retrieval.faiss_gpu: true and CUDA shows 1 GPU.*faiss-cpu"):
        DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True)


def test_hnsw_refused_before_the_other_shards_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _saved_index(tmp_path, FaissParams(index_type="hnsw", num_shards=2, hnsw_m=8))
    (folder / "shard_001.faiss").unlink()     # never reached: the first shard decides
    monkeypatch.setattr(dense_module, "import_faiss", lambda: _FakeGpuFaiss(n_gpus=1))
    with pytest.raises(FaissBuildError, match="cannot run an hnsw index on a GPU"):
        DenseRetriever.load(folder, HashEncoder(), faiss_gpu=True)


def test_config_key_and_load_retriever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RetrievalConfig().faiss_gpu == "auto"
    assert load_config(None, ["retrieval.faiss_gpu=true"]).retrieval.faiss_gpu is True
    assert load_config(None, ["retrieval.faiss_gpu=false"]).retrieval.faiss_gpu is False
    with pytest.raises(ConfigError, match="retrieval.faiss_gpu"):
        load_config(None, ["retrieval.faiss_gpu=gpu"])
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, CORPUS)
    cfg = RetrievalConfig(backend="hybrid", index_dir=str(tmp_path / "index"), encoder="hash-test")
    build_index(corpus, cfg, progress=False, encoder=HashEncoder())
    monkeypatch.setattr(dense_module, "faiss_gpus", lambda _faiss: None)
    monkeypatch.setattr(dense_module, "cuda_device_count", lambda: 0)
    assert len(load_retriever(cfg, encoder=HashEncoder())) == len(CORPUS)
    with pytest.raises(FaissBuildError, match="retrieval.faiss_gpu: true, but no GPU is visible"):
        load_retriever(cfg.model_copy(update={"faiss_gpu": True}), encoder=HashEncoder())
