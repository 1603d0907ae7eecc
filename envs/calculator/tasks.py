"""Task generator for the calculator environment: English arithmetic questions and their experts.

Every question is a left-to-right chain ``((a0 op1 a1) op2 a2) op3 a3`` of 1 to 3 operations
from add, sub, mul over integers 0..99, phrased either as a formula ("What is (8 + 15) * 3?")
or as steps in words ("Add 41 and 17, then multiply the result by 6."). The gold solution is
one tool call per operation, each fed the previous result.

Split membership is a property of the expression, not of the seed: an expression is held out
iff the sha1 of its canonical form is 0 mod ``HELDOUT_MOD``. So no held-out question (in any
phrasing) can ever appear in train, whatever seeds the two splits are drawn with.
"""
from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from typing import Any, Sequence

from envs.calculator.tools import OPS, TOOLS, execute
from forge_ray.chat import render_tool_call
from forge_ray.types import Task, ToolCall

SPLITS = ("train", "heldout")
HELDOUT_MOD = 5  # one expression in five is held out

SYSTEM_PROMPT = (
    "You are a calculator agent. Do every arithmetic step with the add, sub and mul tools, "
    "one call per turn. When done, reply with a final line 'Answer: N', where N is the integer "
    "result."
)

_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_PRECEDENCE = {"add": 1, "sub": 1, "mul": 2}

_FORMULA_TEMPLATES = [
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "Evaluate {e}.",
    "What is the value of {e}?",
    "Work out {e}.",
    "{e} = ?",
]
_SINGLE_QUESTIONS = {
    "add": ["What is {a} plus {b}?", "What is the sum of {a} and {b}?"],
    "sub": ["What is {a} minus {b}?", "What do you get if you subtract {b} from {a}?"],
    "mul": ["What is {a} times {b}?", "What is the product of {a} and {b}?"],
}
_FIRST_STEPS = {
    "add": ["Add {a} and {b}", "Take the sum of {a} and {b}", "Start with {a} and add {b}"],
    "sub": ["Subtract {b} from {a}", "Take {a} minus {b}", "Start with {a} and subtract {b}"],
    "mul": ["Multiply {a} by {b}", "Take the product of {a} and {b}",
            "Start with {a} and multiply it by {b}"],
}
_LATER_STEPS = {
    "add": ["add {x} to the result", "add {x}", "increase it by {x}"],
    "sub": ["subtract {x} from the result", "subtract {x}", "decrease it by {x}"],
    "mul": ["multiply the result by {x}", "multiply by {x}", "multiply that by {x}"],
}


@dataclass(frozen=True)
class Chain:
    """``first op1 x1 op2 x2 ...`` evaluated strictly left to right."""

    first: int
    steps: tuple[tuple[str, int], ...]

    def canonical(self) -> str:
        """Fully parenthesised form, e.g. ``((37 * 12) + 5)``: the key of split membership."""
        text = str(self.first)
        for op, x in self.steps:
            text = f"({text} {_SYMBOL[op]} {x})"
        return text

    def gold_calls(self) -> list[dict[str, Any]]:
        """One call per operation, each taking the previous call's result as ``a``."""
        calls, acc = [], self.first
        for op, x in self.steps:
            calls.append({"name": op, "arguments": {"a": acc, "b": x}})
            acc = OPS[op](acc, x)
        return calls

    def value(self) -> int:
        acc = self.first
        for op, x in self.steps:
            acc = OPS[op](acc, x)
        return acc

    def infix(self, mul_symbol: str = "*") -> str:
        """Conventional notation with only the parentheses precedence needs: a product after a
        sum gets its left side bracketed, so reading with normal precedence still means
        left to right."""
        text, prec = str(self.first), 3
        for op, x in self.steps:
            if _PRECEDENCE[op] > prec:
                text = f"({text})"
            symbol = mul_symbol if op == "mul" else _SYMBOL[op]
            text, prec = f"{text} {symbol} {x}", _PRECEDENCE[op]
        return text


def split_of(chain: Chain) -> str:
    """The split an expression belongs to, from a stable hash (never Python's salted hash())."""
    digest = hashlib.sha1(chain.canonical().encode()).hexdigest()
    return "heldout" if int(digest, 16) % HELDOUT_MOD == 0 else "train"


def _phrase_steps(chain: Chain, rng: random.Random) -> str:
    """The question as instructions in words."""
    (op0, x0), later = chain.steps[0], chain.steps[1:]
    if not later and rng.random() < 0.5:
        return rng.choice(_SINGLE_QUESTIONS[op0]).format(a=chain.first, b=x0)
    parts = [rng.choice(_FIRST_STEPS[op0]).format(a=chain.first, b=x0)]
    parts += [rng.choice(_LATER_STEPS[op]).format(x=x) for op, x in later]
    if len(parts) == 1:
        return parts[0] + "."
    if rng.random() < 0.5:  # one sentence: "A, then B, and finally C."
        if len(parts) == 2:
            return f"{parts[0]}, then {parts[1]}."
        return f"{parts[0]}, then {parts[1]}, and finally {parts[2]}."
    # separate sentences: "A. Then B. Then C. What is the result?"
    body = ". ".join([parts[0]] + ["Then " + p for p in parts[1:]])
    return body + ". What is the final result?"


