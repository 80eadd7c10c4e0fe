"""The math header every scene opens with: a docstring holding f and f' as typed, then the
plotting interval, ending at `MATH_HEADER_END`. It is the only part of a scene that differs
between functions, so decoding judges it before the body is written
(docs/decisions/0002-typed-math-header.md)."""

from __future__ import annotations

import ast
import re

import sympy as sp

from derivative_animator.errors import one_line
from derivative_animator.math import notation
from derivative_animator.math.parsing import ParseError, parse_function

MATH_HEADER_END = 'x = sp.Symbol("x")'  # the header above it is all that differs per function


def math_header_length(code: str) -> int | None:
    """Characters of a scene's math header (up to MATH_HEADER_END), None if it has none."""
    index = code.find(MATH_HEADER_END)
    return index if index >= 0 else None


def typed_formulas(docstring: str | None) -> tuple[str, str] | None:
    """(f, f') as a scene's docstring gives them, split the way the scene splits them
    (`typed`): its first and last lines, each `... = <math>`, with any worked steps between
    (`(u)' = ...`, data.worked_steps) also of that shape. None for any other docstring."""
    if docstring is None:
        return None
    lines = docstring.strip().split("\n")
    if len(lines) < 2 or any(" = " not in line for line in lines):
        return None
    return lines[0].split(" = ", 1)[1], lines[-1].split(" = ", 1)[1]


# Scenes read their own header with plain sympy, so they run wherever manim, numpy and sympy
# do (docs/decisions/0013-standalone-scenes.md). The lines below are the scene's reader, word
# for word: the template writes them into every scene, and the host runs the same text.
SYMPY_READER_IMPORT = "from sympy.parsing.sympy_parser import parse_expr"
SYMPY_READER = """NAMES = {"e": sp.E, "ln": sp.log} | {"arc" + g: getattr(sp, "a" + g) for g in "sin cos tan sec csc cot sinh cosh tanh".split()}


def typed_line(line):  # the math after " = ", as typed
    return parse_expr(line.split(" = ", 1)[1], dict(NAMES), transformations="all")
"""  # noqa: E501
PROJECT_READER_IMPORT = "from derivative_animator.parsing import typed_line"  # scenes before 0013

# What the host lets sympy's parser (which runs eval) see: numbers, the reader's names, the
# functions sympy and the project read alike, arithmetic and brackets. Nothing else can run.
_TRIG = ("sin", "cos", "tan", "sec", "csc", "cot", "sinh", "cosh", "tanh")
_SYMPY_NAMES = {"x", "e", "pi", "ln", "log", "exp", "sqrt", "cbrt", "abs"} | {
    prefix + g for prefix in ("", "a", "arc") for g in _TRIG
}
_SYMPY_TOKEN = re.compile(r"\s*(?:([A-Za-z]+)|\d+(?:\.\d+)?|\*\*|[-+*/^()])")


def _sympy_reader():
    namespace: dict = {}
    exec(
        f'import sympy as sp\n{SYMPY_READER_IMPORT}\nx = sp.Symbol("x")\n{SYMPY_READER}', namespace
    )
    return namespace["typed_line"]


_read_as_scene = None  # built on first use: importing sympy's parser costs a few tenths of a second


def sympy_reading(text: str) -> sp.Expr:
    """`text` as a standalone scene reads it (`SYMPY_READER`); ParseError when the text holds
    anything but numbers, the reader's names, arithmetic and brackets, or sympy cannot read it."""
    global _read_as_scene
    position = 0
    while position < len(text.rstrip()):
        token = _SYMPY_TOKEN.match(text, position)
        if token is None or (token.group(1) and token.group(1) not in _SYMPY_NAMES):
            where = token.group(1) if token else text[position:].strip()[:1]
            raise ParseError(
                f"{where!r} in {text!r} is not plain math sympy reads: write it with numbers, "
                "x, e, pi, + - * / ^, round brackets and functions such as sin(...), sqrt(...)"
            )
        position = token.end()
    if _read_as_scene is None:
        _read_as_scene = _sympy_reader()
    try:
        return _read_as_scene(f"f(x) = {text}")
    except Exception as err:  # noqa: BLE001 - sympy's parser raises many kinds on odd text
        raise ParseError(f"sympy cannot read {text!r} ({one_line(err)})") from None


def read_formula(text: str, with_sympy: bool) -> sp.Expr:
    """A header formula as the scene draws it. The safe parser reads it first (it bounds
    sizes); for a scene that reads it with sympy (`reads_with_sympy`), sympy must give the same
    expression, so the formula checked is the formula drawn. ParseError when either fails or
    they differ."""
    expr = parse_function(text)
    if with_sympy:
        drawn = sympy_reading(text)
        if drawn != expr:
            raise ParseError(
                f"sympy reads {text!r} as {notation.typed(drawn)}, not {notation.typed(expr)}: "
                "write the multiplications and the function brackets out"
            )
    return expr


def reads_with_sympy(tree: ast.Module) -> bool:
    """Does a scene (or its header) read its math with sympy's parser, as standalone scenes do
    (`SYMPY_READER`)? Scenes of models trained before 0013 import the project's parser
    (`PROJECT_READER_IMPORT`); other code may not read its docstring at all."""
    return any(
        isinstance(node, ast.ImportFrom) and node.module == "sympy.parsing.sympy_parser"
        for node in tree.body
    )


def derivative_line(code: str) -> str | None:
    """What a scene states as f'(x) (its header's `f'(x) = ...` line), or None."""
    found = re.search(r"^f'\(x\) = (.*)$", code, flags=re.MULTILINE)
    return found.group(1).strip() if found else None
