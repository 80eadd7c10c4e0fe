"""Turn a function of x, typed the way people type it, into a sympy expression, safely.

Why not sympy.parse_expr / sympify? They run Python's eval() on the text, so an input like
"__import__('os').system(...)" would execute. Here a small tokenizer and a recursive-descent
parser build sympy objects directly from a whitelist; nothing in the text is ever run.
Every failure is a ParseError whose message is one line: what is wrong, where, how to fix it.

Grammar, loosest binding first ("juxtaposed" = implicit multiplication, as in 3x or x sin x):

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary | juxtaposed power)*
    unary      := ("+" | "-")* power
    power      := postfix ("^" ("+" | "-")* postfix)*        right-associative
    postfix    := primary superscript?                        x², x⁻¹, e⁻ˣ
    primary    := number | x | e | pi | "√" unary-power | bracket | "|" expression "|" | function
    function   := name ("^" exponent | superscript)? (bracket | bars | bare-argument)
    name       := sin | ... | arcsec | cbrt | log | log_b    log_b: log_2, log_10, log_{2}, log_(3)

Decisions a reader might not guess:
  * power binds tighter than implicit multiplication: 3x^2 = 3·x², e^2x = e²·x (write e^(2x)).
  * implicit multiplication is ordinary left-to-right multiplication: 1/2x = x/2.
  * "^" is right-associative: 2^x^2 = 2^(x²); a sign may start an exponent: e^-x, x^-2.
  * a bracket right after a function name is its whole argument: sin(x)cos(x) = sin(x)·cos(x).
  * without a bracket, the argument is the run of juxtaposed non-function factors:
    sin 2x = sin(2x), sin x^2 = sin(x²), sin x cos x = sin(x)·cos(x), ln x + 1 = ln(x) + 1,
    and a function as the first factor nests: sin cos x = sin(cos(x)).
  * a power on a function name powers its value (cos²x = cos(x)², sin^2 x = sin(x)²), except
    ^-1 or ^(-1), which is the inverse function (sin⁻¹x = asin(x), sec^(-1)(x) = asec(x)).
  * log_b with a number b (positive, not 1) is the log to base b: log_2 x, log_{10}(x),
    log_(3)(x+1); log2(x) and log10(x) too (only with a bracket: log 2x = ln(2x)); ln and log
    are base e.
  * |...| is the absolute value (abs(...)). A "|" opens a new pair unless it follows a value
    (a number, x, a closing bracket, ...) while the innermost open bracket is a "|", in which
    case it closes that one: x|x| = x·|x|, ||x| - 1| = abs(abs(x) - 1). Bars that open right
    after a value inside bars cannot be told from closing ones (|x|x||): write abs(...) there.
  * cbrt(u) = u^(1/3), sympy's principal cube root, as x^(1/3) is (cbrt(-8) is refused as not real).
  * √ takes one factor: √2 x = √2·x, √x^2 = √(x²).
  * a number may not follow another factor without an operator: "x 2" and "2 3" are errors;
    a power of a number may: (x^2 + x) 2^x = (x^2 + x)·2^x, 2^x 3^x = 2^x·3^x (not inside a bare
    function argument: write sin(x 2^x)).
"""

import math
import re
from string import ascii_letters
from typing import NamedTuple

import sympy

X = sympy.Symbol("x")  # the one variable of the project
MAX_INPUT_CHARS = 500
MAX_NUMBER_DIGITS = 15  # per typed number
MAX_EXPONENT = 100  # |n| in base^n when n is a number
MAX_RESULT_DIGITS = 1000  # numbers a power may create; stops 9^9^9^9 from hanging sympy
MAX_NESTING = 40  # brackets/functions/roots/powers inside each other; keeps far from RecursionError


class ParseError(ValueError):
    """Input that is not a function of x we accept. str(err) is a single line."""

    def __init__(self, message: str, position: int | None = None):
        super().__init__(" ".join(message.split()))  # one line, whatever went into it
        self.position = position  # 1-based character position, or None


