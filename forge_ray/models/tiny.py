"""A tiny, locally built Qwen3-style causal LM and its tokenizer, for tests and smoke runs.

No model hub is reachable, so ``make_tiny_model`` builds everything from a seed: a byte-level
BPE tokenizer trained on a synthetic corpus (arithmetic prose, tool-call JSON, ChatML snippets,
numbers, python-like code) and a randomly initialised ``Qwen3ForCausalLM``. The same seed gives
byte-identical ``tokenizer.json`` and ``model.safetensors``. The output directory loads with
``AutoTokenizer`` / ``AutoModelForCausalLM`` and with vLLM.
"""
from __future__ import annotations

import contextlib
import json
import logging
import random
from pathlib import Path

from forge_ray.chat import TOOL_CHAT_TEMPLATE

log = logging.getLogger(__name__)

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids 0, 1, 2, in this order
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

_CORPUS_LINES = 4000  # ~2.2k reachable merges (covers the 2048 default), trains in well under a second

_TOOLS = ("add", "sub", "mul", "div", "pow", "mod", "calculator", "search", "lookup", "weather")
_NAMES = ("Alice", "Bob", "Carol", "Dave", "Eve", "the model", "the agent", "a student")
_OPS = (("plus", "+", "add"), ("minus", "-", "sub"), ("times", "*", "mul"), ("divided by", "/", "div"))
_WORDS = tuple("""
the a an number numbers result results answer answers sum product difference quotient remainder
tool tools call calls called calling function functions value values is are was were be been of
and or but not then first second third next last finally compute computes computed computing
question questions because so we you they it this that these those need needs needed to use uses
used using check checks checked checking return returns returned total totals each every step
steps list lists item items apple apples orange oranges cost costs price prices dollar dollars
hour hours minute minutes second seconds day days week weeks year years people person student
students teacher class school book books page pages box boxes bag bags car cars train trains
mile miles distance speed time times rate rates percent fraction fractions half quarter double
triple add adds added adding subtract subtracts subtracted multiply multiplies multiplied divide
divides divided equal equals equation equations variable variables integer integers even odd
prime square root power exponent factor factors multiple multiples greater less than more fewer
most least many much some any all none how what which when where why who whom whose if else
while for in on at by with without from into over under between after before during about
again once twice there here now today tomorrow yesterday always never often sometimes usually
can could should would will shall may might must do does did done make makes made get gets got
give gives gave take takes took find finds found know knows knew think thinks thought see sees
saw say says said tell tells told ask asks asked want wants wanted try tries tried keep keeps
start starts started stop stops stopped run runs ran read reads write writes wrote print prints
parse parses parsed format formats output outputs input inputs request response message messages
assistant user system error errors valid invalid correct incorrect wrong right true false null
string strings object objects array arrays key keys field fields name names argument arguments
parameter parameters type types schema JSON Python code program programs script data database
query queries search searches lookup weather temperature city cities country map table row rows
column columns file files line lines word words letter letters count counts counted counting
average mean median maximum minimum range estimate round rounded exact exactly approximately
large small big little long short high low new old good bad best worst better worse simple hard
easy problem problems solution solutions reason reasoning explain explains explained show shows
""".split())


def _num(rng: random.Random) -> int:
    # Mix of magnitudes so the corpus holds short and long digit runs.
    return rng.choice((rng.randint(0, 9), rng.randint(10, 99), rng.randint(100, 9999), rng.randint(0, 10**6)))


def _sentence(rng: random.Random) -> str:
    a, b = _num(rng), _num(rng)
    word, sym, tool = rng.choice(_OPS)
    who = rng.choice(_NAMES)
    templates = (
        f"What is {a} {word} {b}?",
        f"{who.capitalize()} computes {a} {sym} {b} with the {tool} tool.",
        f"To find the answer, {who} calls {tool} with a={a} and b={b}.",
        f"The result of {a} {sym} {b} is what we need, so use the {tool} function.",
        f"If {who} has {a} apples and buys {b} more, how many apples are there?",
        f"Step {rng.randint(1, 9)}: {a} {sym} {b}. Then check the answer.",
        _prose(rng),
    )
    return rng.choice(templates)


def _prose(rng: random.Random) -> str:
    # Free word salad: the wide word list is what gives BPE enough distinct merges.
    words = [rng.choice(_WORDS) for _ in range(rng.randint(5, 16))]
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] += ","
    return " ".join(words).capitalize() + rng.choice(".?!.")


