"""BOS and chat-template prompt assembly (`evaluation.prompting`), on tokenizers built in code."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import tokenizer_adding_bos

from ckptlab.evaluation.prompting import PromptFormat, default_prefix
from ckptlab.tasks.types import Example, TaskSpec


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory):
    from ckptlab.data.tokenizer import train_tokenizer

    return train_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 20, 300, tmp_path_factory.mktemp("t"))


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    return tokenizer_adding_bos(tmp_path_factory.mktemp("bos"), ["the cat sat on the mat"])


def spec(**overrides) -> TaskSpec:
    return TaskSpec(
        name="t",
        path=Path("t.yaml"),
        type="classification",
        fields=["text"],
        templates={"p": "Text: {text}\nLabel:"},
        metrics=["accuracy"],
        splits={},
        eval_split="test",
        choices=["no", "yes"],
        **overrides,
    )


def example(text: str, gold: str = "yes") -> Example:
    return Example(text, 0, {"text": text}, gold, ["no", "yes"], "f", 1)


def test_auto_follows_the_tokenizers_default(plain_tokenizer, bos_tokenizer) -> None:
    assert default_prefix(plain_tokenizer) == []
    assert default_prefix(bos_tokenizer) == [bos_tokenizer.bos_token_id]
    assert PromptFormat().prefix_tokens(bos_tokenizer, "Text: a") == [bos_tokenizer.bos_token_id]
    assert PromptFormat().prefix_tokens(plain_tokenizer, "Text: a") == []


def test_true_adds_bos_even_when_the_tokenizer_would_not_and_never_twice(plain_tokenizer, bos_tokenizer) -> None:
    assert PromptFormat(add_bos=True).prefix_tokens(plain_tokenizer, "x") == [plain_tokenizer.bos_token_id]
    assert PromptFormat(add_bos=False).prefix_tokens(bos_tokenizer, "x") == []
    already = bos_tokenizer.bos_token + "x"
    assert PromptFormat(add_bos=True).prefix_tokens(bos_tokenizer, already) == []
    assert PromptFormat().prefix_tokens(bos_tokenizer, already) == []


def test_every_option_changes_the_key() -> None:
    formats = [
        PromptFormat(),
        PromptFormat(add_bos=True),
        PromptFormat(add_bos=False),
        PromptFormat(apply_chat_template=True),
        PromptFormat(apply_chat_template=True, system_instruction="Be brief."),
        PromptFormat(apply_chat_template=True, fewshot_as_multiturn=False),
    ]
    assert len({f.keyed("abc") for f in formats}) == len(formats)
    assert PromptFormat().keyed("abc") == PromptFormat().keyed("abc") != PromptFormat().keyed("abd")


def test_chat_few_shot_is_multi_turn_or_one_user_turn(plain_tokenizer) -> None:
    plain_tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    task = spec(preamble="Classify.")
    demos = [example("good", "yes"), example("bad", "no")]
    multi = PromptFormat(apply_chat_template=True).prompt(
        task, task.templates["p"], example("ok"), demos, plain_tokenizer
    )
    assert multi == (
        "[system]Classify.[user]Text: good\nLabel:[assistant]yes[user]Text: bad\nLabel:[assistant]no"
        "[user]Text: ok\nLabel:[assistant]"
    )
    single = PromptFormat(apply_chat_template=True, fewshot_as_multiturn=False).prompt(
        task, task.templates["p"], example("ok"), demos, plain_tokenizer
    )
    assert single == (
        "[system]Classify.[user]Text: good\nLabel: yes\n\nText: bad\nLabel: no\n\nText: ok\nLabel:[assistant]"
    )
    assert PromptFormat(apply_chat_template=True).target_delimiter(task) == ""
    assert PromptFormat().target_delimiter(task) == " "


def test_plain_prompt_puts_system_instruction_and_preamble_first(plain_tokenizer) -> None:
    task = spec(preamble="Classify.\n\n")
    text = PromptFormat(system_instruction="Be brief.").prompt(task, task.templates["p"], example("ok"), [], None)
    assert text == "Be brief.\n\nClassify.\n\nText: ok\nLabel:"


def test_a_tokenizer_without_chat_template_is_refused(tmp_path) -> None:
    from ckptlab.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["a b c"] * 10, 270, tmp_path)
    task = spec()
    with pytest.raises(ValueError, match="no chat template"):
        PromptFormat(apply_chat_template=True).prompt(task, task.templates["p"], example("ok"), [], tokenizer)
