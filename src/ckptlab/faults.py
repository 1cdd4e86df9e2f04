"""The `CKPTLAB_FAULT` test hook: tests simulate crashes at exact points of a run.

`CKPTLAB_FAULT=KIND:KEY=N,KEY=N` names a kind of fault and where it strikes, e.g.
`kill:step=5,micro=1` (training: SIGKILL before that micro-batch), `nan:step=3` (training: that
step's loss becomes NaN) or `kill:examples=50` (evaluation: SIGKILL once 50 examples are scored).
Each consumer reads the keys it knows and ignores the rest. Pure stdlib, so every layer can use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

VARIABLE = "CKPTLAB_FAULT"


@dataclass(frozen=True)
class Fault:
    """A parsed `CKPTLAB_FAULT`: its kind and where it strikes."""

    kind: str
    """`kill` or `nan`."""
    at: dict[str, int] = field(default_factory=dict)
    """Where it strikes, e.g. {"step": 5, "micro": 1}."""


def injected_fault(environ: Mapping[str, str] = os.environ) -> Fault | None:
    """The fault `CKPTLAB_FAULT` asks for, or None when it is unset or empty."""
    spec = environ.get(VARIABLE, "")
    if not spec:
        return None
    kind, _, args = spec.partition(":")
    at = {}
    for part in filter(None, args.split(",")):
        key, _, value = part.partition("=")
        at[key] = int(value)
    return Fault(kind, at)
