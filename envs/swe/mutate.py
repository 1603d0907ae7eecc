"""Procedural bug injection into one function of a Python module (SWE-smith style).

    for site in mutation_sites(source):               # cheap: where each kind could apply
        m = render(source, site, file="pkg/mod.py", seed=0)   # None if it cannot be rendered safely
        buggy = m.apply(source)                        # the whole file, only that function's lines changed

Kinds (``KINDS``): flipped comparison, swapped binary/boolean/augmented operator, off-by-one
(an int constant, a ``range`` bound, an index or slice bound), changed constant, dropped
if-branch, dropped else-branch, swapped call arguments, ``return X`` -> ``return None``,
negated condition, removed statement.

Every edit is made on the source text of that one function (an operator token, an
expression's exact segment, whole statement lines), so the rest of the file stays
byte-identical and the diff is small. Each kind also applies the same change to a copy of the
function's AST; a rendering is accepted only if the edited file parses, compiles, and its
function's AST equals that intended AST (so precedence or layout surprises are rejected, never
written). Choices inside a kind (which operator, +1 or -1) come from a RNG seeded by
(seed, file, function, kind, site): deterministic across runs and machines.
"""
from __future__ import annotations

import ast
import copy
import random
import re
from dataclasses import dataclass
from typing import Callable, Iterator

KINDS = ("flip_comparison", "swap_binop", "off_by_one", "change_constant", "drop_if_branch",
         "drop_else_branch", "swap_call_args", "remove_return", "negate_condition", "remove_statement")

_CMP_TOKEN = {ast.Lt: ("<", "<"), ast.LtE: ("<=", "<="), ast.Gt: (">", ">"), ast.GtE: (">=", ">="),
              ast.Eq: ("==", "=="), ast.NotEq: ("!=", "!="), ast.Is: (r"\bis\b", "is"),
              ast.IsNot: (r"\bis\s+not\b", "is not"), ast.In: (r"\bin\b", "in"),
              ast.NotIn: (r"\bnot\s+in\b", "not in")}
_CMP_FLIP = {ast.Lt: (ast.LtE, ast.Gt), ast.LtE: (ast.Lt, ast.GtE), ast.Gt: (ast.GtE, ast.Lt),
             ast.GtE: (ast.Gt, ast.LtE), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.Is: (ast.IsNot,),
             ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
_BIN_TOKEN = {ast.Add: (r"\+", "+"), ast.Sub: ("-", "-"), ast.Mult: (r"\*", "*"), ast.Div: ("/", "/"),
              ast.FloorDiv: ("//", "//"), ast.Mod: ("%", "%"), ast.Pow: (r"\*\*", "**"),
              ast.LShift: ("<<", "<<"), ast.RShift: (">>", ">>"), ast.BitOr: (r"\|", "|"),
              ast.BitAnd: ("&", "&"), ast.BitXor: (r"\^", "^")}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
             ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
             ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr, ast.BitXor: ast.BitOr}
_BOOL_TOKEN = {ast.And: (r"\band\b", "and"), ast.Or: (r"\bor\b", "or")}
_REMOVABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise, ast.Delete)
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Function:
    """A function or method: ``qualname`` as Python's ``co_qualname``; lines 1-based, inclusive."""

    qualname: str
    first_line: int      # the first decorator's line, or the ``def`` line (== code.co_firstlineno)
    def_line: int
    end_line: int


@dataclass(frozen=True)
class Site:
    """A place where one kind of mutation may apply: node ``index`` in the function's walk."""

    kind: str
    function: str
    first_line: int
    line: int
    index: int


@dataclass(frozen=True)
class Mutation:
    """A rendered bug: ``mutated_function`` replaces lines first_line..end_line of ``file``."""

    kind: str
    file: str
    function: str
    line: int
    first_line: int
    end_line: int
    original_function: str
    mutated_function: str

    def apply(self, source: str) -> str:
        """The whole mutated file; ``source`` must be the text the mutation was rendered from."""
        lines = source.splitlines(keepends=True)
        if "".join(lines[self.first_line - 1:self.end_line]) != self.original_function:
            raise ValueError(f"{self.file}: {self.function} (lines {self.first_line}-{self.end_line}) is not "
                             "the text this mutation was made from")
        return "".join(lines[:self.first_line - 1]) + self.mutated_function + "".join(lines[self.end_line:])


