"""The searcher being trained, from load to save: `policy` (load, wrap, rollout copy, KL reference),
`lora`, `sharding` (FSDP2), `precision`, `collectives` (every all-reduce), `weight_sync` (push to
the rollout engine), `checkpoint` and `checkpoint_score`.

The lowest floor of `s3_ray.rl`: it must not import `algo`, `loop` or `ray_train`.
"""
