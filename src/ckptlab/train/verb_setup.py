"""Set-up shared by the training verbs (`pretrain`, `cpt`, `finetune`).

torch is imported inside the functions: the verbs' checks that need no torch run first, so a
mistyped path fails before the seconds that importing torch takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ckptlab.errors import ConfigError, DataError, UserError

if TYPE_CHECKING:
    import torch

    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.distributed import Dist
    from ckptlab.train.loop import BatchSource, LoopResult
    from ckptlab.train.schedules import KeepConfig


class VerbConfig(Protocol):
    """What `train_verb` reads of a verb's config."""

    @property
    def train(self) -> TrainConfig: ...

    @property
    def keep(self) -> KeepConfig: ...

    @property
    def allow_changed(self) -> list[str]: ...


def main_process_printer() -> Callable[..., None]:
    """`print` on the main process, a no-op on the other ranks (read from RANK, before any set-up)."""
    if os.environ.get("RANK", "0") == "0":
        return print
    return lambda *args, **kwargs: None


@contextmanager
def data_errors_named(key: str) -> Iterator[None]:
    """Prefix a DataError raised inside with the config key that named the directory."""
    try:
        yield
    except DataError as error:
        raise DataError(f"{key}: {error}") from None


def check_prepared_data(key: str, path: str | Path) -> None:
    """Fail early, naming `key`, when `path` is not a readable prepared data directory."""
    from ckptlab.data.shards import read_manifest

    with data_errors_named(key):
        read_manifest(path)


def check_length_fits(model_config: Any, key: str, length: int | None, set_in: str | None = None) -> None:
    """Refuse a sequence length above the model's max_position_embeddings (when both are known).

    `set_in` names the config key where the model's limit can be raised, for the message.
    """
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if length is None or max_positions is None or length <= max_positions:
        return
    where = f", set in {set_in}" if set_in else ""
    raise UserError(f"{key} {length} is longer than the model allows (max_position_embeddings {max_positions}{where})")


def max_length_of(model_config: Any, key: str, requested: int | None, source: str) -> int:
    """The sequence length to train on: `requested`, else the model's max_position_embeddings.

    `key` is the verb's config key for the length; `source` the model, both named in the messages.
    """
    length = requested or getattr(model_config, "max_position_embeddings", None)
    if length is None:
        raise ConfigError(f"{key}: {source} does not say its maximum length; give --{key}")
    check_length_fits(model_config, key, length)
    return length


@contextmanager
def distributed_run(requested_device: str) -> Iterator[Dist]:
    """The data-parallel state for the run; the process group is left however the run ends."""
    from ckptlab.train import distributed

    # torch.set_flush_denormal is the training loop's own: tests call it without this set-up.
    dist = distributed.setup(requested_device)
    try:
        yield dist
    finally:
        distributed.teardown(dist)


def train_verb(
    config: VerbConfig,
    *,
    model: torch.nn.Module,
    save_model: Callable[[Path], object],
    train_data: BatchSource,
    val_data: BatchSource | None,
    run: RunDir,
    fingerprints: dict[str, str],
    resume_from: Path | None,
    dist: Dist,
    log: Callable[[str], None],
    **options: Any,
) -> LoopResult:
    """`ckptlab.train.loop.train` as every verb calls it; `options` are the verb's own arguments.

    The schedule, kept steps and allowed changes come from `config`, whose `train.max_steps` must be
    resolved by now (fine-tuning derives it from the data).
    """
    from ckptlab.train.loop import train
    from ckptlab.train.schedules import kept_steps, lr_at

    return train(
        model=model,
        save_model=save_model,
        train_data=train_data,
        val_data=val_data,
        config=config.train,
        lr_at=lambda step: lr_at(step, config.train.schedule, config.train.max_steps),
        kept=kept_steps(config.keep, config.train.max_steps),
        keep_optimizer_state=config.keep.optimizer_state,
        run=run,
        fingerprints=fingerprints,
        resume_from=resume_from,
        allow_changed=config.allow_changed,
        dist=dist,
        log=log,
        **options,
    )
