"""Is the derivative a scene states right? Read from its source without running it.

Our scenes state f and f' in their docstring as typed (`f'(x) = 2x*sin(x) + x^2*cos(x)`), read
here as the scene reads them (`header.read_formula`: the scene's own sympy reader, which must agree
with the safe parser); other code may give `df_expr = ...`,
`df = lambda x: ...` or `def df(x): return ...`, read from the AST. Expressions are compared
symbolically, and numerically at points inside the plotting interval when sympy cannot decide;
both f and f' must be defined on the plotting interval (`X_MIN, X_MAX`). Whatever a formula
holds, a failure is a reason, never a crash. Pure: sympy, numpy and `ast` only, so decoding
(the header judge, val/math, self-consistency) uses it without the renderer.
"""

from __future__ import annotations

import ast
import math
import threading
from collections.abc import Callable

import numpy as np
import sympy as sp

from derivative_animator.errors import one_line
from derivative_animator.math import curriculum, notation
from derivative_animator.math.differentiate import UnsupportedFunction, true_derivative
from derivative_animator.math.header import (
    derivative_line,
    math_header_length,
    read_formula,
    reads_with_sympy,
    typed_formulas,
)
from derivative_animator.math.parsing import ParseError, X, parse_function

NUMERIC_POINTS = 24
NUMERIC_TOLERANCE = 1e-6
SYMBOLIC_MAX_OPS = 150  # beyond this, a symbolic confirmation may take long: go numeric
SYMBOLIC_MAX_POWER = 12  # expanding (u)^1000 would never end
# Trig rewritten as exponentials past this many operations took seconds to cancel (28 s for
# tan(cos(x^2)/cot(x/2 + 3))'s f'; a benchmark's worst 10 s): go numeric there too.
SYMBOLIC_MAX_REWRITTEN_OPS = 200

# CPython 3.11's parser keeps its recursion depth in state shared by all threads, and
# parsing in two threads at once can fail with "SystemError: AST constructor recursion depth
# mismatch" (it did: evaluation checks scenes in pool threads while generation parses).
_PARSE_LOCK = threading.Lock()


def parse_code(code: str) -> ast.Module:
    """ast.parse, one thread at a time (raises SyntaxError as ast.parse does)."""
    with _PARSE_LOCK:
        return ast.parse(code)


def _check_math_safely(tree: ast.Module, function: sp.Expr) -> tuple[bool, str | None, str | None]:
    """check_math, where whatever the scene wrote that sympy cannot handle (a formula nested
    thousands deep, a number too large) is a failed check with its reason, never a crash."""
    try:
        return check_math(tree, function)
    except (RecursionError, MemoryError) as err:
        return False, None, f"a formula is nested too deeply to check ({type(err).__name__})"
    except Exception as err:  # noqa: BLE001 - the scene's text is untrusted: any failure is its own
        return False, None, f"a formula could not be checked ({one_line(err)})"


