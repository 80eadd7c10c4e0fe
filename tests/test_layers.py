"""The package's layers and what each may import (README: Layout).

math <- render <- data <- model <- eval, with one exception on purpose: the model layer never
imports render (decoding judges headers with `math.judge`, without Manim or the sandbox).
paths, environment, errors and cli_support sit under every layer; the CLI, the page and
the entry points (dataset, train, evaluate) sit on top and may import anything."""

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
    modules = [".".join(("derivative_animator", *p.relative_to(PACKAGE).with_suffix("").parts))
               for p in _modules() if _layer(p) == layer]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.slow
def test_the_math_layer_loads_no_torch_manim_or_renderer():
    loaded = _loaded_after_importing("math")
    assert not {m.split(".")[0] for m in loaded} & (HEAVY | {"manim"})
    assert not [m for m in loaded if m.startswith(("derivative_animator.render", "derivative_animator.model"))]


@pytest.mark.slow
def test_the_model_layer_loads_no_renderer_and_no_manim():
    loaded = _loaded_after_importing("model")
    assert "manim" not in {m.split(".")[0] for m in loaded}
    assert not [m for m in loaded if m.startswith("derivative_animator.render")]
