"""Prompt templates: Python format strings or Jinja2 over an example's fields, and few-shot prompts.

A template containing `{{` or `{%` is Jinja2 (undefined names are errors); anything else is a
`str.format` string, as the world generator writes them. The answer (a label word or a target
text) follows the rendered prompt after the task's `target_delimiter` (one space by default);
few-shot demonstrations are whole answered prompts joined by `fewshot_delimiter` (a blank line).
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Sequence
from typing import Any


def is_jinja(template: str) -> bool:
    return "{{" in template or "{%" in template


@functools.lru_cache(maxsize=256)
def _jinja_template(text: str) -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["regex_replace"] = _regex_replace  # lm-eval's one extra filter, used by its task files
    return env.from_string(text)


def _regex_replace(text: str, pattern: str, replacement: str, count: int = 0) -> str:
    import re

    return re.sub(pattern, replacement, text, count=count)


def field_names(template: str) -> set[str]:
    """The top-level field names a template refers to.

    Raises:
        ValueError: the template is not a valid format string / Jinja2 template.
    """
    if is_jinja(template):
        import jinja2
        from jinja2 import meta

        env = jinja2.Environment()
        try:
            return set(meta.find_undeclared_variables(env.parse(template)))
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(f"invalid Jinja2 template: {error.message} (template line {error.lineno})") from None
    names = set()
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            if name == "" or name.isdigit():
                raise ValueError("positional '{}' fields are not allowed; name a field, e.g. {sentence}")
            names.add(name.split(".")[0].split("[")[0])
    except ValueError as error:
        raise ValueError(f"invalid format string: {error}") from None
    return names


def render(template: str, fields: dict[str, Any]) -> str:
    """The prompt for one example (no answer)."""
    if is_jinja(template):
        return _jinja_template(template).render(**fields)
    return template.format(**fields)


def fewshot_indices(pool_size: int, k: int, seed: int, example_id: str) -> list[int]:
    """Which `k` demonstrations (indices into the few-shot pool) precede example `example_id`.

    Seeded by (seed, example id), not by position, so the choice does not depend on the order in
    which examples are scored, on `--limit`, or on what an interrupted run had already done.
    """
    if k <= 0 or pool_size == 0:
        return []
    rng = random.Random(f"{seed}:{example_id}")
    return rng.sample(range(pool_size), min(k, pool_size))


SAMPLINGS = ("per_example", "shared", "first_n")


def demonstrations(pool_size: int, k: int, seed: int, example_id: str, sampling: str = "per_example") -> list[int]:
    """Indices into the few-shot pool of the `k` demonstrations before example `example_id`.

    per_example: `fewshot_indices` (a draw per example). shared: one draw for every example of the
    task (seeded by `seed` alone), so all prompts share their demonstrations and the scorer computes
    them once. first_n: the pool's first k rows in order (lm-eval's `first_n` sampler).
    """
    if sampling == "per_example":
        return fewshot_indices(pool_size, k, seed, example_id)
    if sampling == "shared":
        return fewshot_indices(pool_size, k, seed, "")
    if sampling == "first_n":
        return list(range(min(k, pool_size)))
    raise ValueError(f"few-shot sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")


def build_prompt(
    template: str,
    fields: dict[str, Any],
    demos: Sequence[tuple[dict[str, Any], str]],
    target_delimiter: str = " ",
    fewshot_delimiter: str = "\n\n",
) -> str:
    """The full prompt: answered demonstrations, then the example's rendered template (as lm-evaluation-harness
    joins them: demo + target delimiter + answer + few-shot delimiter, per demonstration, then the prompt)."""
    parts = [render(template, demo_fields) + target_delimiter + answer for demo_fields, answer in demos]
    parts.append(render(template, fields))
    return fewshot_delimiter.join(parts)
