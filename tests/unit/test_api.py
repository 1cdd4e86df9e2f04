"""The Python API (`import ckptlab`): cheap to import, returns what the CLI stores, configs checked as the CLI
checks them; and the lm-eval-style export of an evaluation."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_eval_tasks import WORLD_STYLE, write_task  # noqa: E402
from tiny_models import one_thread  # noqa: E402, F401

import ckptlab  # noqa: E402
from ckptlab import cli  # noqa: E402
from ckptlab.config import from_mapping  # noqa: E402
from ckptlab.errors import ConfigError, UserError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny HF model directories (seeds 0 and 1, one tokenizer) and a 9-example, 3-template NLI task."""
    from ckptlab.data.tokenizer import train_tokenizer
    from ckptlab.models.hf import ModelConfig, build_model, save_model_dir

    root = tmp_path_factory.mktemp("api")
    tokenizer = train_tokenizer(
        [f"TEST premise {i}. test hypothesis {i}. TRAIN train entailment neutral contradiction" for i in range(50)],
        300,
        root / "tok",
    )
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model(ModelConfig(size="tiny", context_length=128), len(tokenizer), 0, 0, 1)
        models.append(save_model_dir(model, tokenizer, root / f"seed{seed}"))
    return models, write_task(root / "task", WORLD_STYLE)


def stored(store: Path) -> list[dict]:
    with sqlite3.connect(store) as db:
        cursor = db.execute("SELECT * FROM metrics")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r)) for r in cursor]


def without_time(rows) -> list[tuple]:
    return sorted(tuple((k, v) for k, v in row.items() if k != "created") for row in rows)


