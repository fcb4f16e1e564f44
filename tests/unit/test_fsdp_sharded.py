"""FSDP without whole copies: loading straight into shards, and sharded checkpoints.

* At world size 4 (fake process group: no peers needed) a rank's memory while `SearcherPolicy.load`
  runs peaks at its shards of the policy and the KL reference (~2/4 of the float32 model), not at a
  whole model per copy (MemTracker, which counts every tensor the load allocates).
* On 2 real gloo ranks: the loaded shards, the sharded reference and the rollout copy equal the HF
  weights; a sharded checkpoint is written by every rank (its own `dcp/` shard file, no whole-state
  file), resumes exactly (weights, AdamW state, PPO value head, KL state), and its bf16 HF export
  loads with transformers and equals the trained weights in bf16; one plain process resumes it too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from isolated import run_isolated

WORLD = 2


def _write_model(folder: Path, layers: int = 8, tied: bool = False) -> dict[str, torch.Tensor]:
    """A random Llama with the tiny-random tokenizer, saved as an HF folder; returns its state dict."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from s3_ray.models import load_causal_lm

    _, tok = load_causal_lm("tiny-random")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=tied,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- per-rank memory at load (fake world of 4)

def _fake_world_load(folder: str, backend: str, gpu_precision: bool = False) -> None:
    """Rank 1 of a fake world of 4 loads the policy; prints its peak CPU bytes / the float32 model's
    (and the dtypes it holds; `gpu_precision`: the dtypes chosen for a GPU, on the CPU)."""
    import torch.distributed as dist
    from torch.distributed._state_dict_utils import _TensorInfo
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from s3_ray.config import load_config
    from s3_ray.models import load_causal_lm
    from s3_ray.rl.model.policy import SearcherPolicy

    hf, _ = load_causal_lm(folder)
    full_bytes = sum(p.numel() * 4 for p in hf.parameters())
    infos = {k: _TensorInfo(v.size(), v.dtype) for k, v in hf.state_dict().items()}
    del hf
    dist.init_process_group("fake", rank=1, world_size=4, store=FakeStore())
    # the fake group sends nothing: rank 0's announcement of the tensors it will broadcast is
    # handed over here, as the real rank 0 would send it (the tensors' contents do not matter)
    real = dist.broadcast_object_list
    dist.broadcast_object_list = lambda box, src=0, group=None, device=None: box.__setitem__(0, infos)
    cfg = load_config(None, [f"searcher.model={folder}", "train.parallel=fsdp", "train.num_workers=4",
                             "train.kl_coef=0.01", f"searcher.backend={backend}", "train.questions_per_step=4",
                             "train.warmup_batch=4"])
    if gpu_precision:
        from s3_ray.rl.model import policy as policy_module
        from s3_ray.rl.model.precision import precision_for

        policy_module.precision_for = lambda device: precision_for("cuda")
    tracker = MemTracker()
    with tracker:
        policy = SearcherPolicy.load(cfg, world=4, rank=1, device="cpu")
    dist.broadcast_object_list = real
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    local = sum(p.to_local().numel() * p.element_size() for p in policy.model.parameters())
    print(f"PEAK {peak / full_bytes:.4f} LOCAL {local / full_bytes:.4f} COPY {policy.rollout_copy is not None}")
    dtypes = lambda m: sorted({str(p.dtype) for p in m.parameters()})  # noqa: E731
    print(f"DTYPES policy={dtypes(policy.model)} ref={dtypes(policy.ref)} "
          f"copy={dtypes(policy.rollout_copy) if policy.rollout_copy is not None else None}")
    dist.destroy_process_group()


def _ratios(out: str) -> tuple[float, float, bool]:
    line = next(x for x in out.splitlines() if x.startswith("PEAK "))
    _, peak, _, local, _, copy = line.split()
    return float(peak), float(local), copy == "True"


