"""`python -m jobs.precompute --shards N`: Ray tasks fill shard files that are merged into one baseline."""

from __future__ import annotations

import pytest
import yaml

from s3_ray.reward import open_baseline
from s3_ray.reward.shards import existing_shards, shard_path
from tests.unit.test_reward import small_run  # noqa: F401 -- fixture

pytestmark = pytest.mark.ray


def test_sharded_precompute_merges_and_resumes(ray_session, small_run, tmp_path, capsys) -> None:  # noqa: F811
    from jobs.precompute import main, shard_task

    cfg = small_run
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump()))
    # a crashed earlier run left one finished shard file behind (computed here, in-process)
    main_file = open_baseline(cfg, "train").path
    from s3_ray.data.embedded import load_split

    t1 = [it for it in load_split(cfg.data, "train") if it.id == "t1"]
    assert shard_task(cfg, str(shard_path(main_file, 0, 5)), t1, False, 4) == 1

    argv = ["--config", str(cfg_file), "--split", "train", "--no-progress", "--shards", "2", "--task-cpus", "0.5"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "2 computed in 2 shards, 1 recovered from shard files, 0 already stored" in err or \
           "2 computed in 1 shards, 1 recovered from shard files, 0 already stored" in err
    cache = open_baseline(cfg, "train")
    assert sorted(cache.ids()) == ["t1", "t2", "t3"] and existing_shards(main_file) == []
    assert cache.get("t1").context_ids[0] == "d1"
    assert main(argv) == 0
    assert "0 computed in 0 shards, 0 recovered from shard files, 3 already stored" in capsys.readouterr().err


def test_shards_flag_is_validated(capsys) -> None:
    from jobs.precompute import main

    with pytest.raises(SystemExit):
        main(["--shards", "0"])
    assert "--shards must be >= 1" in capsys.readouterr().err