# ----------------------------------------------------------------------------- whitelist

FUNCTIONS = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "cot": sympy.cot,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "arcsec": sympy.asec,
    "arccsc": sympy.acsc,
    "arccot": sympy.acot,
    "asec": sympy.asec,
    "acsc": sympy.acsc,
    "acot": sympy.acot,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "arcsinh": sympy.asinh,
    "arccosh": sympy.acosh,
    "arctanh": sympy.atanh,
    "asinh": sympy.asinh,
    "acosh": sympy.acosh,
    "atanh": sympy.atanh,
    "exp": sympy.exp,
    "ln": sympy.log,
    "log": sympy.log,
    "log10": lambda a: sympy.log(a, 10),
    "log2": lambda a: sympy.log(a, 2),
    "sqrt": sympy.sqrt,
    "cbrt": sympy.cbrt,
    "abs": sympy.Abs,
}
# f^-1 means the inverse function for these; for others it is an error (ambiguous with 1/f).
INVERSES = {
    "sin": sympy.asin,
    "cos": sympy.acos,
    "tan": sympy.atan,
    "sec": sympy.asec,
    "csc": sympy.acsc,
    "cot": sympy.acot,
    "sinh": sympy.asinh,
    "cosh": sympy.acosh,
    "tanh": sympy.atanh,
}
CONSTANTS = {"x": X, "e": sympy.E, "pi": sympy.pi}
# Glued letters are split greedily by the longest known name: "xsinx" -> x sin x, "exp" -> exp.
# log10/log2 and log_b contain digits, so the tokenizer recognises them separately.
_LETTER_NAMES = sorted(
    [n for n in FUNCTIONS if n.isalpha()] + list(CONSTANTS), key=len, reverse=True
)
_SOME_NAMES = "x, e, pi, sin, cos, tan, exp, ln, log, log_2, sqrt, cbrt, arcsin, arcsec, sinh, abs"

_OPERATORS = {
    "+": "+",
    "-": "-",
    "−": "-",
    "–": "-",
    "*": "*",
    "·": "*",
    "×": "*",
    "⋅": "*",
    "/": "/",
    "÷": "/",
    "^": "^",
}
_BRACKET_PAIRS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {**_BRACKET_PAIRS, "|": "|"}  # "|" both opens and closes an absolute value
_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺ˣ", "0123456789-+x", strict=True))
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
# The base of log_b: a number, bare or in one pair of brackets: log_2, log_10, log_{2}, log_(3),
# log_[2].
_BASE_DIGITS = r"(?:[0-9]|\.[0-9])[0-9.]*"  # read by _number, which rejects a second "."
_LOG_BASE = re.compile(
    rf"_\s*(?:\(\s*(?P<a>{_BASE_DIGITS})\s*\)|\{{\s*(?P<b>{_BASE_DIGITS})\s*\}}"
    rf"|\[\s*(?P<c>{_BASE_DIGITS})\s*\]|(?P<d>{_BASE_DIGITS}))"
)
# "f(x) =", "g(x)=", "y =" in front of the function; a bare "x =" would not define a function.
_LEADING_NAME = re.compile(r"\s*(?:[A-Za-z]\s*\(\s*x\s*\)|[A-Za-wyz])\s*=")


# ----------------------------------------------------------------------------- tokenizer


class Token(NamedTuple):
    kind: str  # number, name, op, open, close, comma, sup, root, end
    text: str  # normalised: "-" for "−", "^" for "**", "pi" for "π"
    start: int  # 0-based index into the original text
    end: int
    value: sympy.Expr | None = None  # numbers and superscripts


def _ends_a_value(tok: Token) -> bool:
    """Can this token end a value (so that a "|" after it may close an absolute value)?"""
    return tok.kind in ("number", "close", "sup") or (tok.kind == "name" and tok.text in CONSTANTS)