def test_fsdp_load_peaks_at_the_shards_not_a_whole_model_per_copy(tmp_path):
    _write_model(tmp_path / "m")
    # searcher.backend=vllm: the engine holds the rollout weights, so no rollout copy is built
    peak, local, copy = _ratios(run_isolated(__file__, f"_fake_world_load({str(tmp_path / 'm')!r}, 'vllm')",
                                             "PEAK", timeout=300))
    assert not copy
    assert local == pytest.approx(0.25, abs=0.01)  # this rank's shard of the float32 masters
    # policy shards (1/4) + fp32 reference shards (1/4 on CPU) + one tensor in flight; a whole copy
    # of the model on this rank (what loading before sharding does) would be >= 1 by itself
    assert peak < 0.75, peak
    # the transformers backend samples from an unsharded rollout copy: that one whole copy, no more
    peak, _, copy = _ratios(run_isolated(__file__, f"_fake_world_load({str(tmp_path / 'm')!r}, 'transformers')",
                                         "PEAK", timeout=300))
    assert copy and 1.0 <= peak < 1.75, peak


def test_fsdp_on_a_gpu_keeps_fp32_master_shards_a_bf16_reference_and_a_bf16_rollout_copy(tmp_path):
    _write_model(tmp_path / "m", layers=2)
    out = run_isolated(__file__, f"_fake_world_load({str(tmp_path / 'm')!r}, 'transformers', True)", "DTYPES",
                       timeout=300)
    line = next(x for x in out.splitlines() if x.startswith("DTYPES "))
    assert line == "DTYPES policy=['torch.float32'] ref=['torch.bfloat16'] copy=['torch.bfloat16']", line


# ---------------------------------------------------------------- 2 gloo ranks: load, checkpoint, resume

