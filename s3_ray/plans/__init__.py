"""`--dry-run` of every job: resolve the config and say what the job would use, touching nothing.

A dry run starts no Ray, loads no model and writes no file. Each job's plan is built by one
function here (`s3_ray.plans.<job>`) from the shared entries of `s3_ray.plans.entries`, and
printed by `Plan.emit` as one JSON object:

* `job`: the job's name;
* `plan`: `config` (the resolved config) and the resolved pieces (deployments with replicas /
  CPUs / GPUs, train workers x resources, models, data files with existence checks, output folders);
* `plan.memory` (train, serve, evaluate, demo): every GPU actor's peak memory by part beside the
  GPU it lands on (`s3_ray.plans.memory`); an actor set that does not fit its GPU is a problem;
* `missing`: inputs that are not there yet (an index, a baseline, a data file). They are reported,
  not fatal (exit status 0), because an earlier job (`build_index`, `precompute`) or another
  machine provides them;
* `problems`: contradictions that make the run fail whatever exists (exit status 2), among
  them a data file that does not parse (a malformed line, a repeated id: `DataError`'s message).

A real run builds the same plan first and stops before Ray starts when anything is missing or
wrong (`Plan.require` raises `InputError`, printed as one `error:` line, exit status 2).
A bad config key never gets this far: `load_job_config` raises `ConfigError` naming the key.
"""

from s3_ray.plans.plan import InputError, Plan

__all__ = ["InputError", "Plan"]