def _tokenize(text: str, i: int) -> list[Token]:
    tokens = []
    opened = []  # the open brackets so far, innermost last: decides whether a "|" opens or closes
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "|":
            closes = bool(tokens) and _ends_a_value(tokens[-1]) and opened[-1:] == ["|"]
            tokens.append(Token("close" if closes else "open", ch, i, i + 1))
            if closes:
                opened.pop()
            else:
                opened.append(ch)
            i += 1
        elif _NUMBER.match(text, i):  # 12, 2.5, .5
            tokens.append(_number(text, i))
            i = tokens[-1].end
        elif ch in ascii_letters:
            j = i
            while j < len(text) and text[j] in ascii_letters:
                j += 1
            tokens += _names(text, i, j)
            i = tokens[-1].end
        elif text.startswith("**", i):
            tokens.append(Token("op", "^", i, i + 2))
            i += 2
        elif ch in _OPERATORS:
            tokens.append(Token("op", _OPERATORS[ch], i, i + 1))
            i += 1
        elif ch in _BRACKET_PAIRS or ch in ")]}":
            tokens.append(Token("open" if ch in _BRACKET_PAIRS else "close", ch, i, i + 1))
            if ch in _BRACKET_PAIRS:
                opened.append(ch)
            elif opened:  # a mismatch is reported by _check_brackets, with both positions
                opened.pop()
            i += 1
        elif ch == ",":
            tokens.append(Token("comma", ch, i, i + 1))
            i += 1
        elif ch == "π":
            tokens.append(Token("name", "pi", i, i + 1))
            i += 1
        elif ch == "√":
            tokens.append(Token("root", ch, i, i + 1))
            i += 1
        elif ch in _SUPERSCRIPTS:
            tokens.append(_superscript(text, i))
            i = tokens[-1].end
        else:
            raise _bad_character(text, i)
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens


def _number(text: str, i: int) -> Token:
    digits = _NUMBER.match(text, i).group()
    end = i + len(digits)
    if text[end : end + 1] == ".":
        raise ParseError(
            f"'.' at position {end + 1} does not belong to the number {digits!r}: "
            f"a number has at most one decimal point, with digits after it, as in 2.5",
            end + 1,
        )
    if sum(c.isdigit() for c in digits) > MAX_NUMBER_DIGITS:
        raise ParseError(
            f"the number at position {i + 1} has more than {MAX_NUMBER_DIGITS} digits: "
            f"use a smaller number",
            i + 1,
        )
    whole, _, fraction = digits.partition(".")
    # Exact rational from the digits (0.5 -> 1/2), so results are exact and canonical.
    value = sympy.Rational(int(whole + fraction or "0"), 10 ** len(fraction))
    return Token("number", digits, i, end, value)


def _split_letters(word: str) -> tuple[list[str], int | None]:
    """Split glued letters greedily by the longest known name; also return where it failed, or
    None."""
    pieces, k = [], 0
    while k < len(word):
        name = next((n for n in _LETTER_NAMES if word.startswith(n, k)), None)
        if name is None:
            return pieces, k
        pieces.append(name)
        k += len(name)
    return pieces, None


def _names(text: str, i: int, j: int) -> list[Token]:
    """Tokens for the letter run text[i:j]."""
    word = text[i:j]
    pieces, failed_at = _split_letters(word)
    if failed_at is not None:
        position = i + failed_at + 1
        # A lone unknown letter ("x + y", "xt", "t^2") is a second variable; a longer one is a name.
        if _split_letters(word[failed_at + 1 :])[1] is None:
            raise ParseError(
                f"unknown variable {word[failed_at]!r} at position {position}: "
                f"write the function in x (the only variable allowed)",
                position,
            )
        unknown = (
            word[failed_at:]
            if len(word) - failed_at <= 20
            else word[failed_at : failed_at + 20] + "..."
        )
        raise ParseError(
            f"unknown name {unknown!r} at position {position}: write the function in x, "
            f"using known names such as {_SOME_NAMES}",
            position,
        )
    tokens, k = [], i
    for name in pieces:
        tokens.append(Token("name", name, k, k + len(name)))
        k += len(name)
    # log10(x) and log2(x): only directly followed by a bracket, so "log 2x" stays log(2x).
    tail = re.match(r"(10|2)(?=\s*[(\[{])", text[j:])
    if tokens[-1].text == "log" and tail:
        tokens[-1] = Token("name", "log" + tail.group(1), tokens[-1].start, j + len(tail.group(1)))
    elif tokens[-1].text == "log" and text.startswith("_", j):
        tokens[-1] = _log_base(text, tokens[-1].start, j)
    return tokens


