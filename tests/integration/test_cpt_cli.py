"""`ckptlab cpt` through the real CLI, continuing a tiny pre-trained model on the built-in world."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli

TINY = [
    "--model.size",
    "tiny",
    "--model.context_length",
    "32",
    "--train.micro_batch_size",
    "4",
    "--train.progress",
    "false",
    "--train.schedule.warmup_steps",
    "2",
    "--train.schedule.lr",
    "3e-3",
    "--train.schedule.min_lr",
    "3e-4",
]
# Global batch 8 as 4 × 2 accumulated; checkpoints at 0 (kept), 2, 4, 6 and 8 (kept, final).
COMMON = [
    "--train.micro_batch_size",
    "4",
    "--train.grad_accum_steps",
    "2",
    "--train.max_steps",
    "8",
    "--train.progress",
    "false",
    "--train.save_every",
    "2",
    "--train.val_every",
    "8",
    "--train.val_batches",
    "2",
    "--train.weight_decay",
    "0.0",
    "--keep.schedule",
    "list",
    "--keep.steps",
    "0",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> SimpleNamespace:
    """The tiny world, its general corpus prepared and pre-trained on (10 steps), the domain corpus prepared."""
    root = tmp_path_factory.mktemp("cpt")
    run_cli("world", "--size", "tiny", "--out", str(root / "world"))
    general, domain, pre = root / "general", root / "domain", root / "pre"
    run_cli(
        "prepare",
        "--sources",
        str(root / "world" / "corpus" / "general.txt"),
        "--out",
        str(general),
        "--vocab_size",
        "512",
        "--val_fraction",
        "0.1",
    )
    run_cli(
        "pretrain",
        "--data",
        str(general),
        "--out",
        str(pre),
        *TINY,
        "--train.max_steps",
        "10",
        "--keep.schedule",
        "none",
        "--train.val_every",
        "0",
    )
    checkpoint = pre / "checkpoints" / "step-00000010"
    run_cli(
        "prepare",
        "--sources",
        str(root / "world" / "corpus" / "domain.txt"),
        "--out",
        str(domain),
        "--tokenizer",
        str(checkpoint),
        "--val_fraction",
        "0.1",
    )
    return SimpleNamespace(root=root, general=general, domain=domain, pre=pre, checkpoint=checkpoint)


def cpt(base: SimpleNamespace, out: Path, *extra: str, check: bool = True, **env: str):
    return run_cli(
        "cpt",
        "--init_from",
        str(base.pre),
        "--out",
        str(out),
        "--blend",
        str(base.domain),
        "--replay",
        str(base.general),
        "--replay_fraction",
        "0.25",
        "--recipe",
        "reuse",
        *COMMON,
        *extra,
        check=check,
        **env,
    )


def records(run: Path) -> list[dict]:
    """Every metrics line without its timing (the rest is deterministic, floats exact)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in records(run)]


@pytest.fixture(scope="module")
def plain(base, tmp_path_factory) -> Path:
    """The reuse recipe on the domain corpus with 25% replay of the general corpus, no blend switch."""
    run = tmp_path_factory.mktemp("plain") / "run"
    cpt(base, run, "--keep.optimizer_state", "true")  # step 0's moments are compared with the source's
    return run


@pytest.fixture(scope="module")
def switched(base, tmp_path_factory) -> Path:
    """As `plain`, switching to a second blend (the general corpus) after step 3."""
    run = tmp_path_factory.mktemp("switched") / "run"
    cpt(base, run, "--second_blend", str(base.general), "--switch_step", "3")
    return run


def test_reuse_recipe_schedule_and_lower_domain_validation_loss(base, plain):
    rows = records(plain)
    rates = [row["lr"] for row in rows]
    assert rates[0] == 3e-4  # the pre-training run's min LR, no warm-up
    assert rates[-1] == pytest.approx(3e-6)  # decayed to 1/100 of it
    assert all(a > b for a, b in zip(rates, rates[1:]))
    manifest = json.loads((plain / "run.json").read_text())
    assert manifest["cpt"]["recipe"] == "reuse" and manifest["cpt"]["switch_step"] is None
    assert manifest["cpt"]["init_checkpoint"] == str(base.checkpoint)
    assert {row["blend"] for row in rows} == {"blend"}
    val = {c["step"]: c["val_loss"] for c in manifest["checkpoints"] if c["kept"]}
    assert set(val) == {0, 8} and val[8] < val[0]  # validation on the domain corpus's held-out split
    compute = manifest["compute"]  # sequences of context 32: flops = 6·N·tokens + 6·n_layer·32·d_model·tokens
    assert (
        compute["tokens"] == rows[-1]["tokens_seen"] == 8 * 8 * 32
        and compute["trainable_params"] == compute["total_params"]
    )
    assert compute["flops"] == 6 * compute["tokens"] * (
        compute["matmul_params"] + compute["n_layer"] * 32 * compute["d_model"]
    )