def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _rank_main(rank: int, world: int, port: int, tmp: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from s3_ray.config import load_config
    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.rl.model.sharding import full_optimizer_state, full_state_dict
    from test_fsdp import _group

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    from s3_ray.rl.model.policy import SearcherPolicy

    root = Path(tmp)
    hf = torch.load(root / "hf.pt", weights_only=True)
    cfg = load_config(None, [f"searcher.model={root / 'm'}", "train.parallel=fsdp", f"train.num_workers={world}",
                             "train.kl_coef=0.01", "train.algorithm=ppo", "train.lr=3e-3", "train.share_prefix=false",
                             "train.warmup_batch=2", "train.gradient_checkpointing=true"])
    policy = SearcherPolicy.load(cfg, world=world, rank=rank, device="cpu")
    loaded, ref = full_state_dict(policy.bare), full_state_dict(policy.ref)
    copy_weights = dict(policy.rollout_copy.state_dict())
    local = sum(p.to_local().numel() for p in policy.model.parameters())
    if rank == 0:
        bare = policy.bare
        assert bare.lm_head.weight is bare.model.embed_tokens.weight  # ties survive the meta build
        copy_model = policy.rollout_copy
        assert copy_model.lm_head.weight is copy_model.model.embed_tokens.weight
        assert _max_diff(loaded, hf) == 0.0 and _max_diff(ref, hf) == 0.0 and _max_diff(copy_weights, hf) == 0.0
        total = sum(p.numel() for p in policy.rollout_copy.parameters())
        print(f"load: shards equal the HF weights, local share {local / total:.3f}")
        assert abs(local / total - 1 / world) < 0.01

    up = PolicyUpdater(policy.model, policy.ref, cfg.train, pad_id=policy.tokenizer.pad_token_id)
    up.step(_group(policy.tokenizer, 1.0))
    trained = full_state_dict(policy.bare)
    optim = full_optimizer_state(up.optimizer)
    value_head = {k: v.clone() for k, v in up.value_head.state_dict().items()}
    ckpt = root / "ckpt"
    reads: list[tuple[str, int]] = []
    written = policy.save(ckpt, up, step=1, extra={"stream": {"cursor": 3}})
    assert written == ckpt  # every rank wrote part of it and reports it
    if rank == 0:
        torch.save({"trained": trained, "optim": optim, "value_head": value_head}, root / "expected.pt")

    # resume into freshly loaded shards and a fresh updater; record what each rank reads
    orig_read = dcp.FileSystemReader.read_data

    def recording(self, plan, planner):
        for item in plan.items:
            md = self.storage_data[item.storage_index]
            reads.append((md.relative_path, md.length))
        return orig_read(self, plan, planner)

    dcp.FileSystemReader.read_data = recording
    fresh = SearcherPolicy.load(cfg, world=world, rank=rank, device="cpu")
    up2 = PolicyUpdater(fresh.model, fresh.ref, cfg.train, pad_id=fresh.tokenizer.pad_token_id)
    state = fresh.restore(ckpt, up2)
    dcp.FileSystemReader.read_data = orig_read
    assert state["step"] == 1 and state["extra"]["stream"] == {"cursor": 3}
    d_weights = _max_diff(full_state_dict(fresh.bare), trained)
    d_ref = _max_diff(full_state_dict(fresh.ref), hf)  # the reference stays the loaded base
    o2 = full_optimizer_state(up2.optimizer)
    d_optim = max((o2["state"][i][k] - optim["state"][i][k]).abs().max().item()
                  for i in optim["state"] for k in ("exp_avg", "exp_avg_sq"))
    steps = {float(v["step"]) for v in o2["state"].values()}
    d_head = _max_diff(up2.value_head.state_dict(), value_head)
    own = sum(n for path, n in reads if path == f"__{rank}_0.distcp")
    other = sum(n for path, n in reads if path != f"__{rank}_0.distcp")
    # the next step continues identically
    batch = _group(policy.tokenizer, 0.0)
    up.step(batch)
    up2.step(batch)
    d_next = _max_diff(full_state_dict(fresh.bare), full_state_dict(policy.bare))
    if rank == 0:
        print(f"resume: weights {d_weights:.1e} ref {d_ref:.1e} optim {d_optim:.1e} head {d_head:.1e} "
              f"next {d_next:.1e} steps {steps}")
    print(f"rank {rank} read own {own} other {other}")
    assert max(d_weights, d_ref, d_optim, d_head) == 0.0 and steps == {1.0}
    assert d_next < 1e-6
    assert own > 0 and other < own / 4  # the other rank's file: only the replicated value head at most
    dist.destroy_process_group()
    if rank == 0:
        print("SHARDED-OK")


def _spawn(tmp: str) -> None:
    import socket

    import torch.multiprocessing as mp

    hf = _write_model(Path(tmp) / "m", layers=2, tied=True)
    torch.save(hf, Path(tmp) / "hf.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(WORLD, port, tmp), nprocs=WORLD)


def test_fsdp_loads_into_shards_and_checkpoints_shard_by_shard(tmp_path):
    out = run_isolated(__file__, f"_spawn({str(tmp_path)!r})", "SHARDED-OK", timeout=400)
    assert "shards equal the HF weights" in out and "resume:" in out
    ckpt = tmp_path / "ckpt"
    expected = torch.load(tmp_path / "expected.pt", weights_only=True)

    # each rank wrote its own shard file; no whole-state file beside them
    files = sorted(p.name for p in (ckpt / "dcp").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"], files
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["format"] == 2 and meta["step"] == 1 and meta["world_size"] == WORLD
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert "optimizer" not in state and state["optimizer_saved"] is True
    assert not any(p.suffix in (".pt", ".bin") and p.name != "trainer_state.pt" for p in ckpt.rglob("*"))

    # the export: a bf16 HF folder that transformers loads, equal to the trained weights in bf16
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    exported = load_file(str(ckpt / "model.safetensors"))
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}
    assert json.loads((ckpt / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    got = model.state_dict()
    assert all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in expected["trained"].items())
    from s3_ray.models import load_causal_lm

    load_causal_lm(str(ckpt))  # what evaluation and `s3-ray serve --searcher` call

    # one plain process (no process group) resumes the same checkpoint: DCP reshards to one
    from s3_ray.config import TrainConfig
    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.rl.model.checkpoint import load_checkpoint

    solo, _ = load_causal_lm(str(tmp_path / "m"), for_training=True)
    up = PolicyUpdater(solo, None, TrainConfig(algorithm="ppo", lr=3e-3, kl_coef=0.01), pad_id=0)
    up.step(_one_group(str(tmp_path / "m")))  # the optimiser has state to overwrite
    load_checkpoint(ckpt, solo, up)
    assert _max_diff(solo.state_dict(), expected["trained"]) == 0.0
    opt = up.optimizer.state_dict()["state"]
    assert max((opt[i]["exp_avg_sq"] - expected["optim"]["state"][i]["exp_avg_sq"]).abs().max().item()
               for i in expected["optim"]["state"]) == 0.0


def _one_group(folder: str):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_fsdp import _group

    from s3_ray.models import load_causal_lm

    return _group(load_causal_lm(folder)[1], 1.0)