def _log_base(text: str, start: int, j: int) -> Token:
    """log_2, log_10, log_{2}, log_(3): a "log" name token whose value is its numeric base."""
    m = _LOG_BASE.match(text, j)
    if not m:
        raise ParseError(
            f"log_ at position {start + 1} needs a number as its base right after the '_', "
            f"as in log_2(x), log_10 x or log_{{2}}(x); for any other base write log(x, base)",
            start + 1,
        )
    group = next(g for g in "abcd" if m.group(g) is not None)
    number = _number(text, m.start(group))
    if number.end != m.end(group):  # cannot happen (_number raises first); a safety net
        raise ParseError(
            f"the log base {m.group(group)!r} at position {m.start(group) + 1} is not a number: "
            f"write it as in log_2(x) or log_10 x",
            m.start(group) + 1,
        )
    if number.value == 0 or number.value == 1:
        raise ParseError(
            f"log base {number.text} at position {m.start(group) + 1} must be positive and not 1: "
            f"use a base such as 10 or 2",
            m.start(group) + 1,
        )
    return Token("name", "log", start, m.end(), number.value)


def _superscript(text: str, i: int) -> Token:
    j = i
    while j < len(text) and text[j] in _SUPERSCRIPTS:
        j += 1
    plain = "".join(_SUPERSCRIPTS[c] for c in text[i:j])
    m = re.fullmatch(r"([+-]?)([0-9]*)(x?)", plain)
    if not m or not (m.group(2) or m.group(3)) or len(m.group(2)) > MAX_NUMBER_DIGITS:
        raise ParseError(
            f"superscript {text[i:j]!r} at position {i + 1} is not an exponent we read: "
            f"use a signed whole number or ˣ, as in x² or x⁻¹",
            i + 1,
        )
    sign, digits, has_x = m.groups()
    value = sympy.Integer(int(digits)) if digits else sympy.Integer(1)
    value = value * X if has_x else value
    return Token("sup", text[i:j], i, j, -value if sign == "-" else value)


def _bad_character(text: str, i: int) -> ParseError:
    ch, position = text[i], i + 1
    hints = {
        "=": (
            "only a leading 'f(x) =' or 'y =' may use '='; write just the right-hand side, "
            "e.g. x^2 + 1"
        ),
        ".": "use '.' only as a decimal point, as in 0.5",
        "_": "'_' only writes a log base, as in log_2(x)",
    }
    hint = hints.get(ch, "use numbers, x, + - * / ^, brackets and names like sin, ln, sqrt")
    return ParseError(f"character {ch!r} at position {position} is not allowed: {hint}", position)


def _bars_hint(tokens: list[Token], bars: list[Token]) -> str:
    """How to write an absolute value the bars could not say. The ambiguous case gets its reason:
    a bar after a value, with bars closed before it, could have been meant to open (|x|x||)."""
    starts = {bar.start for bar in bars}
    first = min(starts)
    closed_before = any(
        tok.kind == "close" and tok.text == "|" and tok.start < first for tok in tokens
    )
    opened_after_value = any(
        k and tok.start in starts and tok.kind == "open" and _ends_a_value(tokens[k - 1])
        for k, tok in enumerate(tokens)
    )
    if closed_before and opened_after_value:
        return (
            "; a '|' right after a value closes the innermost open bar, so write bars inside "
            "bars with abs(), as in abs(x abs(x)) for |x|x||"
        )
    return ", or write abs(...), as in abs(x)"