def test_blend_switch_happens_at_exactly_the_configured_step(plain, switched):
    same, other = losses(plain), losses(switched)
    assert same[:3] == other[:3]  # bitwise: steps 1-3 read the same samples
    assert same[3] != other[3]  # step 4 reads the second blend
    assert [row["blend"] for row in records(switched)] == ["blend"] * 3 + ["second_blend"] * 5
    record = json.loads((switched / "run.json").read_text())["cpt"]
    assert record["switch_step"] == 3 and record["switch_sample"] == 24
    assert [(b["name"], b["first_step"], b["last_step"]) for b in record["blends"]] == [
        ("blend", 1, 3),
        ("second_blend", 4, 8),
    ]


def test_reuse_recipe_switches_when_the_lr_reaches_a_fifth_of_its_peak(base, plain, tmp_path):
    run = tmp_path / "run"
    cpt(base, run, "--second_blend", str(base.general))
    rows = records(run)
    switch = next(k for k, row in enumerate(rows) if row["lr"] <= 0.2 * rows[0]["lr"])
    assert json.loads((run / "run.json").read_text())["cpt"]["switch_step"] == switch == 5
    assert losses(run)[:switch] == losses(plain)[:switch]
    assert losses(run)[switch] != losses(plain)[switch]
    assert [row["blend"] for row in rows] == ["blend"] * switch + ["second_blend"] * (8 - switch)


