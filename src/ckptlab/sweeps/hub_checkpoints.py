"""A sweep's hub checkpoints: `{hub: org/name, revisions: ..., prefix: ...}` turned into base checkpoints.

`revisions` is a list of names (used as written), `all` (every branch or tag whose name gives a
step), `{steps: [..]}` (the revisions at these steps, whatever their token suffix), `{every: N}`
(steps that are multiples of N) or `{log: K}` (about K, log-spaced in step). A
listed revision is pinned to its commit, and the listing is kept in OUT/hub_revisions.json on first
plan: a resumed sweep loads the same commits, offline, even after the repository gains revisions.
Delete that file (or its repository's entry) to list again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError

RECORD = "hub_revisions.json"
SELECTORS = ("steps", "every", "log")


def _selection(value: Any, where: str) -> tuple[str, Any]:
    """('names', [names]) | ('all', None) | ('steps', [N]) | ('every', N) | ('log', K), or a one-line error."""
    if value is None:
        return "names", [None]
    if value == "all":
        return "all", None
    if isinstance(value, str) and value:
        return "names", [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return "names", list(value)
    expected = "all, a list of revision names, {steps: [N, ...]}, {every: N} or {log: K}"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.revisions: expected {expected}, got {value!r}")
    unknown = sorted(set(value) - set(SELECTORS), key=str)
    if unknown or len(value) != 1:
        name = f"unknown key '{unknown[0]}'" if unknown else "give one key"
        raise ConfigError(f"{where}.revisions: {name} (expected {{steps: [N, ...]}}, {{every: N}} or {{log: K}})")
    ((key, amount),) = value.items()
    if key == "steps":
        if not isinstance(amount, list) or not amount or not all(_is_int(s) and s >= 0 for s in amount):
            raise ConfigError(f"{where}.revisions.steps: expected a list of step numbers, got {amount!r}")
        return key, sorted(set(amount))
    least = 2 if key == "log" else 1  # log keeps the first and the last revision
    if not _is_int(amount) or amount < least:
        raise ConfigError(f"{where}.revisions.{key}: expected an integer ≥ {least}, got {amount!r}")
    return key, amount


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_steps(revisions: list[Any], steps: list[int], repo_id: str, where: str) -> list[Any]:
    """The one revision at each step; a missing or ambiguous step (several stages) is a one-line error."""
    chosen = []
    for step in steps:
        found = [r for r in revisions if r.step == step]
        if not found:
            near = sorted((r.step for r in revisions), key=lambda s: abs(s - step))[:3]
            raise ConfigError(
                f"{where}.revisions.steps: {repo_id} has no revision at step {step} "
                f"(nearest: {', '.join(str(s) for s in sorted(near)) or 'none'})"
            )
        if len(found) > 1:
            raise ConfigError(
                f"{where}.revisions.steps: step {step} of {repo_id} is in several revisions "
                f"({', '.join(r.name for r in found)}); list the names instead"
            )
        chosen.extend(found)
    return chosen


def _read_record(out: Path) -> dict[str, Any]:
    path = out / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); delete it to list the hub revisions again") from None
    return record if isinstance(record, dict) else {}


def listed_revisions(repo_id: str, out: Path) -> list[tuple[Any, str]]:
    """(Revision, commit) of every branch and tag, from OUT/hub_revisions.json or, the first time,
    from the hub (then written there)."""
    from ckptlab.files import atomic_write_text
    from ckptlab.models.hub import list_revisions, parse_revision

    record = _read_record(out)
    if repo_id in record:
        pairs = [(parse_revision(r["name"]), r["commit"]) for r in record[repo_id]]
        return sorted(pairs, key=lambda pair: pair[0].order())
    pairs = list_revisions(repo_id)
    record[repo_id] = [{"name": revision.name, "commit": commit} for revision, commit in pairs]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return pairs


def hub_checkpoints(item: dict[str, Any], where: str, out: Path, make: Any) -> list[Any]:
    """The base checkpoints of one `hub:` entry; `make(label, source, revision)` builds each one."""
    from ckptlab.models.hf import parse_source
    from ckptlab.models.hub import every_nth, log_spaced, parse_revision

    repo_id = str(item["hub"])
    if parse_source(repo_id).kind != "hub" or "@" in repo_id or ":" in repo_id:
        raise ConfigError(f"{where}.hub: expected a hub id org/name, got {repo_id!r} (revisions go in revisions:)")
    prefix = str(item.get("prefix") or "")
    mode, amount = _selection(item.get("revisions"), where)
    if mode == "names":
        # Named revisions are used as written: planning them needs no hub access.
        return [
            make(prefix + (name or repo_id), f"{repo_id}@{name}" if name else repo_id, parse_revision(name or ""))
            for name in amount
        ]
    pairs = listed_revisions(repo_id, out)
    commits = {revision.name: commit for revision, commit in pairs}
    revisions = [revision for revision, _ in pairs if revision.step is not None]
    chosen = {
        "all": lambda: revisions,
        "steps": lambda: _at_steps(revisions, amount, repo_id, where),
        "every": lambda: every_nth(revisions, amount),
        "log": lambda: log_spaced(revisions, amount),
    }[mode]()
    if not chosen:
        steps = f"steps {revisions[0].step}..{revisions[-1].step}" if revisions else "no revision name gives a step"
        raise ConfigError(f"{where}.revisions: selects no revision of {repo_id} ({steps})")
    return [make(prefix + r.name, f"{repo_id}@{commits[r.name]}", r) for r in chosen]
