"""What checkpoints cost a training run: bytes, the stall around a save, and verifying a start checkpoint.

- bytes of a kept checkpoint that newer ones superseded (weights-only) against a full one (weights +
  AdamW state + RNG), on the same run;
- the time between the ends of consecutive steps around each save, with the checkpoint completed
  `inline` (fsync, SHA-256, manifest, rename, run.json on the training thread, as before) or in the
  `background` (the default): only writing the files stalls training;
- `resolve_init` of the final checkpoint: the first call hashes every file, later ones (the next
  jobs of a sweep) check sizes and the stamp.

    .venv/bin/python benchmarks/checkpoint_stall.py --size base --steps 12 --save_every 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VOCAB = 8192


class RandomTokens:
    """Batches of seeded random tokens: sample i is the same whichever run reads it."""

    def __init__(self, context: int) -> None:
        self.context = context

    def batch(self, indices: range) -> dict[str, Any]:
        import torch

        rows = [torch.randint(2, VOCAB, (self.context,), generator=torch.Generator().manual_seed(i)) for i in indices]
        ids = torch.stack(rows)
        return {"input_ids": ids, "labels": ids.clone()}


def run_once(mode: str, size: str, steps: int, save_every: int, root: Path) -> dict[str, Any]:
    import torch

    from ckptlab.models.hf import ModelConfig, build_model, count_parameters
    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train import checkpointing, distributed
    from ckptlab.train.callbacks.base import Callback
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.loop import train

    ends: dict[int, float] = {}

    class StepEnds(Callback):
        def on_step_end(self, step: int, record: dict[str, Any], counts: Any) -> None:
            ends[step] = time.perf_counter()

    saves: list[float] = []
    finalizes: list[float] = []

    def timed(function: Any, into: list[float]) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - started)

        return call

    Checkpointer = checkpointing.Checkpointer
    originals = (Checkpointer._start_finalize, Checkpointer.save, Checkpointer._finalize)
    Checkpointer.save = timed(Checkpointer.save, saves)  # type: ignore[method-assign]
    Checkpointer._finalize = timed(Checkpointer._finalize, finalizes)  # type: ignore[method-assign]
    if mode == "inline":  # the previous behaviour: the training thread completes the checkpoint itself
        Checkpointer._start_finalize = lambda self, work, step: work()  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(size=size, context_length=64), vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=1
        )
        config = TrainConfig(max_steps=steps, micro_batch_size=4, progress=False, val_every=0, save_every=save_every)
        started = time.perf_counter()
        train(
            model=model,
            save_model=lambda folder: model.save_pretrained(folder),
            train_data=RandomTokens(64),
            val_data=None,
            config=config,
            lr_at=lambda step: 1e-3,
            kept=[save_every],
            run=RunDir(root),
            fingerprints={},
            resume_from=None,
            allow_changed=[],
            dist=distributed.Dist(),
            log=lambda message: None,
            callbacks=[StepEnds()],
        )
        total = time.perf_counter() - started
    finally:
        Checkpointer._start_finalize, Checkpointer.save, Checkpointer._finalize = originals  # type: ignore[method-assign]
    gaps = {step: ends[step] - ends[step - 1] for step in range(2, steps + 1)}
    saved_at = list(range(save_every, steps, save_every))
    around = {s + 1: gaps[s + 1] for s in saved_at}  # from the end of a saving step to the end of the next
    after = {s + 2: gaps[s + 2] for s in saved_at if s + 2 in gaps}
    plain = [g for s, g in gaps.items() if s not in around and s not in after]
    return {
        "mode": mode,
        "parameters": count_parameters(model),
        "plain_step_s": statistics.median(plain),
        "step_with_save_s": around,
        "step_after_save_s": after,
        "save_blocks_training_s": saves,
        "complete_and_retention_s": finalizes,
        "run_s": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save_every", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/checkpoint_stall.json")
    args = parser.parse_args()

    from ckptlab.models.init_from import resolve_init
    from ckptlab.runs import checkpoint as ckpt

    results: dict[str, Any] = {"size": args.size, "steps": args.steps, "save_every": args.save_every, "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in ("inline", "background"):
            root = Path(scratch) / mode
            results["runs"].append(run_once(mode, args.size, args.steps, args.save_every, root))
            print(json.dumps(results["runs"][-1]))
        checkpoints = root / "checkpoints"

        def size(step: int) -> int:
            return sum(f.stat().st_size for f in (checkpoints / ckpt.step_dirname(step)).iterdir() if f.is_file())

        weights_only, full = size(args.save_every), size(args.steps)
        results["bytes"] = {"kept_weights_only": weights_only, "full": full, "ratio": weights_only / full}
        time.sleep(ckpt.SETTLED_NS / 1e9 + 0.1)  # files older than a clock tick can be stamped
        final = str(checkpoints / ckpt.step_dirname(args.steps))
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            resolve_init(final)
            timings.append(time.perf_counter() - started)
        results["resolve_init_s"] = timings
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
