"""The query/passage encoder on ONNX Runtime: the same weights, exported once, run faster on a CPU.

Dense retrieval is bound by the encoder, and on a CPU torch spends much of a short query batch
outside the matrix multiplies (all-MiniLM-L6-v2, 64 questions of 9-17 tokens, 2 cores: about
200 ms in torch eager, about 145 ms in ONNX Runtime on two threads, each encoding half).
`retrieval.encoder_runtime` picks it: `auto` uses ONNX Runtime on a CPU when `onnxruntime` and
`onnx` are installed (the `dense` extra installs them) and the encoder is one this module can
export; `torch` never; `onnx` insists.

The transformer is exported with torch's own exporter (`torch.onnx.export`, batch and sequence
axes dynamic) into a cache folder keyed by the weights' hash and the torch and onnxruntime
versions, so a replica exports once per model and machine (about 2 s) and later replicas load the
file. Pooling (masked mean or CLS) and the L2 norm stay in numpy, so the export is the bare
transformer. After loading, the exported model must reproduce torch's vectors on a probe batch
(cosine >= 1 - 1e-5) or it is not used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

RUNTIMES = ("auto", "torch", "onnx")
AXES = ("input_ids", "attention_mask", "hidden")  # the exported graph's inputs and output
PROBE = ["who wrote the origin of species", "capital of france", "a longer question about when the "
         "second world war ended in europe and who signed the surrender"]


class OnnxUnavailable(RuntimeError):
    """This encoder cannot run on ONNX Runtime here; the message says why."""


def onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def planned_runtime(runtime: str, gpus: float) -> str:
    """What a replica with `gpus` will run its encoder on, as the plan shows it.

    >>> planned_runtime("auto", 1.0)
    'torch'
    >>> planned_runtime("torch", 0.0)
    'torch'
    >>> planned_runtime("onnx", 1.0)
    'onnx: refused, the replica has a GPU'
    """
    if runtime == "torch":
        return "torch"
    if gpus > 0:
        return "torch" if runtime == "auto" else "onnx: refused, the replica has a GPU"
    if runtime == "onnx":
        return "onnx"
    return "onnx" if onnx_installed() else "torch (onnxruntime is not installed)"


def cache_root() -> Path:
    """Where exported encoders live: `$S3RAY_ONNX_CACHE`, default `~/.cache/s3-ray/onnx`."""
    return Path(os.environ.get("S3RAY_ONNX_CACHE") or Path.home() / ".cache" / "s3-ray" / "onnx")


def _weights_digest(model: Any) -> str:
    """sha256 over the parameter names, shapes and bytes (what the export bakes in)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def bare(model: Any) -> Any:
    """The transformer without pooling: (input_ids, attention_mask) -> last hidden state."""
    import torch

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Bare().eval()


def export(model: Any, tokenizer: Any, path: Path) -> None:
    """Write `model`'s bare transformer to `path` (atomically: a half-written file never loads)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    enc = tokenizer(PROBE, padding=True, return_tensors="pt")
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        # the exporter's tracer warnings concern data-dependent branches the dynamic axes cover;
        # the probe check after loading is what decides whether the file is used
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(bare(model), (enc["input_ids"], enc["attention_mask"]), tmp,
                              input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                              dynamic_axes={n: {0: "batch", 1: "seq"} for n in AXES},
                              opset_version=17, dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Masked mean or CLS, then unit length, in float32.

    >>> h = np.array([[[1., 0.], [3., 0.], [9., 9.]]], dtype=np.float32)
    >>> pool(h, np.array([[1, 1, 0]]), "mean").tolist()
    [[1.0, 0.0]]
    >>> pool(h, np.array([[1, 1, 0]]), "cls").tolist()
    [[1.0, 0.0]]
    """
    if pooling == "cls":
        vec = hidden[:, 0]
    else:
        m = mask[..., None].astype(np.float32)
        vec = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    vec = vec / np.maximum(np.linalg.norm(vec, axis=-1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vec, dtype=np.float32)


class OnnxEncoder:
    """`Encoder` over an exported transformer; tokenizer, prefixes and pooling as the torch encoder's."""

    runtime = "onnx"

    def __init__(self, model: Any, tokenizer: Any, pooling: str, max_length: int, prefixes: tuple[str, str],
                 batch_size: int = 64, reference: Any = None, root: Path | None = None) -> None:
        if not onnx_installed():
            raise OnnxUnavailable("onnxruntime and onnx are not installed (pip install 's3-ray[dense]')")
        if pooling not in ("mean", "cls"):
            raise OnnxUnavailable(f"pooling {pooling!r} is not exported (mean and cls are)")
        import onnxruntime as ort
        import torch

        self.tokenizer, self.pooling, self.max_length = tokenizer, pooling, max_length
        self.query_prefix, self.passage_prefix = prefixes
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)
        key = hashlib.sha256(f"{_weights_digest(model)} torch {torch.__version__} ort {ort.__version__}"
                             .encode()).hexdigest()[:24]
        self.path = (root or cache_root()) / key / "model.onnx"
        if not self.path.is_file():
            export(model, tokenizer, self.path)
        # One single-threaded session, run by `workers` Python threads on parts of each batch (ONNX
        # Runtime releases the GIL): on 2 cores, 2 x 32 queries on one thread each take ~10% less
        # than 64 on two intra-op threads, with the same vectors. Workers = the replica's threads.
        self.workers = max(1, torch.get_num_threads())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: the console is for our lines
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-encoder") if self.workers > 1 else None
        if reference is not None:
            self._check(reference)

    def _check(self, reference: Any) -> None:
        """Refuse an export whose vectors differ from torch's on the probe batch."""
        ours, theirs = self.encode_queries(PROBE), reference(PROBE)
        cos = float(np.min(np.sum(ours * theirs, axis=1)))
        if cos < 1 - 1e-5:
            raise OnnxUnavailable(f"the exported encoder at {self.path} disagrees with torch (cosine {cos:.6f}); "
                                  "delete it or set retrieval.encoder_runtime=torch")

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        (hidden,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return pool(hidden, mask, self.pooling)

    def _run_parallel(self, texts: list[str]) -> np.ndarray:
        parts = min(self.workers, len(texts))
        if self._pool is None or parts < 2:
            return self._run(texts)
        cuts = [texts[i * len(texts) // parts:(i + 1) * len(texts) // parts] for i in range(parts)]
        return np.concatenate(list(self._pool.map(self._run, cuts)))

    def _encode(self, texts: Sequence[str], prefix: str) -> np.ndarray:
        out = [self._run_parallel([prefix + t for t in texts[start:start + self.batch_size]])
               for start in range(0, len(texts), self.batch_size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.passage_prefix)
