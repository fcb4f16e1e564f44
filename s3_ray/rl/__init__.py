"""Reinforcement learning for the searcher: advantages, losses, batching, the policy update,
checkpoints and the format warm-up. Submodules are imported explicitly (they need torch)::

    from s3_ray.rl.update import PolicyUpdater
    from s3_ray.rl.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
"""
