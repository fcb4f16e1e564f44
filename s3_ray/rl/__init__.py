"""Reinforcement learning for the searcher: advantages, losses, batching, the policy update (with
its KL controller), LoRA, checkpoints, the format warm-up, the collapse guard and training curves.
Submodules are imported explicitly (they need torch)::

    from s3_ray.rl.update import PolicyUpdater
    from s3_ray.rl.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
    from s3_ray.rl.lora import apply_lora, merge_lora, AdapterOffReference
    from s3_ray.rl.guard import CollapseGuard
    from s3_ray.rl.curves import plot_curves
"""
