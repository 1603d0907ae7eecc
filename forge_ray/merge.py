"""``forge-ray merge``: merge fine-tunes of one base model into one Hugging Face folder.

    forge-ray merge --base SFT_DIR --models A B ... --method sce|ties|task_arithmetic|linear \
        [--density P] [--weights W1 W2 ...] [--sce-energy full|selected] --out DIR

Klear-AgentForge trains one RL policy per domain from the shared SFT checkpoint and merges them
with SCE (Select, Calculate, Erase; FuseChat). All methods here act on one parameter tensor at a
time, on the task vectors ``tau_i = theta_i - theta_base`` (``linear`` on the models
themselves). Every function computes in float32 and returns float32; ``merge_models`` stores
each merged tensor in the base tensor's dtype. docs/merging.md has the formulas and the tests.

Top-fraction masks (TIES trimming, SCE selection) keep ``k = max(1, round(p * n))`` of the
``n`` entries: every entry whose score is >= the k-th largest score, so ties at the threshold
are all kept (deterministic, independent of memory order). ``p = 1`` keeps everything.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METHODS = ("sce", "ties", "task_arithmetic", "linear")
SCE_ENERGY = ("full", "selected")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


class MergeError(ValueError):
    """Inputs that cannot be merged: mismatched folders, bad density or weights."""


# ---------------------------------------------------------------- tensor-level methods


def _task_vectors(base: torch.Tensor, models: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(base, stack of tau_i)`` in float32; ``tau`` has shape ``[K, *base.shape]``."""
    import torch

    if not models:
        raise MergeError("need at least one model to merge")
    for i, m in enumerate(models):
        if m.shape != base.shape:
            raise MergeError(f"model {i} has shape {list(m.shape)}, the base {list(base.shape)}")
    b = base.to(torch.float32)
    return b, torch.stack([m.to(torch.float32) for m in models]) - b


def _weights(weights: Sequence[float] | None, k: int, ndim: int) -> torch.Tensor:
    """The weights as a float32 ``[K, 1, ..., 1]`` tensor (all ones when ``None``)."""
    import torch

    if weights is None:
        weights = [1.0] * k
    if len(weights) != k:
        raise MergeError(f"{len(weights)} weights for {k} models")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32).view(k, *([1] * ndim))


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise MergeError(f"density must be in (0, 1], got {density}")