def phrase(chain: Chain, rng: random.Random) -> tuple[str, str]:
    """``(question, style)`` for ``chain``, style being "formula" or "words"."""
    if rng.random() < 0.5:
        mul_symbol = rng.choice(["*", "*", "×"])
        return rng.choice(_FORMULA_TEMPLATES).format(e=chain.infix(mul_symbol)), "formula"
    return _phrase_steps(chain, rng), "words"


class CalculatorTasks:
    """TaskSource of calculator questions.

    ``ops_weights[k]`` is the relative frequency of questions with ``k + 1`` operations
    (default: a third each of 1, 2 and 3); ``max_operand`` bounds the operands (0..99);
    ``ops`` are the operations questions use (default all: add, sub, mul; the tools offered are
    always all three).

    ``direct_answer_rate`` makes the expert a mixed teacher, like demonstrations distilled from a
    larger model that does easy arithmetic in its head: on questions of at most
    ``direct_answer_max_ops`` operations it answers ``Answer: N`` at once, without tools, in that
    fraction of its demonstrations (chosen per task id, so deterministically). The answer is
    still right; whether a student can do the same is what RL finds out. 0 (default): the expert
    always uses the tools.
    """

    def __init__(self, ops_weights: Sequence[float] = (1.0, 1.0, 1.0), max_operand: int = 99,
                 direct_answer_rate: float = 0.0, direct_answer_max_ops: int = 1,
                 ops: Sequence[str] = tuple(OPS)):
        weights = [float(w) for w in ops_weights]
        if len(weights) != 3 or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"ops_weights must be 3 non-negative weights, not all 0: {ops_weights!r}")
        if max_operand < 1:
            raise ValueError(f"max_operand must be >= 1, got {max_operand}")
        if not ops or any(op not in OPS for op in ops):
            raise ValueError(f"ops must be a non-empty subset of {list(OPS)}, got {ops!r}")
        if not 0.0 <= direct_answer_rate <= 1.0:
            raise ValueError(f"direct_answer_rate must be in [0, 1], got {direct_answer_rate}")
        self.ops_weights = weights
        self.max_operand = max_operand
        self.ops = list(ops)
        self.direct_answer_rate = float(direct_answer_rate)
        self.direct_answer_max_ops = int(direct_answer_max_ops)

    def _sample_chain(self, rng: random.Random) -> Chain:
        num_ops = rng.choices([1, 2, 3], weights=self.ops_weights)[0]
        first = rng.randint(0, self.max_operand)
        steps = tuple((rng.choice(self.ops), rng.randint(0, self.max_operand)) for _ in range(num_ops))
        return Chain(first, steps)

    def _draw(self, rng: random.Random, split: str, seen: set[str]) -> Chain:
        """The next chain of ``split``, preferring one not yet in this batch. Small spaces
        (e.g. only 1-op questions and a large n) may run out of fresh chains; after enough
        tries a repeat is accepted rather than looping forever."""
        for attempt in range(10_000):
            chain = self._sample_chain(rng)
            if split_of(chain) == split and (chain.canonical() not in seen or attempt >= 1_000):
                return chain
        raise RuntimeError(f"could not draw a {split} task")  # unreachable for a sane space

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split``, deterministic in ``(split, seed)``; the first ``k`` tasks of
        a call with ``n > k`` are the tasks of the call with ``n = k``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        # A string seed is hashed with sha512 by random.Random: stable across processes.
        rng = random.Random(f"calculator:{split}:{seed}")
        seen: set[str] = set()
        out = []
        for i in range(n):
            chain = self._draw(rng, split, seen)
            seen.add(chain.canonical())
            question, style = phrase(chain, rng)
            out.append(Task(
                id=f"calc-{split}-{seed}-{i}",
                env="calculator",
                messages=[{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": question}],
                tools=copy.deepcopy(TOOLS),  # a task's specs are its own to mutate
                answer={"value": chain.value(), "calls": chain.gold_calls()},
                meta={"split": split, "expression": chain.canonical(),
                      "num_ops": len(chain.steps), "style": style,
                      "category": f"{len(chain.steps)}-op"},  # eval reports success per category
            ))
        return out

    def answers_directly(self, task: Task) -> bool:
        """Whether the expert's demonstration of ``task`` skips the tools (see the class doc)."""
        if self.direct_answer_rate <= 0 or len(task.answer["calls"]) > self.direct_answer_max_ops:
            return False
        return random.Random(f"calculator:direct:{task.id}").random() < self.direct_answer_rate

    def expert(self, task: Task) -> list[dict]:
        """The gold continuation: one tool call per assistant turn, each followed by the tool's
        result, then ``Answer: N`` (or only the answer, see ``answers_directly``). Results come
        from the same code the env runs."""
        if self.answers_directly(task):
            return [{"role": "assistant", "content": f"Answer: {task.answer['value']}"}]
        messages: list[dict] = []
        for call in task.answer["calls"]:
            tool_call = ToolCall(call["name"], dict(call["arguments"]))
            messages.append({"role": "assistant", "content": render_tool_call(tool_call)})
            messages.append({"role": "tool", "content": execute(tool_call)})
        messages.append({"role": "assistant", "content": f"Answer: {task.answer['value']}"})
        return messages
