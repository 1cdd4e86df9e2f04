"""The cache: keyed by model content and task fingerprint; zero forward passes on a re-run; runs and exports."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from test_eval_tasks import WORLD_STYLE, write_task  # noqa: E402

from ckptlab.data.tokenizer import train_tokenizer  # noqa: E402
from ckptlab.evaluation.models import ModelRef, content_hash, model_fingerprint, resolve_models  # noqa: E402
from ckptlab.evaluation.runner import Evaluator, Unit  # noqa: E402
from ckptlab.evaluation.store import ResultStore, export  # noqa: E402
from ckptlab.models.hf import ModelConfig, build_model, load_model, load_tokenizer, save_model_dir  # noqa: E402
from ckptlab.runs.checkpoint import write_checkpoint  # noqa: E402
from ckptlab.tasks import spec as T  # noqa: E402

GENERATION = {
    **WORLD_STYLE,
    "task": "toy_gen",
    "type": "generation",
    "label_field": None,
    "choices": None,
    "target_field": "hypothesis",
    "fields": ["premise"],
    "metrics": ["rouge_l", "exact_match"],
    "templates": {"plain": "{premise}", "asked": "Say: {premise}\nAnswer:"},
    "generation": {"max_new_tokens": 4, "stop": ["\n"]},
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tokenizer = train_tokenizer(
        [f"TEST premise {i}. test hypothesis {i}. entailment neutral contradiction" for i in range(50)],
        300,
        root / "tok",
    )
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(size="tiny", context_length=128), len(tokenizer), 0, 0, 1)
        dirs.append(save_model_dir(model, tokenizer, root / f"seed{seed}"))
    return dirs


@pytest.fixture()
def units(tmp_path):
    nli = T.load_task_data(T.read_task_file(write_task(tmp_path / "nli", WORLD_STYLE)))
    gen_path = write_task(tmp_path / "gen", GENERATION)
    gen = T.load_task_data(T.read_task_file(gen_path))
    return [Unit(nli, name, shots, 1234, nli.examples) for shots in (0, 2) for name in nli.spec.templates] + [
        Unit(gen, name, 0, 1234, gen.examples) for name in gen.spec.templates
    ]


class Counting:
    """Loads a model and counts loads and forward passes."""

    def __init__(self, directory):
        self.directory, self.loads, self.forwards = str(directory), 0, 0

    def __call__(self):
        self.loads += 1
        model, tokenizer = load_model(self.directory).eval(), load_tokenizer(self.directory)
        forward = model.forward

        def counted(*args, **kwargs):
            self.forwards += 1
            return forward(*args, **kwargs)

        model.forward = counted
        return model, tokenizer


def fingerprint(directory) -> str:
    return model_fingerprint(content_hash(ModelRef(str(directory), directory.name, "directory")))


def test_same_content_hits_everything_other_model_nothing(model_dirs, units, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    evaluator = Evaluator(store, batch_size=4, resamples=50)
    n = sum(len(u.examples) for u in units)

    first = Counting(model_dirs[0])
    results, sensitivity = evaluator.run_model(fingerprint(model_dirs[0]), {}, units, first)
    assert first.loads == 1 and first.forwards > 0
    assert sum(r.scored for r in results) == n and sum(r.cached for r in results) == 0
    assert {r["metric"] for r in sensitivity} >= {"accuracy:spread", "accuracy:std", "accuracy:worst", "agreement"}

    copy = shutil.copytree(model_dirs[0], tmp_path / "elsewhere" / "copy")  # same content, other path
    assert fingerprint(copy) == fingerprint(model_dirs[0])
    again = Counting(copy)
    results2, _ = evaluator.run_model(fingerprint(copy), {}, units, again)
    assert again.loads == 0 and again.forwards == 0  # 100% hits: no model load, no forward pass
    assert sum(r.cached for r in results2) == n and sum(r.scored for r in results2) == 0
    assert [r.metric_rows for r in results2] == [r.metric_rows for r in results]

    other = Counting(model_dirs[1])
    assert fingerprint(model_dirs[1]) != fingerprint(model_dirs[0])
    results3, _ = evaluator.run_model(fingerprint(model_dirs[1]), {}, units, other)
    assert sum(r.cached for r in results3) == 0 and other.forwards > 0


def test_limit_then_full_scores_only_the_missing_examples(model_dirs, units, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    evaluator = Evaluator(store, batch_size=4, resamples=0)
    fp = fingerprint(model_dirs[0])
    unit = units[0]
    small = Unit(unit.task, unit.template, unit.shots, unit.seed, unit.examples[:5])
    evaluator.run_model(fp, {}, [small], Counting(model_dirs[0]))
    (result,), _ = evaluator.run_model(fp, {}, [unit], Counting(model_dirs[0]))
    assert (result.cached, result.scored) == (5, len(unit.examples) - 5)


def test_rows_hold_per_choice_log_likelihoods(model_dirs, units, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    fp = fingerprint(model_dirs[0])
    Evaluator(store, batch_size=3, resamples=10, length_normalized=True).run_model(
        fp, {}, units[:1] + units[-1:], Counting(model_dirs[0])
    )
    unit = units[0]
    rows = store.examples((fp, unit.task.fingerprint, unit.template, 0, 1234))
    assert [r["example_id"] for r in rows] == [e.id for e in unit.examples]
    for row in rows:
        ll = row["scores"]["ll"]
        assert len(ll) == 3 and all(v < 0 for v in ll) and row["batch_size"] == 3
        assert row["prediction"] == row["scores"]["choices"][ll.index(max(ll))]
        assert row["correct"] == (row["prediction"] == row["gold"])
    metrics = {(r["template"], r["metric"]) for r in store.rows("metrics")}
    assert (unit.template, "accuracy_norm") in metrics and ("asked", "rouge_l") in metrics


def test_checkpoint_fingerprint_from_its_manifest_equals_hashing_the_files(model_dirs, tmp_path):
    def write(folder):
        shutil.copytree(model_dirs[0], folder, dirs_exist_ok=True)
        (folder / "training_state.pt").write_bytes(b"optimizer state does not change outputs")

    run = tmp_path / "run"
    paths = [
        write_checkpoint(run / "checkpoints", step, write, {"kept": step != 20, "tokens_seen": step * 10})
        for step in (10, 20, 30)
    ]
    listed = [{"step": s, "path": f"checkpoints/{p.name}", "kept": s != 20} for s, p in zip((10, 20, 30), paths)]
    (run / "run.json").write_text(json.dumps({"checkpoints": listed}))
    (ref,) = resolve_models([str(paths[0])])
    assert ref.kind == "checkpoint" and ref.step == 10 and ref.label == "run/step-00000010"
    as_directory = ModelRef(str(paths[0]), "x", "directory")
    assert (
        content_hash(ref) == content_hash(as_directory) == content_hash(ModelRef(str(model_dirs[0]), "y", "directory"))
    )
    assert [r.step for r in resolve_models([str(run)], "kept")] == [10, 30]
    assert [r.step for r in resolve_models([str(run)], "all")] == [10, 20, 30]
    assert [r.step for r in resolve_models([str(run)], "latest")] == [30]


def test_gguf_fingerprint_ignores_the_file_name(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF same bytes")
    b.write_bytes(b"GGUF same bytes")
    assert content_hash(ModelRef(str(a), "a", "gguf")) == content_hash(ModelRef(str(b), "b", "gguf"))
    b.write_bytes(b"GGUF other bytes")
    assert content_hash(ModelRef(str(a), "a", "gguf")) != content_hash(ModelRef(str(b), "b", "gguf"))


def test_file_hash_memo_and_csv_export(model_dirs, units, tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    calls = []

    def compute(path):
        calls.append(path)
        return "digest"

    weights = model_dirs[0] / "model.safetensors"
    assert store.file_sha256(weights, compute) == store.file_sha256(weights, compute) == "digest"
    assert len(calls) == 1
    Evaluator(store, batch_size=4, resamples=20).run_model(
        fingerprint(model_dirs[0]), {"model_label": "m0"}, units[:3], Counting(model_dirs[0])
    )
    metrics_csv, examples_csv = export(store, tmp_path / "out" / "results.csv")
    metric_rows = list(csv.DictReader(open(metrics_csv, encoding="utf-8")))
    assert {r["template"] for r in metric_rows} == {"train_format", "instruction", "bare", "*"}
    assert all(r["model_label"] == "m0" for r in metric_rows)
    assert len(list(csv.DictReader(open(examples_csv, encoding="utf-8")))) == 3 * len(units[0].examples)


def test_hub_source_is_fingerprinted_by_its_snapshot_content(model_dirs, monkeypatch):
    import ckptlab.models.hf

    asked = []
    monkeypatch.setattr(
        ckptlab.models.hf, "hub_snapshot", lambda repo, rev: asked.append((repo, rev)) or str(model_dirs[0])
    )
    (ref,) = resolve_models(["org/tiny@step100"])
    assert ref.kind == "hub" and ref.label == "org/tiny@step100"
    assert content_hash(ref) == content_hash(ModelRef(str(model_dirs[0]), "x", "directory"))
    assert asked == [("org/tiny", "step100")] and ref.source == str(model_dirs[0])
