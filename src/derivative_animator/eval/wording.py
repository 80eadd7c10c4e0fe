"""What the generation service (eval/service.py) tells people, in words: the service decides,
this module says what it decided. Three audiences:
- the page's progress (`Steps`): each step of `write` in words with its time ("try 1 of 3: the
  derivative is wrong (it wrote 3x); written in 2.1 s, checked in 3.0 s"), no check marks;
- the CLI's lines (`Say`): each attempt's checks as marks (`marks`, `attempt_line`), the vote,
  the repair;
- everyone: a checked scene in words (`verdict`), verified generation in one sentence (`story`),
  and the summary of what `write` shows and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from derivative_animator.eval.verify import Try, Verified
from derivative_animator.math.header import derivative_line
from derivative_animator.math.judge import states_wrong_derivative
from derivative_animator.render.checks import REPORTED

Say = Callable[[str], None]
_ORDINALS = (
    "first",
    "second",
    "third",
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
)


def quiet(message: str) -> None:
    """Tells no one: what `say` and `Steps` do unless given."""


@dataclass
class Steps:
    """What `write` tells a person while it works, in words: `doing(text)` when a step starts
    (the page shows it beside a spinner), `done(text)` when one ends, its time in the text (the
    page lists those). Quiet unless given. The CLI's lines (`say`) are for people who read
    check marks; these are for everyone."""

    doing: Say = quiet
    done: Say = quiet


# --- a checked scene ---------------------------------------------------------------------


def marks(result) -> str:
    """A check result in one line: `syntax:ok structure:ok executes:FAIL math:- layout:-`."""
    return " ".join(
        f"{k}:{'ok' if getattr(result, k) else ('-' if getattr(result, k) is None else 'FAIL')}"
        for k in REPORTED
    )


def verdict(result, code: str, function: str) -> str:
    """A checked scene in words, first failure first: "passed every check", "the derivative is
    wrong (it wrote 3x)", "the scene did not render (...)"."""
    if result is None:
        return "abandoned after its math header: the derivative is wrong"
    if result.passed:
        if result.layout is False:
            return "right and renders, but the layout check failed" + (
                f": {result.layout_problems[0]}" if result.layout_problems else ""
            )
        return "passed every check"
    if result.syntax is False:
        return "the code does not parse" + _why(result, "syntax")
    if result.structure is False:
        return "the code holds no Manim scene"
    if result.math is False:
        if states_wrong_derivative(code, function):
            return f"the derivative is wrong (it wrote {derivative_line(code)})"
        return "the math check failed" + _why(result, "math")
    if result.executes is False:
        return "the scene did not render" + _why(result, "executes")
    return "could not be checked" + (
        ": this machine cannot render"
        if getattr(result, "environment_error", False)
        else _why(result, "executes")
    )


def _why(result, check: str, limit: int = 160) -> str:
    """The part of a result's error that its failing `check` wrote (errors read "syntax: ...;
    executes: ..."), without that name, in brackets and cut to `limit`; "" when it wrote none."""
    if not result.error:
        return ""
    parts = result.error.split("; ")
    said = next(
        (part[len(check) + 2 :] for part in parts if part.startswith(f"{check}: ")), result.error
    )
    return f" ({said if len(said) <= limit else said[: limit - 3] + '...'})"


def _failure(result) -> str:
    """What a failed scene got wrong first, in words."""
    if result is None:
        return "was never checked"
    for name, words in (
        ("syntax", "did not parse"),
        ("structure", "held no Manim scene"),
        ("math", "had a wrong derivative"),
        ("executes", "did not render"),
    ):
        if getattr(result, name) is False:
            return words
    return "could not be checked" + (
        " (this machine cannot render)" if getattr(result, "environment_error", False) else ""
    )


def _ordinal(n: int) -> str:
    return _ORDINALS[n - 1] if n <= len(_ORDINALS) else f"{n}th"


def story(verified: Verified, first_name: str = "greedy") -> str:
    """Verified generation in words, e.g. "greedy's scene had a wrong derivative; 3 of 8 sampled
    derivatives were right; the first passed every check"."""
    first = verified.verification.tries[0].result
    if first is not None and first.passed:
        return f"{first_name}'s scene passed every check"
    said = [f"{first_name}'s scene {_failure(first)}"]
    if verified.sampled:
        said.append(f"{verified.right} of {verified.sampled} sampled derivatives were right")
    kept = verified.kept
    if verified.completed and kept is not None and kept.result.passed:
        said.append(f"the {_ordinal(kept.attempt - 1)} passed every check")
    elif verified.completed:
        said.append(
            "the one completed failed a check"
            if verified.completed == 1
            else f"none of the {verified.completed} completed passed every check"
        )
    return "; ".join(said)


# --- the CLI's lines ---------------------------------------------------------------------


