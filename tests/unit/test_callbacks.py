"""L2-SP and early stopping: the penalty's gradient, a bound on the drift, and stopping at the right step."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import one_thread, random_rows, tiny_model  # noqa: F401

from ckptlab.data import sft
from ckptlab.errors import ConfigError
from ckptlab.runs.run_dir import RunDir, read_metrics
from ckptlab.train import distributed
from ckptlab.train.callbacks.early_stopping import EarlyStopping, EarlyStoppingConfig
from ckptlab.train.callbacks.l2sp import L2SP
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train

LR = 1e-2


def tiny():
    return tiny_model(intermediate_size=64)


def rows(count: int = 16, seed: int = 0):
    return random_rows(count, (12, 12), 4, seed)


def fit(model, root, steps: int, *, val: bool = False, kept=(), save_every: int = 0, resume_from=None, **hooks):
    config = TrainConfig(
        max_steps=steps,
        micro_batch_size=4,
        progress=False,
        val_every=1 if val else 0,
        save_every=save_every,
        weight_decay=0.0,
        val_batches=1,
    )
    run = RunDir(root)
    result = train(
        model=model,
        save_model=lambda folder: model.save_pretrained(folder),
        train_data=sft.SftBatches(rows(), seed=0, pad_id=1),
        val_data=sft.ValidationBatches(rows(4, seed=1), pad_id=1) if val else None,
        config=config,
        lr_at=lambda s: LR,
        kept=list(kept),
        run=run,
        fingerprints={},
        resume_from=resume_from,
        allow_changed=[],
        dist=distributed.Dist(),
        **hooks,
    )
    return result, run


def drift(model, start) -> float:
    reference = dict(start.named_parameters())
    return max(float((p - reference[n]).detach().abs().max()) for n, p in model.named_parameters())


# --- L2-SP ---------------------------------------------------------------------------------------


def test_penalty_and_its_gradient_are_those_of_weight_times_squared_distance():
    model = tiny()
    anchor = L2SP(0.3, model)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    expected = 0.3 * sum(((p - a) ** 2).sum() for p, a in zip(anchor.params, anchor.anchors))
    expected.backward()  # autograd of the penalty as a loss term
    wanted = [p.grad.clone() for p in anchor.params]
    model.zero_grad(set_to_none=True)
    assert anchor.add_gradient() == pytest.approx(float(expected.detach()), rel=1e-6)  # float64 sum vs float32
    assert all(torch.allclose(p.grad, g, rtol=1e-6, atol=0) for p, g in zip(anchor.params, wanted))


def test_a_large_anchor_weight_keeps_the_weights_near_the_start(tmp_path):
    free, start = tiny(), tiny()
    fit(free, tmp_path / "free", steps=30)
    anchored = tiny()
    result, run = fit(anchored, tmp_path / "anchored", steps=30, callbacks=[L2SP(1e4, anchored)])
    # Adam moves every weight by about LR per step: 30 free steps drift up to ~30·LR (measured 0.27);
    # the anchor's pull reverses any drift within a step or two (measured 0.004 with weight 1e4).
    assert drift(free, start) > 10 * LR
    assert drift(anchored, start) < LR
    penalties = [r["anchor_penalty"] for r in read_metrics(run.metrics)]
    assert penalties[0] == 0.0 and all(p >= 0 for p in penalties)


def test_anchor_weight_zero_is_bit_identical_to_no_anchor(tmp_path):
    plain, zero = tiny(), tiny()
    _, a = fit(plain, tmp_path / "plain", steps=4)
    _, b = fit(zero, tmp_path / "zero", steps=4, callbacks=[L2SP(0.0, zero)])
    assert [r["loss"] for r in read_metrics(a.metrics)] == [r["loss"] for r in read_metrics(b.metrics)]
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), zero.parameters()))


def test_a_resumed_run_takes_its_anchor_from_a_reference_state(tmp_path):
    start = tiny()
    moved = copy.deepcopy(start)
    with torch.no_grad():
        moved.gpt_neox.final_layer_norm.bias.add_(1.0)
    anchor = L2SP(2.0, moved, reference=start.state_dict())
    assert anchor.add_gradient() == pytest.approx(2.0 * 32)  # 32 biases, each 1 away from θ₀


# --- early stopping -------------------------------------------------------------------------------


def test_early_stopping_on_a_designed_curve():
    early = EarlyStopping(patience=3)
    curve = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.6]
    verdicts = [early.observe(step, value) for step, value in enumerate(curve, start=1)]
    assert verdicts == [(True, False)] * 3 + [(False, False)] * 2 + [(False, True), (False, True)]
    assert (early.best, early.best_step, early.stopped_at) == (3.0, 3, 7)
    strict = EarlyStopping(patience=1, min_delta=0.5)
    assert [strict.observe(s, v) for s, v in enumerate([5.0, 4.6], start=1)] == [(True, False), (False, True)]


class Designed(EarlyStopping):
    """Early stopping that sees a designed validation curve instead of the model's (by step)."""

    curve = {1: 4.0, 2: 3.0, 3: 2.0, 4: 2.5, 5: 1.5, 6: 1.9, 7: 1.6, 8: 1.7, 9: 0.1, 10: 0.1}

    def observe(self, step, value):
        return super().observe(step, self.curve[step])


