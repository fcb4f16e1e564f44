"""What one policy update does, pure torch: `batch` (trajectories -> padded tensors, per-token
log-probs), `advantages`, `losses`, `kl_control` and `update` (one optimiser step per epoch).

May import `s3_ray.rl.model`; must not import `loop` or `ray_train`, nor Ray.
"""