def test_import_ckptlab_loads_neither_torch_nor_the_api():
    code = (
        "import sys, ckptlab; "
        "print(ckptlab.__version__, *(m in sys.modules for m in ('torch', 'transformers', 'ckptlab.api')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [ckptlab.__version__, "False", "False", "False"]
    assert callable(ckptlab.evaluate) and "load_results" in dir(ckptlab)
    with pytest.raises(AttributeError):
        ckptlab.no_such_function  # noqa: B018


def test_evaluate_returns_the_rows_the_cli_stores_and_a_second_call_is_answered_from_the_store(tiny, tmp_path, capsys):
    (model, _), task = tiny
    options = dict(shots=[0, 2], batch_size=4, bootstrap=50, store=tmp_path / "api.sqlite")
    rows = ckptlab.evaluate(str(model), task, **options)
    assert capsys.readouterr().out == ""  # quiet by default
    assert rows.scored == 9 * 3 * 2 and rows.cached == 0 and rows.store == tmp_path / "api.sqlite"
    assert without_time(rows) == without_time(stored(tmp_path / "api.sqlite"))
    assert {(r["template"], r["shots"]) for r in rows if r["metric"] == "accuracy"} == {
        (t, k) for t in ("train_format", "instruction", "bare") for k in (0, 2)
    }

    common = ["--model", str(model), "--tasks", str(task), "--shots", "0,2", "--batch_size", "4", "--bootstrap", "50"]
    assert cli.main(["evaluate", *common, "--store", str(tmp_path / "cli.sqlite")]) == 0
    printed = capsys.readouterr().out
    assert "54 examples scored, 0 from the store" in printed and "prompt sensitivity" in printed
    assert without_time(stored(tmp_path / "cli.sqlite")) == without_time(rows)

    again = ckptlab.evaluate([model], [task], quiet=False, **options)
    assert (again.scored, again.cached) == (0, 54)
    assert "loaded" not in capsys.readouterr().out  # every example cached: the model is not loaded
    assert without_time(again) == without_time(rows)


def test_load_results_filters(tiny, tmp_path):
    models, task = tiny
    store = tmp_path / "r.sqlite"
    ckptlab.evaluate(models, task, templates="bare,instruction", shots=0, bootstrap=0, batch_size=4, store=store)
    every = ckptlab.load_results(store)
    assert without_time(every) == without_time(stored(store))
    assert {r["model_label"] for r in every} == {"seed0", "seed1"}
    accuracy = ckptlab.load_results(store, metric="accuracy", template=["bare", "instruction"])
    assert len(accuracy) == 4 and {r["metric"] for r in accuracy} == {"accuracy"}
    one = ckptlab.load_results(store, model="seed1", metric="accuracy", template="bare")
    assert len(one) == 1 and one[0]["model_label"] == "seed1" and one[0]["task"] == "toy_nli"
    assert ckptlab.load_results(store, model=one[0]["model_fp"], metric="accuracy", template="bare") == one
    assert ckptlab.load_results(store, task="other") == []
    with pytest.raises(ConfigError, match="unknown filter 'metrics'"):
        ckptlab.load_results(store, metrics="accuracy")
    with pytest.raises(UserError, match="no such file"):
        ckptlab.load_results(tmp_path / "absent.sqlite")
    assert not (tmp_path / "absent.sqlite").exists()


def test_results_to_pandas(tiny, tmp_path, monkeypatch):
    pandas = pytest.importorskip("pandas")
    (model, _), task = tiny
    rows = ckptlab.evaluate(model, task, templates="bare", shots=0, bootstrap=0, store=tmp_path / "r.sqlite")
    frame = rows.to_dataframe()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == len(rows)
    assert frame.loc[frame.metric == "accuracy", "value"].item() == next(
        r["value"] for r in rows if r["metric"] == "accuracy"
    )
    assert list(ckptlab.Results().to_pandas().columns)[:3] == ["model_fp", "model_source", "model_label"]
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        rows.to_pandas()


def test_bad_keywords_are_config_errors_naming_the_key(tiny, tmp_path):
    (model, _), task = tiny
    with pytest.raises(ConfigError, match="unknown config key 'bootstrapp'"):
        ckptlab.evaluate(model, task, bootstrapp=5, store=tmp_path / "r.sqlite")
    with pytest.raises(ConfigError, match="'bootstrap'"):
        ckptlab.evaluate(model, task, bootstrap="many", store=tmp_path / "r.sqlite")
    with pytest.raises(ConfigError, match="'shots'"):
        ckptlab.evaluate(model, task, shots="two", store=tmp_path / "r.sqlite")
    with pytest.raises(UserError, match="no template 'fancy'"):
        ckptlab.evaluate(model, task, templates="fancy", store=tmp_path / "r.sqlite")
    with pytest.raises(ConfigError, match="unknown config key 'train.learning_rate'"):
        ckptlab.finetune({"init_from": str(model), "train.learning_rate": 1e-3})
    assert not (tmp_path / "r.sqlite").exists()  # every mistake is found before the store is opened


def test_from_mapping_takes_dotted_and_nested_keys_later_mappings_winning():
    from ckptlab.commands.finetune import FinetuneConfig
    from ckptlab.train.schedules import KeepConfig

    config = from_mapping(
        FinetuneConfig,
        {"train": {"max_steps": 5, "schedule": {"lr": 1e-3}}, "train.micro_batch_size": 2},
        {"train.max_steps": 7, "keep": KeepConfig(schedule="none")},
    )
    assert (config.train.max_steps, config.train.micro_batch_size, config.train.schedule.lr) == (7, 2, 1e-3)
    assert config.train.schedule.name == "linear" and config.keep.schedule == "none"
    with pytest.raises(ConfigError, match="'train.max_steps'"):
        from_mapping(FinetuneConfig, {"train.max_steps": "many"})


def test_finetune_from_a_dict_returns_the_run_directory_with_its_checkpoint(tiny, tmp_path):
    (model, _), task = tiny
    config = {
        "init_from": str(model),
        "task": str(task),
        "out": str(tmp_path / "ft"),
        "max_length": 64,
        "train": {"max_steps": 2, "micro_batch_size": 4, "progress": False, "device": "cpu"},
    }
    run = ckptlab.finetune(config)
    assert run == tmp_path / "ft"
    final = json.loads((run / "run.json").read_text())["final"]
    assert final["step"] == 2 and (run / final["model"] / "model.safetensors").is_file()
    with pytest.raises(UserError, match="already holds a run"):  # the UserError the CLI prints, not SystemExit
        ckptlab.finetune(config)


def test_lm_eval_export_holds_every_unit_and_sample_means_are_the_stored_metrics(tiny, tmp_path):
    models, task = tiny
    out = tmp_path / "lm_eval"
    rows = ckptlab.evaluate(
        models,
        task,
        shots=[0, 2],
        batch_size=4,
        bootstrap=50,
        length_normalized=True,
        export=f"{out}/",
        store=tmp_path / "r.sqlite",
    )
    results_files = sorted(out.glob("*/results_*.json"))
    assert len(results_files) == 2 and {p.parent for p in results_files} == set(out.iterdir())
    assert set(results_files) <= set(rows.exported) and len(rows.exported) == 2 * (1 + 6)
    for path in results_files:
        results = json.loads(path.read_text(encoding="utf-8"))
        mine = [r for r in rows if r["model_source"] == results["config"]["model"] and r["template"] != "*"]
        names = {f"toy_nli/{t}" + (f"/{k}-shot" if k else "") for t in WORLD_STYLE["templates"] for k in (0, 2)}
        assert set(results["results"]) == names == set(results["n-shot"]) == set(results["configs"])
        for row in mine:
            name = f"toy_nli/{row['template']}" + (f"/{row['shots']}-shot" if row["shots"] else "")
            metric = {"accuracy": "acc", "accuracy_norm": "acc_norm"}.get(row["metric"], row["metric"])
            entry = results["results"][name]
            assert entry[f"{metric},none"] == pytest.approx(row["value"])
            assert entry[f"{metric}_ci_low,none"] == row["ci_low"] and results["n-shot"][name] == row["shots"]
            samples_path = path.parent / f"samples_{name.replace('/', '_').replace('-', '_')}_{path.stem[8:]}.jsonl"
            samples = [json.loads(line) for line in samples_path.read_text(encoding="utf-8").splitlines()]
            assert len(samples) == row["n"] == entry["sample_len"] == 9
            if metric in ("acc", "acc_norm"):
                values = [s[metric] for s in samples]
                assert sum(values) / len(values) == pytest.approx(row["value"])
                mean = sum(values) / len(values)
                stderr = (sum((v - mean) ** 2 for v in values) / 8) ** 0.5 / 9**0.5
                assert entry[f"{metric}_stderr,none"] == pytest.approx(stderr)
            first = samples[0]
            assert set(first) >= {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter"}
            assert first["doc"]["premise"] in first["arguments"]["gen_args_0"]["arg_0"]  # the prompt as scored
            assert [a["arg_1"] for a in first["arguments"].values()] == [" entailment", " neutral", " contradiction"]
            for sample in samples:  # lm-eval's reading: acc is whether the most likely choice is the target's index
                ll = [float(resp[0]) for resp in sample["filtered_resps"]]
                assert sample["acc"] == float(ll.index(max(ll)) == int(sample["target"]))
    # A store exported afterwards, from load_results: the same numbers (no prompts: the units are not at hand).
    from ckptlab.evaluation.lm_eval_results import write_lm_eval_results
    from ckptlab.evaluation.store import ResultStore

    store = ResultStore(tmp_path / "r.sqlite")
    later = write_lm_eval_results(store, tmp_path / "later", ckptlab.load_results(tmp_path / "r.sqlite"))
    store.close()
    again = json.loads(next(p for p in later if p.parent.name == path.parent.name and p.suffix == ".json").read_text())
    assert {k: v["acc,none"] for k, v in again["results"].items()} == {
        k: v["acc,none"] for k, v in results["results"].items()
    }
    lm_eval_utils = pytest.importorskip("lm_eval.utils")
    assert "toy_nli/bare" in lm_eval_utils.make_table(results)  # lm-eval's own table reads it


def test_lm_eval_json_form_is_one_models(tiny, tmp_path):
    models, task = tiny
    common = dict(templates="bare", shots=0, bootstrap=0, store=tmp_path / "r.sqlite")
    with pytest.raises(UserError, match="holds one model"):
        ckptlab.evaluate(models, task, export=str(tmp_path / "x.json"), **common)
    rows = ckptlab.evaluate(models[0], task, export=str(tmp_path / "lm" / "x.json"), **common)
    (results,) = (tmp_path / "lm").glob("x_*.json")
    assert rows.exported[0] == results and len(list((tmp_path / "lm").glob("samples_toy_nli_bare_*.jsonl"))) == 1
    accuracy = json.loads(results.read_text())["results"]["toy_nli/bare"]["acc,none"]
    assert accuracy == next(r["value"] for r in rows if r["metric"] == "accuracy")
