"""Model merging (forge_ray/merge.py): each method against numbers worked out by hand, the edge
cases, and ``merge_models`` / ``forge-ray merge`` on tiny Qwen3 folders."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from forge_ray.merge import MergeError, linear, merge_models, sce, task_arithmetic, ties

# ---------------------------------------------------------------- hand-worked 2x3 examples

BASE = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
# Task vectors tau_i = theta_i - BASE.
TAU1 = torch.tensor([[3.0, -1.0, 0.0], [1.0, 0.0, 2.0]])
TAU2 = torch.tensor([[1.0, 1.0, -2.0], [1.0, 0.0, -2.0]])
TAU3 = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 3.0, 0.0]])
# theta_i = BASE + tau_i, written out:
THETA1 = torch.tensor([[4.0, 1.0, 3.0], [5.0, 5.0, 8.0]])
THETA2 = torch.tensor([[2.0, 3.0, 1.0], [5.0, 5.0, 4.0]])
THETA3 = torch.tensor([[0.0, 1.0, 3.0], [5.0, 8.0, 6.0]])
MODELS = [THETA1, THETA2, THETA3]


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-6)


def test_examples_are_base_plus_task_vectors():
    for theta, tau in zip(MODELS, (TAU1, TAU2, TAU3)):
        assert torch.equal(theta - BASE, tau)


def test_task_arithmetic_by_hand():
    # w = (1, 0.5, 2), scale 0.5.  tau1 + 0.5 tau2 + 2 tau3, entry by entry:
    #   (0,0)  3 + 0.5 - 2 =  1.5     (0,1) -1 + 0.5 - 2 = -2.5    (0,2) 0 - 1 + 0 = -1
    #   (1,0)  1 + 0.5 + 2 =  3.5     (1,1)  0 +   0 + 6 =  6      (1,2) 2 - 1 + 0 =  1
    # x 0.5 = [[0.75, -1.25, -0.5], [1.75, 3, 0.5]];  + BASE:
    close(task_arithmetic(BASE, MODELS, weights=[1, 0.5, 2], scale=0.5), [[1.75, 0.75, 2.5], [5.75, 8.0, 6.5]])
    # Default weights 1, scale 1: BASE + tau1 + tau2 + tau3 = BASE + [[3,-1,-2],[3,3,0]].
    close(task_arithmetic(BASE, MODELS), [[4.0, 1.0, 1.0], [7.0, 8.0, 6.0]])


def test_linear_by_hand():
    # w = (1, 1, 2): (theta1 + theta2 + 2 theta3) / 4
    #   (0,0) (4+2+0)/4 = 1.5   (0,1) (1+3+2)/4 = 1.5    (0,2) (3+1+6)/4 = 2.5
    #   (1,0) (5+5+10)/4 = 5    (1,1) (5+5+16)/4 = 6.5   (1,2) (8+4+12)/4 = 6
    close(linear(MODELS, weights=[1, 1, 2]), [[1.5, 1.5, 2.5], [5.0, 6.5, 6.0]])
    close(linear([THETA1, THETA2]), [[3.0, 2.0, 2.0], [5.0, 5.0, 6.0]])  # plain mean
    with pytest.raises(MergeError, match="sum to 0"):
        linear([THETA1, THETA2], weights=[1, -1])


# TIES has its own example: no magnitude ties at the trimming threshold (k = round(0.5*6) = 3).
T_TAU1 = torch.tensor([[4.0, -2.0, 1.0], [3.0, -0.5, 0.0]])   # |.| top 3: 4, 3, 2
T_TAU2 = torch.tensor([[-1.0, 3.0, -2.0], [0.5, 1.0, 4.0]])   # |.| top 3: 4, 3, 2
T_TAU3 = torch.tensor([[2.0, -1.0, 3.0], [-4.0, 0.5, -1.0]])  # |.| top 3: 4, 3, 2
T_MODELS = [BASE + t for t in (T_TAU1, T_TAU2, T_TAU3)]


def test_ties_by_hand():
    # Trimmed:  t1 = [[4,-2,0],[3,0,0]]   t2 = [[0,3,-2],[0,0,4]]   t3 = [[2,0,3],[-4,0,0]]
    # Elected sign of t1+t2+t3 = [[6,1,1],[-1,0,4]] -> [[+,+,+],[-,0,+]]
    # Disjoint mean of the agreeing non-zero entries:
    #   (0,0) (4+2)/2 = 3   (0,1) 3/1 = 3   (0,2) 3/1 = 3   (1,0) -4/1 = -4   (1,1) none -> 0   (1,2) 4
    # tau = [[3,3,3],[-4,0,4]]; + BASE:
    close(ties(BASE, T_MODELS, density=0.5), [[4.0, 5.0, 6.0], [0.0, 5.0, 10.0]])


def test_ties_weights_change_the_election():
    # w = (1, 2, 1): sum_i w_i t_i = [[6, 4, -1], [-1, 0, 8]] -> (0,2) now elects "-".
    # Weighted disjoint mean: (0,0) (4+2)/2 = 3; (0,1) 2*3/2 = 3; (0,2) only t2: 2*(-2)/2 = -2;
    # (1,0) -4; (1,1) 0; (1,2) 2*4/2 = 4.  tau = [[3,3,-2],[-4,0,4]]; + BASE:
    close(ties(BASE, T_MODELS, density=0.5, weights=[1, 2, 1]), [[4.0, 5.0, 1.0], [0.0, 5.0, 10.0]])


def test_ties_density_one_keeps_everything():
    # No trimming: sum = tau1+tau2+tau3 = [[5,0,2],[-0.5,1,3]] -> signs [[+,0,+],[-,+,+]]
    #   (0,0) agree 4, 2 -> 3        (0,1) elected 0 -> 0        (0,2) agree 1, 3 -> 2
    #   (1,0) agree -4 -> -4         (1,1) agree 1, 0.5 -> 0.75  (1,2) agree 4 -> 4
    close(ties(BASE, T_MODELS, density=1.0), [[4.0, 2.0, 5.0], [0.0, 5.75, 10.0]])


# SCE on MODELS (tau1, tau2, tau3 above), density 0.5 -> k = 3 of 6 entries.
# Select: population variance across the three task vectors, entry by entry:
#   (0,0) values  3, 1,-1: mean 1,    squares 4, 0, 4          -> 8/3
#   (0,1) values -1, 1,-1: mean -1/3, squares 4/9, 16/9, 4/9   -> 8/9
#   (0,2) values  0,-2, 0: mean -2/3, squares 4/9, 16/9, 4/9   -> 8/9
#   (1,0) values  1, 1, 1:                                     -> 0
#   (1,1) values  0, 0, 3: mean 1,    squares 1, 1, 4          -> 2
#   (1,2) values  2,-2, 0: mean 0,    squares 4, 4, 0          -> 8/3
#   top 3: 8/3, 8/3, 2  ->  M = [[1,0,0],[0,1,1]]
SCE_MASK_EXPECTED = [[True, False, False], [False, True, True]]


def test_sce_by_hand_full_energy():
    # Calculate (papers.md: eta_i = ||tau_i||_F^2 / sum_j ||tau_j||_F^2):
    #   ||tau1||^2 = 9+1+0+1+0+4 = 15,  ||tau2||^2 = 1+1+4+1+0+4 = 11,  ||tau3||^2 = 1+1+0+1+9+0 = 12
    #   eta = (15, 11, 12) / 38
    # Erase (sign of sum_i eta_i tau_i; components of the other sign dropped, no renormalising),
    # only where M = 1:
    #   (0,0) eta*tau = 45/38, 11/38, -12/38 -> sum 44/38 > 0 -> keep 1, 2 -> 56/38 = 28/19
    #   (1,1) eta*tau =     0,     0,  36/38 -> sum > 0     -> keep 3    -> 36/38 = 18/19
    #   (1,2) eta*tau = 30/38, -22/38,     0 -> sum 8/38 > 0 -> keep 1   -> 30/38 = 15/19
    # merged tau = [[28/19, 0, 0], [0, 18/19, 15/19]]; + BASE:
    close(sce(BASE, MODELS, density=0.5), [[1 + 28 / 19, 2.0, 3.0], [4.0, 5 + 18 / 19, 6 + 15 / 19]])


def test_sce_by_hand_selected_energy():
    # FuseChat's Calculate, over the selected entries (0,0), (1,1), (1,2) only:
    #   tau1 -> 3, 0, 2: 9+0+4 = 13;  tau2 -> 1, 0, -2: 1+0+4 = 5;  tau3 -> -1, 3, 0: 1+9+0 = 10
    #   eta = (13, 5, 10) / 28
    #   (0,0) 39/28, 5/28, -10/28 -> sum > 0 -> keep 1, 2 -> 44/28 = 11/7
    #   (1,1) 0, 0, 30/28                    -> keep 3    -> 30/28 = 15/14
    #   (1,2) 26/28, -10/28, 0 -> sum > 0    -> keep 1    -> 26/28 = 13/14
    close(sce(BASE, MODELS, density=0.5, energy="selected"),
          [[1 + 11 / 7, 2.0, 3.0], [4.0, 5 + 15 / 14, 6 + 13 / 14]])


def test_sce_mask_is_top_variance():
    # Only the masked entries move; with density 0.5 exactly the three hand-picked ones.
    moved = sce(BASE, MODELS, density=0.5) != BASE
    assert moved.tolist() == SCE_MASK_EXPECTED


def test_sce_density_one_no_selection():
    # M = all ones; eta = (15, 11, 12)/38 as above. The three new entries:
    #   (0,1) -15/38, 11/38, -12/38 -> sum -16/38 < 0 -> keep 1, 3 -> -27/38
    #   (0,2)      0, -22/38,     0 -> sum < 0         -> keep 2    -> -22/38 = -11/19
    #   (1,0)  15/38,  11/38, 12/38 -> all agree       -> 38/38 = 1
    expected = [[1 + 28 / 19, 2 - 27 / 38, 3 - 11 / 19], [4 + 1.0, 5 + 18 / 19, 6 + 15 / 19]]
    close(sce(BASE, MODELS, density=1.0), expected)
    # Not renormalised: a renormalised (0,0) would be (56/38) / (26/38) = 56/26, not 56/38.
    assert abs(float(sce(BASE, MODELS, density=1.0)[0, 0]) - (1 + 56 / 38)) < 1e-6


def test_sce_opposite_task_vectors_cancel():
    # eta = (1/2, 1/2); eta*tau = +-x/2 -> sum 0 -> sign 0 -> every non-zero component dropped.
    a, b = BASE + TAU1, BASE - TAU1
    close(sce(BASE, [a, b], density=1.0), BASE.tolist())


@pytest.mark.parametrize("fn", [
    lambda ms: sce(BASE, ms, density=0.5),
    lambda ms: sce(BASE, ms, density=1.0, energy="selected"),
    lambda ms: ties(BASE, ms, density=0.5),
    lambda ms: task_arithmetic(BASE, ms, weights=[0.3, 2.0]),
])
def test_all_task_vectors_zero_gives_base(fn):
    out = fn([BASE.clone(), BASE.clone()])
    assert torch.equal(out, BASE) and torch.isfinite(out).all()


def test_single_model_sce_and_ties_give_that_model():
    # K = 1: variance 0 everywhere, the threshold (0) keeps every entry; eta = (1).
    close(sce(BASE, [THETA1], density=0.3), THETA1.tolist())
    close(ties(BASE, [THETA1], density=1.0), THETA1.tolist())


def test_bad_arguments():
    for density in (0.0, -0.1, 1.5):
        with pytest.raises(MergeError, match="density"):
            sce(BASE, MODELS, density=density)
        with pytest.raises(MergeError, match="density"):
            ties(BASE, MODELS, density=density)
    with pytest.raises(MergeError, match="shape"):
        sce(BASE, [THETA1, torch.zeros(3, 2)], density=1.0)
    with pytest.raises(MergeError, match="2 weights for 3 models"):
        task_arithmetic(BASE, MODELS, weights=[1, 2])
    with pytest.raises(MergeError, match=">= 0"):
        ties(BASE, MODELS, density=1.0, weights=[1, -1, 1])
    with pytest.raises(MergeError, match="energy"):
        sce(BASE, MODELS, density=1.0, energy="nope")


def test_bfloat16_inputs_are_merged_in_float32():
    out = sce(BASE.to(torch.bfloat16), [m.to(torch.bfloat16) for m in MODELS], density=0.5)
    assert out.dtype == torch.float32
    close(out, [[1 + 28 / 19, 2.0, 3.0], [4.0, 5 + 18 / 19, 6 + 15 / 19]])


def test_module_imports_without_torch():
    code = "import sys, forge_ray.merge; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- folders


TINY = dict(vocab_size=512, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
UNTOUCHED = "model.layers.1.input_layernorm.weight"  # left equal to the base in every model


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _perturbed(base_dir, out_dir, seed):
    """Copy of the base with every float tensor but UNTOUCHED moved by seeded noise, and a
    config / chat template that differ from the base's (the merge must not take them)."""
    from safetensors.torch import save_file

    shutil.copytree(base_dir, out_dir)
    gen = torch.Generator().manual_seed(seed)
    state = {k: v if k == UNTOUCHED else v + 0.01 * torch.randn(v.shape, generator=gen)
             for k, v in _state(base_dir).items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    (out_dir / "chat_template.jinja").write_text("{{ messages }}")
    return out_dir


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from forge_ray.models.tiny import make_tiny_model

    root = tmp_path_factory.mktemp("merge")
    base = make_tiny_model(root / "base", seed=0, **TINY)
    return base, _perturbed(base, root / "a", 1), _perturbed(base, root / "b", 2)


def test_merge_models_sce_loads_with_transformers(folders, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, a, b = folders
    out = merge_models(base, [a, b], "sce", density=0.5, out_dir=tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(out)
    tok, base_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(base)
    assert tok.chat_template == base_tok.chat_template and "im_start" in tok.chat_template
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([list(ids)])).logits).all()

    merged, sb, sa, sbb = _state(out), _state(base), _state(a), _state(b)
    assert set(merged) == set(sb)
    assert torch.equal(merged[UNTOUCHED], sb[UNTOUCHED])
    for k in sb:  # the folder holds, tensor by tensor, what sce() gives
        if k != UNTOUCHED:
            assert torch.equal(merged[k], sce(sb[k], [sa[k], sbb[k]], density=0.5)), k
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "sce" and record["density"] == 0.5 and record["weights"] is None
    assert record["models"] == [str(a.resolve()), str(b.resolve())] and record["base"] == str(base.resolve())
    assert record["sce_energy"] == "full" and record["renormalised"] is False
    assert record["tensors_copied_from_base"] == 1 and record["tensors_merged"] == len(sb) - 1


def test_task_arithmetic_of_a_model_with_itself_is_that_model(folders, tmp_path):
    base, a, _ = folders
    out = merge_models(a, [a], "task_arithmetic", weights=[1.0], out_dir=tmp_path / "self")
    merged, sa = _state(out), _state(a)
    assert set(merged) == set(sa) and all(torch.equal(merged[k], sa[k]) for k in sa)
    # From the SFT base, weight 1 on one model gives that model up to float32 rounding.
    merged = _state(merge_models(base, [a], "task_arithmetic", weights=[1.0], out_dir=tmp_path / "one"))
    for k in sa:
        torch.testing.assert_close(merged[k], sa[k], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["ties", "linear"])
def test_other_methods_write_loadable_folders(folders, tmp_path, method):
    from transformers import AutoModelForCausalLM

    base, a, b = folders
    kwargs = {"density": 0.3} if method == "ties" else {"weights": [1.0, 3.0]}
    out = merge_models(base, [a, b], method, out_dir=tmp_path / method, **kwargs)
    AutoModelForCausalLM.from_pretrained(out)
    merged, sb, sa, sbb = _state(out), _state(base), _state(a), _state(b)
    k = "model.layers.0.mlp.up_proj.weight"
    expected = ties(sb[k], [sa[k], sbb[k]], 0.3) if method == "ties" else linear([sa[k], sbb[k]], [1.0, 3.0])
    assert torch.equal(merged[k], expected)


def test_sharded_output_loads(folders, tmp_path):
    from transformers import AutoModelForCausalLM

    base, a, b = folders
    out = merge_models(base, [a, b], "sce", out_dir=tmp_path / "sharded", shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    AutoModelForCausalLM.from_pretrained(out)
    # ...and a sharded folder can itself be merged (read through its index).
    again = merge_models(out, [out], "task_arithmetic", out_dir=tmp_path / "again")
    assert (again / "model.safetensors").exists()


def test_mismatched_shape_names_folder_and_tensor(folders, tmp_path):
    from safetensors.torch import save_file

    base, a, b = folders
    bad = tmp_path / "bad"
    shutil.copytree(b, bad)
    state = _state(b)
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:48]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"bad: tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has shape \[48, 32\]"):
        merge_models(base, [a, bad], "sce", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the check

    del state["model.layers.0.mlp.up_proj.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"bad lacks tensor 'model\.layers\.0\.mlp\.up_proj\.weight'"):
        merge_models(base, [a, bad], "ties", out_dir=tmp_path / "out")


def test_merge_models_rejects_bad_arguments(folders, tmp_path):
    base, a, b = folders
    cases = [
        (dict(method="nope"), "unknown merge method"),
        (dict(method="linear", density=0.5), "density applies"),
        (dict(method="sce", weights=[1.0, 1.0]), "own weights"),
        (dict(method="ties", density=2.0), "density"),
        (dict(method="task_arithmetic", weights=[1.0]), "1 weights for 2 models"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(MergeError, match=msg):
            merge_models(base, [a, b], out_dir=tmp_path / "x", **kwargs)
    with pytest.raises(MergeError, match="one of the inputs"):
        merge_models(base, [a, b], "sce", out_dir=a)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(MergeError, match="not empty"):
        merge_models(base, [a, b], "sce", out_dir=tmp_path / "full")


def test_cli(folders, tmp_path, capsys):
    from forge_ray.cli import main

    base, a, b = folders
    out = tmp_path / "cli"
    rc = main(["merge", "--base", str(base), "--models", str(a), str(b), "--method", "ties",
               "--density", "0.4", "--weights", "1", "2", "--out", str(out)])
    assert rc == 0 and capsys.readouterr().out.strip() == str(out.resolve())
    record = json.loads((out / "merge.json").read_text())
    assert (record["method"], record["density"], record["weights"]) == ("ties", 0.4, [1.0, 2.0])
    rc = main(["merge", "--base", str(base), "--models", str(a), "--method", "linear", "--density", "0.5",
               "--out", str(tmp_path / "cli2")])
    assert rc == 2 and "density applies to sce and ties" in capsys.readouterr().err
