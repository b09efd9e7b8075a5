"""The floors of the package import downwards only, without cycles, and the torch-free floors load
no torch: read from the source (every import, at module level or inside a function) and checked
for real in a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tbench

PACKAGE = "tbench"
ROOT = Path(tbench.__file__).resolve().parent
EXCLUDED = ("tests", "benchmarks")

# What each floor may import: itself and the floors below it. The harness also stands on the store
# (the runner commits every record) and on the model (layer and model scope); the command line
# stands on everything.
ALLOWED = {
    "core": {"core"},
    "kernels": {"core", "kernels"},
    "methods": {"core", "kernels", "methods"},
    "model": {"core", "kernels", "methods", "model"},
    "harness": {"core", "kernels", "methods", "model", "harness", "results"},
    # the quality track trains models with methods, stores results and reuses the run provenance
    "quality": {"core", "kernels", "methods", "harness", "results", "quality"},
    "results": {"core", "results"},
    "analysis": {"core", "results", "analysis"},
    "dashboard": {"core", "results", "analysis", "dashboard"},
}


def module_files() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in EXCLUDED or any(part.startswith(".") for part in rel.parts):
            continue
        parts = [PACKAGE, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The tbench module a dotted name refers to (a name inside a module counts as the module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from . import migrate` imports a module; `from .case import Case` a name in one
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                target = _known(name, modules)
                if target is not None and target != module:
                    targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        own = floor(module)
        if own not in ALLOWED:  # the package root and the command line may import anything
            continue
        # the package root (its version) is below every floor
        found += [f"{module} imports {t} ({floor(t)} is above {own})" for t in sorted(targets)
                  if t != PACKAGE and floor(t) not in ALLOWED[own]]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "tbench.harness.runner" in graph and "tbench.core.case" in graph
    assert "tbench.results.store" in graph["tbench.harness.runner"]  # from ..results.store import Store
    assert "tbench.results.migrate" in graph["tbench.results.store"]  # from . import migrate
    assert "tbench.methods.catalog" in graph["tbench.cli"]  # imported inside a function
    assert not any(m.startswith("tbench.tests") or m.startswith("tbench.benchmarks") for m in graph)


def test_no_import_runs_up_a_floor():
    graph = import_graph()
    assert graph[PACKAGE] == set()  # the root holds the version and stands on nothing
    assert upward_imports(graph) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {k: set(v) for k, v in import_graph().items()}
    graph["tbench.core.case"].add("tbench.harness.timing")
    assert upward_imports(graph) == [
        "tbench.core.case imports tbench.harness.timing (harness is above core)"]
    graph = {k: set(v) for k, v in import_graph().items()}
    graph["tbench.core.errors"].add("tbench.core.device")  # device imports errors
    assert cycles(graph) == [["tbench.core.device", "tbench.core.errors"]]


TORCH_FREE = [
    *sorted(m for m in module_files() if m.startswith("tbench.core")),
    "tbench.results.store", "tbench.results.bundle", "tbench.results.url", "tbench.results.quality",
    *sorted(m for m in module_files() if m.startswith("tbench.analysis")),
    "tbench.dashboard.data", "tbench.dashboard.quality", "tbench.analysis.quality", "tbench.cli",
]

# Runs the command line in-process and reports, at exit, whether torch was loaded.
_COMMAND = """
import atexit, sys
atexit.register(lambda: print("torch loaded" if "torch" in sys.modules else "no torch", file=sys.stderr))
from tbench.cli import main
sys.argv = ["tbench", *sys.argv[1:]]
main()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TBENCH_DB", None)
    return env


def test_torch_free_modules_load_no_torch():
    code = ("import importlib, sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args", [["--help"], ["runs"], ["show"], ["show", "--help"], ["run", "--help"]])
def test_commands_load_no_torch(args, tmp_path):
    from tbench.results.store import Store

    db = tmp_path / "empty.db"
    Store(str(db)).close()
    full = [*args, "--db", str(db)] if args[0] in ("runs", "show") and "--help" not in args else args
    result = subprocess.run([sys.executable, "-c", _COMMAND, *full], capture_output=True, text=True, env=_env(),
                            timeout=120)
    assert result.returncode in (0, 2), result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no torch", result.stderr
