"""Cluster launcher configs and job specs: Ray's own validation, `forge-ray submit --print-only`,
the `job` section, client-side token auth. No cluster and no network."""
import json
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from forge_ray.cli import main
from forge_ray.config import ConfigError, build_job, load_job
from forge_ray.submit import auth_token, build_submission, enable_token_auth, render_cli

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_FILES = ["cluster.yaml", "cluster.local.yaml"]


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """A HOME without ~/.ray/auth_token and no token in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.setenv(var, "")  # records the original, so code under test that sets it is undone
        monkeypatch.delenv(var)
    return tmp_path


def prepared(name: str) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / name).read_text()))
    validate_config(config)
    return config


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_yaml_passes_ray_validation(name):
    config = prepared(name)
    head = " ".join(config["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=0.0.0.0" in head and "--dashboard-port=8265" in head
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)  # token auth stays on, cluster-wide
    assert config["file_mounts"]["~/forge_ray"] == "." and "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "-e" in c and "[" in c for c in config["head_setup_commands"])
    assert "**/.venv" in config["rsync_exclude"]
    for cmds in (config["head_setup_commands"], config["worker_setup_commands"]):  # every node: the sandbox and env extras
        joined = " ".join(cmds)
        assert "install_system_deps.sh" in joined and "envs]" in joined and "tau2-nodeps.txt" in joined


def test_aws_node_types():
    types = prepared("cluster.yaml")["available_node_types"]
    assert prepared("cluster.yaml")["head_node_type"] == "head_cpu"
    assert types["rollout_gpu"]["resources"] == {"rollout": 1}
    assert types["learner_gpu"]["resources"] == {"learner": 8}
    assert all(t["max_workers"] >= t["min_workers"] for t in types.values())


def test_validation_is_not_vacuous():
    """The same check rejects a broken config (fractional custom resource, unknown field)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["rollout_gpu"]["resources"] = {"rollout": 0.5}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["head_start_commands"] = []
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))


def test_job_section_parses_and_rejects_unknown_keys(tmp_path):
    job = load_job(ROOT / "jobs" / "quickstart.yaml", ["job.entrypoint_num_gpus=1", "job.pip=[rich]",
                                                        "job.env_vars={WANDB_PROJECT: agentforge}"])
    assert job.job.entrypoint_num_cpus == 1.0 and job.job.entrypoint_num_gpus == 1.0
    assert job.job.pip == ["rich"] and job.job.env_vars == {"WANDB_PROJECT": "agentforge"}
    assert ".venv" in job.job.excludes and "runs" in job.job.excludes
    path = tmp_path / "bad.yaml"
    path.write_text("job:\n  entrypoint_num_cpus: 2\n  exclude: [data]\n")
    with pytest.raises(ConfigError) as e:
        load_job(path)
    assert "job.exclude" in str(e.value) and str(path) in str(e.value)
    with pytest.raises(ConfigError, match="job.entrypoint_num_cpus: expected float"):
        load_job(None, ["job.entrypoint_num_cpus=many"])


def test_print_only_renders_an_equivalent_ray_job_submit(no_token, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    overrides = ["run.steps=2", "run.name=my run"]
    argv = ["submit", "jobs/quickstart.yaml", "--address", "http://10.0.0.10:8265", "--print-only"]
    assert main(argv + [w for o in overrides for w in ("--set", o)]) == 0
    printed = capsys.readouterr().out.strip()
    words = shlex.split(printed)
    assert words[:3] == ["ray", "job", "submit"] and "RAY_AUTH_MODE=token" not in printed  # no token here
    assert words[words.index("--working-dir") + 1] == "."
    runtime_env = json.loads(words[words.index("--runtime-env-json") + 1])
    assert runtime_env["excludes"] == list(load_job(ROOT / "jobs" / "quickstart.yaml").job.excludes)
    entry = words[words.index("--") + 1:]
    assert entry[:5] == ["python", "-m", "forge_ray.cli", "run", "jobs/quickstart.yaml"]
    assert "run.name=my run" in entry and entry[-2:] == ["--set", "cluster.address=auto"]
    # Ray's own CLI parser turns the printed words into the entrypoint the SDK path submits.
    from ray.dashboard.modules.job.cli import submit

    params = submit.make_context("submit", words[3:]).params
    sub = build_submission(ROOT / "jobs" / "quickstart.yaml", overrides, "http://10.0.0.10:8265")
    assert shlex.join(params["entrypoint"]) == sub.entrypoint_str
    assert params["entrypoint_num_cpus"] == sub.entrypoint_num_cpus and params["address"] == sub.address
    assert json.loads(params["runtime_env_json"]) == {k: v for k, v in sub.runtime_env.items() if k != "working_dir"}
    assert sub.runtime_env["working_dir"] == str(ROOT)


def test_job_spec_reaches_the_runtime_env(no_token):
    sub = build_submission(ROOT / "jobs" / "quickstart.yaml", ["job.env_vars={WANDB_PROJECT: p, DEBUG: true, N: 3}",
                                                              "job.pip=[rich]", "job.extras=''"])
    assert sub.runtime_env["env_vars"] == {"WANDB_PROJECT": "p", "DEBUG": "true", "N": "3"}
    assert sub.runtime_env["pip"] == ["rich"] and "--install-extras" not in sub.entrypoint
    with pytest.raises(ConfigError, match="job.env_vars.X"):
        build_submission(ROOT / "jobs" / "quickstart.yaml", ["job.env_vars={X: [1]}"])


def test_job_file_outside_the_repository_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run:\n  steps: 1\n")
    with pytest.raises(ConfigError, match="inside"):
        build_submission(path)


def test_token_auth_on_the_client_side(no_token, monkeypatch):
    assert auth_token() is None and enable_token_auth() == {}
    (no_token / ".ray").mkdir()
    (no_token / ".ray" / "auth_token").write_text("filetoken\n")
    assert enable_token_auth() == {"Authorization": "Bearer filetoken"}
    import os

    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "envtoken")  # the environment wins, as in Ray's loader
    assert auth_token() == "envtoken"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit opt-out is respected
    assert enable_token_auth() == {}
    sub = build_submission(ROOT / "jobs" / "quickstart.yaml")
    assert render_cli(sub, ROOT).startswith("RAY_AUTH_MODE=token ray job submit")


def test_unreachable_address_is_a_clear_error(no_token, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", f"http://127.0.0.1:{port}"]) == 3
    err = capsys.readouterr().err
    assert "cannot reach the Ray dashboard" in err and "Traceback" not in err


def test_driver_env_vars_do_not_collide_with_the_jobs(monkeypatch):
    from forge_ray.pipeline import worker_env_vars

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert "TOKENIZERS_PARALLELISM" in worker_env_vars()
    injected = {"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "true"}}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(injected))
    assert "TOKENIZERS_PARALLELISM" not in worker_env_vars() and "VLLM_LOGGING_LEVEL" in worker_env_vars()


def test_quickstart_documents_the_job_section():
    """The commented `job:` block of jobs/quickstart.yaml, uncommented, is valid and shows the defaults."""
    text = (ROOT / "jobs" / "quickstart.yaml").read_text()
    block = text[text.index("# job:"):]
    sections = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    assert build_job(sections).job == load_job(None).job