def functions(tree: ast.Module) -> list[tuple[Function, ast.AST]]:
    """Every (async) function and method in ``tree`` with its node, in source order."""
    out: list[tuple[Function, ast.AST]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in child.decorator_list] + [child.lineno])
                out.append((Function(prefix + child.name, first, child.lineno, child.end_lineno), child))
                visit(child, f"{prefix}{child.name}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif not isinstance(child, ast.expr):
                visit(child, prefix)

    visit(tree, "")
    return out


def _walk_body(func: ast.AST) -> list[ast.AST]:
    """The function body's nodes in a fixed order, not entering nested defs or f-strings."""
    out: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPES):
                continue
            out.append(child)
            if not isinstance(child, ast.JoinedStr):   # f-string parts have unreliable positions
                visit(child)

    for stmt in func.body:
        if not isinstance(stmt, _SCOPES):
            out.append(stmt)
            if not isinstance(stmt, ast.JoinedStr):
                visit(stmt)
    return out


def _parents(func: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    out: dict[int, tuple[ast.AST, str, int | None]] = {}
    for node in ast.walk(func):
        for name, value in ast.iter_fields(node):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        out[id(item)] = (node, name, i)
            elif isinstance(value, ast.AST):
                out[id(value)] = (node, name, None)
    return out


def _is_docstring(func: ast.AST, node: ast.AST) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and bool(func.body) and func.body[0] is node)


def _index_like(func: ast.AST) -> set[int]:
    """ids of non-constant expressions that are a ``range`` bound, a subscript index or slice bound."""
    out: set[int] = set()
    for node in _walk_body(func):
        cands: list[ast.AST | None] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
                and 1 <= len(node.args) <= 3 and not node.keywords:
            cands.append(node.args[0] if len(node.args) == 1 else node.args[1])
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, (ast.Slice, ast.Tuple)):
            cands.append(node.slice)
        elif isinstance(node, ast.Slice):
            cands += [node.lower, node.upper]
        out |= {id(c) for c in cands if c is not None and isinstance(c, (ast.Name, ast.Attribute, ast.Call, ast.BinOp))}
    return out


def _eligible(kind: str, func: ast.AST, node: ast.AST, index_like: set[int]) -> bool:
    if kind == "flip_comparison":
        return isinstance(node, ast.Compare)
    if kind == "swap_binop":
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            # `"%s" % x` is string formatting, not arithmetic
            return not (isinstance(node.op, ast.Mod) and isinstance(node.left, (ast.Constant, ast.JoinedStr)))
        return isinstance(node, ast.BoolOp) or (isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP)
    if kind == "off_by_one":
        return _is_int(node) or id(node) in index_like
    if kind == "change_constant":
        return isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float))
    if kind in ("drop_if_branch", "drop_else_branch"):
        return isinstance(node, ast.If) and (kind == "drop_if_branch" or bool(node.orelse))
    if kind == "swap_call_args":
        args = getattr(node, "args", None)
        return isinstance(node, ast.Call) and len(args) >= 2 and not any(isinstance(a, ast.Starred) for a in args)
    if kind == "remove_return":
        return isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None)
    if kind == "negate_condition":
        return isinstance(node, (ast.If, ast.While, ast.IfExp))
    if kind == "remove_statement":
        return isinstance(node, _REMOVABLE) and not _is_docstring(func, node) and not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    raise ValueError(f"unknown mutation kind {kind!r}; known: {', '.join(KINDS)}")


