"""The config system: defaults, YAML, dotted overrides, errors that name the key."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ckptlab import config as configlib
from ckptlab.errors import ConfigError


@dataclass
class Inner:
    lr: float = 3e-4
    """Peak learning rate."""
    steps: list[int] = field(default_factory=list)
    """Steps to keep."""
    mode: Literal["a", "b"] = "a"
    """A choice."""


@dataclass
class Outer:
    out: str = "runs/x"
    """Where to write."""
    resume: bool = False
    """Resume or not."""
    count: int = 3
    """A count."""
    maybe: int | None = None
    """Optional integer."""
    inner: Inner = field(default_factory=Inner)
    """Nested group."""


def test_defaults_and_dotted_overrides():
    cfg = configlib.load(Outer, ["--inner.lr", "1e-3", "--count=5", "--resume", "--inner.steps", "[1, 2, 4]"])
    assert cfg.inner.lr == pytest.approx(1e-3) and isinstance(cfg.inner.lr, float)
    assert cfg.count == 5 and cfg.resume is True and cfg.inner.steps == [1, 2, 4]
    assert cfg.out == "runs/x" and cfg.maybe is None


def test_yaml_then_overrides_win(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("count: 7\ninner:\n  lr: 0.01\n  mode: b\n")
    cfg = configlib.load(Outer, ["--config", str(preset), "--inner.lr", "0.5"])
    assert cfg.count == 7 and cfg.inner.mode == "b" and cfg.inner.lr == 0.5


def test_string_field_keeps_text_as_written():
    assert configlib.load(Outer, ["--out", "007"]).out == "007"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--inner.lrr", "1"], "unknown config key 'inner.lrr'"),
        (["--nope", "1"], "unknown config key 'nope'"),
        (["--count", "many"], "config key 'count': expected an integer"),
        (["--inner.mode", "c"], "config key 'inner.mode': expected one of 'a', 'b'"),
        (["--count"], "config key 'count': missing value"),
        (["--resume", "maybe"], "config key 'resume': expected true or false"),
        (["positional"], "unexpected argument 'positional'"),
    ],
)
def test_cli_errors_name_the_key(argv, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        configlib.load(Outer, argv)


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("inner:\n  lrate: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'inner.lrate'"):
        configlib.load(Outer, ["--config", str(preset)])


def test_yaml_syntax_error_names_line(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("count: 1\ninner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        configlib.load(Outer, ["--config", str(preset)])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        configlib.load(Outer, ["--config", "nowhere.yaml"])


def test_help_lists_every_leaf_with_its_docstring():
    text = configlib.format_help(Outer, "ckptlab x", "Does x.")
    for option, doc in [
        ("--inner.lr", "Peak learning rate."),
        ("--maybe", "Optional integer."),
        ("--resume", "Resume or not."),
    ]:
        assert option in text and doc in text


def test_round_trip_through_to_dict():
    cfg = configlib.load(Outer, ["--inner.steps", "[3]"])
    assert configlib.build(Outer, configlib.to_dict(cfg)) == cfg


def test_lists_written_shell_style_or_with_commas():
    assert configlib.load(Inner, ["--steps", "1", "2", "4"]).steps == [1, 2, 4]
    assert configlib.load(Inner, ["--steps", "[1,2]"]).steps == [1, 2]
    assert configlib.load(Inner, ["--steps", "8"]).steps == [8]
    with pytest.raises(ConfigError, match=r"config key 'steps\[1\]': expected an integer"):
        configlib.load(Inner, ["--steps", "1", "x"])
    with pytest.raises(ConfigError, match="unexpected argument 'extra'"):
        configlib.load(Outer, ["--count", "1", "extra"])
