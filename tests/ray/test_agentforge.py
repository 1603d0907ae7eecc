"""Klear-AgentForge's recipe as one job, tiny: jobs/agentforge_cpu.yaml shrunk to a shared SFT of a
few steps on both domains, 2 RL steps per domain, an SCE merge, 3 steps of joint multi-task RL by
the schedule [function_calling, function_calling, calculator], and 8 held-out tasks per domain."""
import json
from pathlib import Path

from forge_ray.config import load_job

ROOT = Path(__file__).resolve().parents[2]
DOMAINS = ("calculator", "function_calling")
TINY = [
    "model.tiny_layers=1", "sft.epochs=2", "sft.batch_size=16", "sft.num_workers=1", "learner.num_workers=1",
    # Tiny operands, answered in the teacher's head: a few SFT steps make "Answer: N" guesses that
    # are sometimes right, so the RL groups' rewards vary and the policies move off the SFT.
    "domains.calculator.env.kwargs={max_operand: 2, ops_weights: [1, 0, 0]}",
    "domains.calculator.sft.env_kwargs={direct_answer_rate: 1.0, direct_answer_max_ops: 1}",
    "domains.function_calling.env.kwargs={categories: [simple, irrelevance]}",  # prose is right on irrelevance
    "domains.function_calling.rollout={max_new_tokens: 48, max_context: 512}",
    *(f"domains.{d}.{k}" for d in DOMAINS for k in ("sft.examples=96", "env.train_tasks=100", "env.eval_tasks=8")),
    "rollout.group_size=4", "rollout.batch_prompts=6", "rollout.kv_cache_mb=256", "learner.batch_groups=4",
    "learner.micro_batch=8", "learner.drop_zero_variance=false", "learner.lr=1e-3", "run.wandb_mode=offline",
    *(f"domains.{d}.steps=2" for d in DOMAINS), "run.steps=3", "env.mix=[function_calling, function_calling, calculator]",
    "run.dump_rollouts=true",
]
MIX = ["function_calling", "function_calling", "calculator"]


def tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def test_agentforge_recipe(ray_cluster, tmp_path):
    from forge_ray.merge import merge_models
    from forge_ray.pipeline import run_job

    summary = run_job(load_job(ROOT / "jobs" / "agentforge_cpu.yaml", TINY + [f"run.root={tmp_path}"]))
    d = Path(summary["run_dir"])
    ckpt = d / "checkpoints"
    for name in ("sft", "rl_calculator", "rl_function_calling", "merged", "rl_mix"):
        assert (ckpt / name / "model.safetensors").exists(), name
    assert not (ckpt / "rl").exists()  # each domain's policy was moved to its own folder
    for f in ("tokenizer_config.json", "tokenizer.json", "chat_template.jinja"):  # the base's, so vLLM serves it as the SFT
        assert (ckpt / "merged" / f).read_bytes() == (ckpt / "sft" / f).read_bytes(), f
    assert json.loads((ckpt / "merged" / "merge.json").read_text())["method"] == "sce"

    # The merged weights are merge_models' SCE of the two policies over the SFT, bit for bit.
    again = merge_models(ckpt / "sft", [ckpt / "rl_calculator", ckpt / "rl_function_calling"], "sce", density=1.0,
                         out_dir=tmp_path / "again")
    sft, merged, ref = tensors(ckpt / "sft"), tensors(ckpt / "merged"), tensors(again)
    rl = {n: tensors(ckpt / f"rl_{n}") for n in DOMAINS}
    assert merged.keys() == ref.keys() and all(merged[k].equal(ref[k]) for k in ref)
    moved = {n: [k for k in sft if not rl[n][k].equal(sft[k])] for n in DOMAINS}
    assert all(moved.values()), f"RL left a policy at the SFT: {[n for n in DOMAINS if not moved[n]]}"
    assert any(not merged[k].equal(sft[k]) for k in moved["calculator"])
    for n in DOMAINS:  # neither policy alone: the other's task vector is in the merge too
        assert any(not merged[k].equal(rl[n][k]) for k in sft), n

    # The merge-cost table: every model on every domain, on disk as JSON, markdown and a plot.
    table = json.loads((d / "merge_cost.json").read_text())
    assert table == summary["merge_cost"] and table["domains"] == list(DOMAINS)
    assert [r["model"] for r in table["rows"]] == ["sft", "rl_calculator", "rl_function_calling", "merged", "rl_mix"]
    for row in table["rows"]:
        assert all(isinstance(row["success"][n], float) and 0.0 <= row["success"][n] <= 1.0 for n in DOMAINS), row
    assert set(table["merge_cost"]) == {*DOMAINS, "mean"} and table["eval_tasks"] == {n: 8 for n in DOMAINS}
    assert "| merged |" in (d / "merge_cost.md").read_text()
    for plot in ("merge_cost.png", "reward_calculator.png", "reward_function_calling.png"):
        assert (d / "plots" / plot).read_bytes()[:4] == b"\x89PNG", plot

    # Each domain's metrics rows are its own; the evaluation rows cover the whole table.
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    for n in DOMAINS:
        assert [r["step"] for r in rows if r["stage"] == "rl" and r.get("domain") == n] == [1, 2], n
        assert {r["name"] for r in rows if r["stage"] == "eval" and r.get("domain") == n} == {"sft", "rl"}, n
        assert summary["domains"][n]["rl_checkpoint"] == str(ckpt / f"rl_{n}") and summary["domains"][n]["policy_version"] == 2
    assert len([r for r in rows if r["stage"] == "merge_eval"]) == 5 * len(DOMAINS)
    assert set(summary["stage_seconds"]) == {"base", "sft", "rl_calculator", "rl_function_calling", "merge", "rl_mix", "eval"}

    # Joint multi-task RL: each step trained on the schedule's domain only, every group of it.
    mixed = [r for r in rows if r["stage"] == "rl" and r.get("domain") == "mix"]
    assert [(r["step"], r["mix_domain"]) for r in mixed] == list(enumerate(MIX, 1))
    assert [r["by_domain/function_calling/prompt_share"] for r in mixed] == [1.0, 1.0, 2 / 3]
    assert mixed[-1]["by_domain/calculator/prompt_share"] == 1 / 3
    for step, domain in enumerate(MIX, 1):
        dumped = (d / "rollouts" / "mix" / f"step_{step:06d}.jsonl").read_text().splitlines()
        assert len(dumped) == 4 * 4 and {json.loads(t)["task_id"].split("::")[0] for t in dumped} == {domain}
    before = next(r for r in rows if r["stage"] == "eval" and r.get("domain") == "mix" and r["name"] == "sft")
    assert {k: v["n"] for k, v in before["by_domain"].items()} == {n: 8 for n in DOMAINS}
    assert summary["domains"]["mix"]["policy_version"] == 3 and summary["domains"]["mix"]["env"] == "+".join(MIX)