def test_the_loop_stops_at_the_right_step_and_keeps_the_best_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny()
    result, run = fit(
        model, tmp_path / "run", steps=10, val=True, kept=[2], save_every=4, callbacks=[Designed(patience=3)]
    )
    # best 1.5 at step 5; steps 6, 7, 8 do not improve: stop after step 8 (9 and 10 never run).
    assert (result.step, result.status, result.stop_reason, result.best_step) == (8, "complete", "early_stopping", 5)
    assert [r["step"] for r in read_metrics(run.metrics)] == list(range(1, 9))
    manifest = json.loads(run.manifest.read_text())
    assert manifest["stop_reason"] == "early_stopping" and manifest["status"] == "complete"
    assert manifest["early_stopping"] == {
        "metric": "val_loss",
        "patience": 3,
        "min_delta": 0.0,
        "best_step": 5,
        "best_val_loss": 1.5,
        "bad_validations": 3,
        "stopped_at": 8,
    }
    listed = {c["step"]: c for c in manifest["checkpoints"]}
    assert [s for s, c in listed.items() if c.get("best")] == [5] and listed[5]["kept"]
    assert listed[2]["kept"] and not listed[2].get("best")  # a kept step that was best once stays kept
    assert 3 not in listed and not (run.checkpoints / "step-00000003").exists()  # a superseded best is removed
    assert 8 in listed
    best = AutoModelForCausalLM.from_pretrained(run.root / listed[5]["path"])
    assert best is not None
    # Resuming a run that stopped early trains no further.
    again, _ = fit(
        tiny(),
        tmp_path / "run",
        steps=10,
        val=True,
        kept=[2],
        save_every=4,
        callbacks=[Designed(patience=3)],
        resume_from=run.checkpoints / "step-00000008",
    )
    assert (again.step, again.stop_reason, again.best_step) == (8, "early_stopping", 5)


def test_patience_below_one_names_the_key():
    with pytest.raises(ConfigError, match="^early_stopping.patience: expected a positive integer"):
        EarlyStoppingConfig(patience=0)


def test_weight_decay_shrinks_trainable_matrices_only(tmp_path):
    """AdamW's decoupled decay: after one step, decayed − undecayed = −lr·wd·θ₀ on matrices, 0 on biases and norms."""
    start, plain, decayed = tiny(), tiny(), tiny()
    for model, wd, name in ((plain, 0.0, "plain"), (decayed, 0.5, "decayed")):
        config = TrainConfig(
            max_steps=1, micro_batch_size=4, progress=False, val_every=0, save_every=0, weight_decay=wd
        )
        train(
            model=model,
            save_model=lambda folder: None,
            train_data=sft.SftBatches(rows(), seed=0, pad_id=1),
            val_data=None,
            config=config,
            lr_at=lambda s: LR,
            kept=[],
            run=RunDir(tmp_path / name),
            fingerprints={},
            resume_from=None,
            allow_changed=[],
            dist=distributed.Dist(),
        )
    original, undecayed = dict(start.named_parameters()), dict(plain.named_parameters())
    for name, param in decayed.named_parameters():
        expected = -LR * 0.5 * original[name] if param.ndim >= 2 and "norm" not in name else torch.zeros_like(param)
        assert torch.allclose(param - undecayed[name], expected, atol=1e-6), name
