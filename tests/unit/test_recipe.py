"""The AgentForge recipe's pure parts: the ``domains:`` / ``merge:`` config, the job a domain
sees, the merge-cost table, its markdown and plot, the per-domain run's metrics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_ray.config import ConfigError, domain_job, dump_job, load_job
from forge_ray.recipe import DomainRun, _stash_policy, build_table, plot_merge_cost, table_markdown

ROOT = Path(__file__).resolve().parents[2]

JOB = """
env:
  seed: 3
  eval_tasks: 50
rollout:
  max_new_tokens: 48
run:
  steps: 10
domains:
  - name: calculator
    env: {name: calculator, kwargs: {max_operand: 20}, max_turns: 4}
    sft: {examples: 100, env_kwargs: {direct_answer_rate: 0.5}}
  - name: function_calling
    env: {name: function_calling, max_turns: 1, eval_tasks: 20}
    rollout: {max_new_tokens: 128}
    learner: {lr: 1.0e-4}
    steps: 3
merge:
  method: ties
  density: 0.5
  weights: [1, 2]
"""


def write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_domains_and_merge_parse(tmp_path):
    job = load_job(write(tmp_path, JOB))
    calc, fc = job.domains
    assert calc.name == "calculator" and calc.env["kwargs"] == {"max_operand": 20} and calc.steps == 0
    assert fc.rollout == {"max_new_tokens": 128} and fc.learner == {"lr": 1e-4} and fc.steps == 3
    assert job.merge.method == "ties" and job.merge.density == 0.5 and job.merge.weights == [1, 2]
    assert load_job(None).domains == [] and load_job(None).merge.method == "sce"  # no domains: the plain pipeline


def test_domain_job_overrides_the_job_sections(tmp_path):
    job = load_job(write(tmp_path, JOB))
    calc, fc = (domain_job(job, d) for d in job.domains)
    assert calc.env.name == "calculator" and calc.env.max_turns == 4 and calc.env.seed == 3 and calc.env.eval_tasks == 50
    assert calc.sft.examples == 100 and calc.sft.env_kwargs == {"direct_answer_rate": 0.5} and calc.run.steps == 10
    assert calc.rollout.max_new_tokens == 48 and calc.domains == []
    assert fc.env.name == "function_calling" and fc.env.kwargs == {} and fc.env.eval_tasks == 20
    assert fc.rollout.max_new_tokens == 128 and fc.learner.lr == 1e-4 and fc.run.steps == 3
    assert fc.sft.examples == job.sft.examples  # not set for this domain: the job's


def test_domain_overrides_on_the_command_line(tmp_path):
    path = write(tmp_path, JOB)
    job = load_job(path, ["domains.calculator.steps=2", "domains.function_calling.env.eval_tasks=4", "merge.method=sce",
                          "merge.weights=[]"])
    assert job.domains[0].steps == 2 and job.domains[1].env == {"name": "function_calling", "max_turns": 1, "eval_tasks": 4}
    assert job.merge.method == "sce"
    with pytest.raises(ConfigError, match="no domain named 'calc'"):
        load_job(path, ["domains.calc.steps=2"])


@pytest.mark.parametrize("bad, match", [
    ("domains:\n  - name: a\n    stepz: 3\n", "unknown key 'domains\\[0\\].stepz'"),
    ("domains:\n  - name: a\n    env: {nme: calculator}\n", "domains\\[0\\] \\(a\\).env: unknown key 'nme'"),
    ("domains:\n  - name: a\n    sft: {lr: 0.1}\n", "domains\\[0\\] \\(a\\).sft: unknown key 'lr' \\(known: examples, env_kwargs\\)"),
    ("domains:\n  - name: a\n    rollout: {max_new_tokens: many}\n", "domains\\[0\\] \\(a\\).rollout.max_new_tokens: expected int"),
    ("domains:\n  - name: a\n  - name: a\n", "'a' names two domains"),
    ("domains:\n  - name: a/b\n", "must be a non-empty word"),
    ("domains:\n  - env: {name: calculator}\n", "domains\\[0\\].name: '' must be"),
    ("domains:\n  name: a\n", "section 'domains' must be a list"),
    ("domains:\n  - name: a\n    steps: -1\n", "steps must be >= 0"),
    ("domains:\n  - name: a\n    rollout: {max_context: 4000}\n", "domains\\[0\\] \\(a\\): rollout.max_context"),
    ("merge:\n  density: 0\n", "merge.density must be in"),
    ("merge:\n  method: dare\n", "merge.method"),
    ("merge:\n  weights: [1, 2]\n", "sce computes its own weights"),
    ("domains:\n  - name: a\nmerge:\n  method: linear\n  weights: [1, 2]\n", "merge.weights has 2 weights for 1 domains"),
    # env.mix, joint multi-task RL (forge_ray/mix.py)
    ("env:\n  mix: [a]\n", "env.mix names domains, but the job has no domains"),
    ("env:\n  mix: [a, c]\ndomains:\n  - name: a\n", r"env.mix\[1\]: 'c' is not a domain of the job \(a\)"),
    ("domains:\n  - name: a\n    env: {mix: [a]}\n", r"domains\[0\] \(a\).env.mix: only the job's env section"),
    ("domains:\n  - name: a\n    rl: false\n", "no domain trains its own RL policy"),
])
def test_bad_domains_name_the_key_and_the_file(tmp_path, bad, match):
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError, match=match) as e:
        load_job(path)
    assert str(path) in str(e.value)


def test_resolved_config_round_trips(tmp_path):
    job = load_job(write(tmp_path, JOB))
    dump_job(job, tmp_path / "config.yaml")
    assert load_job(tmp_path / "config.yaml") == job


def test_shipped_agentforge_job():
    job = load_job(ROOT / "jobs" / "agentforge_cpu.yaml")
    names = [d.name for d in job.domains]
    assert "calculator" in names and "function_calling" in names and job.merge.method == "sce"
    assert all(domain_job(job, d).env.name for d in job.domains)


def evals(**by_model):
    return {m: {d: {"success": s, "n": 10} for d, s in row.items()} for m, row in by_model.items()}


def test_table_rows_means_and_merge_cost():
    results = evals(sft=dict(a=0.5, b=0.2), rl_a=dict(a=0.9, b=0.1), rl_b=dict(a=0.4, b=0.6), merged=dict(a=0.8, b=0.5))
    table = build_table(results, ["a", "b"], {"method": "sce", "density": 1.0})
    assert [r["model"] for r in table["rows"]] == ["sft", "rl_a", "rl_b", "merged"]
    assert table["rows"][0] == {"model": "sft", "success": {"a": 0.5, "b": 0.2}, "mean": 0.35}
    assert table["merge_cost"] == {"a": 0.1, "b": 0.1, "mean": 0.1}  # 0.9 - 0.8, 0.6 - 0.5
    assert table["eval_tasks"] == {"a": 10, "b": 10} and table["merge"]["method"] == "sce"
    json.dumps(table)  # what merge_cost.json holds
    md = table_markdown(table).splitlines()
    assert md[0] == "| model | a (n=10) | b (n=10) | mean |" and md[1] == "|---|---|---|---|"
    assert md[2] == "| sft | 0.500 | 0.200 | 0.350 |" and md[5] == "| merged | 0.800 | 0.500 | 0.650 |"
    assert md[6] == "| merge cost (rl_<domain> - merged) | +0.100 | +0.100 | +0.100 |"
    assert md[-1] == "merge: method sce, density 1.0"


def test_table_without_a_merge_has_no_cost():
    table = build_table(evals(sft=dict(a=0.5), rl_a=dict(a=0.75)), ["a"])
    assert table["merge_cost"] == {} and "merge cost" not in table_markdown(table)
    table = build_table(evals(sft=dict(a=0.5), rl_a=dict(a=0.75), merged=dict(a=1.0)), ["a"])
    assert table["merge_cost"] == {"a": -0.25, "mean": -0.25}  # the merge beat the specialist


def test_plot_is_written(tmp_path):
    table = build_table(evals(sft=dict(a=0.5, b=0.2), rl_a=dict(a=0.9, b=0.1), merged=dict(a=0.8, b=0.5)), ["a", "b"])
    out = plot_merge_cost(table, tmp_path / "plots" / "merge_cost.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_domain_run_tags_and_filters_its_rows(tmp_path):
    from forge_ray.metrics import Run

    job = load_job(write(tmp_path, JOB), ["run.wandb_mode=disabled", f"run.root={tmp_path}"])
    run = Run.create(job)
    a, b = (DomainRun.of(run, domain_job(job, d), d.name) for d in job.domains)
    assert a.dir == run.dir and a.job.env.name == "calculator" and b.job.run.steps == 3
    for step in (1, 2, 3):
        a.log("rl", step, {"reward_mean": step / 10})
    b.log("rl", 1, {"reward_mean": 0.5})
    run.log("sft", 1, {"loss": 1.0})
    assert [r["step"] for r in a.read_metrics("rl")] == [1, 2, 3] and [r["domain"] for r in b.read_metrics("rl")] == ["function_calling"]
    a.truncate(1)  # a resumed domain forgets its own later rows only
    assert [r["step"] for r in a.read_metrics("rl")] == [1] and len(b.read_metrics("rl")) == 1 and len(run.read_metrics("sft")) == 1


def test_stash_policy_moves_rl_and_its_step_checkpoints(tmp_path):
    ckpt = tmp_path / "checkpoints"
    (ckpt / "rl").mkdir(parents=True)
    (ckpt / "rl" / "config.json").write_text("{}")
    (ckpt / "rl-step-000002").mkdir()
    (ckpt / "latest").write_text("rl-step-000002")
    out = _stash_policy(ckpt, "calc")
    assert out == ckpt / "rl_calc" and (out / "config.json").exists() and not (ckpt / "rl").exists()
    assert (ckpt / "rl_calc_steps" / "rl-step-000002").is_dir() and (ckpt / "rl_calc_steps" / "latest").exists()
    assert not (ckpt / "latest").exists()  # the next domain starts fresh, not from this one's checkpoint
