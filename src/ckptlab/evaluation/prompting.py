"""How a unit's prompts reach the model: the BOS token and the chat template.

`PromptFormat` is part of every result's key (it is folded into the task fingerprint by
`keyed`), so results scored with and without a BOS token or a chat template never mix.

BOS. Some tokenizers add a beginning-of-sequence token when asked for special tokens (Llama,
Gemma, Mistral), and their models score badly without it. `add_bos`:
- `auto` (default): what the tokenizer's own `tokenizer(text)` puts before the text, i.e. its
  default with special tokens (lm-evaluation-harness 0.4 does the same); tokens it would append
  (an EOS) are not added;
- `true`: the tokenizer's `bos_token` before every prompt, whatever its default;
- `false`: nothing.
A prompt that already begins with the BOS text (a chat template that writes it) gets no second one.

Chat templates (`apply_chat_template`). The prompt becomes the tokenizer's chat template over
messages, as lm-eval builds them: a system message (the system instruction and the task's
preamble, joined by the few-shot delimiter), then each demonstration as a user turn and an
assistant turn (`fewshot_as_multiturn`, else all demonstrations and the question in one user
turn), then the question as a user turn and the generation prompt. The answer follows the
generation prompt directly (no target delimiter). The template text comes with the model (its
tokenizer files are in the model fingerprint), so a model whose template changes is a new model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ckptlab.tasks import templates as tpl
from ckptlab.tasks.spec import Example, TaskSpec


@dataclass(frozen=True)
class PromptFormat:
    """Prompt assembly options that change scores (see the module docstring)."""

    add_bos: bool | str = "auto"
    """auto, True or False: the BOS token before every prompt."""
    apply_chat_template: bool = False
    """Render prompts with the tokenizer's chat template."""
    system_instruction: str | None = None
    """With a chat template: the system message (before the task's preamble)."""
    fewshot_as_multiturn: bool = True
    """With a chat template: each demonstration as its own user and assistant turns."""
    fewshot_sampling: str | None = None
    """per_example, shared or first_n for every task (None: each task's own `fewshot.sampling`)."""

    def keyed(self, task_fingerprint: str) -> str:
        """The task fingerprint extended by this format: the key results are stored under."""
        text = json.dumps({"task": task_fingerprint, "prompt": asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def target_delimiter(self, spec: TaskSpec) -> str:
        """What goes between the prompt and an answer: nothing after a chat template's generation prompt."""
        return "" if self.apply_chat_template else spec.target_delimiter

    def prompt(self, spec: TaskSpec, template: str, example: Example, demos: list[Example], tokenizer: Any) -> str:
        """The text scored before the answer (plain or chat-rendered)."""
        preamble = tpl.render(spec.preamble, example.fields) if spec.preamble else ""
        system = _join(self.system_instruction or "", preamble, spec.fewshot_delimiter)
        if not self.apply_chat_template:
            return system + tpl.build_prompt(
                template,
                example.fields,
                [(d.fields, d.gold) for d in demos],
                spec.target_delimiter,
                spec.fewshot_delimiter,
            )
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("apply_chat_template: the model's tokenizer has no chat template")
        # (role, content, delimiter): the delimiter joins turns only when they collapse into one message.
        turns: list[tuple[str, str, str]] = []
        for demo in demos:
            turns.append(("user", tpl.render(template, demo.fields), spec.target_delimiter))
            turns.append(("assistant", demo.gold, spec.fewshot_delimiter))
        turns.append(("user", tpl.render(template, example.fields), ""))
        if self.fewshot_as_multiturn:
            messages = [{"role": role, "content": content} for role, content, _ in turns]
        else:
            messages = [{"role": "user", "content": "".join(content + delimiter for _, content, delimiter in turns)}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        return _render_chat(tokenizer, messages)

    def prefix_tokens(self, tokenizer: Any, prompt: str) -> list[int]:
        """Token ids to put before `prompt`'s own tokens (the BOS rule of the module docstring)."""
        bos_text = getattr(tokenizer, "bos_token", None)
        if self.add_bos is False or (bos_text and prompt.startswith(bos_text)):
            return []
        if self.add_bos is True:
            if tokenizer.bos_token_id is None:
                raise ValueError("add_bos true: the tokenizer has no BOS token (use auto or false)")
            return [int(tokenizer.bos_token_id)]
        return default_prefix(tokenizer)


def default_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (`tokenizer(text)`), e.g. [BOS] or []."""
    probe = "ckptlab"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    special = tokenizer(probe)["input_ids"]
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return [int(t) for t in special[:start]]
    return []


def _join(first: str, second: str, delimiter: str) -> str:
    """Two texts joined by `delimiter` unless either is empty or whitespace already meets at the join (lm-eval)."""
    if not first or not second:
        return first or second
    if first[-1].isspace() or second[0].isspace():
        return first + second
    return first + delimiter + second


def _render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    import jinja2

    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    except jinja2.TemplateError:
        # Templates that refuse a system role (as lm-eval does, the system message is dropped).
        rest = [m for m in messages if m["role"] != "system"]
        return str(tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True))