def attempt_line(tried: Try) -> str:
    gen, result = tried.generation, tried.result
    if result is None:
        return (
            f"attempt {tried.attempt}: abandoned after its math header, the derivative is wrong "
            f"({gen.seconds:.2f} s)"
        )
    return (
        f"attempt {tried.attempt}: {marks(result)} "
        f"({gen.seconds:.2f} s, {gen.tokens_per_second:.0f} tokens/s"
        + (f", {gen.rollbacks} lines sampled again" if gen.rollbacks else "")
        + (f", bracket guard overrode {gen.guarded} tokens" if gen.guarded else "")
        + ")"
        + (f"  {result.error}" if result.error else "")
    )


def vote_line(vote) -> str:
    """What self-consistency's vote (`self_consistency.Vote`) did; the page lists it too."""
    if vote.chosen is None:
        return f"self-consistency: {vote.said()} ({vote.seconds:.1f} s); keeping the greedy scene"
    which = "the greedy header" if vote.chosen == 0 else f"sampled header {vote.chosen}"
    return f"self-consistency: {which} wins: {vote.said()} ({vote.seconds:.1f} s)"


def no_pass_line(kept: Try) -> str:
    return f"no attempt passed every check; keeping attempt {kept.attempt} ({marks(kept.result)})"


def corrected_line(tried: Try, true: str, result) -> str:
    return (
        f"the corrected scene of attempt {tried.attempt} (the true f'(x) = {true}): "
        f"{marks(result)}" + (f"  {result.error}" if result.error else "")
    )


# --- the page's steps --------------------------------------------------------------------


def sampling_step(k: int, to_vote: bool) -> str:
    return f"sampling {k} derivatives to vote on" if to_vote else f"sampling {k} other derivatives"


def writing_step(attempt: int, attempts: int, header: str | None = None) -> str:
    """A try begun: the first scene, or one written from a right sampled `header`."""
    if header is None:
        return f"try {attempt} of {attempts}: writing the scene"
    return (
        f"try {attempt} of {attempts}: writing the scene from a right sampled derivative, "
        f"f'(x) = {derivative_line(header)}"
    )


def checking_step(attempt: int, attempts: int) -> str:
    return f"try {attempt} of {attempts}: checking the scene (a quick render in the sandbox)"


def tried_step(tried: Try, attempts: int, function: str, checked_seconds: float | None) -> str:
    """A try judged: its verdict and times (no check time when it was abandoned unchecked)."""
    return (
        f"try {tried.attempt} of {attempts}: "
        f"{verdict(tried.result, tried.generation.code, function)}; written in "
        f"{tried.generation.seconds:.1f} s"
        + (f", checked in {checked_seconds:.1f} s" if checked_seconds is not None else "")
    )


def sampled_step(verified: Verified, completing: int) -> str:
    """The header batch in words: how many of the sampled derivatives are right, what comes next."""
    said = (
        f"sampled {verified.sampled} other derivatives in {verified.header_seconds:.1f} s: "
        f"{verified.right} {'is' if verified.right == 1 else 'are'} right"
    )
    if completing == 1:
        return said + "; writing a scene from " + ("it" if verified.right == 1 else "the first")
    if completing:
        return said + f"; writing scenes from up to {completing} of them, until one passes"
    return said + (
        "; no other try"
        if not verified.right
        else "; the first try already had that header, no other try"
    )


def no_pass_step(kept: Try) -> str:
    return f"no try passed every check; keeping try {kept.attempt}"


def correcting_step(tried: Try, true: str) -> str:
    return f"correcting try {tried.attempt}: its scene with the true f'(x) = {true}, checked again"


def corrected_step(tried: Try, true: str, verdict_words: str, seconds: float) -> str:
    return (
        f"the corrected scene of try {tried.attempt} (f'(x) = {true}): {verdict_words}; "
        f"checked in {seconds:.1f} s"
    )


# --- what `write` shows, and why ---------------------------------------------------------

PASSED = "shown: the model's scene, which passed every check"
_FAILED = "shown: the model's scene, which did not pass every check"


def failed_summary(result, code: str, function: str, wrong_derivative: bool) -> str:
    """The model's scene shown failing: what the model wrote when only its derivative was wrong
    (`wrong_derivative`), else why it failed."""
    if wrong_derivative:
        return f"the model's derivative was wrong (it wrote {derivative_line(code)}); " + _FAILED
    return _FAILED + f": {verdict(result, code, function)}"


def corrected_summary(wrote: str, true: str, result) -> str:
    layout = "" if result.layout is not False else "; its layout check failed"
    return (
        f"the model's derivative was wrong (it wrote {wrote}); shown: the corrected "
        f"scene with f'(x) = {true}, which passed every check{layout}; the model's "
        "own scene is kept"
    )


def correction_failed_summary(wrote: str, true: str, why: str) -> str:
    return (
        f"the model's derivative was wrong (it wrote {wrote}), and the corrected scene with "
        f"f'(x) = {true} failed a check too ({why}); " + _FAILED
    )
