"""`ckptlab world`: generate the built-in synthetic world (corpora and labelled tasks).

Example:

    ckptlab world --out data/world --size demo --seed 0

writes data/world/{world.json, corpus/, tasks/, instruct/}; docs/world.md describes every file.
The same seed and size give byte-identical files. An existing world is replaced only with
`--overwrite`; the new world is written beside it and renamed into place when complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ckptlab.errors import ConfigError


@dataclass
class WorldConfig:
    """Generation of the synthetic world."""

    out: str = "data/world"
    """Directory to write the world into (world.json, corpus/, tasks/, instruct/)."""
    seed: int = 0
    """Seed of the generator: the same seed and size give byte-identical files."""
    size: Literal["tiny", "demo", "large"] = "demo"
    """tiny: for tests (well under a second); demo: ~2.5 MB of general text for `ckptlab demo`; large: ~40 MB."""
    restated_share: float = 0.5
    """Share of a corpus subject's documents that state one of their facts a second time, in another wording (0 =
    never, the corpora of generator version 2). Pre-training on restatements is what lets a small model learn NLI
    (docs/world.md)."""
    overwrite: bool = False
    """Replace an existing world at `out` (refused without it)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.restated_share <= 1.0:
            raise ConfigError(f"restated_share: expected a number from 0 to 1, got {self.restated_share}")


def world(config: WorldConfig) -> int:
    """Generate the world of `config.size` from `config.seed` into `config.out`; returns the exit code."""
    from ckptlab.synthetic import generate, write_world
    from ckptlab.synthetic.io import check_target

    out = Path(config.out)
    check_target(out, config.overwrite)  # before spending any time generating
    start = time.perf_counter()
    manifest = write_world(generate(config.seed, config.size, config.restated_share), out, overwrite=config.overwrite)
    seconds = time.perf_counter() - start
    print("\n".join(summary_lines(manifest, out, seconds)))
    return 0


def summary_lines(manifest: dict[str, Any], out: Path, seconds: float) -> list[str]:
    """What was written: documents and bytes per corpus, examples per task split."""
    counts = manifest["counts"]
    lines = [
        f"world: wrote {out} (size {manifest['size']}, seed {manifest['seed']}, restated share "
        f"{manifest['restated_share']}, "
        f"generator version {manifest['generator_version']}) in {seconds:.1f} s"
    ]
    for name, corpus in counts["corpus"].items():
        lines.append(
            f"  corpus/{name}.txt: {corpus['documents']:,} documents, {corpus['bytes']:,} bytes, "
            f"{corpus['facts']:,} facts stated {corpus['statements']:,} times"
        )
    width = max(len(name) for name in counts["tasks"])
    lines.append(f"  {'task':<{width}}  {'train':>6}  {'validation':>10}  {'test':>6}")
    for name, splits in counts["tasks"].items():
        lines.append(f"  {name:<{width}}  {splits['train']:>6,}  {splits['validation']:>10,}  {splits['test']:>6,}")
    lines.append(f"  instruct/mixture.jsonl: {counts['instruct']['mixture']:,} records")
    lines.append(f"  manifest: {out / 'world.json'}")
    return lines
