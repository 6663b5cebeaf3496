"""The house rules, checked on the source: each layer imports only the layers below it, no import cycles,
no file over 400 lines (docs/architecture.md lists the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Lowest first; a module may import its own layer or a lower one.
LAYERS = [
    ("base", ["snowhub._version", "snowhub.errors", "snowhub.names", "snowhub.progress", "snowhub.faults", "snowhub.device",
              "snowhub.numerics", "snowhub.malloc"]),
    ("models", ["snowhub.models"]),
    ("data", ["snowhub.data"]),
    ("training / evaluation", ["snowhub.training", "snowhub.evaluation", "snowhub.probe"]),
    ("store", ["snowhub.store"]),
    ("artifacts", ["snowhub.artifacts"]),
    ("registration, serving, export, checks", ["snowhub.registration", "snowhub.serving", "snowhub.export", "snowhub.checks",
                                               "snowhub.info"]),
    ("facade", ["snowhub.hub", "snowhub"]),
    ("CLI", ["snowhub_cli"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in (("snowhub", REPO / "snowhub"), ("snowhub_cli", REPO / "cli")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _layer(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best[0]


def _imports(path: Path, known: set[str]) -> set[str]:
    """snowhub modules `path` imports anywhere (module level, functions, TYPE_CHECKING blocks)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in known}
    return out


def test_each_layer_imports_only_the_layers_below_it():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for imported in _imports(path, set(modules)):
            if _layer(imported) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)][0]}) imports {imported} ({LAYERS[_layer(imported)][0]})")
    assert wrong == []


def test_there_is_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    # A package's __init__ re-exports its own modules: importing the package is not importing them back.
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
