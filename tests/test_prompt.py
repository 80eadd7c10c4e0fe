import json

import pytest

from derivative_animator.data import prompt
from derivative_animator.data.prompt import (
    DEFAULT_FORMAT,
    PromptFormat,
    PromptFormatError,
    encode_prompt,
    require_same,
)
from derivative_animator.math.parsing import ParseError


def test_default_is_the_original_alpaca_text():
    assert DEFAULT_FORMAT.format("x^2") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nGenerate Manim animation code for the "
        "derivative of: f(x) = x^2\n\n### Response:\n"
    )


def test_training_prompt_is_byte_identical_to_inference_prompt(default_splits):
    for record in default_splits["train"][:50]:
        # what inference sends for the function as a user would type it
        assert prompt.build_prompt(record.function).encode() == record.prompt.encode()


@pytest.mark.parametrize(
    "variants",
    [
        ["sin(x)cos(x)", "sin x cos x", "sin(x)*cos(x)", "f(x) = sin(x) cos(x)"],
        ["e^{-x^2}", "e^(-x^2)", "exp(-x**2)", "y = e^-x^2"],
        ["x²+3x", "x^2 + 3x", "x**2+3*x"],
    ],
)
def test_every_way_of_typing_a_function_gives_one_prompt(variants):
    assert len({prompt.build_prompt(v) for v in variants}) == 1


def test_bad_function_never_reaches_a_prompt():
    with pytest.raises(ParseError):
        prompt.build_prompt("__import__('os')")


def test_save_load_and_hash(tmp_path):
    DEFAULT_FORMAT.save(tmp_path)
    assert PromptFormat.load(tmp_path) == DEFAULT_FORMAT
    stored = json.loads((tmp_path / prompt.FILENAME).read_text())
    assert (
        stored["sha256"] == DEFAULT_FORMAT.sha256 and stored["template"] == DEFAULT_FORMAT.template
    )


def test_missing_tampered_or_different_format_is_refused(tmp_path):
    with pytest.raises(PromptFormatError, match="carries no prompt format"):
        PromptFormat.load(tmp_path)
    other = PromptFormat(name="plain", template="Function: {function}\nCode:\n")
    other.save(tmp_path)
    with pytest.raises(PromptFormatError, match="--allow-prompt-mismatch"):
        prompt.require_same(PromptFormat.load(tmp_path))
    data = json.loads((tmp_path / prompt.FILENAME).read_text())
    data["template"] = "Task {function}"
    (tmp_path / prompt.FILENAME).write_text(json.dumps(data))
    with pytest.raises(PromptFormatError, match="hash does not match"):
        PromptFormat.load(tmp_path)


def test_template_needs_one_placeholder():
    with pytest.raises(PromptFormatError, match="exactly one {function} placeholder"):
        PromptFormat(name="bad", template="no placeholder")


def test_a_stored_notation_is_read_back_and_a_different_one_refused(tmp_path):
    older = PromptFormat(
        name=DEFAULT_FORMAT.name, template=DEFAULT_FORMAT.template, notation="typed-0"
    )
    older.save(tmp_path)
    assert PromptFormat.load(tmp_path) == older
    with pytest.raises(PromptFormatError, match="--allow-prompt-mismatch"):
        require_same(PromptFormat.load(tmp_path), DEFAULT_FORMAT)


def test_the_prompt_is_encoded_with_the_tokenizers_special_tokens():
    """DeepSeek-Coder's tokenizer puts BOS first, as its own fine-tuning script does; the
    embedded tokenizer has none. Either way both sides encode through this one call."""
    calls = []

    def tokenizer(text, **kwargs):
        calls.append((text, kwargs))
        return {"input_ids": [7]}

    assert encode_prompt(tokenizer, "prompt") == [7]
    assert calls == [("prompt", {"add_special_tokens": True})]
