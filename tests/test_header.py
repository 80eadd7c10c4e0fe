"""The math header: standalone scenes read it with plain sympy, and the host reads it the same."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sympy as sp

from derivative_animator.data import benchmarks
from derivative_animator.data.oracle import template_scene
from derivative_animator.math import header, notation
from derivative_animator.math.differentiate import differentiate
from derivative_animator.math.parsing import ParseError, X, parse_function

HARD_FUNCTIONS = Path(__file__).parent / "data" / "hard_functions.txt"


def scene_reading(code: str) -> tuple[sp.Expr, sp.Expr]:
    """(f_expr, df_expr) as the scene's own module level computes them (our template's code)."""
    namespace: dict = {}
    exec(compile(code.split("\nf = sp.lambdify")[0], "<scene>", "exec"), namespace)
    return namespace["f_expr"], namespace["df_expr"]


def typed_forms(functions) -> list[str]:
    """What headers hold: each function as typed, and its derivative as the rules give it."""
    forms = []
    for function in functions:
        expr = parse_function(function)
        forms += [notation.typed(expr), differentiate(expr)[1][-1].worked]
    return forms


def every_benchmark_function() -> list[str]:
    return [item.text for name in benchmarks.names() for item in benchmarks.items(name)]


def test_plain_sympy_reads_every_header_the_dataset_writes_as_the_safe_parser_does(all_records):
    texts = [
        text
        for record in all_records
        for text in header.typed_formulas(
            ast.get_docstring(ast.parse(record.completion), clean=False)
        )
    ]
    assert len(texts) > 900
    differ = [t for t in texts if header.sympy_reading(t) != parse_function(t)]
    assert not differ, differ[:5]


def test_plain_sympy_reads_the_headers_of_benchmark_and_hard_functions_as_the_safe_parser_does():
    hard = [
        line.strip()
        for line in HARD_FUNCTIONS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    texts = typed_forms(every_benchmark_function() + hard)
    differ = [t for t in texts if header.sympy_reading(t) != parse_function(t)]
    assert not differ, differ[:5]


@pytest.mark.parametrize("function", ["x^2 sin x", "e^{-x^2}", "arcsin(x)/x", "|x| + sec(3x)"])
def test_a_template_scene_reads_its_header_as_the_host_does(function):
    code = template_scene(function, "tangent")
    f_text, df_text = header.typed_formulas(ast.get_docstring(ast.parse(code), clean=False))
    assert header.SYMPY_READER in code and header.PROJECT_READER_IMPORT not in code
    assert scene_reading(code) == (
        header.read_formula(f_text, with_sympy=True),
        header.read_formula(df_text, with_sympy=True),
    )


def test_a_header_sympy_reads_otherwise_is_refused_for_a_scene_reading_with_sympy_only():
    """Plain sympy reads `sin x cos x` as sin(x cos(x)): a scene reading it so would draw that."""
    assert header.read_formula("sin x cos x", with_sympy=False) == sp.sin(X) * sp.cos(X)
    with pytest.raises(ParseError, match="sympy reads 'sin x cos x' as sin\\(x cos\\(x\\)\\)"):
        header.read_formula("sin x cos x", with_sympy=True)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch {sentinel}')",
        "x.__class__",
        "(lambda: x)()",
        "[x for _ in ()]",
        "x if x else 1",
        "open('{sentinel}', 'w')",
        "exec('1')",
        "sin(x) @ x",
    ],
)
def test_sympys_reader_never_sees_anything_but_plain_math(text, tmp_path):
    sentinel = tmp_path / "ran"
    with pytest.raises(ParseError):
        header.sympy_reading(text.format(sentinel=sentinel))
    assert not sentinel.exists()


def test_only_a_scene_importing_sympys_parser_is_read_with_it():
    code = template_scene("x^2", "tangent")
    assert header.reads_with_sympy(ast.parse(code))
    old = code.replace(header.SYMPY_READER_IMPORT, header.PROJECT_READER_IMPORT)
    assert not header.reads_with_sympy(ast.parse(old))
    own_code = (
        '"""\nf(x) = x^2\nf\'(x) = 2x\n"""\nimport sympy as sp\ndf_expr = 2 * sp.Symbol("x")\n'
    )
    assert not header.reads_with_sympy(ast.parse(own_code))
