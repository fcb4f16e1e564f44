import pytest

from s3_ray.config import ConfigError, S3Config, load_config


def test_demo_config_loads_and_overrides(tmp_path):
    cfg = load_config("jobs/configs/demo.yaml", ["rollout.max_turns=3", "train.lr=1e-6"])
    assert cfg.rollout.max_turns == 3
    assert cfg.train.lr == pytest.approx(1e-6)
    # the original is untouched: configs are frozen values
    assert load_config("jobs/configs/demo.yaml").rollout.max_turns == 2


@pytest.mark.parametrize("override, key", [
    (["rollout.topk=4"], "rollout.topk"),
    (["nope.x=1"], "nope"),
])
def test_unknown_override_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, override)


def test_unknown_yaml_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rollout:\n  top_k: 3\n  max_turn: 2\n")
    with pytest.raises(ConfigError, match=r"rollout\.max_turn: unknown config key"):
        load_config(p)


def test_invalid_value_is_named():
    with pytest.raises(ConfigError, match=r"rollout\.top_k"):
        load_config(None, ["rollout.top_k=0"])
    with pytest.raises(ConfigError, match="keep_per_turn must not exceed"):
        load_config(None, ["rollout.keep_per_turn=5", "rollout.top_k=3"])


def test_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["rollout.top_k"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_with_overrides_dict_round_trips_through_dump():
    cfg = S3Config().with_overrides({"sweep.max_concurrent": 2, "eval.checkpoints": {"a": "/x"}})
    assert S3Config.model_validate(cfg.model_dump()) == cfg
    assert cfg.eval.checkpoints == {"a": "/x"}


def test_absolute_resolves_relative_paths_only(tmp_path):
    cfg = load_config(None, ["run_dir=runs/x", "data.corpus_path=/data/c.jsonl", "generator.cache_path=null"])
    a = cfg.absolute(tmp_path)
    assert a.run_dir == str(tmp_path / "runs/x")
    assert a.retrieval.index_dir == str(tmp_path / "runs/index")
    assert a.data.corpus_path == "/data/c.jsonl"
    assert a.generator.cache_path is None and a.data.train_path is None
