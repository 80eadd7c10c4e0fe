"""The package's layers and what each may import (README: Layout).

math <- render <- data <- model <- eval, with one exception on purpose: the model layer never
imports render (decoding judges headers with `math.judge`, without Manim or the sandbox).
paths, environment, errors and cli_support sit under every layer; the CLI, the page and
the entry points (dataset, train, reinforce, evaluate, pretrain) sit on top and may import anything,
except each other: nothing imports an entry point (the rule for writing a scene lives below them, in
eval/service.py), so no import climbs back up and the package has no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "derivative_animator"
LAYERS = ("math", "render", "data", "model", "eval")
FOUNDATION = {"paths", "environment", "errors", "cli_support"}
MAY_IMPORT = {
    "math": {"math"},
    "render": {"math", "render"},
    "data": {"math", "render", "data"},
    "model": {"math", "data", "model"},
    "eval": {"math", "render", "data", "model", "eval"},
}
# Programs people run: nothing imports them, but `derivanim serve` (the CLI's subcommand) starts
# the page.
ENTRY_POINTS = {"cli", "serve", "evaluate", "train", "reinforce", "pretrain"}
MAY_START = {"cli": {"serve"}}
HEAVY = {"torch", "transformers", "lightning", "peft", "mlflow", "hydra"}
FORBIDDEN_LIBRARIES = {
    "math": HEAVY | {"manim"},
    "render": HEAVY,
    "data": {"manim", "mlflow"},
    "model": {"manim"},
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _layer(path: Path) -> str:
    """A module's layer: its subpackage, else its own name (a top-level module)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[str]:
    """Every module name it imports, in function bodies too (lazy imports count)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "derivative_animator":
                names += [f"derivative_animator.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def _internal_layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "derivative_animator" and len(parts) > 1 else None


def test_every_module_sits_in_a_layer_or_on_top():
    layered = [p for p in _modules() if _layer(p) in LAYERS]
    assert len(layered) >= 20, "the layers hold most of the package"
    assert all((PACKAGE / layer / "__init__.py").is_file() for layer in LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it_and_the_foundation(layer):
    wrong = []
    for path in _modules():
        if _layer(path) != layer:
            continue
        for name in _imports(path):
            target = _internal_layer(name)
            if target is not None and target not in MAY_IMPORT[layer] | FOUNDATION:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
            if name.split(".")[0] in FORBIDDEN_LIBRARIES.get(layer, set()):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, wrong


def test_the_foundation_imports_nothing_of_the_layers():
    for name in FOUNDATION:
        internal = {_internal_layer(n) for n in _imports(PACKAGE / f"{name}.py")} - {None}
        assert internal <= FOUNDATION, (name, internal)


def _loaded_after_importing(layer: str) -> set[str]:
    """Top-level packages in sys.modules after importing every module of a layer, in a fresh
    interpreter: what the layer pulls in, transitively."""
    modules = [
        ".".join(("derivative_animator", *p.relative_to(PACKAGE).with_suffix("").parts))
        for p in _modules()
        if _layer(p) == layer
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


@pytest.mark.slow
def test_the_math_layer_loads_no_torch_manim_or_renderer():
    loaded = _loaded_after_importing("math")
    assert not {m.split(".")[0] for m in loaded} & (HEAVY | {"manim"})
    assert not [
        m
        for m in loaded
        if m.startswith(("derivative_animator.render", "derivative_animator.model"))
    ]


@pytest.mark.slow
def test_the_model_layer_loads_no_renderer_and_no_manim():
    loaded = _loaded_after_importing("model")
    assert "manim" not in {m.split(".")[0] for m in loaded}
    assert not [m for m in loaded if m.startswith("derivative_animator.render")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(("derivative_animator", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def test_no_module_imports_an_entry_point():
    wrong = []
    for path in _modules():
        importer = _layer(path)
        for name in _imports(path):
            target = _internal_layer(name)
            if (
                target in ENTRY_POINTS
                and target != importer
                and target not in MAY_START.get(importer, set())
            ):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not wrong, wrong


def _import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports (lazy imports too)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    names = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        imported = set()
        for name in _imports(path):  # `from a.b import c` names a.b, and a.b.c when c is a module
            imported |= {name, name.rsplit(".", 1)[0]}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[_module_name(path)] = (imported & names) - {_module_name(path)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    assert "derivative_animator.eval.service" in graph["derivative_animator.cli"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert (
        _cycle(
            {
                **graph,
                "derivative_animator.serve": graph["derivative_animator.serve"]
                | {"derivative_animator.cli"},
            }
        )
        is not None
    )  # the detector sees the cycle that once was