def _is_int(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def mutation_sites(source: str, kinds: tuple[str, ...] = KINDS, tree: ast.Module | None = None) -> list[Site]:
    """Every (kind, node) where a mutation may apply, in source order; cheap (no rendering)."""
    tree = tree or ast.parse(source)
    sites = []
    for fn, node in functions(tree):
        index_like = _index_like(node)
        for i, sub in enumerate(_walk_body(node)):
            for kind in kinds:
                if _eligible(kind, node, sub, index_like):
                    sites.append(Site(kind, fn.qualname, fn.first_line, getattr(sub, "lineno", fn.def_line), i))
    return sites


class _Text:
    """The function's source as bytes (ast columns are UTF-8 byte offsets) with edit helpers."""

    def __init__(self, lines: list[str], first_line: int, end_line: int) -> None:
        self.first = first_line
        self.raw = [ln.encode() for ln in lines[first_line - 1:end_line]]
        self.starts = [0]
        for ln in self.raw:
            self.starts.append(self.starts[-1] + len(ln))
        self.data = b"".join(self.raw)

    def pos(self, lineno: int, col: int) -> int:
        return self.starts[lineno - self.first] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.pos(node.lineno, node.col_offset), self.pos(node.end_lineno, node.end_col_offset)

    def seg(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.data[a:b].decode()

    def edit(self, edits: list[tuple[int, int, str]]) -> str:
        out, at = [], 0
        for a, b, new in sorted(edits):
            out += [self.data[at:a], new.encode()]
            at = b
        return (b"".join(out) + self.data[at:]).decode()

    def token_edit(self, left: ast.AST, right: ast.AST, pattern: str, new: str) -> tuple[int, int, str] | None:
        """Replace the one operator token between ``left`` and ``right`` (comments masked)."""
        a, b = self.span(left)[1], self.span(right)[0]
        gap = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), self.data[a:b].decode("latin-1"))
        hits = list(re.finditer(pattern, gap))
        return (a + hits[0].start(), a + hits[0].end(), new) if len(hits) == 1 else None

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        return self.starts[first - self.first], self.starts[last - self.first + 1]

    def whole_lines(self, node: ast.AST) -> bool:
        """Whether ``node`` alone occupies its lines (only indentation before, a comment after)."""
        a, b = self.span(node)
        ls, le = self.line_span(node.lineno, node.end_lineno)
        return not self.data[ls:a].strip() and self.data[b:le].strip()[:1] in (b"", b"#")

    def indent(self, node: ast.AST) -> str:
        ls = self.starts[node.lineno - self.first]
        return self.data[ls:ls + node.col_offset].decode()


# A plan: how to change the AST copy (given the copied node and the copy's parent map) and the
# candidate texts of the whole function (tried in order; the first that verifies wins).
_Plan = tuple[Callable[[ast.AST, dict], None], list[str]]


def _replace_in_parent(node: ast.AST, parents: dict, new: ast.AST | list[ast.AST]) -> None:
    parent, name, idx = parents[id(node)]
    if idx is None:
        setattr(parent, name, new)
    else:
        getattr(parent, name)[idx:idx + 1] = new if isinstance(new, list) else [new]


def _expr_plan(text: _Text, node: ast.AST, variants: list[str], attr: str | None = None) -> _Plan | None:
    """Replace expression ``node`` by one of ``variants`` (source texts); AST from parsing it.

    ``attr``: ``node`` is that field of the site's node (else the site's node itself)."""
    a, b = text.span(node)
    texts, news = [], []
    for v in variants:
        try:
            news.append(ast.parse(v.strip(), mode="eval").body)
        except SyntaxError:
            continue
        texts.append(text.edit([(a, b, v)]))
    if not texts:
        return None
    if attr is not None:
        return (lambda c, parents: setattr(c, attr, copy.deepcopy(news[0]))), texts
    return (lambda c, parents: _replace_in_parent(c, parents, copy.deepcopy(news[0]))), texts


def _paren(src: str, node: ast.AST) -> str:
    return src if isinstance(node, _ATOMS) else f"({src})"


def _plan_operator(kind: str, text: _Text, node: ast.AST, rng: random.Random) -> _Plan | None:
    if kind == "flip_comparison":
        i = rng.randrange(len(node.ops))
        old = type(node.ops[i])
        new = rng.choice(_CMP_FLIP[old])
        left = node.left if i == 0 else node.comparators[i - 1]
        e = text.token_edit(left, node.comparators[i], _CMP_TOKEN[old][0], _CMP_TOKEN[new][1])
        return None if e is None else ((lambda c, p: c.ops.__setitem__(i, new())), [text.edit([e])])
    if isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        edits = [text.token_edit(x, y, _BOOL_TOKEN[type(node.op)][0], _BOOL_TOKEN[new][1])
                 for x, y in zip(node.values, node.values[1:])]
        return None if None in edits else ((lambda c, p: setattr(c, "op", new())), [text.edit(edits)])
    new = _BIN_SWAP[type(node.op)]
    left, right = (node.left, node.right) if isinstance(node, ast.BinOp) else (node.target, node.value)
    pattern, repl = _BIN_TOKEN[type(node.op)][0], _BIN_TOKEN[new][1]
    if isinstance(node, ast.AugAssign):
        pattern, repl = pattern + "=", repl + "="
    e = text.token_edit(left, right, pattern, repl)
    return None if e is None else ((lambda c, p: setattr(c, "op", new())), [text.edit([e])])


