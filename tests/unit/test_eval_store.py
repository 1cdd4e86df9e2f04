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


def test_hub_source_is_fingerprinted_by_published_hashes_without_download(monkeypatch):
    # More in test_hub.py (a stand-in hub API, the offline cache path giving the same fingerprint).
    from ckptlab.models import hf, hub

    files = {"config.json": "1" * 40, "model.safetensors": "a" * 64}
    asked = []
    monkeypatch.setattr(
        hub, "hub_files", lambda repo, rev, file=None: asked.append((repo, rev)) or hub.HubFiles("c0", files)
    )
    monkeypatch.setattr(hf, "hub_snapshot", lambda repo, rev: pytest.fail("content_hash downloaded the model"))
    (ref,) = resolve_models(["org/tiny@step100"])
    assert ref.kind == "hub" and ref.label == "org/tiny@step100" and ref.step == 100
    assert content_hash(ref) == hub.fingerprint(files)
    assert asked == [("org/tiny", "step100")] and ref.source == "org/tiny@c0"  # pinned to the fingerprinted commit


def test_a_store_from_before_trust_remote_code_gains_the_column(tmp_path):
    import sqlite3

    from ckptlab.evaluation.store import ResultStore

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE models (model_fp TEXT PRIMARY KEY, content_hash TEXT, kind TEXT, source TEXT, label TEXT, "
        "run TEXT, step INTEGER, tokens_seen INTEGER, dtype TEXT, created TEXT)"
    )
    old.execute("INSERT INTO models VALUES ('old', 'c', 'hub', 's', 'l', NULL, NULL, NULL, 'float32', 'then')")
    old.commit()
    old.close()
    store = ResultStore(path)
    store.add_model({"model_fp": "new", "kind": "hub", "dtype": "float32", "trust_remote_code": 1})
    rows = dict(store.db.execute("SELECT model_fp, trust_remote_code FROM models").fetchall())
    store.close()
    assert rows == {"old": None, "new": 1}


class Stopped(Exception):
    """Stands for the process being killed mid-unit."""


class Cramped(Counting):
    """A model whose prompt pass raises torch.OutOfMemoryError above `fits(passes so far)` rows, and that
    can stop the run (like a kill) before its `stop_at`-th successful prompt pass."""

    def __init__(self, directory, fits=lambda passes: None, stop_at=None):
        super().__init__(directory)
        self.fits, self.stop_at, self.passes, self.tried = fits, stop_at, 0, []

    def __call__(self):
        model, tokenizer = super().__call__()
        forward = model.forward

        def limited(*args, **kwargs):
            # The batch's prompt pass (it keeps one logit per row): not the KV-cached continuation pass,
            # nor the single-row pass over the unit's shared prefix (no attention mask).
            if kwargs.get("logits_to_keep") == 1 and "attention_mask" in kwargs:
                rows, fits = kwargs["input_ids"].shape[0], self.fits(self.passes)
                self.tried.append(rows)
                if fits is not None and rows > fits:
                    raise torch.OutOfMemoryError("simulated: CUDA out of memory")
                if self.passes == self.stop_at:
                    raise Stopped
                self.passes += 1
            return forward(*args, **kwargs)

        model.forward = limited
        return model, tokenizer


def scored(store, fp, unit):
    rows = store.examples((fp, unit.task.fingerprint, unit.template, unit.shots, unit.seed))
    return [(r["example_id"], r["scores"]["ll"], r["batch_size"]) for r in rows]


def test_auto_batch_size_backs_off_on_out_of_memory_records_it_and_a_resumed_run_reuses_it(model_dirs, units, tmp_path):
    fp, unit = fingerprint(model_dirs[0]), units[0]
    assert len(unit.examples) == 9
    whole = ResultStore(tmp_path / "whole.sqlite")
    cramped = Cramped(model_dirs[0], fits=lambda passes: 5)
    (result,), _ = Evaluator(whole, batch_size="auto", resamples=0).run_model(fp, {}, [unit], cramped)
    assert cramped.tried[:3] == [9, 8, 4]  # 16 (all 9 rows) and 8 do not fit; 4 does
    assert {size for _, _, size in scored(whole, fp, unit)} == {4} and result.scored == 9
    assert {r["batch_size"] for r in result.metric_rows} == {4}
    # The same batches as asking for 4 outright, so the same scores to the bit.
    explicit = ResultStore(tmp_path / "explicit.sqlite")
    Evaluator(explicit, batch_size=4, resamples=0).run_model(fp, {}, [unit], Counting(model_dirs[0]))
    assert scored(explicit, fp, unit) == scored(whole, fp, unit)

    # Killed after its first batch, then resumed on a device where 16 would fit: the recorded 4 is reused.
    resumed = ResultStore(tmp_path / "resumed.sqlite")
    with pytest.raises(Stopped):
        Evaluator(resumed, batch_size="auto", resamples=0).run_model(
            fp, {}, [unit], Cramped(model_dirs[0], lambda p: 5, 1)
        )
    assert (
        len(scored(resumed, fp, unit)) == 4
        and resumed.plan_batch_size((fp, unit.task.fingerprint, unit.template, 0, 1234)) == 4
    )
    roomy = Cramped(model_dirs[0])
    Evaluator(resumed, batch_size="auto", resamples=0).run_model(fp, {}, [unit], roomy)
    assert roomy.tried == [4, 1]  # only the missing batches of the plan at 4
    assert scored(resumed, fp, unit) == scored(whole, fp, unit)


def test_out_of_memory_once_rows_are_stored_splits_only_the_batch_at_hand(model_dirs, units, tmp_path):
    fp, unit = fingerprint(model_dirs[0]), units[0]
    key = (fp, unit.task.fingerprint, unit.template, unit.shots, unit.seed)
    store = ResultStore(tmp_path / "results.sqlite")
    evaluator = Evaluator(store, batch_size="auto", resamples=0)
    with pytest.raises(Stopped):  # settles on 4, stores the first batch, is killed
        evaluator.run_model(fp, {}, [unit], Cramped(model_dirs[0], lambda passes: 4, stop_at=1))
    assert store.plan_batch_size(key) == 4
    # Resumed with less memory: the plan at 4 stays; the batch that does not fit is split into pieces of 2.
    tighter = Cramped(model_dirs[0], lambda passes: 2)
    (result,), _ = evaluator.run_model(fp, {}, [unit], tighter)
    assert tighter.tried == [4, 2, 2, 1]
    assert sorted(size for _, _, size in scored(store, fp, unit)) == [2] * 4 + [4] * 5
    assert store.plan_batch_size(key) == 4 and {r["batch_size"] for r in result.metric_rows} == {4}


def test_explicit_batch_size_never_backs_off(model_dirs, units, tmp_path):
    from ckptlab.errors import UserError

    fp, unit = fingerprint(model_dirs[0]), units[0]
    store = ResultStore(tmp_path / "results.sqlite")
    cramped = Cramped(model_dirs[0], fits=lambda passes: 5)
    Evaluator(store, batch_size=3, resamples=0).run_model(fp, {}, [unit], cramped)
    assert cramped.tried == [3, 3, 3] and {size for _, _, size in scored(store, fp, unit)} == {3}
    with pytest.raises(UserError, match=r"out of memory scoring toy_nli / .* at --batch_size 8"):
        Evaluator(store, batch_size=8, resamples=0).run_model(fp, {}, units[1:2], cramped)
    with pytest.raises(UserError, match="even at batch size 1"):
        Evaluator(store, batch_size="auto", resamples=0).run_model(
            fp, {}, units[2:3], Cramped(model_dirs[0], lambda p: 0)
        )
