"""Reinforcement learning for the searcher, in four floors; each imports only the floors below it
(`ray_train` -> `loop` -> `algo` -> `model`), which `tests/unit/test_import_graph.py` enforces:

- `model/`     what the trained searcher IS, from load to save: the policy object, LoRA, FSDP2
               sharding, precision, collectives, the weight push to the rollout engine, checkpoints;
- `algo/`      what one update DOES, pure torch: trajectories -> tensors and log-probs, advantages,
               losses, the KL controller, the optimiser step;
- `loop/`      how training PROCEEDS, no Ray: one step (rollout -> reward -> update), the fit loop,
               the format warm-up, dynamic sampling, the curriculum, the collapse guard, curves;
- `ray_train/` the Ray Train shell: the `TorchTrainer` driver and the per-rank wiring.

Submodules are imported explicitly (most need torch)::

    from s3_ray.rl.algo.update import PolicyUpdater
    from s3_ray.rl.model.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
    from s3_ray.rl.model.lora import apply_lora, merge_lora, AdapterOffReference
    from s3_ray.rl.loop.guard import CollapseGuard
    from s3_ray.rl.loop.curves import plot_curves
    from s3_ray.rl.ray_train.launch import run_training
"""
