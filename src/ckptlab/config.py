"""Typed configs: dataclasses with a docstring under each field, YAML presets, dotted overrides.

A verb's config is a dataclass whose fields may be nested dataclasses. It is filled, in order, from
its defaults, from YAML files given with `--config` (later files win), and from dotted overrides on
the command line (`--train.lr 3e-4`). Unknown keys and values of the wrong type raise `ConfigError`
naming the key (and the file and line where the value came from YAML). The help text of each field
is the docstring written under it, read from the source with `ast`, so this module stays cheap to
import (no torch).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ckptlab.errors import ConfigError
from ckptlab.files import parse_yaml, read_text


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass `cls` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _type_hints(cls: type) -> dict[str, Any]:
    # Without an explicit namespace, each annotation resolves in the module of the class that wrote
    # it, so a subclass in another module need not import the types of its bases' fields.
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(inner) < len(typing.get_args(tp))
        return " or ".join(_describe(a) for a in inner) + (" or null" if optional else "")
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"a list of {_describe(item)}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (int→float, list items)."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise wrong
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and item is not Any:
            value = [value]  # a single value where a list is expected: `--keep_steps 5`
        if not isinstance(value, (list, tuple)):
            raise wrong
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `name: 2024` as an int; a string field accepts it
        if not isinstance(value, str):
            raise wrong
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of {tp.__name__} fields")
        return build(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r}")


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Make a `cls` instance from a (possibly nested, partial) mapping, checking keys and types."""
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (known keys: "
            + ", ".join(prefix + n for n in sorted(names))
            + ")"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config '{prefix.rstrip('.') or cls.__name__}': {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (what is saved as `config.yaml` beside every run)."""
    return dataclasses.asdict(config)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a group of keys")
        node = child
    node[leaf] = value


def _leaf_type(cls: type, dotted: str) -> Any:
    """The annotation of a dotted key, or a ConfigError naming the first unknown part."""
    tp: Any = cls
    walked: list[str] = []
    for part in dotted.split("."):
        if not (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            raise ConfigError(f"unknown config key '{dotted}': '{'.'.join(walked)}' has no sub-keys")
        hints = _type_hints(tp)
        if part not in hints:
            known = ", ".join(".".join(walked + [n]) for n in sorted(hints))
            raise ConfigError(f"unknown config key '{dotted}' (known keys here: {known})")
        walked.append(part)
        tp = hints[part]
    return tp


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a syntax error is a ConfigError naming file and line."""
    path = Path(path)
    data = parse_yaml(read_text(path, ConfigError, f"{path}: config file"), str(path), ConfigError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _parse_cli_value(raw: str, tp: Any, key: str) -> Any:
    # A string field takes the text as written (`--out 007` stays "007"); others parse as YAML so
    # `--train.lr 3e-4`, `--keep_steps [1,2,4]` and `--resume true` mean what they say.
    plain = tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw in ("null", "none", "None"):
            return None
        plain = non_none[0] if len(non_none) == 1 else tp
    if plain is str:
        return raw
    if typing.get_origin(plain) is Literal and all(isinstance(a, str) for a in typing.get_args(plain)):
        return raw
    item = (typing.get_args(plain) or (None,))[0] if typing.get_origin(plain) is list else None
    words = item is str or (
        typing.get_origin(item) is Literal and all(isinstance(a, str) for a in typing.get_args(item))
    )
    if words and "[" not in raw:  # `--tasks rte,sst2`, `--train.report_to wandb,mlflow`
        return [part for part in raw.split(",") if part]
    if item is not None and hasattr(item, "from_cli") and "[" not in raw:
        # A list of groups with a short command-line form (`--blend DIR=3,DIR`): the group parses it.
        return [item.from_cli(part.strip(), key) for part in raw.split(",") if part.strip()]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and plain is float:
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    return value


def _is_list(tp: Any) -> bool:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp))
    return typing.get_origin(tp) is list


def parse_overrides(cls: type, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Split argv into config files (`--config F`) and a tree of dotted overrides."""
    files: list[str] = []
    tree: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': options are written --key value")
        key, eq, inline = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "config":
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError("--config needs a YAML file")
                inline, i = argv[i + 1], i + 1
            files.append(inline)
            i += 1
            continue
        tp = _leaf_type(cls, key)
        values: list[str] = []
        while not eq and i + 1 + len(values) < len(argv) and not argv[i + 1 + len(values)].startswith("--"):
            values.append(argv[i + 1 + len(values)])
        if len(values) > 1 and _is_list(tp):
            # A list written shell-style: `--tasks rte sst2` (as well as `--tasks rte,sst2`).
            items: list[Any] = []
            for value in values:
                parsed = _parse_cli_value(value, tp, key)
                items.extend(parsed if isinstance(parsed, list) else [parsed])
            _set_dotted(tree, key, items)
            i += 1 + len(values)
            continue
        if eq:
            raw = inline
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw, i = argv[i + 1], i + 1
        elif tp is bool:
            raw = "true"  # a bare flag: `--resume`
        else:
            raise ConfigError(f"config key '{key}': missing value (expected {_describe(tp)})")
        _set_dotted(tree, key, _parse_cli_value(raw, tp, key))
        i += 1
    return files, tree


def load(cls: type, argv: list[str]) -> Any:
    """Build a `cls` config from `--config` YAML files and dotted overrides in `argv`."""
    files, overrides = parse_overrides(cls, argv)
    merged: dict[str, Any] = {}
    for file in files:
        merged = _merge(merged, read_yaml(file))
    try:
        config = build(cls, _merge(merged, overrides))
    except ConfigError as error:
        if files:
            raise ConfigError(f"{', '.join(files)}: {error}") from None
        raise
    return config


def from_mapping(cls: type, *mappings: dict[str, Any]) -> Any:
    """Build a `cls` config from mappings of keys, nested (`{"train": {"lr": 3e-4}}`) or dotted
    (`{"train.lr": 3e-4}`), later mappings winning: the Python API's counterpart of `load`, checked
    the same way (unknown keys and wrong types are ConfigErrors naming the key)."""
    tree: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in mapping.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = to_dict(value)  # a group given as its dataclass (`train=TrainConfig(...)`)
            if not isinstance(key, str):
                raise ConfigError(f"config key {key!r}: expected a string")
            if "." in key:
                _leaf_type(cls, key)  # names the first unknown part of a dotted key
            branch: dict[str, Any] = {}
            _set_dotted(branch, key, value)
            tree = _merge(tree, branch)
    return build(cls, tree)


def help_lines(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(option, description) pairs for every leaf key of `cls`, nested groups flattened."""
    rows = []
    hints = _type_hints(cls)
    docs = field_docs(cls)
    defaults = cls()
    # The class's own keys first, then those it inherits (a verb's keys before the shared training keys).
    own = list(vars(cls).get("__annotations__", {}))
    fields = sorted(dataclasses.fields(cls), key=lambda f: own.index(f.name) if f.name in own else len(own))
    for f in fields:
        tp = hints[f.name]
        doc = docs.get(f.name, "")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.append((f"[{prefix}{f.name}]", doc))
            rows.extend(help_lines(tp, prefix=f"{prefix}{f.name}."))
            continue
        default = getattr(defaults, f.name)
        rows.append((f"--{prefix}{f.name}", f"{doc} ({_describe(tp)}; default: {default!r})"))
    return rows


def format_help(cls: type, prog: str, summary: str) -> str:
    """The `--help` text of a verb whose config is `cls`."""
    lines = [
        f"usage: {prog} [--config FILE.yaml ...] [--KEY VALUE ...]",
        "",
        summary,
        "",
        "Options (dotted keys; YAML files given with --config set the same keys):",
        "  --config FILE    YAML file of config keys; may be repeated, later files win",
    ]
    width = 100
    for option, text in help_lines(cls):
        if option.startswith("["):
            lines.append("")
            lines.append(f"  {option} {text}".rstrip())
            continue
        wrapped = textwrap.wrap(text, width - 8) or [""]
        lines.append(f"  {option}")
        lines.extend("        " + w for w in wrapped)
    return "\n".join(lines) + "\n"
