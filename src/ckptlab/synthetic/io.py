"""Write a generated world to disk: atomically, deterministically, with a manifest of hashes.

Files are written with `\n` line ends into a temporary sibling directory, which is renamed into
place only when complete, so a world directory either holds a whole world or does not exist.
`world.json` lists the sha256 of every other file; it holds no time stamps or paths, so the same
seed and size give byte-identical directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError
from ckptlab.synthetic.generate import GENERATOR_VERSION, WORLD_FORMAT_VERSION, World
from ckptlab.synthetic.tasks import TASKS

MANIFEST = "world.json"


def manifest(world: World) -> dict[str, Any]:
    """The content of world.json."""
    return {
        "version": WORLD_FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "seed": world.seed,
        "size": world.size,
        "restated_share": world.restated_share,
        "counts": world.counts,
        "tasks": {
            name: {
                "file": f"tasks/{name}.yaml",
                "version": spec.version,
                "domain": spec.domain,
                "type": spec.type,
                "probes_pretraining_knowledge": spec.probes_pretraining_knowledge,
                "in_mixture": spec.in_mixture,
                "cross_domain_of": spec.cross_domain_of,
            }
            for name, spec in TASKS.items()
        },
        "files": {path: hashlib.sha256(text.encode("utf-8")).hexdigest() for path, text in sorted(world.files.items())},
    }


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to replace an existing world without `overwrite`, and anything that is not a world."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another --out")
    if not overwrite:
        raise UserError(f"{out}: already holds a world; pass --overwrite to replace it, or choose another --out")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"{out}: is a non-empty directory without {MANIFEST}; refusing to replace it with a world")


def write_world(world: World, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write `world` to directory `out`; returns the manifest written as world.json."""
    out = Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        data = manifest(world)
        for path, text in [*world.files.items(), (MANIFEST, json.dumps(data, indent=2, sort_keys=True) + "\n")]:
            target = temporary / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
        if out.exists():
            out.rename(old)
        temporary.rename(out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return data
