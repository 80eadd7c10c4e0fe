"""How a function is written: as a person types it, and as Python in other code.

- `typed(expr)`: the canonical human notation (`3x^4 - 2x^2 + 5`, `x^2 sin(x)`,
  `e^(-x^2)`). It is what prompts contain, so every way of typing one function maps
  to one prompt; `parsing.parse_function(typed(e)) == e` for every dataset function.
- `expr_from_code(node)`: an expression written as Python (`x**2*sp.sin(x)`,
  `np.exp(-t)`), read by walking the AST against a whitelist. This is how checkers read
  `df_expr = ...` or `df = lambda x: ...` out of untrusted generated code without running
  it (the project's own scenes write typed math in their docstring instead).
"""

from __future__ import annotations

import ast

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.str import StrPrinter

from derivative_animator.math.parsing import X

TYPED_NAMES = {
    "log": "ln",
    "asin": "arcsin",
    "acos": "arccos",
    "atan": "arctan",
    "asec": "arcsec",
    "acsc": "arccsc",
    "acot": "arccot",
    "asinh": "arcsinh",
    "acosh": "arccosh",
    "atanh": "arctanh",
}


def _is_simple_atom(expr: sp.Expr) -> bool:
    return expr.is_Symbol or (expr.is_Integer and expr >= 0)


class _TypedPrinter(StrPrinter):
    def _print_Exp1(self, expr):
        return "e"

    def _print_Pi(self, expr):
        return "pi"

    def _print_exp(self, expr):
        (arg,) = expr.args
        return f"e^{self._print(arg)}" if _is_simple_atom(arg) else f"e^({self._print(arg)})"

    def _print_Function(self, expr):
        name = TYPED_NAMES.get(expr.func.__name__, expr.func.__name__)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Abs(self, expr):
        # abs(u), not |u|: scenes read their header with plain sympy, which has no bars (0013)
        return f"abs({self._print(expr.args[0])})"

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.args
        if exponent.is_number and exponent.is_negative:
            return f"1/{self._denominator(base ** (-exponent))}"
        if exponent == sp.S.Half:
            return f"sqrt({self._print(base)})"
        base_text = self._print(base)
        if not (base.is_Symbol or (base.is_Integer and base > 0) or isinstance(base, sp.Function)):
            base_text = f"({base_text})"
        if base.is_Function and exponent.has(X):
            base_text = f"({base_text})"
        exponent_text = self._print(exponent)
        if not _is_simple_atom(exponent):
            exponent_text = f"({exponent_text})"
        return f"{base_text}^{exponent_text}"

    def _denominator(self, expr):
        text = self._print(expr)
        return (
            text
            if (
                expr.is_Symbol
                or expr.is_Integer
                or expr.is_Function
                or (expr.is_Pow and not text.startswith("1/"))
            )
            else f"({text})"
        )

    def _print_Mul(self, expr):
        coefficient, _ = expr.as_coeff_mul()
        factors = [f for f in expr.as_ordered_factors() if not f.is_Number]  # printing order
        sign = "-" if coefficient < 0 else ""
        coefficient = abs(coefficient)
        numerator, denominator = [], []
        for factor in factors:
            base, exponent = factor.as_base_exp()
            if exponent.is_number and exponent.is_negative and not isinstance(factor, sp.exp):
                denominator.append(base ** (-exponent))
            else:
                numerator.append(factor)
        p, q = sp.fraction(coefficient)
        if q != 1:
            denominator.insert(0, q)
        top = self._product(p, numerator)
        if not denominator:
            return sign + top
        bottom = sp.Mul(*denominator)
        return f"{sign}{top}/{self._denominator(bottom)}"

    def _product(self, coefficient, factors):
        parts = []
        for factor in factors:
            text = self._print(factor)
            if precedence(factor) < PRECEDENCE["Mul"] or text.startswith("-"):
                text = f"({text})"
            parts.append(text)
        if not parts:
            return str(coefficient)
        body = " ".join(parts)
        if coefficient == 1:
            return body
        return (
            f"{coefficient}{body}"
            if parts[0][0].isalpha() or parts[0][0] in "(|"
            else (f"{coefficient}*{body}")
        )


def typed(expr: sp.Expr) -> str:
    """Canonical human notation of a function of x."""
    return _TypedPrinter().doprint(expr)


# sympy writes \operatorname{asec}; the textbook name is arcsec (asin, acos and atan stay as
# they were: the dataset's LaTeX must not change).
_LATEX_NAMES = {
    rf"\operatorname{{{short}}}": rf"\operatorname{{{typed}}}"
    for short, typed in TYPED_NAMES.items()
    if short not in ("log", "asin", "acos", "atan")
}