def _check_brackets(tokens: list[Token]) -> None:
    """Report unbalanced or mismatched brackets up front, naming the bracket and position."""
    stack = []
    for tok in tokens:
        if tok.kind == "open":
            stack.append(tok)
        elif tok.kind == "close":
            if not stack:
                raise ParseError(
                    f"closing bracket {tok.text!r} at position {tok.start + 1} has no opening "
                    f"bracket: remove it or add an opening bracket before it",
                    tok.start + 1,
                )
            opener = stack.pop()
            wanted = _CLOSERS[opener.text]
            if tok.text != wanted and opener.text == "|":
                raise ParseError(
                    f"the absolute value bar '|' at position {opener.start + 1} is not closed "
                    f"before {tok.text!r} at position {tok.start + 1}: close it with '|' first"
                    f"{_bars_hint(tokens, [opener])}",
                    tok.start + 1,
                )
            if tok.text != wanted:
                raise ParseError(
                    f"bracket {tok.text!r} at position {tok.start + 1} does not match "
                    f"{opener.text!r} at position {opener.start + 1}: close it with {wanted!r}",
                    tok.start + 1,
                )
    if stack and stack[-1].text == "|":
        opener = stack[-1]
        raise ParseError(
            f"the absolute value bar '|' at position {opener.start + 1} is never closed: add a "
            f"'|' where it should end{_bars_hint(tokens, [t for t in stack if t.text == '|'])}",
            opener.start + 1,
        )
    if stack:
        opener = stack[-1]
        raise ParseError(
            f"bracket {opener.text!r} at position {opener.start + 1} is never closed: "
            f"add {_BRACKET_PAIRS[opener.text]!r} where it should end",
            opener.start + 1,
        )


# ----------------------------------------------------------------------------- parser


def _digits(expr: sympy.Expr) -> list[float]:
    """Decimal digits of each rational number inside expr (numerator or denominator, the larger)."""
    return [math.log10(max(abs(r.p), r.q)) for r in expr.atoms(sympy.Rational)]


