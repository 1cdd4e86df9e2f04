"""Sequence classification on the shared loop: a tiny BERT learns a separable task; accuracy; batches; config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import one_thread  # noqa: F401

from ckptlab.commands.finetune import FinetuneConfig
from ckptlab.data import classification
from ckptlab.errors import ConfigError
from ckptlab.runs.run_dir import RunDir, read_metrics
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train

CLS, SEP, PAD = 2, 3, 0


def rows(count: int, seed: int) -> list[classification.Example]:
    """[CLS] cue noise… [SEP]: the label is which of three cue tokens (5, 6, 7) comes first."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        label = int(rng.integers(0, 3))
        noise = rng.integers(10, 50, size=int(rng.integers(3, 9)))
        out.append(classification.Example(np.asarray([CLS, 5 + label, *noise, SEP], dtype=np.int64), label))
    return out


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            num_labels=3,
            pad_token_id=PAD,
        )
    )


def test_a_sequence_classifier_learns_on_the_shared_loop_and_accuracy_measures_it(tmp_path):
    model, train_rows, val_rows = tiny_bert(), rows(64, 0), rows(30, 1)
    assert classification.accuracy(model, val_rows, PAD) < 0.6
    config = TrainConfig(
        max_steps=80, micro_batch_size=8, progress=False, val_every=40, val_batches=4, save_every=0, weight_decay=0.0
    )
    run = RunDir(tmp_path / "run")
    train(
        model=model,
        save_model=lambda folder: None,
        train_data=classification.ClassificationBatches(train_rows, 0, PAD),
        val_data=classification.ClassificationValidation(val_rows, PAD),
        config=config,
        lr_at=lambda s: 3e-3,
        kept=[],
        run=run,
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    metrics = read_metrics(run.metrics)
    assert metrics[-1]["val_loss"] < 0.5 * metrics[0]["loss"]
    assert classification.accuracy(model, val_rows, PAD) == 1.0


def test_batches_pad_right_and_carry_one_label_per_sequence():
    data = rows(5, 0)
    batch = classification.ClassificationValidation(data, PAD).batch(range(6))  # the sixth is a filler
    assert batch["labels"].shape == (6, 1) and batch["labels"][5, 0] == -100
    assert batch["labels"][:5, 0].tolist() == [r.label for r in data]
    widths = batch["attention_mask"].sum(1).tolist()
    assert widths[:5] == [len(r.ids) for r in data] and widths[5] == 1
    shuffled = classification.ClassificationBatches(data, seed=0, pad_id=PAD)
    assert torch.equal(shuffled.batch(range(5))["labels"], shuffled.batch(range(5))["labels"])  # pure
    assert sorted(shuffled.batch(range(5))["labels"][:, 0].tolist()) == sorted(r.label for r in data)  # one epoch


def test_classification_takes_a_task_only():
    with pytest.raises(ConfigError, match="^objective: classification takes a --task"):
        FinetuneConfig(init_from="m", data="records.jsonl", objective="classification")
