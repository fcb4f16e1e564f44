"""How training proceeds, without Ray: `trainer` (one step: rollout -> reward -> update), `fit`
(resume or warm up, then steps until done or stopped), `warmup`, `sampling` (dynamic sampling),
`curriculum`, `guard` (collapse guard) and `curves`.

May import `s3_ray.rl.algo` and `s3_ray.rl.model`; must not import `ray_train`, nor Ray.
"""