class _Parser:
    """Recursive descent over the tokens, one method per grammar rule (see module docstring)."""

    def __init__(self, text: str, tokens: list[Token]):
        self.text, self.tokens, self.i, self.depth = text, tokens, 0, 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def at(self, kind: str, *texts: str) -> bool:
        tok = self.peek()
        return tok.kind == kind and (not texts or tok.text in texts)

    def signs(self) -> bool:
        """Consume leading + and - signs; True if they make a minus."""
        negative = False
        while self.at("op", "+", "-"):
            negative ^= self.take().text == "-"
        return negative

    def span(self, start: int) -> str:
        """The source text from index start to the end of the last consumed token."""
        return " ".join(self.text[start : self.tokens[self.i - 1].end].split())

    # grammar rules -------------------------------------------------------------

    def expression(self) -> sympy.Expr:
        start = self.peek().start
        value = self.term()
        while self.at("op", "+", "-"):
            plus = self.take().text == "+"
            right = self.term()
            value = self.checked(value + right if plus else value - right, start)
        return value

    def term(self) -> sympy.Expr:
        start = self.peek().start
        value = self.unary()
        while True:
            if self.at("op", "*", "/"):
                op = self.take()
                right_start = self.peek().start
                right = self.unary()
                if op.text == "*":
                    value = self.checked(value * right, start)
                elif right == 0:
                    raise ParseError(
                        f"{self.span(start)!r} at position {start + 1} is undefined: it divides "
                        f"by {self.span(right_start)!r}, which is 0; change the divisor",
                        start + 1,
                    )
                else:
                    value = self.checked(value / right, start)
            elif self.juxtaposed(allow_functions=True):
                value = self.checked(value * self.power(), start)
            else:
                return value

    def juxtaposed(self, allow_functions: bool) -> bool:
        """Does the next token start a factor that multiplies the previous one (3x, x sin x)?"""
        tok = self.peek()
        following = self.tokens[self.i + 1] if tok.kind != "end" else tok
        if (
            tok.kind == "number"
            and allow_functions
            and following.kind == "op"
            and following.text == "^"
        ):
            return True  # a power of a number as the next factor: (x^2 + x) 2^x, 2^x 3^x
        if tok.kind == "number":
            previous = self.tokens[self.i - 1].text
            raise ParseError(
                f"number {tok.text!r} at position {tok.start + 1} follows {previous!r} "
                f"without an operator: write * or ^ between them",
                tok.start + 1,
            )
        if tok.kind == "name":
            return allow_functions or tok.text in CONSTANTS
        return tok.kind in ("open", "root")

    def unary(self) -> sympy.Expr:
        negative = self.signs()
        value = self.power()
        return -value if negative else value

    def power(self) -> sympy.Expr:
        # Collect base ^ a ^ b ... in a loop, then fold from the right: 2^x^2 = 2^(x^2).
        # A sign in front of an exponent applies to everything above it: 2^-x^2 = 2^(-(x^2)).
        operands = [(False, self.peek().start, self.postfix())]  # (negative, start, value)
        depth_before = self.depth
        while self.at("op", "^"):
            self.take()
            self.depth += 1  # a tower is nesting too, even though we parse it in a loop
            negative, start = self.signs(), self.peek().start
            operands.append((negative, start, self.postfix()))
        self.depth = depth_before
        negative, _, value = operands[-1]
        value = -value if negative else value
        for negative, start, base in reversed(operands[:-1]):
            value = self.pow(base, value, start)
            value = -value if negative else value
        return value

    def postfix(self) -> sympy.Expr:
        start = self.peek().start
        value = self.primary()
        if self.at("sup"):
            value = self.pow(value, self.take().value, start)
        return value

    def primary(self) -> sympy.Expr:
        tok = self.peek()
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ParseError(
                    f"the input is nested too deeply at position {tok.start + 1} (more than "
                    f"{MAX_NESTING} brackets, functions, roots or powers inside each other): "
                    f"simplify it",
                    tok.start + 1,
                )
            if tok.kind == "number":
                return self.take().value
            if tok.kind == "name" and tok.text in CONSTANTS:
                return CONSTANTS[self.take().text]
            if tok.kind == "name":
                return self.function()
            if tok.kind == "open":
                return self.bracket()
            if tok.kind == "root":
                self.take()
                negative = self.signs()
                value = self.power()
                return self.pow(-value if negative else value, sympy.S.Half, tok.start)
            raise self.expected_value(tok)
        finally:
            self.depth -= 1

    def bracket(self) -> sympy.Expr:
        opener = self.take()
        if self.at("close"):
            raise ParseError(
                f"empty brackets at position {opener.start + 1}: put an expression inside, "
                f"as in (x+1)",
                opener.start + 1,
            )
        value = self.expression()
        if not self.at("close"):
            raise self.unexpected(self.peek())
        self.take()
        if opener.text == "|":  # |u| = abs(u)
            return self.checked(sympy.Abs(value), opener.start)
        return value

    def function(self) -> sympy.Expr:
        name_tok = self.take()
        name, start, fn = name_tok.text, name_tok.start, FUNCTIONS[name_tok.text]
        shown = self.text[start : name_tok.end]  # as typed: "log_{2}" for a log with a base
        # A power written on the name: cos^2(x), cos²x, sin^-1(x), sin⁻¹x.
        exponent = None
        if self.at("sup"):
            exponent = self.take().value
        elif self.at("op", "^"):
            self.take()
            negative = self.signs()
            exponent = self.postfix()
            exponent = -exponent if negative else exponent
        if exponent == -1:
            if name not in INVERSES:
                raise ParseError(
                    f"{name}^-1 at position {start + 1} is not supported: only trig and "
                    f"hyperbolic functions have ^-1 inverses; for the reciprocal write 1/{name}(x)",
                    start + 1,
                )
            fn, exponent = INVERSES[name], None

        base = name_tok.value  # log_2: the base came with the name
        if self.at("open", "|"):  # sin|x|: the bars are the whole argument, as a bracket is
            argument = self.bracket()
        elif self.at("open"):
            opener = self.take()
            if self.at("close"):
                raise ParseError(
                    f"empty brackets after {shown} at position {opener.start + 1}: put its "
                    f"argument inside, as in {shown}(x)",
                    opener.start + 1,
                )
            argument = self.expression()
            if self.at("comma") and name == "log" and base is None:  # log(x, base)
                self.take()
                base_start = self.peek().start
                base = self.expression()
                if base.is_number and (base.is_positive is False or base == 1):
                    raise ParseError(
                        f"log base {self.span(base_start)!r} at position {base_start + 1} must "
                        f"be positive and not 1: use a base such as 10 or 2",
                        base_start + 1,
                    )
            if not self.at("close"):
                raise self.unexpected(self.peek())
            self.take()
        else:
            argument = self.bare_argument(name_tok)

        if fn is sympy.sqrt:
            value = self.pow(argument, sympy.S.Half, start)  # through pow() for the size checks
        elif fn is sympy.cbrt:
            value = self.pow(argument, sympy.Rational(1, 3), start)
        elif base is not None:
            value = self.checked(sympy.log(argument, base), start)
        else:
            value = self.checked(fn(argument), start)
        if exponent is not None:
            value = self.pow(value, exponent, start)
        return value

    def bare_argument(self, name_tok: Token) -> sympy.Expr:
        """sin 2x, ln x, sin x cos x: the run of juxtaposed non-function factors after the name."""
        if self.at("name") and self.peek().text in FUNCTIONS:  # sin cos x = sin(cos(x))
            return self.power()
        tok = self.peek()  # no sign here: "ln + 1" must not become ln(+1)
        if not (
            tok.kind in ("number", "open", "root") or (tok.kind == "name" and tok.text in CONSTANTS)
        ):
            name = self.text[name_tok.start : name_tok.end]
            raise ParseError(
                f"{name} at position {name_tok.start + 1} needs an argument: write it right "
                f"after the name, as in {name}(x) or {name} x; a signed argument needs "
                f"brackets: {name}(-x)",
                name_tok.start + 1,
            )
        start = tok.start
        value = self.power()
        while self.juxtaposed(allow_functions=False):
            value = self.checked(value * self.power(), start)
        return value

    # sympy building with safety checks ---------------------------------------------

    def pow(self, base: sympy.Expr, exponent: sympy.Expr, start: int) -> sympy.Expr:
        """base**exponent, refusing results too big to build (9^9^9) before sympy tries."""
        if exponent.is_Rational and abs(exponent) != 1:
            if abs(exponent) > MAX_EXPONENT:
                raise ParseError(
                    f"the exponent {exponent} in {self.span(start)!r} at position {start + 1} "
                    f"is too large: keep exponents between -{MAX_EXPONENT} and {MAX_EXPONENT}",
                    start + 1,
                )
            # Upper bound on the digits sympy would create: every number in the base, to that power.
            if max(abs(exponent), 1) * sum(_digits(base)) > MAX_RESULT_DIGITS:
                raise ParseError(
                    f"{self.span(start)!r} at position {start + 1} makes a number too large "
                    f"(over {MAX_RESULT_DIGITS} digits): use smaller numbers or exponents",
                    start + 1,
                )
        return self.checked(sympy.Pow(base, exponent), start)

    def checked(self, value: sympy.Expr, start: int) -> sympy.Expr:
        """Reject values that are undefined (1/0, log(0)), not real (sqrt(-1)) or hold huge
        numbers."""
        where = f"{self.span(start)!r} at position {start + 1}"
        if value.has(
            sympy.S.NaN, sympy.S.ComplexInfinity, sympy.S.Infinity, sympy.S.NegativeInfinity
        ):
            raise ParseError(
                f"{where} is undefined (division by zero or a log of 0, for example): "
                f"change it so it has a finite value",
                start + 1,
            )
        if value.has(sympy.S.ImaginaryUnit) or (
            value.is_number and value.is_extended_real is False
        ):
            raise ParseError(
                f"{where} is not real (a square root or log of a negative number, for "
                f"example): change it so it is a real number",
                start + 1,
            )
        if max(_digits(value), default=0) > MAX_RESULT_DIGITS:  # e.g. a product of many 9^99
            raise ParseError(
                f"{where} makes a number too large (over {MAX_RESULT_DIGITS} digits): use "
                f"smaller numbers",
                start + 1,
            )
        return value

    # error messages --------------------------------------------------------------

    def expected_value(self, tok: Token) -> ParseError:
        position = tok.start + 1
        if tok.kind == "end":
            last = self.tokens[self.i - 1] if self.i else None
            after = f" after {last.text!r} at position {last.start + 1}" if last else ""
            return ParseError(
                f"the input ends too early{after}: add a value (a number, x or a bracket) after it",
                position,
            )
        if tok.kind == "close":
            return ParseError(
                f"a value is missing before {tok.text!r} at position {position}: "
                f"add a number, x or an expression there",
                position,
            )
        if tok.kind == "sup":
            return ParseError(
                f"superscript {tok.text!r} at position {position} has nothing to raise: "
                f"put it right after a value, as in x²",
                position,
            )
        if tok.kind == "op":
            return ParseError(
                f"operator {tok.text!r} at position {position} has no value on its left: "
                f"put a number, x or a bracket before it, or remove it",
                position,
            )
        return self.unexpected(tok)

    def unexpected(self, tok: Token) -> ParseError:
        position = tok.start + 1
        if tok.kind == "comma":
            return ParseError(
                f"',' at position {position} is not allowed here: only log(x, base) takes "
                f"two arguments; use '.' for decimals, as in 0.5",
                position,
            )
        if tok.kind == "sup":
            return self.expected_value(tok)
        return ParseError(
            f"unexpected {tok.text!r} at position {position}: check the operators "
            f"and brackets around it",
            position,
        )


