"""The package's shape, checked from its source with `ast`: no import cycle among our modules, no
import of our own modules inside a function (so the graph below is the whole truth), `nn/` and
`model/` free of DeepSpeed and the training code, the public API importable without DeepSpeed,
and the size limits of the style guide (files up to 400 lines, functions up to 80)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "foundation"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of `path`; `from X import a`
    counts X.a when X.a is one of our modules."""
    module, tree = _module(path), ast.parse(path.read_text(), str(path))
    nested: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            out.append((target, node.lineno, id(node) in nested))
            out += [(f"{target}.{a.name}", node.lineno, id(node) in nested) for a in node.names]
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module(p): p for p in SOURCES}


def _graph() -> dict[str, set[str]]:
    """Module -> our modules it imports at module level (an import of a package's submodule
    also runs the package's __init__, so the package is an edge too)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target, _, _ in _imports(path):
            if target in MODULES and target != name:
                edges.add(target)
                parts = target.split(".")
                edges |= {".".join(parts[:k]) for k in range(2, len(parts)) if ".".join(parts[:k]) in MODULES}
        graph[name] = edges - {name} - {p for p in edges if name.startswith(p + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_a_cycle_is_found_when_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_function_level_import_of_our_own_modules():
    found = [f"{path.relative_to(ROOT)}:{line} imports {target}" for path in SOURCES
             for target, line, nested in _imports(path) if nested and target.split(".")[0] == "foundation"]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("layer", ["foundation.nn", "foundation.model", "foundation.data"])
def test_lower_layers_never_import_deepspeed_or_training(layer):
    bad = [f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
           for name in MODULES if name == layer or name.startswith(layer + ".")
           for target, line, _ in _imports(MODULES[name])
           if target.split(".")[0] == "deepspeed" or target.startswith(("foundation.train", "foundation.cli",
                                                                         "foundation.evaluate"))]
    assert not bad, "\n".join(bad)


def test_the_public_api_imports_without_deepspeed_and_the_cli_without_torch():
    code = ("import sys, foundation, foundation.api, foundation.calculator; foundation.load_model; "
            "assert 'deepspeed' not in sys.modules and 'foundation.train' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    code = "import sys, foundation.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_files_and_functions_stay_small():
    long_files = [f"{p.relative_to(ROOT)} ({n} lines)" for p in SOURCES if (n := len(p.read_text().splitlines())) > 400]
    long_functions = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                      f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)