def _ident(rng: random.Random) -> str:
    return "_".join(rng.choice(_WORDS).lower() for _ in range(rng.randint(1, 3)))


def _tool_json(rng: random.Random) -> str:
    name = rng.choice(_TOOLS)
    if name in ("search", "lookup", "weather"):
        args: dict = {"query": " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))}
    else:
        args = {"a": _num(rng), "b": _num(rng)}
    return json.dumps({"name": name, "arguments": args})


def _chat(rng: random.Random) -> str:
    call = _tool_json(rng)
    result = json.dumps({"result": _num(rng)}) if rng.random() < 0.7 else str(_num(rng))
    return (
        f"{IM_START}user\n{_sentence(rng)}{IM_END}\n"
        f"{IM_START}assistant\n{_prose(rng)}\n<tool_call>{call}</tool_call>{IM_END}\n"
        f"{IM_START}user\n<tool_response>\n{result}\n</tool_response>{IM_END}\n"
        f"{IM_START}assistant\nThe answer is {_num(rng)}.{IM_END}{ENDOFTEXT}"
    )


def _code(rng: random.Random) -> str:
    name, var, op = _ident(rng), _ident(rng), rng.choice("+-*/%")
    return rng.choice((
        f"def {name}(a: int, b: int) -> int:\n    \"\"\"{_prose(rng)}\"\"\"\n    return a {op} b\n",
        f"for i in range({_num(rng)}):\n    {var} += i {op} {rng.randint(1, 9)}\n",
        f"{var} = {name}({_num(rng)}, {_num(rng)})\nprint({var})  # {_prose(rng)}\n",
        f"if {var} == {_num(rng)}:\n    return {{\"{name}\": True}}\nelse:\n    raise ValueError(\"{_prose(rng)}\")\n",
        f"class {name.title().replace('_', '')}:\n    def __init__(self):\n        self.{var} = []\n",
    ))


def synthetic_corpus(seed: int, n_lines: int = _CORPUS_LINES) -> list[str]:
    """Deterministic training text for the tokenizer: one document per entry."""
    rng = random.Random(seed)
    makers = (_sentence, _prose, _tool_json, _chat, _code, lambda r: " ".join(str(_num(r)) for _ in range(8)))
    return [rng.choice(makers)(rng) for _ in range(n_lines)]


def _train_tokenizer(seed: int, vocab_size: int, max_length: int, corpus: list[str]):
    """Byte-level BPE over chunks of at most three digits, wrapped as a transformers tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # Numbers in chunks of <= 3 digits that BPE may merge ("15" -> one token): copying an
        # operand is then a single token (with digits one per token, SFT of the 2-layer
        # quickstart model often stalled on copying the second digit; docs/rl.md).
        pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # merges may span words: chat and JSON scaffolding compress to few tokens
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TOOL_TOKENS),  # tool tokens are appended after training
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: lossless
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed) + list(corpus), trainer=trainer)
    # Non-special so decode(skip_special_tokens=True) keeps them for the tool-call parser.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        chat_template=TOOL_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=max_length,
    )


@contextlib.contextmanager
def _quiet_progress():
    """Silence transformers' "Writing model shards" bar, restoring the caller's setting after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    vocab_size: int = 2048,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 768,
    max_position: int = 2048,
    corpus: list[str] = (),
) -> Path:
    """Build tokenizer + randomly initialised Qwen3 model into ``out_dir`` and return it.

    Deterministic in ``seed``. ``vocab_size`` is the tokenizer's size (an upper bound: the
    synthetic corpus supports ~2.2k tokens); the model's embedding table is the tokenizer's
    size rounded up to a multiple of 64. ``corpus`` adds in-domain documents (e.g. rendered
    conversations of the target environment) so the tokenizer learns their merges: a tool
    schema that costs 500 byte-level tokens then costs a fraction of that.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(seed, vocab_size, max_position, list(corpus))
    if len(tokenizer) < vocab_size:  # the corpus ran out of merges: smaller but still valid
        log.warning("tiny tokenizer has %d tokens, fewer than the %d asked for", len(tokenizer), vocab_size)
    tokenizer.save_pretrained(out)

    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # padded like real checkpoints
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=num_layers,
        bos_token_id=pad_id,  # Qwen convention: no real BOS, <|endoftext|> stands in
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    with _quiet_progress():
        model.save_pretrained(out, safe_serialization=True)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("tiny model: %d params, vocab %d (tokenizer %d) -> %s", n_params, config.vocab_size, len(tokenizer), out)
    return out
