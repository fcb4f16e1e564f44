"""The Ray Train shell around the training loop: `launch` (the `TorchTrainer` driver that jobs,
the demo and the proof call) and `worker` (per-rank wiring of `s3_ray.rl.loop.fit`).

The top floor of `s3_ray.rl`: it may import every floor below; nothing in `s3_ray.rl` imports it.
Ray itself is imported inside functions, so these modules import without Ray.
"""