def latex(expr: sp.Expr) -> str:
    text = sp.latex(expr, ln_notation=True)
    for short, full in _LATEX_NAMES.items():
        text = text.replace(short, full)
    return text


# --- reading expressions back out of (untrusted) code ---------------------------------


class CodeExpressionError(ValueError):
    """The expression in the code is not plain math in x."""


_CODE_FUNCTIONS = {
    "sin": sp.sin,
    "cos": sp.cos,
    "tan": sp.tan,
    "sec": sp.sec,
    "csc": sp.csc,
    "cot": sp.cot,
    "asin": sp.asin,
    "acos": sp.acos,
    "atan": sp.atan,
    "arcsin": sp.asin,
    "arccos": sp.acos,
    "arctan": sp.atan,
    "asec": sp.asec,
    "acsc": sp.acsc,
    "acot": sp.acot,
    "arcsec": sp.asec,
    "arccsc": sp.acsc,
    "arccot": sp.acot,
    "sinh": sp.sinh,
    "cosh": sp.cosh,
    "tanh": sp.tanh,
    "asinh": sp.asinh,
    "acosh": sp.acosh,
    "atanh": sp.atanh,
    "arcsinh": sp.asinh,
    "arccosh": sp.acosh,
    "arctanh": sp.atanh,
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "cbrt": sp.cbrt,
    "Abs": sp.Abs,
    "abs": sp.Abs,
}
_CODE_CONSTANTS = {"pi": sp.pi, "E": sp.E, "e": sp.E}
_MODULES = {"sp", "sympy", "np", "numpy", "math"}
_MAX_NUMERIC_EXPONENT = 1000
_MAX_NODES = 2000


def expr_from_code(node: ast.AST, variable: str = "x") -> sp.Expr:
    """Build the sympy expression a Python expression AST denotes, without running it."""
    if sum(1 for _ in ast.walk(node)) > _MAX_NODES:
        raise CodeExpressionError("expression too large")
    return _Reader(variable).visit(node)


class _Reader(ast.NodeVisitor):
    def __init__(self, variable: str):
        self.variable = variable

    def generic_visit(self, node):
        raise CodeExpressionError(f"unsupported syntax {type(node).__name__} in math expression")

    def visit_Expression(self, node):
        return self.visit(node.body)

    def visit_Constant(self, node):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CodeExpressionError(f"unsupported constant {node.value!r}")
        return (
            sp.Integer(node.value) if isinstance(node.value, int) else sp.Rational(repr(node.value))
        )

    def visit_Name(self, node):
        if node.id == self.variable:
            return X
        if node.id in _CODE_CONSTANTS:
            return _CODE_CONSTANTS[node.id]
        raise CodeExpressionError(f"unknown name {node.id!r}")

    def visit_Attribute(self, node):
        if (
            isinstance(node.value, ast.Name)
            and node.value.id in _MODULES
            and node.attr in _CODE_CONSTANTS
        ):
            return _CODE_CONSTANTS[node.attr]
        raise CodeExpressionError(f"unsupported attribute {ast.unparse(node)!r}")

    def visit_UnaryOp(self, node):
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return operand
        raise CodeExpressionError(f"unsupported operator {type(node.op).__name__}")

    def visit_BinOp(self, node):
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise CodeExpressionError("division by zero")
            return left / right
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        raise CodeExpressionError(f"unsupported operator {type(node.op).__name__}")

    def visit_Call(self, node):
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id in _MODULES)
        ):
            name = func.attr
        elif isinstance(func, ast.Name):
            name = func.id
        else:
            raise CodeExpressionError(f"unsupported call {ast.unparse(func)!r}")
        if node.keywords:
            raise CodeExpressionError(f"unsupported keyword arguments in {name}()")
        args = [self.visit(arg) for arg in node.args]
        if name in ("Rational", "Integer", "Float", "S", "sympify") and all(
            a.is_number for a in args
        ):
            if name == "Rational" and len(args) == 2 and args[1] != 0:
                return sp.Rational(args[0], args[1])
            if len(args) == 1:
                return args[0]
        if name in _CODE_FUNCTIONS and len(args) == 1:
            return _CODE_FUNCTIONS[name](args[0])
        if name in ("log", "power", "pow") and len(args) == 2:
            return sp.log(args[0], args[1]) if name == "log" else _power(*args)
        raise CodeExpressionError(f"unsupported function {name}()")


def _power(base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
    # Refuse numbers sympy would spend minutes expanding (9**9**9).
    if exponent.is_number and (
        abs(exponent) > _MAX_NUMERIC_EXPONENT or (base.is_number and abs(exponent) > 64)
    ):
        raise CodeExpressionError("exponent too large")
    return base**exponent