def _new_constant(value: object, rng: random.Random, negated: bool) -> object:
    """A different constant (not +-1 of an int: that is off_by_one); >= 0 right after a unary minus."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        options = [v for v in (0, 2 * value, value + 2, value - 2, -value) if v not in (value - 1, value, value + 1)]
        return rng.choice([v for v in options if v >= 0 or not negated] or [value + 2])
    return value * 2 if value else 1.0


def _plan_expression(kind: str, text: _Text, node: ast.AST, rng: random.Random, negated: bool) -> _Plan | None:
    if kind == "off_by_one":
        delta = 1 if (_is_int(node) and node.value == 0) else rng.choice((1, -1))
        if negated and _is_int(node) and node.value + delta == 0:   # `-1` -> `-2`, not `-0`
            delta = 1
        if _is_int(node):
            return _expr_plan(text, node, [repr(node.value + delta)])
        src = _paren(text.seg(node), node)
        return _expr_plan(text, node, [f"{src} {'+' if delta > 0 else '-'} 1"])
    if kind == "change_constant":
        new = _new_constant(node.value, rng, negated)
        return _expr_plan(text, node, [repr(new), f"({new!r})"])
    if kind == "swap_call_args":
        pairs = [i for i in range(len(node.args) - 1) if ast.dump(node.args[i]) != ast.dump(node.args[i + 1])]
        if not pairs:
            return None
        i = rng.choice(pairs)
        a, b = node.args[i], node.args[i + 1]
        edits = [(*text.span(a), text.seg(b)), (*text.span(b), text.seg(a))]

        def swap(c: ast.AST, parents: dict) -> None:
            c.args[i], c.args[i + 1] = c.args[i + 1], c.args[i]
        return swap, [text.edit(edits)]
    if kind == "remove_return":
        # the whole statement, so `return (x)` becomes `return None`, not `return (None)`
        return (lambda c, p: setattr(c, "value", ast.Constant(None))), [text.edit([(*text.span(node), "return None")])]
    if kind == "negate_condition":
        test = node.test
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = text.seg(test.operand)
            return _expr_plan(text, test, [inner, f"({inner})"], "test")
        src = text.seg(test)
        return _expr_plan(text, test, [f"not {_paren(src, test)}", f"(not ({src}))"], "test")
    return None


def _delete_lines(text: _Text, node: ast.AST, parents: dict) -> list[tuple[int, int, str]] | None:
    if not text.whole_lines(node):
        return None
    parent, name, _ = parents[id(node)]
    repl = f"{text.indent(node)}pass\n" if len(getattr(parent, name)) == 1 else ""
    return [(*text.line_span(node.lineno, node.end_lineno), repl)]


def _remove_stmt(c: ast.AST, parents: dict) -> None:
    parent, name, idx = parents[id(c)]
    body = getattr(parent, name)
    del body[idx]
    if not body:
        body.append(ast.Pass())


def _plan_statement(kind: str, text: _Text, node: ast.AST, parents: dict) -> _Plan | None:
    if kind == "remove_statement":
        edits = _delete_lines(text, node, parents)
        return None if edits is None else (_remove_stmt, [text.edit(edits)])
    if kind == "drop_else_branch":
        if not (text.whole_lines(node) and node.body[-1].end_lineno < node.orelse[0].lineno):
            return None
        edit = (*text.line_span(node.body[-1].end_lineno + 1, node.end_lineno), "")
        return (lambda c, p: setattr(c, "orelse", [])), [text.edit([edit])]
    # drop_if_branch: what remains is the else part (an elif becomes the if), or nothing
    if not node.orelse:
        edits = _delete_lines(text, node, parents)
        return None if edits is None else (_remove_stmt, [text.edit(edits)])
    if not text.whole_lines(node):
        return None
    head = text.line_span(node.lineno, node.lineno)[0]
    other = node.orelse[0]
    replacement = lambda c, p: _replace_in_parent(c, p, c.orelse)  # noqa: E731
    if len(node.orelse) == 1 and isinstance(other, ast.If) and text.seg(other).startswith("if") and \
            text.data[text.pos(other.lineno, other.col_offset) - 2:text.pos(other.lineno, other.col_offset)] == b"el":
        start = text.pos(other.lineno, other.col_offset) - 2   # `elif` -> `if`, one level up
        texts = [text.edit([(head, start, text.indent(node))])]
    else:
        body = text.data[text.pos(other.lineno, other.col_offset):text.span(node)[1]].decode()
        shift = other.col_offset - node.col_offset
        lines = body.splitlines(keepends=True)
        lines[1:] = [ln[shift:] if ln[:shift].strip() == "" else ln for ln in lines[1:]]
        texts = [text.edit([(head, text.span(node)[1], text.indent(node) + "".join(lines))])]
    unparsed = "".join(text.indent(node) + ln + "\n" for s in node.orelse for ln in ast.unparse(s).splitlines())
    texts.append(text.edit([(*text.line_span(node.lineno, node.end_lineno), unparsed)]))
    return replacement, texts


def _find(tree: ast.Module, qualname: str, first_line: int) -> ast.AST | None:
    for fn, node in functions(tree):
        if fn.qualname == qualname and fn.first_line == first_line:
            return node
    return None


def _verify(mutated_file: str, file: str, fn: Function, intended: str, original: str) -> bool:
    try:
        tree = ast.parse(mutated_file)
        compile(mutated_file, file or "<mutant>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    node = _find(tree, fn.qualname, fn.first_line)
    return node is not None and ast.dump(node) == intended != original


def render(source: str, site: Site, *, file: str = "", seed: int = 0,
           tree: ast.Module | None = None) -> Mutation | None:
    """The mutation of ``site`` in ``source``, or None if no rendering verifies."""
    tree = tree or ast.parse(source)
    found = [(fn, n) for fn, n in functions(tree) if fn.qualname == site.function and fn.first_line == site.first_line]
    if not found:
        raise ValueError(f"{file or '<source>'}: no function {site.function} at line {site.first_line}")
    fn, func = found[0]
    nodes = _walk_body(func)
    node = nodes[site.index]
    rng = random.Random(f"{seed}|{file}|{site.function}|{site.first_line}|{site.kind}|{site.index}")
    lines = source.splitlines(keepends=True)
    text = _Text(lines, fn.first_line, fn.end_line)
    if site.kind in ("flip_comparison", "swap_binop"):
        plan = _plan_operator(site.kind, text, node, rng)
    elif site.kind in ("drop_if_branch", "drop_else_branch", "remove_statement"):
        plan = _plan_statement(site.kind, text, node, _parents(func))
    else:
        parent = _parents(func).get(id(node), (None,))[0]
        negated = isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.USub)
        plan = _plan_expression(site.kind, text, node, rng, negated)
    if plan is None:
        return None
    change, texts = plan
    clone = copy.deepcopy(func)
    change(_walk_body(clone)[site.index], _parents(clone))
    intended, original = ast.dump(clone), ast.dump(func)
    head, tail = "".join(lines[:fn.first_line - 1]), "".join(lines[fn.end_line:])
    for new in texts:
        if _verify(head + new + tail, file, fn, intended, original):
            return Mutation(site.kind, file, site.function, site.line, fn.first_line, fn.end_line,
                            text.data.decode(), new)
    return None


def mutations(source: str, *, file: str = "", seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Iterator[Mutation]:
    """Every site of ``kinds`` in ``source`` rendered (sites that cannot render are skipped)."""
    tree = ast.parse(source)
    for site in mutation_sites(source, kinds, tree):
        m = render(source, site, file=file, seed=seed, tree=tree)
        if m is not None:
            yield m