def _top_fraction_mask(score: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the entries whose ``score`` is among the top ``density`` fraction.

    ``k = max(1, round(density * n))``; keeps ``score >= (k-th largest score)``, so ties at the
    threshold are all kept. ``density == 1`` keeps every entry.
    """
    import torch

    _check_density(density)
    n = score.numel()
    if density >= 1.0 or n == 0:
        return torch.ones_like(score, dtype=torch.bool)
    k = max(1, int(round(density * n)))
    threshold = torch.kthvalue(score.flatten(), n - k + 1).values  # k-th largest
    return score >= threshold


def task_arithmetic(base: torch.Tensor, models: Sequence[torch.Tensor],
                    weights: Sequence[float] | None = None, scale: float = 1.0) -> torch.Tensor:
    """Task arithmetic: ``theta = base + scale * sum_i w_i * tau_i`` (``w_i = 1`` by default,
    i.e. the task vectors are summed, not averaged)."""
    b, taus = _task_vectors(base, models)
    return b + scale * (_weights(weights, len(models), b.dim()) * taus).sum(0)


def linear(models: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted average of the models: ``theta = sum_i w_i * theta_i / sum_i w_i``
    (equal weights by default). Needs ``sum_i w_i != 0``."""
    import torch

    if not models:
        raise MergeError("need at least one model to merge")
    stack = torch.stack([m.to(torch.float32) for m in models])
    w = _weights(weights, len(models), stack.dim() - 1)
    if float(w.sum()) == 0.0:
        raise MergeError("linear merge: the weights sum to 0")
    return (w * stack).sum(0) / w.sum()


def ties(base: torch.Tensor, models: Sequence[torch.Tensor], density: float,
         weights: Sequence[float] | None = None) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023), per entry ``e``:

    1. Trim: ``t_i = tau_i * top_fraction_mask(|tau_i|, density)`` (per model).
    2. Elect: ``gamma_e = sign(sum_i w_i * t_i[e])``.
    3. Disjoint mean over ``A_e = {i : sign(t_i[e]) == gamma_e != 0}``:
       ``tau[e] = sum_{i in A_e} w_i t_i[e] / sum_{i in A_e} w_i`` (0 when ``A_e`` is empty).

    ``theta = base + tau``. Weights (default 1, the plain TIES mean) must be >= 0.
    """
    import torch

    b, taus = _task_vectors(base, models)
    w = _weights(weights, len(models), b.dim())
    if bool((w < 0).any()):
        raise MergeError("ties merge: weights must be >= 0")
    trimmed = torch.stack([t * _top_fraction_mask(t.abs(), density) for t in taus])
    elected = torch.sign((w * trimmed).sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    num = (w * trimmed * agree).sum(0)
    den = (w * agree).sum(0)
    return b + torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def sce(base: torch.Tensor, models: Sequence[torch.Tensor], density: float,
        energy: str = "full") -> torch.Tensor:
    """SCE (Select, Calculate, Erase) as Klear-AgentForge states it (papers.md 1.10):

        theta = base + (sum_i eta_i * tau_i) (.) C (.) M

    1. Select: ``M = top_fraction_mask(Var_i(tau_i), density)``, the per-entry population
       variance across the K task vectors (the ranking is the same for the sample variance).
    2. Calculate, matrix-level energy weights, ``eta_i = E_i / sum_j E_j`` with
       ``E_i = ||tau_i||_F^2`` (``energy="full"``, the formula papers.md gives) or
       ``E_i = ||tau_i (.) M||_F^2`` (``energy="selected"``, FuseChat's wording: the sum of
       squares of the selected entries). ``eta_i >= 0``, ``sum_i eta_i = 1``.
    3. Erase (the paper does not state its rule; FuseChat's): per entry ``e``, with
       ``s_e = sign(sum_i eta_i tau_i[e])``, drop component ``i`` when ``sign(tau_i[e]) != s_e``.
       ``tau[e] = M[e] * sum_{i kept} eta_i tau_i[e]``. The kept components are NOT
       renormalised (no division by ``sum_{i kept} eta_i``): masks only remove, as in the formula.

    All task vectors zero (sum of energies 0) -> ``base``. ``density = 1`` -> no selection.
    One model -> zero variance everywhere, every entry is kept (ties) -> that model.
    """
    import torch

    if energy not in SCE_ENERGY:
        raise MergeError(f"sce energy must be one of {SCE_ENERGY}, got {energy!r}")
    _check_density(density)
    b, taus = _task_vectors(base, models)
    mask = _top_fraction_mask(taus.var(dim=0, unbiased=False), density)
    energies = (taus * mask if energy == "selected" else taus).pow(2).flatten(1).sum(1)
    total = energies.sum()
    if float(total) == 0.0:
        return b.clone()
    weighted = (energies / total).view(-1, *([1] * b.dim())) * taus
    keep = torch.sign(taus) == torch.sign(weighted.sum(0))
    return b + (weighted * keep).sum(0) * mask


# ---------------------------------------------------------------- folders


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index or from every ``*.safetensors`` file."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise MergeError(f"{folder}: no *.safetensors weights (only safetensors folders can be merged)")
    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k in out:
                    raise MergeError(f"{folder}: tensor {k!r} is in both {out[k].name} and {f.name}")
                out[k] = f
    return out


def _shapes(files: dict[str, Path]) -> dict[str, list[int]]:
    """Tensor name -> shape, read from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for f in sorted(set(files.values())):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                shapes[k] = list(h.get_slice(k).get_shape())
    return {k: shapes[k] for k in files}


def _check_compatible(base_dir: Path, base: dict[str, list[int]], others: dict[Path, dict[str, list[int]]]) -> None:
    """Raise ``MergeError`` naming the first folder and tensor that differ from the base."""
    for folder, shapes in others.items():
        missing = sorted(set(base) - set(shapes))
        if missing:
            raise MergeError(f"{folder} lacks tensor {missing[0]!r} of the base {base_dir}")
        extra = sorted(set(shapes) - set(base))
        if extra:
            raise MergeError(f"{folder} has tensor {extra[0]!r} that the base {base_dir} lacks")
        for k in sorted(base):
            if shapes[k] != base[k]:
                raise MergeError(f"{folder}: tensor {k!r} has shape {shapes[k]}, the base {base_dir} has {base[k]}")


class _ShardWriter:
    """Writes tensors into safetensors shards of about ``shard_bytes`` each, then the index."""

    def __init__(self, out: Path, shard_bytes: int):
        self.out, self.shard_bytes = out, shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.size, self.shards = 0, []  # shards: [(tmp path, [keys])]

    def add(self, key: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.shard_bytes:
            self._flush()
        self.pending[key] = tensor.contiguous()
        self.size += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f"merge-shard-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            self.shards[0][0].rename(self.out / "model.safetensors")
            return
        n, weight_map = len(self.shards), {}
        for i, (path, keys) in enumerate(self.shards):
            name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.out / name)
            weight_map.update({k: name for k in keys})
        total = sum((self.out / name).stat().st_size for name in set(weight_map.values()))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _merge_tensor(method: str, base: torch.Tensor, models: list[torch.Tensor], density: float | None,
                  weights: Sequence[float] | None, sce_energy: str) -> torch.Tensor | None:
    """The merged tensor in the base's dtype, or ``None`` when the base is copied unchanged
    (integer/bool tensors, and tensors that no model changed)."""
    import torch

    if not base.is_floating_point() or all(torch.equal(m, base) for m in models):
        return None
    if method == "sce":
        merged = sce(base, models, density, energy=sce_energy)
    elif method == "ties":
        merged = ties(base, models, density, weights)
    elif method == "task_arithmetic":
        merged = task_arithmetic(base, models, weights)
    else:
        merged = linear(models, weights)
    return merged.to(base.dtype)


def _validate(method: str, n_models: int, density: float | None, weights: Sequence[float] | None,
              sce_energy: str) -> float | None:
    """Check the arguments before any file is read; returns the density in effect."""
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose from {', '.join(METHODS)}")
    if n_models < 1:
        raise MergeError("need at least one model to merge")
    if method in ("sce", "ties"):
        density = 1.0 if density is None else float(density)
        _check_density(density)
    elif density is not None:
        raise MergeError(f"--density applies to sce and ties, not {method}")
    if weights is not None and method == "sce":
        raise MergeError("sce computes its own weights (Frobenius energies); drop --weights")
    if weights is not None and len(weights) != n_models:
        raise MergeError(f"{len(weights)} weights for {n_models} models")
    if sce_energy not in SCE_ENERGY:
        raise MergeError(f"sce energy must be one of {SCE_ENERGY}, got {sce_energy!r}")
    return density


def _copy_side_files(base_dir: Path, out: Path) -> list[str]:
    """Copy the base's config, generation config, tokenizer and chat template: every top-level
    file that is not a weight file (nor a previous ``merge.json``)."""
    copied = []
    for f in sorted(base_dir.iterdir()):
        if f.is_file() and f.name != "merge.json" and not f.name.endswith(_WEIGHT_SUFFIXES) \
                and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
            copied.append(f.name)
    if "config.json" not in copied:
        raise MergeError(f"{base_dir}: no config.json")
    return copied


def merge_models(base_dir: str | Path, model_dirs: Sequence[str | Path], method: str,
                 density: float | None = None, weights: Sequence[float] | None = None,
                 out_dir: str | Path = "merged", *, sce_energy: str = "full",
                 shard_bytes: int = 4 * 2**30) -> Path:
    """Merge the Hugging Face folders ``model_dirs`` (fine-tunes of ``base_dir``) into ``out_dir``.

    Tensors are read from safetensors one at a time per input, merged in float32 and stored in
    the base's dtype; integer tensors and tensors no model changed are copied from the base.
    ``density`` (sce, ties) defaults to 1.0 (no trimming); ``out_dir`` gets the base's config,
    tokenizer and chat template, and ``merge.json`` recording the inputs and settings.
    """
    from safetensors import safe_open

    density = _validate(method, len(model_dirs), density, weights, sce_energy)
    base_dir, dirs, out = Path(base_dir).resolve(), [Path(d).resolve() for d in model_dirs], Path(out_dir).resolve()
    if out in (base_dir, *dirs):
        raise MergeError(f"--out {out} is one of the inputs")
    if out.exists() and any(out.iterdir()):
        raise MergeError(f"--out {out} exists and is not empty")
    base_files = _weight_files(base_dir)
    model_files = [_weight_files(d) for d in dirs]
    _check_compatible(base_dir, _shapes(base_files), {d: _shapes(f) for d, f in zip(dirs, model_files)})
    out.mkdir(parents=True, exist_ok=True)
    side = _copy_side_files(base_dir, out)
    writer, merged_n, copied_n = _ShardWriter(out, shard_bytes), 0, 0
    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt"))
                   for files in (base_files, *model_files) for f in set(files.values())}
        for key in sorted(base_files):
            base_t = handles[base_files[key]].get_tensor(key)
            models_t = [handles[files[key]].get_tensor(key) for files in model_files]
            merged = _merge_tensor(method, base_t, models_t, density, weights, sce_energy)
            merged_n, copied_n = merged_n + (merged is not None), copied_n + (merged is None)
            writer.add(key, base_t if merged is None else merged)
    writer.close()
    record = {"method": method, "density": density, "weights": None if weights is None else [float(w) for w in weights],
              "base": str(base_dir), "models": [str(d) for d in dirs],
              "sce_energy": sce_energy if method == "sce" else None,
              "renormalised": False if method == "sce" else None,
              "tensors_merged": merged_n, "tensors_copied_from_base": copied_n, "files_from_base": side}
    (out / "merge.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("merged %d tensors (%d copied from the base) with %s -> %s", merged_n, copied_n, method, out)
    return out


# ---------------------------------------------------------------- CLI


def _merge(args: argparse.Namespace) -> int:
    try:
        out = merge_models(args.base, args.models, args.method, density=args.density, weights=args.weights,
                           out_dir=args.out, sce_energy=args.sce_energy)
    except MergeError as e:
        print(f"forge-ray merge: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``merge`` on the top-level ``forge-ray`` subparsers."""
    p = sub.add_parser("merge", help="merge fine-tunes of one base (per-domain RL policies) into one HF folder")
    p.add_argument("--base", required=True, metavar="SFT_DIR", help="the shared base the models were trained from")
    p.add_argument("--models", required=True, nargs="+", metavar="DIR", help="Hugging Face folders to merge")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--density", type=float, default=None, metavar="P",
                   help="sce: fraction of entries kept by variance; ties: fraction kept per task vector (default 1.0)")
    p.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                   help="one per model (ties, task_arithmetic, linear; default 1 each)")
    p.add_argument("--sce-energy", choices=SCE_ENERGY, default="full",
                   help="sce weights from ||tau_i||_F^2 (full, the Klear formula) or over the selected entries (FuseChat)")
    p.add_argument("--out", required=True, metavar="DIR", help="new folder (must not exist or be empty)")
    p.set_defaults(fn=_merge)
