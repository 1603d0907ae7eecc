"""Synthetic function-calling tasks for training (the Klear-AgentForge synthesis idea).

New tools are made by combining a verb and an object (``reserve_kayak_rental``) into a
JSON-schema function whose 2-4 typed parameters (string, integer, number, boolean, enum,
array) are drawn from a pool; half of the tools also get an optional parameter with a
default. A tool's schema is a pure function of its name. A user request is rendered from
templates so that it states every required argument's value; the gold calls are known by
construction and stored as BFCL-style possible answers, so synthetic tasks are scored by the
same official checker as BFCL's (string values compare after BFCL's normalisation: case,
spaces and ``,./-_*^`` are ignored).

Categories follow BFCL's: ``simple`` (one tool, one call), ``multiple`` (one call, among 2-4
tools), ``parallel`` (one tool called 2-3 times), ``parallel_multiple`` (2-3 tools, one call
each) and ``irrelevance`` (no listed tool fits: the answer is no call).

Split membership is a property of the tool: a tool is held out iff the sha1 of its name is
0 mod ``HELDOUT_MOD``, and a task only uses tools of its split. No object name (and so no
function name) coincides with one of BFCL's; a unit test checks it.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

from envs.function_calling.bfcl_data import ENV_NAME, SYSTEM_PROMPT, to_tool_spec
from forge_ray.types import Task

SYNTHETIC_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
HELDOUT_MOD = 5

VERBS = ("book", "cancel", "schedule", "reserve", "track", "inspect", "register", "archive", "quote", "locate", "renew", "audit")
OBJECTS = ("kayak_rental", "telescope_slot", "bakery_order", "pottery_class", "bike_locker", "greenhouse_bay",
           "recording_studio", "ferry_crossing", "lab_bench", "tasting_menu", "dog_walker", "climbing_wall",
           "canal_boat", "sauna_session", "storage_unit", "tram_pass", "chess_tutor", "quilt_workshop",
           "drone_survey", "orchard_tour", "pinball_lane", "bonsai_repair", "organ_recital", "glacier_hike")
_VERB_TEXT = {"book": "Book", "cancel": "Cancel", "schedule": "Schedule", "reserve": "Reserve", "track": "Track the status of",
              "inspect": "Inspect", "register": "Register", "archive": "Archive", "quote": "Get a price quote for",
              "locate": "Locate", "renew": "Renew", "audit": "Audit"}

_CITIES = ("Lisbon", "Osaka", "Tallinn", "Cusco", "Hobart", "Ghent", "Windhoek", "Bergen", "Valparaiso", "Kraków")
_PEOPLE = ("Ana Ruiz", "Tomas Berg", "Priya Nair", "Kofi Mensah", "Lena Vogel", "Yuki Sato", "Omar Haddad")
_NOTES = ("bring a spare key", "ring the side door", "quiet room please", "leave it at reception", "call before arrival")
_WORDS = ("urgent", "family", "outdoor", "weekly", "vip", "budget", "group", "trial", "repeat", "gift")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class ParamKind:
    """One parameter a synthetic tool may take: schema, value sampler, request phrases."""

    name: str
    type: str  # BFCL type: string, integer, float, boolean, array
    description: str
    sample: Callable[[random.Random], Any]
    phrases: tuple[str, ...]  # templates with {v}; for booleans: (true phrase, false phrase)
    enum: tuple[str, ...] | None = None
    items: str | None = None  # BFCL item type of arrays
    default: Any = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "description": self.description}
        if self.enum:
            out["enum"] = list(self.enum)
        if self.items:
            out["items"] = {"type": self.items}
        if self.default is not None:
            out["description"] += f" Default: {self.default!r}."
            out["default"] = self.default
        return out

    def phrase(self, value: Any, rng: random.Random) -> str:
        if self.type == "boolean":
            return self.phrases[0 if value else 1]
        if isinstance(value, list):
            shown = [str(v) for v in value]
            value = ", ".join(shown[:-1]) + " and " + shown[-1]
        return rng.choice(self.phrases).format(v=value)


def _float(lo: float, hi: float) -> Callable[[random.Random], float]:
    def sample(rng: random.Random) -> float:
        v = round(rng.uniform(lo, hi), 1)
        return v + 0.5 if v == int(v) else v  # never a whole number: the text shows "12.5"
    return sample


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _code(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHJKMNPQRSTUVWXYZ") for _ in range(2)) + "-" + str(rng.randint(1000, 9999))


PARAMS: tuple[ParamKind, ...] = (
    ParamKind("city", "string", "City where it takes place.", lambda r: r.choice(_CITIES), ("in {v}", "located in {v}")),
    ParamKind("customer_name", "string", "Full name of the customer.", lambda r: r.choice(_PEOPLE), ("for {v}", "under the name {v}")),
    ParamKind("date", "string", "Date in YYYY-MM-DD format.", _date, ("on {v}", "for the date {v}")),
    ParamKind("reference_code", "string", "Reference code of the record.", _code, ("with reference {v}", "using code {v}")),
    ParamKind("note", "string", "Free-text note for the staff.", lambda r: r.choice(_NOTES), ('with the note "{v}"', 'adding the note "{v}"')),
    ParamKind("party_size", "integer", "Number of people.", lambda r: r.randint(1, 12), ("for {v} people", "for a group of {v}")),
    ParamKind("quantity", "integer", "How many units.", lambda r: r.randint(2, 50), ("with a quantity of {v}", "for {v} units")),
    ParamKind("duration_minutes", "integer", "Duration in minutes.", lambda r: 5 * r.randint(1, 48), ("for {v} minutes", "lasting {v} minutes")),
    ParamKind("floor", "integer", "Floor number.", lambda r: r.randint(1, 40), ("on floor {v}",)),
    ParamKind("budget", "float", "Maximum budget in dollars.", _float(10, 900), ("with a budget of {v} dollars", "spending at most {v} dollars")),
    ParamKind("weight_kg", "float", "Weight in kilograms.", _float(0.5, 80), ("weighing {v} kg", "with a weight of {v} kg")),
    ParamKind("temperature_c", "float", "Temperature in degrees Celsius.", _float(-20, 45), ("at {v} degrees Celsius",)),
    ParamKind("express", "boolean", "Whether to use express handling.", lambda r: r.random() < 0.5, ("with express handling", "without express handling")),
    ParamKind("notify", "boolean", "Whether to send a notification when done.", lambda r: r.random() < 0.5, ("with a notification when done", "with no notification")),
    ParamKind("priority", "string", "Priority level.", lambda r: r.choice(("low", "medium", "high")), ("with {v} priority", "at {v} priority"), enum=("low", "medium", "high")),
    ParamKind("seat_class", "string", "Seating class.", lambda r: r.choice(("economy", "business", "first")), ("in {v} class",), enum=("economy", "business", "first")),
    ParamKind("output_language", "string", "Language of the confirmation.", lambda r: r.choice(("english", "french", "german", "japanese")),
              ("with the confirmation in {v}",), enum=("english", "french", "german", "japanese")),
    ParamKind("tags", "array", "Labels to attach.", lambda r: r.sample(_WORDS, r.randint(2, 3)), ("tagged {v}", "with the labels {v}"), items="string"),
    ParamKind("seat_numbers", "array", "Seat numbers, in order.", lambda r: sorted(r.sample(range(1, 60), r.randint(2, 3))), ("for seats {v}",), items="integer"),
    ParamKind("weekdays", "array", "Days of the week.", lambda r: sorted(r.sample(_DAYS, 2), key=_DAYS.index), ("every {v}", "on {v}"), items="string"),
)
_OPTIONAL = (  # never mentioned in a request: the gold call leaves them out
    ParamKind("currency", "string", "Currency code for prices.", lambda r: "USD", (), default="USD"),
    ParamKind("dry_run", "boolean", "Only validate, do not commit.", lambda r: False, (), default=False),
    ParamKind("max_results", "integer", "Maximum number of results.", lambda r: 10, (), default=10),
    ParamKind("timezone", "string", "IANA timezone name.", lambda r: "UTC", (), default="UTC"),
)
_BY_NAME = {p.name: p for p in PARAMS + _OPTIONAL}

_OPENERS = ("Please {verb} the {obj} {args}.", "Can you {verb} a {obj} {args}?", "I need to {verb} a {obj} {args}.",
            "{Verb} the {obj} {args}.", "Could you {verb} my {obj} {args}, please?")


@dataclass(frozen=True)
class Tool:
    """A synthetic function: its name, the object words and its parameters."""

    verb: str
    obj: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.verb}_{self.obj}"

    def bfcl_doc(self) -> dict[str, Any]:
        """The BFCL-style function description (the checker's input)."""
        props = {n: _BY_NAME[n].schema() for n in self.required + self.optional}
        return {"name": self.name, "description": f"{_VERB_TEXT[self.verb]} a {self.obj.replace('_', ' ')}.",
                "parameters": {"type": "dict", "properties": props, "required": list(self.required)}}


def make_tool(verb: str, obj: str) -> Tool:
    """The tool ``verb_obj``: its parameters depend on its name only."""
    rng = random.Random(f"function_calling:tool:{verb}_{obj}")
    required = tuple(p.name for p in rng.sample(PARAMS, rng.randint(2, 4)))
    optional = (rng.choice(_OPTIONAL).name,) if rng.random() < 0.5 else ()
    return Tool(verb, obj, required, optional)


def split_of(tool_name: str) -> str:
    return "heldout" if int(hashlib.sha1(tool_name.encode()).hexdigest(), 16) % HELDOUT_MOD == 0 else "train"


def all_tools(split: str | None = None) -> list[Tool]:
    tools = [make_tool(v, o) for v in VERBS for o in OBJECTS]
    return [t for t in tools if split is None or split_of(t.name) == split]


# -- tasks ------------------------------------------------------------------------------------


def _values(tool: Tool, rng: random.Random) -> dict[str, Any]:
    return {p: _BY_NAME[p].sample(rng) for p in tool.required}


def _args_text(tool: Tool, values: dict[str, Any], rng: random.Random) -> str:
    order = list(values)
    rng.shuffle(order)
    return " ".join(_BY_NAME[p].phrase(values[p], rng) for p in order)


def _sentence(tool: Tool, values: dict[str, Any], rng: random.Random, first: bool) -> str:
    verb_text = _VERB_TEXT[tool.verb]
    fields = {"verb": verb_text[0].lower() + verb_text[1:], "Verb": verb_text, "obj": tool.obj.replace("_", " "),
              "args": _args_text(tool, values, rng)}
    if first:
        return rng.choice(_OPENERS).format(**fields)
    return "Also {verb} the {obj} {args}.".format(**fields)


def _possible(tool: Tool, values: dict[str, Any]) -> dict[str, Any]:
    """BFCL-style possible answer of one call: the stated values, and the optional parameter
    either left out ("") or given its default."""
    params = {p: [v] for p, v in values.items()}
    params.update({o: ["", _BY_NAME[o].default] for o in tool.optional})
    return {tool.name: params}


def _others(pool: list[Tool], rng: random.Random, k: int, avoid_objects: set[str]) -> list[Tool]:
    """``k`` tools of ``pool`` with pairwise different objects, none in ``avoid_objects`` (a
    tool on the same object with a synonymous verb, book/reserve, would also fit)."""
    chosen: list[Tool] = []
    for tool in rng.sample(pool, len(pool)):
        if tool.obj not in avoid_objects:
            chosen.append(tool)
            avoid_objects = avoid_objects | {tool.obj}
            if len(chosen) == k:
                break
    return chosen


def _make(category: str, pool: list[Tool], rng: random.Random) -> tuple[list[Tool], list[dict], str]:
    """``(tools shown, possible answers, user request)`` of one task of ``category``."""
    if category in ("simple", "multiple"):
        target = rng.choice(pool)
        values = _values(target, rng)
        shown = [target] + (_others(pool, rng, rng.randint(1, 3), {target.obj}) if category == "multiple" else [])
        rng.shuffle(shown)
        return shown, [_possible(target, values)], _sentence(target, values, rng, True)
    if category == "parallel":
        target = rng.choice(pool)
        calls: list[dict[str, Any]] = []
        k = rng.randint(2, 3)
        while len(calls) < k:
            values = _values(target, rng)
            if values not in calls:
                calls.append(values)
        text = " ".join(_sentence(target, v, rng, i == 0) for i, v in enumerate(calls))
        return [target], [_possible(target, v) for v in calls], text
    if category == "parallel_multiple":
        targets = _others(pool, rng, rng.randint(2, 3), set())
        values_list = [_values(t, rng) for t in targets]
        text = " ".join(_sentence(t, v, rng, i == 0) for i, (t, v) in enumerate(zip(targets, values_list)))
        shown = list(targets)
        rng.shuffle(shown)
        return shown, [_possible(t, v) for t, v in zip(targets, values_list)], text
    if category == "irrelevance":
        asked = rng.choice(pool)
        shown = _others(pool, rng, rng.randint(1, 3), {asked.obj})
        return shown, [], _sentence(asked, _values(asked, rng), rng, True)
    raise ValueError(f"unknown synthetic category {category!r}; expected one of {SYNTHETIC_CATEGORIES}")


class SyntheticTasks:
    """Synthetic tasks of ``categories`` (relative ``weights``, equal by default)."""

    def __init__(self, categories: tuple[str, ...] | list[str] = SYNTHETIC_CATEGORIES, weights: list[float] | None = None):
        unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
        if unknown or not categories:
            raise ValueError(f"synthetic categories must be among {SYNTHETIC_CATEGORIES}, got {list(categories)!r}")
        if weights is not None and (len(weights) != len(categories) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"weights must be {len(categories)} non-negative numbers, not all 0: {weights!r}")
        self.categories = tuple(categories)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.categories)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split`` ("train" or "heldout"), deterministic in ``(split, seed)``."""
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        rng = random.Random(f"function_calling:{split}:{seed}")
        pool = all_tools(split)
        out = []
        for i in range(n):
            category = rng.choices(self.categories, weights=self.weights)[0]
            shown, possible, request = _make(category, pool, rng)
            out.append(Task(
                id=f"fc-{split}-{seed}-{i}",
                env=ENV_NAME,
                messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": request}],
                tools=[to_tool_spec(t.bfcl_doc()) for t in shown],
                answer={"possible_answers": possible, "functions": [t.bfcl_doc() for t in shown]},
                meta={"category": category, "source": "synthetic", "split": split},
            ))
        return out
