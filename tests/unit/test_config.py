"""Config: typed sections, --set overrides, errors that name the key and the file."""
from pathlib import Path

import pytest

from forge_ray.config import ConfigError, JobConfig, load_job

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_overrides():
    job = load_job(None, ["rollout.temperature=0.5", "run.mode=sync", "learner.lr=1", "env.kwargs={ops_weights: [1, 0, 0]}"])
    assert job.rollout.temperature == 0.5
    assert job.run.mode == "sync"
    assert job.learner.lr == 1.0 and isinstance(job.learner.lr, float)  # int accepted for float
    assert job.env.kwargs == {"ops_weights": [1, 0, 0]}
    assert load_job(None, ["learner.lr=3e-5"]).learner.lr == 3e-5  # YAML 1.1 reads this as a string
    assert isinstance(job, JobConfig)


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  group_size: 4\n  temprature: 0.7\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert "rollout.temprature" in str(e.value) and str(path) in str(e.value)


def test_unknown_section_and_bad_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rolout:\n  group_size: 4\n")
    with pytest.raises(ConfigError, match="unknown section 'rolout'"):
        load_job(path)
    with pytest.raises(ConfigError, match="run.mode"):
        load_job(None, ["run.mode=fast"])
    with pytest.raises(ConfigError, match="learner.lr: expected float"):
        load_job(None, ["learner.lr=abc"])
    with pytest.raises(ConfigError, match="rollout.group_size: expected int"):
        load_job(None, ["rollout.group_size=true"])
    with pytest.raises(ConfigError, match="section.field=value"):
        load_job(None, ["temperature=1"])
    with pytest.raises(ConfigError, match="no such job file"):
        load_job(tmp_path / "missing.yaml")


def test_tiny_model_heads_must_split_evenly(tmp_path):
    path = tmp_path / "heads.yaml"
    path.write_text("model:\n  tiny_hidden: 128\n  tiny_heads: 4\n  tiny_kv_heads: 3\n")
    with pytest.raises(ConfigError, match="model.tiny_kv_heads \\(3\\) must divide model.tiny_heads") as e:
        load_job(path)
    assert str(path) in str(e.value)
    for bad in (["model.tiny_heads=3"], ["model.tiny_kv_heads=0"]):  # 256 % 3 (the default width); no K/V heads
        with pytest.raises(ConfigError, match="model.tiny_heads"):
            load_job(None, bad)
    assert load_job(path, ["model.tiny_kv_heads=4"]).model.tiny_kv_heads == 4
    with pytest.raises(ConfigError, match="head size vLLM's CPU attention does not run"):  # 64 / 4 = 16
        load_job(path, ["model.tiny_kv_heads=4", "model.tiny_hidden=64"])
    with pytest.raises(ConfigError, match="rollout.max_context \\+ rollout.max_new_tokens \\(2000 \\+ 64\\)"):
        load_job(path, ["model.tiny_kv_heads=4", "rollout.max_context=2000"])  # the tiny model's 2048 by default
    assert load_job(path, ["model.tiny_kv_heads=4", "rollout.max_context=2000", "model.path=/some/model"]).rollout.max_context == 2000


@pytest.mark.parametrize("path", sorted((ROOT / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_parse(path):
    load_job(path)
