"""``forge-ray tts``: test-time scaling curves, accuracy against N samples per task.

    forge-ray tts --model DIR --env calculator --tasks 100 --n 1,2,4,8,16 \\
        --selectors first,majority,mean_logprob,agent_confidence,tournament,oracle --topk 20 --out DIR [--judge DIR|URL]

Every held-out task is played max(N) times, once, on one in-process vLLM engine inside a
``RolloutWorker`` (the class the RL rollout actors host, as ``forge-ray eval`` does), so the
prompt, agent loop, environment and its reward are RL's; the engine also returns each sampled
token's top-k logprobs (``EpisodeSpec.topk``). Each sample is scored by the environment's own
reward. For each N the first N samples of every task are handed to each selector
(``forge_ray.tts.selectors``); a task's accuracy is the reward total of the sample picked (the
success figure of ``forge-ray eval``), ``oracle`` the best of the N (pass@N). The tournament
needs ``--judge``: a model folder (the policy's reuses its engine) or an OpenAI-compatible endpoint
(``forge-ray serve``), which compares two attempts (``forge_ray.tts.judge``).
``env_token_vote`` has the engine score every trajectory once more (prompt logprobs) to get the
model's top-k on the environment-feedback tokens. Writes ``DIR/tts.json`` and ``DIR/tts.png``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forge_ray.tts.selectors import SELECTORS, Candidate, from_trajectory, normalise_calls, select
from forge_ray.types import Task, Trajectory

log = logging.getLogger(__name__)

DEFAULT_SELECTORS = ("first", "majority", "mean_logprob", "agent_confidence", "tournament", "oracle")
MAX_TOPK = 20  # vLLM's default max_logprobs: the engine refuses more


@dataclass(frozen=True)
class TtsConfig:
    """One ``forge-ray tts`` run."""

    model: str
    out: str
    env: str = "calculator"
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # the environment's constructor
    task_kwargs: dict[str, Any] = field(default_factory=dict)  # its task source's constructor
    split: str = "heldout"
    task_seed: int = 0
    tasks: int = 100
    ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    selectors: tuple[str, ...] = DEFAULT_SELECTORS
    topk: int = 20
    judge: str | None = None  # the tournament's judge: a model folder, or an OpenAI-compatible URL (.../v1)
    judge_model: str = ""  # the model name at a judge URL ("" = the first its /v1/models lists)
    seed: int = 0  # engine seed and tournament brackets
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_context: int = 2048  # tokens per episode, capped by the model's own (less one)
    kv_cache_mb: int = 2048
    dtype: str | None = None  # default float32 on CPU, bfloat16 on CUDA
    device: str = "auto"
    batch: int = 16  # tasks per engine call
    timeout_s: float = 600.0  # one episode

    def check(self) -> None:
        known = set(SELECTORS) | {"oracle"}
        bad = [s for s in self.selectors if s not in known]
        if bad:
            raise ValueError(f"unknown selectors {bad}; known: {', '.join(sorted(known))}")
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"--n must be positive integers, got {self.ns}")
        if not 0 <= self.topk <= MAX_TOPK:
            raise ValueError(f"--topk must be within 0..{MAX_TOPK} (vLLM's max_logprobs), got {self.topk}")
        if self.tasks < 1:
            raise ValueError(f"--tasks must be >= 1, got {self.tasks}")


# ---------------------------------------------------------------- answer normalisers (pure)

_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(-?\d{1,40})\s*\.?\s*$")
_PY_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.DOTALL)
_BASH_BLOCK = re.compile(r"```bash\s*\n(.*?)\n```", re.DOTALL)


def _assistant_texts(traj: Trajectory) -> list[str]:
    return [m.get("content") or "" for m in traj.messages if isinstance(m, dict) and m.get("role") == "assistant"]


def no_answer(traj: Trajectory) -> str:
    """The answer of a sample without one: unique to the sample, so failures never pool votes."""
    return f"<no answer #{traj.sample_index}>"


def calculator_answer(traj: Trajectory) -> str:
    """The integer of the last reply's single ``Answer: N`` line (the calculator checker's
    rule), as ``str(int)``: "Answer: 07." and "Answer: 7" agree."""
    texts = _assistant_texts(traj)
    lines = [ln for ln in (texts[-1] if texts else "").splitlines() if ln.lstrip().startswith("Answer:")]
    match = _ANSWER_LINE.match(lines[0]) if len(lines) == 1 else None
    return str(int(match.group(1))) if match else no_answer(traj)


def last_calls_answer(traj: Trajectory) -> str:
    """The last reply's tool calls, ``normalise_calls``-canonical ("[]" for a plain-text
    reply: no call); a malformed call is no answer. For single-turn function calling."""
    from forge_ray.chat import parse_action

    texts = _assistant_texts(traj)
    if not texts:
        return no_answer(traj)
    try:
        action = parse_action(texts[-1])
    except Exception:  # noqa: BLE001 - model output
        return no_answer(traj)
    return no_answer(traj) if action.parse_error else normalise_calls(action.tool_calls)


def all_calls_answer(traj: Trajectory) -> str:
    """Every tool call of the episode, canonical and order-free (``normalise_calls``): for τ²,
    whose outcome is the database the calls leave behind."""
    from forge_ray.chat import parse_action

    calls = []
    for text in _assistant_texts(traj):
        try:
            calls += parse_action(text).tool_calls
        except Exception:  # noqa: BLE001
            continue
    return normalise_calls(calls)


def python_block_answer(traj: Trajectory) -> str:
    """The solution file: the last reply holding exactly one ```python block, its lines
    right-stripped and blank lines dropped (coding exercises)."""
    for text in reversed(_assistant_texts(traj)):
        blocks = _PY_BLOCK.findall(text)
        if len(blocks) == 1:
            return "\n".join(ln.rstrip() for ln in blocks[0].splitlines() if ln.strip())
    return no_answer(traj)


def bash_commands_answer(traj: Trajectory) -> str:
    """SWE: the episode's bash commands, whitespace-collapsed, in order. A proxy: the patch
    (``normalise_patch``) lives in the environment's snapshot, which a trajectory does not carry."""
    cmds = [" ".join(c.split()) for t in _assistant_texts(traj) for c in _BASH_BLOCK.findall(t)]
    return "\n".join(cmds) if cmds else no_answer(traj)


def last_text_answer(traj: Trajectory) -> str:
    """The last reply, whitespace-collapsed (any other environment)."""
    texts = _assistant_texts(traj)
    return " ".join(texts[-1].split()) if texts and texts[-1].strip() else no_answer(traj)


NORMALISERS: dict[str, Callable[[Trajectory], str]] = {
    "calculator": calculator_answer, "function_calling": last_calls_answer, "tau2": all_calls_answer,
    "exercises": python_block_answer, "swe": bash_commands_answer}


def normaliser_for(env: str) -> Callable[[Trajectory], str]:
    return NORMALISERS.get(env, last_text_answer)


# ---------------------------------------------------------------- the table (pure)

def sample_score(traj: Trajectory) -> float:
    """The evaluation's success of one sample: its reward total, 0 when unscored or scoring failed."""
    r = traj.reward
    return float(r.total) if r is not None and r.error is None else 0.0


def finite_rows(rows: Iterable[Sequence[float]]) -> list[list[float]]:
    """Top-k rows without -inf (a token top-p cut away has a processed logprob of -inf)."""
    return [[v for v in row if math.isfinite(v)] for row in rows]


def candidates(trajs: Sequence[Trajectory], normalise: Callable[[Trajectory], str],
               env_topk: Sequence[list[list[float]]] | None = None) -> list[tuple[Candidate, float]]:
    """One task's samples as (Candidate, score) pairs, ``Candidate.index`` = sample index."""
    out = []
    for i, t in enumerate(trajs):
        env = finite_rows(env_topk[i]) if env_topk is not None else None
        out.append((from_trajectory(t, normalise, topk=finite_rows(t.topk), env_topk=env), sample_score(t)))
    return out


@dataclass(frozen=True)
class TaskChoices:
    """One task's picks: ``picks[selector][n]`` = chosen candidate index; ``oracle[n]`` = best
    score among the first n; ``judge_calls[n]`` for the tournament."""

    picks: dict[str, dict[int, int]]
    oracle: dict[int, float]
    judge_calls: dict[int, int] = field(default_factory=dict)


def choose(group: Sequence[tuple[Candidate, float]], ns: Sequence[int], selectors: Sequence[str], *,
           k: int = 100, seed: int = 0, judge: Callable[[Candidate, Candidate], int] | None = None) -> TaskChoices:
    """Apply each selector to the first n candidates of one task, for each n."""
    picks: dict[str, dict[int, int]] = {s: {} for s in selectors if s != "oracle"}
    oracle: dict[int, float] = {}
    calls: dict[int, int] = {}
    for n in ns:
        head = [c for c, _ in group[:n]]
        if len(head) < n:
            raise ValueError(f"a task has {len(group)} samples, fewer than n = {n}")
        oracle[n] = max(s for _, s in group[:n])
        for name in picks:
            if name == "tournament":
                picks[name][n], calls[n] = SELECTORS["tournament"](head, judge=judge, seed=seed)
            elif name in ("agent_confidence", "agent_token_vote", "env_token_vote"):
                picks[name][n] = select(name, head, k=k)
            else:
                picks[name][n] = select(name, head)
    return TaskChoices(picks, oracle, calls)


def aggregate(groups: Sequence[Sequence[tuple[Candidate, float]]], choices: Sequence[TaskChoices],
              ns: Sequence[int], selectors: Sequence[str]) -> dict[str, Any]:
    """Mean over tasks of the picked sample's score per selector and n (keys are str(n)), and
    ``pass_at_n``, the mean best score of the first n (the ``oracle`` selector's row)."""
    t = max(len(groups), 1)
    acc: dict[str, dict[str, float]] = {}
    for name in selectors:
        if name == "oracle":
            acc[name] = {str(n): sum(c.oracle[n] for c in choices) / t for n in ns}
            continue
        row = {}
        for n in ns:
            total = 0.0
            for group, c in zip(groups, choices):
                score = {cand.index: s for cand, s in group}
                total += score[c.picks[name][n]]
            row[str(n)] = total / t
        acc[name] = row
    out: dict[str, Any] = {"accuracy": acc, "pass_at_n": {str(n): sum(c.oracle[n] for c in choices) / t for n in ns}}
    if "tournament" in selectors:
        out["judge_calls"] = {str(n): sum(c.judge_calls.get(n, 0) for c in choices) for n in ns}
    return out


def build_table(groups: Sequence[Sequence[tuple[Candidate, float]]], ns: Sequence[int], selectors: Sequence[str], *,
                k: int = 100, seed: int = 0, judges: Sequence[Callable[[Candidate, Candidate], int]] | None = None,
                mapper: Callable[..., Iterable[Any]] = map) -> dict[str, Any]:
    """``choose`` on every task (``judges[i]`` is task i's judge; ``mapper`` may run tasks in
    threads), then ``aggregate``."""
    js = list(judges) if judges is not None else [None] * len(groups)
    choices = list(mapper(lambda gj: choose(gj[0], ns, selectors, k=k, seed=seed, judge=gj[1]), zip(groups, js)))
    return aggregate(groups, choices, ns, selectors)


def format_table(result: dict[str, Any]) -> str:
    """Accuracy per selector (rows) and N (columns)."""
    ns = list(result["pass_at_n"])
    lines = [f"{'selector':<18}" + "".join(f"{'N=' + n:>9}" for n in ns)]
    for name, row in result["accuracy"].items():
        lines.append(f"{name:<18}" + "".join(f"{row[n]:>9.3f}" for n in ns))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, title: str = "") -> None:
    """Accuracy against N, one line per selector, log2 x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ns = [int(n) for n in result["pass_at_n"]]
    for name, row in result["accuracy"].items():
        style = dict(linestyle="--", color="black") if name == "oracle" else {}
        ax.plot(ns, [row[str(n)] for n in ns], marker="o", label="oracle (pass@N)" if name == "oracle" else name, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("N samples per task")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the run

def load_tasks(cfg: TtsConfig, source: Any) -> list[Task]:
    """``cfg.tasks`` tasks of ``cfg.split`` from the environment's task source."""
    return list(source.tasks(cfg.split, cfg.tasks, cfg.task_seed))


def _engine_kwargs(cfg: TtsConfig, model: str, device: str) -> dict[str, Any]:
    from forge_ray.eval.harness import model_context

    # one token past the episode's limit, so a whole episode can be scored (prompt logprobs)
    return {"dtype": cfg.dtype or ("float32" if device == "cpu" else "bfloat16"),
            "max_model_len": model_context(model, cfg.max_context + 1), "kv_cache_mb": cfg.kv_cache_mb, "device": device,
            "seed": cfg.seed}


async def _sample(cfg: TtsConfig, worker: Any, tasks: list[Task]) -> list[list[Trajectory]]:
    """max(N) episodes per task, ``cfg.batch`` tasks per engine call; sample_index = position."""
    from forge_ray.eval.harness import Progress

    m = max(cfg.ns)
    progress = Progress("tts", len(tasks))
    groups: list[list[Trajectory]] = []
    for start in range(0, len(tasks), max(cfg.batch, 1)):
        chunk = tasks[start:start + max(cfg.batch, 1)]
        trajs = await worker.evaluate([t for t in chunk for _ in range(m)], greedy=False)
        for i in range(len(chunk)):
            group = trajs[i * m:(i + 1) * m]
            for j, traj in enumerate(group):
                traj.sample_index = j
            groups.append(group)
        progress(len(groups), sum(sample_score(t) for g in groups for t in g) / (len(groups) * m), "mean sample success")
    return groups


async def env_topk_of(engine: Any, traj: Trajectory, k: int, max_len: int) -> list[list[float]]:
    """The model's top-k logprobs at each environment-feedback token (mask 0 after the prompt)
    of ``traj``; tokens past the engine's context get none."""
    tokens = traj.tokens[:max_len - 1]
    _, top = await engine.score_prompt(tokens, k)
    return [top[i] if i < len(top) else [] for i in range(traj.prompt_len, len(traj.tokens)) if not traj.loss_mask[i]]


async def _run_async(cfg: TtsConfig, tasks: list[Task], factory: Callable[[], Any]) -> dict[str, Any]:
    from forge_ray.pipeline import resolve_device
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutWorker
    from forge_ray.tts.judge import make_judge

    device = resolve_device(cfg.device)
    model = str(Path(cfg.model).resolve())
    kw = _engine_kwargs(cfg, model, device)
    spec = EpisodeSpec(max_new_tokens=cfg.max_new_tokens, max_context=kw["max_model_len"] - 1, temperature=cfg.temperature,
                       top_p=cfg.top_p, timeout_s=cfg.timeout_s, topk=cfg.topk)
    worker = RolloutWorker(model, kw, factory, spec)
    log.info("engine ready in %.1f s (%s)", await worker.start(), kw)
    judge_engine = None
    try:
        t0 = time.perf_counter()
        groups = await _sample(cfg, worker, tasks)
        sample_seconds = time.perf_counter() - t0
        env_topk = None
        if "env_token_vote" in cfg.selectors:
            k, limit = max(cfg.topk, 1), kw["max_model_len"]
            flat = await asyncio.gather(*(env_topk_of(worker.engine, t, k, limit) for g in groups for t in g))
            m = max(cfg.ns)
            env_topk = [list(flat[i * m:(i + 1) * m]) for i in range(len(groups))]
        normalise = normaliser_for(cfg.env)
        cands = [candidates(g, normalise, env_topk[i] if env_topk else None) for i, g in enumerate(groups)]
        judges = None
        selectors = [s for s in cfg.selectors if s != "tournament" or cfg.judge]
        if "tournament" in selectors:
            judge, judge_engine = await make_judge(cfg.judge, cfg.judge_model, worker, lambda path: _engine_kwargs(cfg, path, device),
                                                   kw["max_model_len"])
            judges = [judge.for_task(task, g) for task, g in zip(tasks, groups)]
        t1 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            table = await asyncio.get_running_loop().run_in_executor(None, lambda: build_table(
                cands, cfg.ns, selectors, k=max(cfg.topk, 1), seed=cfg.seed, judges=judges, mapper=pool.map))
        return {**table, "groups": groups, "cands": cands, "sample_seconds": sample_seconds,
                "select_seconds": time.perf_counter() - t1}
    finally:
        worker.shutdown()
        if judge_engine is not None:
            judge_engine.shutdown()


def summarize(cfg: TtsConfig, tasks: list[Task], run: dict[str, Any]) -> dict[str, Any]:
    """The JSON written to ``tts.json``: config, accuracy table, sample statistics, per task."""
    groups, cands = run["groups"], run["cands"]
    flat = [t for g in groups for t in g]
    n = max(len(flat), 1)
    out = {
        "config": {**asdict(cfg), "ns": list(cfg.ns), "selectors": list(cfg.selectors), "normaliser": normaliser_for(cfg.env).__name__},
        "tasks": len(groups), "samples_per_task": max(cfg.ns),
        "accuracy": run["accuracy"], "pass_at_n": run["pass_at_n"],
        **({"judge_calls": run["judge_calls"]} if "judge_calls" in run else {}),
        "skipped": {} if cfg.judge or "tournament" not in cfg.selectors else {"tournament": "needs --judge"},
        "sample_success": sum(sample_score(t) for t in flat) / n,
        "statuses": dict(Counter(t.status.value for t in flat)),
        "mean_agent_tokens": sum(t.num_sampled for t in flat) / n,
        "topk_coverage": sum(len(t.topk) for t in flat) / max(sum(t.num_sampled for t in flat), 1),
        "sample_seconds": round(run["sample_seconds"], 2), "select_seconds": round(run["select_seconds"], 2),
        "per_task": [{"task_id": task.id, "scores": [s for _, s in cg], "answers": [c.answer for c, _ in cg],
                      "agent_tokens": [c.agent_tokens for c, _ in cg], "topk_tokens": [len(c.topk) for c, _ in cg],
                      "env_topk_tokens": [len(c.env_topk) for c, _ in cg]} for task, cg in zip(tasks, cands)],
    }
    return out


def run_tts(cfg: TtsConfig, source: Any, factory: Callable[[], Any]) -> dict[str, Any]:
    """Sample ``cfg.env``'s tasks (from ``source``, played in ``factory``'s environments), select,
    write ``tts.json`` and ``tts.png`` under ``cfg.out``; returns the summary."""
    import os

    cfg.check()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "tournament" in cfg.selectors and not cfg.judge:
        log.warning("tts: the tournament needs --judge MODEL_DIR; leaving it out")
    tasks = load_tasks(cfg, source)
    log.info("tts: %d %s tasks of %s, %d samples each", len(tasks), cfg.split, cfg.env, max(cfg.ns))
    summary = summarize(cfg, tasks, asyncio.run(_run_async(cfg, tasks, factory)))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tts.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "tts.png", f"{cfg.env}: {Path(cfg.model).name}, {summary['tasks']} tasks")
    print(format_table(summary))
    log.info("wrote %s and %s", out / "tts.json", out / "tts.png")
    return summary


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _run(args: argparse.Namespace) -> int:
    import sys

    fields = TtsConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    try:
        values["env_kwargs"], values["task_kwargs"] = json.loads(args.env_kwargs), json.loads(args.task_kwargs)
        cfg = TtsConfig(**values)
        cfg.check()
    except ValueError as e:
        print(f"forge-ray tts: {e}", file=sys.stderr)
        return 2
    from forge_ray.pipeline import environment  # envs/ at the edge

    run_tts(cfg, *environment(cfg.env, cfg.env_kwargs, cfg.task_kwargs))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tts`` on the top-level ``forge-ray`` subparsers."""
    p = sub.add_parser("tts", help="test-time scaling: accuracy of each selector against N samples per task")
    p.add_argument("--model", required=True, metavar="DIR", help="policy model folder, served by vLLM")
    p.add_argument("--env", default="calculator", help="environment name (envs.ENVS)")
    p.add_argument("--env-kwargs", default="{}", metavar="JSON", help="the environment's constructor arguments")
    p.add_argument("--task-kwargs", default="{}", metavar="JSON", help="its task source's constructor arguments")
    p.add_argument("--split", default="heldout", help="task split (default heldout)")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the task draw (default 0, as a job's env.seed)")
    p.add_argument("--tasks", type=int, default=100, metavar="K", help="held-out tasks")
    p.add_argument("--n", dest="ns", type=_ints, default=(1, 2, 4, 8, 16), metavar="1,2,4,...", help="sample counts N")
    p.add_argument("--selectors", type=_names, default=DEFAULT_SELECTORS, metavar="A,B,...",
                   help=f"of {','.join([*SELECTORS, 'oracle'])} (default {','.join(DEFAULT_SELECTORS)})")
    p.add_argument("--topk", type=int, default=20, help=f"top-k logprobs per sampled token, <= {MAX_TOPK} (0: none)")
    p.add_argument("--judge", default=None, metavar="MODEL_DIR|URL",
                   help="the tournament's judge: a model folder (the --model folder reuses its engine) or an OpenAI-compatible "
                        "endpoint, e.g. http://127.0.0.1:8000/v1 of forge-ray serve")
    p.add_argument("--judge-model", default="", metavar="NAME", help="the model name at a --judge URL (default: the first it lists)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/tts.json and DIR/tts.png")
    p.add_argument("--seed", type=int, default=0, help="engine seed and tournament brackets")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per reply")
    p.add_argument("--max-context", type=int, default=2048, help="tokens per episode (capped by the model's own)")
    p.add_argument("--kv-cache-mb", type=int, default=2048, help="vLLM KV cache on CPU")
    p.add_argument("--dtype", default=None, help="engine dtype (default float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch", type=int, default=16, help="tasks per engine call and progress line")
    p.add_argument("--timeout-s", type=float, default=600.0, help="limit of one episode")
    p.set_defaults(fn=_run)
