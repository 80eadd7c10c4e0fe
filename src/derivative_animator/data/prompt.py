"""The one place prompts are formatted, for training and for inference alike.

A model trained on one prompt format and queried with another writes gibberish. Here
both sides call `PromptFormat.format`, the format's text and hash travel with every
dataset and checkpoint, and inference refuses a checkpoint whose format differs.

The function goes into the prompt in its canonical notation (`notation.typed` of the
parsed input), so `sin x cos x`, `sin(x)*cos(x)` and `sin(x)cos(x)` all give the very
prompt the model saw in training for that function.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from derivative_animator.math import notation
from derivative_animator.math.parsing import parse_function

INSTRUCTION = "Generate Manim animation code for the derivative of: f(x) = {function}"
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n"
    f"{INSTRUCTION}\n\n"
    "### Response:\n"
)
# Bump when `notation.typed` changes what it prints: it is part of the prompt's bytes.
NOTATION_VERSION = "typed-v1"
FILENAME = "prompt_format.json"


class PromptFormatError(ValueError):
    """A stored prompt format is missing, malformed, or not the one this code uses."""


@dataclass(frozen=True)
class PromptFormat:
    name: str
    template: str
    notation: str = NOTATION_VERSION

    def __post_init__(self):
        if self.template.count("{function}") != 1:
            raise PromptFormatError("a prompt template needs exactly one {function} placeholder")

    @property
    def sha256(self) -> str:
        payload = json.dumps({"template": self.template, "notation": self.notation}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def format(self, function: str) -> str:
        """The prompt for a function as a person typed it (raises ParseError on bad input)."""
        canonical = notation.typed(parse_function(function))
        return self.template.replace("{function}", canonical)

    def to_dict(self) -> dict:
        return {**asdict(self), "sha256": self.sha256}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PromptFormat:
        path = Path(directory) / FILENAME
        if not path.is_file():
            raise PromptFormatError(f"{path} is missing: this checkpoint carries no prompt format")
        try:
            data = json.loads(path.read_text())
            stored = cls(name=data["name"], template=data["template"], notation=data["notation"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PromptFormatError(f"{path} is not a valid prompt format file ({err})") from None
        if data.get("sha256") != stored.sha256:
            raise PromptFormatError(f"{path}: stored hash does not match its template")
        return stored


DEFAULT_FORMAT = PromptFormat(name="alpaca", template=ALPACA_TEMPLATE)


def instruction(function: str) -> str:
    """The request in words, as a chat message carries it (hosted LLMs, `derivanim serve`)."""
    return INSTRUCTION.replace("{function}", function)


# How people ask for a derivative: the prompt's own "f(x) = ...", or words before the function.
_NAMED = re.compile(r"\b[fy]\s*(?:\(\s*x\s*\))?\s*=")
_ASKING = re.compile(
    r"\b(?:derivatives?\s+of|differentiate|derive|animate|animation\s+of|d\s*/\s*dx|"
    r"slope\s+of|graph\s+of|plot)\b",
    re.IGNORECASE,
)
# ... and around it: "the function", "with respect to x", "please", quotes, a question mark.
_LEADING = re.compile(r"^(?:\s*(?:(?:the\s+function|the|function|me|please)\b|:))+", re.IGNORECASE)
_TRAILING = re.compile(
    r"(?:\s+(?:with\s+respect\s+to|w\.?r\.?t\.?)\s+x|\s+please|\s+for\s+me|[\s?!.,;:]+)+$",
    re.IGNORECASE,
)
_QUOTES = "`'\"$ "
ASK_LIKE_THIS = "ask e.g. 'derivative of x^3', 'animate e^{-x^2}' or 'f(x) = x^2 sin(x)'"


def _bare(text: str) -> str:
    """The text without the words and marks people put around a function."""
    return _TRAILING.sub("", _LEADING.sub("", text.strip()).strip(_QUOTES)).strip(_QUOTES)


def function_in_message(message: str) -> str:
    """The function a chat message asks about, read by the project's parser (never Python's
    eval): the text after its last `f(x) =` (the prompt's own wording; `y =` too), else after
    its last "derivative of", "differentiate", "animate", "d/dx", ..., else the whole message
    ("x^3", "sin x cos x"). A server then formats the checkpoint's own prompt for it.
    ValueError, one line naming requests that work, when no function can be read."""
    candidates = [
        message[found[-1].end() :]
        for found in (list(_NAMED.finditer(message)), list(_ASKING.finditer(message)))
        if found
    ]
    reasons = []
    for text in [*candidates, message]:
        function = _bare(text)
        try:
            parse_function(function)
        except ValueError as err:
            reasons.append(err)
            continue
        return function
    asked = " ".join((candidates[0] if candidates else message).split())
    shown = asked if len(asked) <= 60 else asked[:57] + "..."
    why = (
        f" ({reasons[0]})" if candidates or " " not in asked else ""
    )  # a sentence without a function: no parser talk
    raise ValueError(f"no function of x could be read in {shown!r}{why}; {ASK_LIKE_THIS}")


def build_prompt(function: str, prompt_format: PromptFormat = DEFAULT_FORMAT) -> str:
    return prompt_format.format(function)


def require_same(stored: PromptFormat, current: PromptFormat = DEFAULT_FORMAT) -> None:
    """Refuse to query a model with a prompt format other than the one it was trained on."""
    if stored.sha256 != current.sha256:
        raise PromptFormatError(
            f"the checkpoint was trained with prompt format '{stored.name}' "
            f"({stored.sha256[:12]}), but this code formats prompts as '{current.name}' "
            f"({current.sha256[:12]}); pass --allow-prompt-mismatch to use the checkpoint's own"
        )


def encode_prompt(tokenizer, prompt_text: str) -> list[int]:
    """Token ids of a prompt, special tokens (a BOS, where the tokenizer has one) included.
    Training and inference both call this, so the model sees the same ids either way."""
    return tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