# ----------------------------------------------------------------------------- entry point


def typed_line(line: str) -> sympy.Expr:
    """The math of one line of a scene's docstring, `f(x) = x^2 sin(x)`: what follows the
    first " = ", by parse_function. Scenes read their docstring with it and so does the math
    check, so the formula checked is the formula drawn (sin x cos x is sin(x)*cos(x) for both)."""
    return parse_function(line.split(" = ", 1)[1])


def parse_function(text: str) -> sympy.Expr:
    """Parse a function of x such as "3x^2 + sin x" or "f(x) = e^-x" into a sympy expression."""
    if not isinstance(text, str):
        raise ParseError(
            f"expected text, got {type(text).__name__}: pass the function as a string like 'x^2'"
        )
    if len(text) > MAX_INPUT_CHARS:  # before anything else looks at the text
        raise ParseError(
            f"the input is {len(text)} characters long, over the limit of {MAX_INPUT_CHARS}: "
            f"shorten it"
        )
    if not text.strip():
        raise ParseError("the input is empty: type a function of x, such as x^2 + 1")
    prefix = _LEADING_NAME.match(text)
    begin = prefix.end() if prefix else 0
    if not text[begin:].strip():
        raise ParseError(
            f"nothing follows {text[:begin].strip()!r}: write a function of x after the '=', "
            f"as in f(x) = x^2"
        )

    tokens = _tokenize(text, begin)
    _check_brackets(tokens)
    parser = _Parser(text, tokens)
    value = parser.expression()
    if not parser.at("end"):
        raise parser.unexpected(parser.peek())
    return value


def function_lines(path) -> list[tuple[int, str]]:
    """A functions file (`--from-file`, `eval.functions_file`): one function per line as people
    type them, `#` comments and blank lines skipped; (line number, text) for each, unparsed, so
    that one bad line is reported on its own and never stops the others."""
    from pathlib import Path

    lines = Path(path).read_text().splitlines()
    return [
        (number, text)
        for number, line in enumerate(lines, 1)
        if (text := line.split("#", 1)[0].strip())
    ]