def _assigned_expression(tree: ast.Module, names: tuple[str, ...], function_name: str):
    """The expression AST (and its variable name) the code gives for a quantity."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in names:
                return node.value, "x"
            if (
                isinstance(target, ast.Name)
                and target.id == function_name
                and isinstance(node.value, ast.Lambda)
                and len(node.value.args.args) == 1
            ):
                return node.value.body, node.value.args.args[0].arg
        if (
            isinstance(node, ast.FunctionDef)
            and node.name == function_name
            and len(node.args.args) == 1
            and len(node.body) == 1
            and isinstance(node.body[0], ast.Return)
            and node.body[0].value is not None
        ):
            return node.body[0].value, node.args.args[0].arg
    return None, None


class _Unreadable(ValueError):
    """The code gives the quantity, but not as plain math in x."""


def _written(tree: ast.Module, quantity: str) -> sp.Expr | None:
    """What the code gives for f ("f") or f' ("df"): the typed docstring lines our scenes
    carry (read as the scene reads them: `header.read_formula`), else an
    assignment (`df_expr = ...`, `df = lambda x: ...`) read from its AST. None when the
    code gives neither; `_Unreadable` when it gives something that is not math in x."""
    formulas = typed_formulas(ast.get_docstring(tree, clean=False))
    if formulas is not None:
        text = formulas[0 if quantity == "f" else 1]
        try:
            return read_formula(text, reads_with_sympy(tree))
        except ParseError as err:
            raise _Unreadable(f"{text!r} does not read as math ({err})") from None
    node, variable = _assigned_expression(tree, (f"{quantity}_expr",), quantity)
    if node is None:
        return None
    try:
        return notation.expr_from_code(node, variable)
    except notation.CodeExpressionError as err:
        raise _Unreadable(str(err)) from None


def check_math(tree: ast.Module, function: sp.Expr) -> tuple[bool, str | None, str | None]:
    """(correct, method, error): does the code's derivative equal d/dx function?"""
    try:
        claimed = _written(tree, "df")
    except _Unreadable as err:
        return False, None, f"derivative is not a plain expression in x ({err})"
    if claimed is None:
        return (
            False,
            None,
            "no derivative found (expected a `f'(x) = ...` docstring line or `df_expr = ...`)",
        )
    exact = true_derivative(function)
    x_range = _interval(function, exact)

    try:
        written = _written(tree, "f")
    except _Unreadable as err:
        return False, None, f"f is not a plain expression in x ({err})"
    if written is not None and not same_values(written, function, x_range):
        return (
            False,
            None,
            f"the code animates f(x) = {notation.typed(written)}, not {notation.typed(function)}",
        )

    same, method = expressions_equal(claimed, exact, x_range)
    if not same:
        return (
            False,
            method,
            (f"derivative {notation.typed(claimed)} is wrong; expected {notation.typed(exact)}"),
        )
    plotted = _plotting_interval(tree)
    if plotted is not None and not (
        plotted[0] < plotted[1] and curriculum.defined_on(function, exact, plotted)
    ):
        return (
            False,
            method,
            (
                f"the plotting interval X_MIN, X_MAX = {plotted[0]:g}, {plotted[1]:g} is not one "
                "where f and f' are both defined: the curves would be missing there"
            ),
        )
    return True, method, None


def _plotting_interval(tree: ast.Module) -> tuple[float, float] | None:
    """The scene's `X_MIN, X_MAX = a, b` (two plain numbers), None when it has none."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Tuple)
            and [getattr(t, "id", None) for t in node.targets[0].elts] == ["X_MIN", "X_MAX"]
        ):
            try:
                low, high = ast.literal_eval(node.value)
                return float(low), float(high)
            except (ValueError, TypeError, SyntaxError):
                return None
    return None


def interval_for(docstring: str, function: sp.Expr) -> tuple[float, float] | None:
    """Where to plot a scene whose docstring (the code up to its closing quotes) states f': the
    interval the dataset's scenes get (`curriculum.plot_interval`), found with the f' it claims,
    never the true one, so a right f' is drawn where it is defined. None when the docstring gives
    no readable f' or no interval suits both (the model then writes its own)."""
    try:
        claimed = _written(parse_code(docstring), "df")
        return (
            curriculum.plot_interval(function, claimed, wider=True) if claimed is not None else None
        )
    except Exception:  # noqa: BLE001 - the docstring is untrusted: any failure is no interval
        return None


def header_math_is_right(header: str, function: sp.Expr) -> bool:
    """Is the derivative in a scene's math header (its text up to `MATH_HEADER_END`)
    right? A verification retry whose header is wrong cannot pass: it is abandoned there."""
    try:
        tree = parse_code(header)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return False
    return _check_math_safely(tree, function)[0]


def header_judge(function: str) -> Callable[[str], bool]:
    """`header_math_is_right` for one function, parsed once: what `generate(accept_header=)`
    takes."""
    target = parse_function(function)
    return lambda header: header_math_is_right(header, target)