def test_killed_and_resumed_across_the_switch_is_bitwise_identical(base, switched, tmp_path):
    run = tmp_path / "run"
    killed = cpt(
        base,
        run,
        "--second_blend",
        str(base.general),
        "--switch_step",
        "3",
        check=False,
        CKPTLAB_FAULT="kill:step=3,micro=1",
    )
    assert killed.returncode == -signal.SIGKILL
    assert max(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*")) == 2  # resumes before the switch
    cpt(base, run, "--second_blend", str(base.general), "--switch_step", "3", "--resume")
    assert records(run) == records(switched)  # same samples (so same replay share) and same losses, bit for bit
    resumed, whole = (json.loads((r / "run.json").read_text())["compute"] for r in (run, switched))
    assert [resumed[k] for k in ("tokens", "target_tokens", "flops")] == [
        whole[k] for k in ("tokens", "target_tokens", "flops")
    ]


def test_optimizer_state_is_carried_over_unless_reset(base, plain, tmp_path):
    import torch

    source = torch.load(base.checkpoint / "training_state.pt", weights_only=False)["optimizer"]
    carried = torch.load(plain / "checkpoints" / "step-00000000" / "training_state.pt", weights_only=False)["optimizer"]
    assert source["state"] and carried["state"].keys() == source["state"].keys()
    for index, state in source["state"].items():
        assert torch.equal(carried["state"][index]["exp_avg"], state["exp_avg"])
        assert torch.equal(carried["state"][index]["exp_avg_sq"], state["exp_avg_sq"])
    # The pre-training run's hyperparameters are not carried: this run's weight decay (0) is used.
    assert source["param_groups"][0]["weight_decay"] == 0.1 and carried["param_groups"][0]["weight_decay"] == 0.0
    run = tmp_path / "run"
    cpt(base, run, "--reset_optimizer", "--keep.optimizer_state", "true")
    fresh = torch.load(run / "checkpoints" / "step-00000000" / "training_state.pt", weights_only=False)["optimizer"]
    assert fresh["state"] == {}
    assert losses(run)[0] == losses(plain)[0]  # same weights, same first batch
    assert losses(run)[1] != losses(plain)[1]  # different first update
    assert "fresh" in json.loads((run / "run.json").read_text())["cpt"]["optimizer_state"]


@pytest.fixture(scope="module")
def other_tokenizer(base) -> Path:
    out = base.root / "domain-own-tokenizer"
    run_cli(
        "prepare",
        "--sources",
        str(base.root / "world" / "corpus" / "domain.txt"),
        "--out",
        str(out),
        "--vocab_size",
        "300",
    )
    return out


@pytest.mark.parametrize(
    "case, expected",
    [
        ("zero_weights", "blend: weights sum to 0.0; expected a positive sum"),
        ("missing_replay", "replay: {missing}: prepared data directory not found"),
        ("tokenizer", "blend[0].data: {other} was prepared with another tokenizer than the model's"),
        ("context", "context_length 64 is longer than the model allows (max_position_embeddings 32)"),
        ("no_switch", "second_blend: say when to switch"),
        (
            "mlm_on_causal",
            "objective: mlm needs an encoder with a masked-LM head (bert, roberta, ...); {pre} is a gpt_neox causal LM",
        ),
        ("mlm_probability", "mlm_probability: expected 0 < x < 1, got 1.5"),
    ],
)
def test_bad_input_is_one_line_exit_2(base, other_tokenizer, tmp_path, case, expected):
    missing = tmp_path / "no-such-data"
    run = tmp_path / "run"
    extra = {
        "zero_weights": ["--blend", f"{base.domain}=0,{base.general}=0"],
        "missing_replay": ["--replay", str(missing)],
        "tokenizer": ["--blend", str(other_tokenizer)],
        "context": ["--context_length", "64"],
        "no_switch": ["--recipe", "none", "--second_blend", str(base.general)],
        "mlm_on_causal": ["--objective", "mlm"],
        "mlm_probability": ["--objective", "mlm", "--mlm_probability", "1.5"],
    }[case]
    proc = cpt(base, run, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected.format(missing=missing, other=other_tokenizer, pre=base.pre) in lines[0], (
        proc.stderr
    )
    assert not (run / "checkpoints").exists()


@pytest.fixture(scope="module")
def encoder(base) -> Path:
    """A tiny BERT (2 blocks, width 32) with a WordPiece tokenizer trained on the world's general corpus."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    words = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    words.normalizer = normalizers.BertNormalizer(lowercase=True)
    words.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words.train(
        [str(base.root / "world" / "corpus" / "general.txt")],
        trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    tokenizer = BertTokenizerFast(
        tokenizer_object=words,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    )
    out = base.root / "bert"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_mlm_continues_an_encoder_on_the_same_loop_and_checkpoint_format(base, encoder):
    from transformers import AutoModelForMaskedLM

    data, run = base.root / "general-wordpiece", base.root / "mlm-run"
    run_cli(
        "prepare",
        "--sources",
        str(base.root / "world" / "corpus" / "general.txt"),
        "--out",
        str(data),
        "--tokenizer",
        str(encoder),
        "--val_fraction",
        "0.1",
    )
    run_cli(
        "cpt",
        "--init_from",
        str(encoder),
        "--out",
        str(run),
        "--blend",
        str(data),
        "--objective",
        "mlm",
        "--context_length",
        "32",
        "--train.schedule.lr",
        "3e-3",
        "--train.schedule.warmup_steps",
        "2",
        *COMMON,
    )
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["fingerprints"]["objective"] == "mlm=0.15"
    val = {c["step"]: c["val_loss"] for c in manifest["checkpoints"] if c["kept"]}
    assert set(val) == {0, 8} and val[8] < val[0]  # masked-token loss on held-out windows
    assert manifest["compute"]["tokens"] == 8 * 8 * 32 and manifest["compute"]["target_tokens"] > 0
    model = AutoModelForMaskedLM.from_pretrained(run / "checkpoints" / "step-00000008")
    assert type(model).__name__ == "BertForMaskedLM"
    # Then sequence classification of the continued encoder on a world task, evaluated by accuracy.
    tuned = base.root / "classify-run"
    proc = run_cli(
        "finetune",
        "--init_from",
        str(run),
        "--out",
        str(tuned),
        "--objective",
        "classification",
        "--task",
        str(base.root / "world" / "tasks" / "finance_sentiment.yaml"),
        "--train.max_steps",
        "6",
        "--train.progress",
        "false",
    )
    manifest = json.loads((tuned / "run.json").read_text())
    accuracy = manifest["final"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0 and f"validation accuracy of the fine-tuned model: {accuracy}" in proc.stdout
    config = json.loads((tuned / manifest["final"]["model"] / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 3
    assert manifest["finetune"]["objective"] == "classification" and manifest["compute"]["target_tokens"] == 6 * 8
