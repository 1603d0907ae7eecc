"""Run BFCL's own command line (``bfcl_eval.__main__.cli``, what the ``bfcl`` script calls) in an
environment where bfcl-eval was installed with ``--no-deps``.

``bfcl evaluate`` imports BFCL's whole model registry at start-up, and with it every API client
and optional tool BFCL supports (openai, cohere, mistralai, google-genai, qwen-agent, boto3,
tree-sitter, sentence-transformers, ...). Scoring the single-turn categories calls none of them:
decoding a prompting model's answer, the AST checker, the result and score files and the
leaderboard tables use the standard library, pandas, numpy, typer, filelock and python-dotenv.

This launcher registers a stand-in for each of those import-only packages *that is not
installed*, then runs BFCL's CLI unchanged; with BFCL's full dependency set installed it stands in
for nothing and is exactly the ``bfcl`` script. A stand-in answers every attribute with a new
class, returns a lone callable argument unchanged (so ``@override`` and ``@retry(...)`` leave
methods as they are) and builds an inert object otherwise; any real use of one during scoring
would fail loudly, not pass silently. The names stood in for are printed on stderr.

    BFCL_PROJECT_ROOT=DIR python tests/unit/bfcl_cli_standin.py evaluate --model Qwen/Qwen3-0.6B --test-category simple_python
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

# Top-level import names of bfcl-eval's dependencies that scoring never calls.
IMPORT_ONLY = {
    "anthropic", "boto3", "botocore", "bs4", "cohere", "dashscope", "datamodel_code_generator", "faiss", "html2text",
    "mistralai", "openai", "overrides", "qwen_agent", "rank_bm25", "sentence_transformers", "serpapi", "soundfile",
    "tabulate", "tenacity", "tree_sitter", "tree_sitter_java", "tree_sitter_javascript", "writerai",
}
IMPORT_ONLY_SUBPACKAGES = {"google.genai"}  # "google" itself is a namespace other packages share


def _combine(self: object, other: object) -> object:
    return _StandIn()  # e.g. tenacity's ``retry_if_a | retry_if_b``


_OPERATORS = {f"__{op}__": _combine for op in ("or", "ror", "and", "rand", "add", "radd")}


class _StandInMeta(type):
    locals().update(_OPERATORS)

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _new_class(name)

    def __getitem__(cls, item: object) -> type:
        return cls

    def __call__(cls, *args: object, **kwargs: object) -> object:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # used as a decorator
        return super().__call__()


class _StandIn(metaclass=_StandInMeta):
    locals().update(_OPERATORS)

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _new_class(name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # a decorator factory's result
        return _StandIn()


def _new_class(name: str) -> type:
    return _StandInMeta(name, (_StandIn,), {})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _new_class(name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on ``sys.meta_path``: reached only for modules no real finder has."""

    def __init__(self) -> None:
        self.stood_in: set[str] = set()

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        top = fullname.split(".")[0]
        if top in IMPORT_ONLY or any(fullname == p or fullname.startswith(p + ".") for p in IMPORT_ONLY_SUBPACKAGES):
            self.stood_in.add(fullname)
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StandInModule(spec.name)
        module.__path__ = []
        if spec.name == "overrides":  # used on BFCL's handler classes themselves: keep them plain
            module.override = module.final = lambda f: f
            module.EnforceOverrides = type("EnforceOverrides", (), {})
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def main() -> None:
    finder = _Finder()
    sys.meta_path.append(finder)
    from bfcl_eval.__main__ import cli

    roots = sorted({n.split(".")[0] if n.split(".")[0] in IMPORT_ONLY else n for n in finder.stood_in})
    print(f"bfcl_cli_standin: stand-ins for {', '.join(roots) or 'nothing'}", file=sys.stderr)
    sys.argv[0] = "bfcl"
    sys.exit(cli())  # as the installed ``bfcl`` script does


if __name__ == "__main__":
    main()