def states_wrong_derivative(code: str, function: str) -> bool:
    """Does the scene's math header state a derivative the math judge rejects? (A scene may fail
    the math check for another reason, e.g. a plotting interval where f' is undefined: then its
    derivative is not what is wrong, and swapping in the true one cannot help.)"""
    end = math_header_length(code)
    return (
        end is not None
        and derivative_line(code) is not None
        and not header_judge(function)(code[:end])
    )


def check_function(tree: ast.Module, function: sp.Expr) -> bool | None:
    """Does the code's f equal the function? None when it gives none."""
    try:
        written = _written(tree, "f")
    except _Unreadable:
        return False
    if written is None:
        return None
    return same_values(written, function, _interval(function, true_derivative(function)))


def _interval(function: sp.Expr, derivative: sp.Expr) -> tuple[float, float]:
    try:
        return curriculum.plot_interval(function, derivative, wider=True) or (-3.0, 3.0)
    except (UnsupportedFunction, TypeError, ValueError):
        return (-3.0, 3.0)


def expressions_equal(a: sp.Expr, b: sp.Expr, x_range: tuple[float, float]) -> tuple[bool, str]:
    """(equal, method). A numeric mismatch inside x_range settles it; a numeric match is
    confirmed symbolically when sympy can do so quickly. The verdict is `same_values`'."""
    if not same_values(a, b, x_range):
        return False, "numeric"
    return True, "symbolic" if a == b or _provably_zero(a - b) else "numeric"


def same_values(a: sp.Expr, b: sp.Expr, x_range: tuple[float, float]) -> bool:
    """expressions_equal's verdict without its symbolic confirmation (which only names the
    method): for checks that need no method, such as votes and f's copy."""
    return a == b or _numerically_equal(a, b, x_range)


def _provably_zero(difference: sp.Expr) -> bool:
    """Zero by quick canonical forms: trig and hyperbolic functions rewritten as exponentials,
    expanded and cancelled. Not sympy's simplify: it ran for minutes on a 54-operation
    quotient of cot and arctan, where this takes milliseconds."""
    if sp.count_ops(difference) > SYMBOLIC_MAX_OPS or any(
        power.exp.is_Integer and abs(power.exp) > SYMBOLIC_MAX_POWER
        for power in difference.atoms(sp.Pow)
    ):
        return False
    if sp.expand(difference) == 0:
        return True
    rewritten = difference.rewrite(sp.exp)
    if sp.count_ops(rewritten) > SYMBOLIC_MAX_REWRITTEN_OPS:
        return False
    return sp.cancel(sp.together(sp.expand(rewritten))) == 0


def _numerically_equal(a: sp.Expr, b: sp.Expr, x_range: tuple[float, float]) -> bool:
    lo, hi = x_range
    # Irrational offsets keep sample points off special values like 0 and pi/2.
    points = [
        lo + (hi - lo) * ((i + 0.5 + 0.1 * math.sqrt(2)) / NUMERIC_POINTS)
        for i in range(NUMERIC_POINTS)
    ]
    compared = 0
    for expected, got in zip(_values(b, points), _values(a, points), strict=True):
        if expected is None:
            continue  # outside the true function's domain: nothing to compare
        if got is None or abs(got - expected) > NUMERIC_TOLERANCE * max(1.0, abs(expected)):
            return False
        compared += 1
    return compared >= NUMERIC_POINTS // 2


def _values(expr: sp.Expr, points: list[float]) -> list[float | None]:
    """expr at the points in complex double precision; None where it is not a finite real.
    Not sympy's evalf: a model's power tower (`e^(u)^(v)^(w)...`) sent it into mpmath for
    minutes, where floating point overflows to inf at once."""
    try:
        with np.errstate(all="ignore"):
            values = np.asarray(
                sp.lambdify(X, expr, "numpy")(np.asarray(points, dtype=complex)), dtype=complex
            )
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, NameError):
        return [None] * len(points)
    values = np.broadcast_to(values, (len(points),))
    real = np.isfinite(values) & (np.abs(values.imag) < 1e-12)
    return [float(v.real) if ok else None for v, ok in zip(values, real, strict=True)]
