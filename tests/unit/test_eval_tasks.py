"""Task files: parsing, data formats, bad input named by task/template/file/line, fingerprints, few-shot."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from ckptlab.errors import UserError
from ckptlab.evaluation.runner import Unit, prompts_for
from ckptlab.tasks import spec as T
from ckptlab.tasks import templates as tpl

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

# The format `ckptlab world` writes (see ckptlab/synthetic), with its own small data.
WORLD_STYLE = {
    "task": "toy_nli",
    "version": 1,
    "description": "toy",
    "domain": "general",
    "type": "classification",
    "data": {"format": "jsonl", "train": "toy/train.jsonl", "test": "toy/test.jsonl"},
    "fields": ["premise", "hypothesis"],
    "label_field": "label",
    "choices": ["entailment", "neutral", "contradiction"],
    "choices_field": None,
    "target_field": None,
    "templates": {
        "train_format": "### Input: Premise: {premise} Hypothesis: {hypothesis}\n### Output:",
        "instruction": "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:",
        "bare": "{premise} {hypothesis}",
    },
    "metrics": ["accuracy", "macro_f1"],
    "generation": None,
    "fewshot": {"split": "train", "seed": 1234},
    "probes_pretraining_knowledge": False,
}


def write_task(root: Path, spec: dict, train: list[str] | None = None, test: list[str] | None = None) -> Path:
    import json

    (root / "toy").mkdir(parents=True, exist_ok=True)
    labels = ["entailment", "neutral", "contradiction"]
    train = (
        train
        if train is not None
        else [
            json.dumps(
                {
                    "id": f"tr{i}",
                    "premise": f"TRAIN premise {i}.",
                    "hypothesis": f"train hypothesis {i}.",
                    "label": labels[i % 3],
                }
            )
            for i in range(12)
        ]
    )
    test = (
        test
        if test is not None
        else [
            json.dumps(
                {
                    "id": f"te{i}",
                    "premise": f"TEST premise {i}.",
                    "hypothesis": f"test hypothesis {i}.",
                    "label": labels[i % 3],
                }
            )
            for i in range(9)
        ]
    )
    (root / "toy" / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "toy" / "test.jsonl").write_text("\n".join(test) + "\n", encoding="utf-8")
    path = root / "toy_nli.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def test_world_style_task_loads(tmp_path):
    data = T.load_task_data(T.read_task_file(write_task(tmp_path, WORLD_STYLE)))
    assert data.split == "test" and len(data.examples) == 9 and len(data.fewshot) == 12
    assert data.examples[0].choices == ["entailment", "neutral", "contradiction"]
    assert data.examples[0].gold == "entailment" and data.examples[0].id == "te0"


def test_generated_world_tasks_load_unchanged(tmp_path):
    synthetic = pytest.importorskip("ckptlab.synthetic", reason="the world generator is not in this checkout")
    synthetic.write_world(synthetic.generate(0, "tiny"), tmp_path / "world")
    files = T.find_task_files([str(tmp_path / "world")])
    assert len(files) >= 5
    for path in files:
        data = T.load_task_data(T.read_task_file(path))
        assert data.examples and data.fewshot, path
        for template in data.spec.templates.values():
            assert tpl.render(template, data.examples[0].fields)


@pytest.mark.parametrize("name", sorted(T.shipped_tasks()))
def test_every_shipped_task_parses_and_renders(name):
    spec = T.read_task_file(T.shipped_tasks()[name])
    assert set(spec.templates) == {"train_format", "instruction", "bare"}
    assert spec.hf and spec.hf["path"]
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent (real task data is not in the repository)")
    data = T.load_task_data(spec)
    assert len(data.examples) > 50
    assert {e.gold for e in data.examples} == set(spec.choices)
    for template in spec.templates.values():
        prompt = tpl.render(template, data.examples[0].fields)
        assert prompt and "{" not in prompt


def test_real_task_row_counts_and_formats():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent")
    counts = {"rte": 277, "mrpc": 1725, "sst2": 872, "cola": 1043, "wnli": 71, "mr": 2133, "subj": 2000, "mpqa": 2121}
    for name, rows in counts.items():
        data = T.load_task_data(T.read_task_file(T.shipped_tasks()[name]))
        assert len(data.examples) == rows, name
    mrpc = T.load_task_data(T.read_task_file(T.shipped_tasks()["mrpc"]))
    assert '"' in "".join(e.fields["sentence1"] for e in mrpc.examples)  # quotes kept: tabs-only split
    assert not mrpc.examples[0].fields["sentence1"].startswith("\ufeff")
    cola = T.load_task_data(T.read_task_file(T.shipped_tasks()["cola"]))
    assert cola.examples[0].fields["sentence"] == "The sailors rode the breeze clear of the rocks."
    assert len(cola.fewshot) == 8551 and cola.fewshot[0].fields["sentence"].islower()


def _error(tmp_path, spec=None, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        T.load_task_data(T.read_task_file(write_task(tmp_path, spec or WORLD_STYLE, **kwargs)))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("task toy_nli")
    return message


def test_template_naming_a_missing_field(tmp_path):
    spec = {**WORLD_STYLE, "templates": {**WORLD_STYLE["templates"], "instruction": "P: {premise} Q: {question}"}}
    message = _error(tmp_path, spec)
    assert "template instruction" in message and "toy_nli.yaml" in message and "line " in message
    assert "'question'" in message


def test_label_word_missing_from_choices(tmp_path):
    spec = {**WORLD_STYLE, "label_map": {"0": "entailment", "1": "maybe"}}
    message = _error(tmp_path, spec)
    assert "'maybe'" in message and "missing from choices" in message and "line " in message
    row = '{"id": "x", "premise": "p", "hypothesis": "h", "label": "unsure"}'
    message = _error(tmp_path, test=[row])
    assert "test.jsonl" in message and "line 1" in message and "'unsure'" in message


def test_empty_split(tmp_path):
    message = _error(tmp_path, test=[])
    assert "test.jsonl" in message and "empty" in message


def test_non_utf8_file(tmp_path):
    path = write_task(tmp_path, WORLD_STYLE)
    good = (tmp_path / "toy" / "test.jsonl").read_bytes().splitlines()
    (tmp_path / "toy" / "test.jsonl").write_bytes(b"\n".join(good[:2] + [good[2].replace(b"TEST", b"T\xe9ST")]) + b"\n")
    with pytest.raises(UserError) as caught:
        T.load_task_data(T.read_task_file(path))
    assert "test.jsonl, line 3" in str(caught.value) and "not UTF-8" in str(caught.value)


def test_tsv_row_with_too_few_columns_and_bom(tmp_path):
    spec = {
        **WORLD_STYLE,
        "data": {"format": "tsv", "header": True, "train": "toy/train.tsv", "test": "toy/test.tsv"},
        "label_map": {"0": "entailment", "1": "neutral", "2": "contradiction"},
    }
    path = write_task(tmp_path, spec)
    rows = ["premise\thypothesis\tlabel", 'A "quoted" premise.\tA hypothesis.\t0', "p\th\t1"]
    (tmp_path / "toy" / "train.tsv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "toy" / "test.tsv").write_text("\n".join(rows + ["only\t2"]) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        T.load_task_data(T.read_task_file(path))
    message = str(caught.value)
    assert "test.tsv, line 4" in message and "too few columns" in message and "expected 3" in message
    (tmp_path / "toy" / "test.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    data = T.load_task_data(T.read_task_file(path))
    assert data.fewshot[0].fields["premise"] == 'A "quoted" premise.' and data.examples[1].gold == "neutral"


def test_unknown_key_and_unknown_metric_are_refused(tmp_path):
    assert "unknown key 'templatez'" in _error(tmp_path, {**WORLD_STYLE, "templatez": {}})
    assert "metric 'bleu'" in _error(tmp_path, {**WORLD_STYLE, "metrics": ["bleu"]})


def test_unknown_format_of_one_split_is_refused(tmp_path):
    data = {**WORLD_STYLE["data"], "test": {"path": "toy/test.jsonl", "format": "xlsx"}}
    assert "data.test.format must be one of jsonl, tsv, csv, got 'xlsx'" in _error(
        tmp_path, {**WORLD_STYLE, "data": data}
    )


def test_fingerprint_changes_with_template_and_data_only(tmp_path):
    path = write_task(tmp_path, WORLD_STYLE)
    first = T.load_task_data(T.read_task_file(path)).fingerprint
    assert T.load_task_data(T.read_task_file(path)).fingerprint == first
    # Comments and the description do not change scores, so not the fingerprint.
    path.write_text("# a comment\n" + path.read_text().replace("description: toy", "description: other"))
    assert T.load_task_data(T.read_task_file(path)).fingerprint == first
    changed = {**WORLD_STYLE, "templates": {**WORLD_STYLE["templates"], "bare": "{premise}  {hypothesis}"}}
    assert T.load_task_data(T.read_task_file(write_task(tmp_path, changed))).fingerprint != first
    write_task(tmp_path, WORLD_STYLE)
    with open(tmp_path / "toy" / "test.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "te99", "premise": "p", "hypothesis": "h", "label": "neutral"}\n')
    assert T.load_task_data(T.read_task_file(path)).fingerprint != first
    write_task(tmp_path, WORLD_STYLE)
    assert T.load_task_data(T.read_task_file(path)).fingerprint == first


def test_fewshot_demonstrations_never_come_from_the_scored_split(tmp_path):
    data = T.load_task_data(T.read_task_file(write_task(tmp_path, WORLD_STYLE)))
    prompts = prompts_for(Unit(data, "instruction", 4, 1234, data.examples))
    for example, prompt in zip(data.examples, prompts):
        assert prompt.count("Premise:") == 5 and prompt.count("TRAIN premise") == 4
        assert prompt.count("TEST premise") == 1 and prompt.endswith(f"{example.fields['hypothesis']}\nAnswer:")
    # The same split as few-shot source and scored split: demonstrations are refused, not borrowed.
    same = {**WORLD_STYLE, "fewshot": {"split": "test", "seed": 1}}
    with pytest.raises(UserError, match="must not come from the scored split"):
        T.read_task_file(write_task(tmp_path, same))
    scored_train = T.load_task_data(T.read_task_file(write_task(tmp_path, WORLD_STYLE)), split="train")
    assert scored_train.fewshot == [] and "scored split" in scored_train.fewshot_unavailable


def test_fewshot_choice_is_seeded_per_example_not_by_position():
    a = tpl.fewshot_indices(100, 4, 7, "ex-3")
    assert a == tpl.fewshot_indices(100, 4, 7, "ex-3") and len(set(a)) == 4
    assert a != tpl.fewshot_indices(100, 4, 8, "ex-3")
    assert len(tpl.fewshot_indices(3, 5, 7, "x")) == 3 and tpl.fewshot_indices(10, 0, 7, "x") == []


def test_jinja_templates(tmp_path):
    spec = {**WORLD_STYLE, "templates": {"jinja": "{{ premise }} / {{ hypothesis | upper }}"}}
    data = T.load_task_data(T.read_task_file(write_task(tmp_path, spec)))
    assert tpl.render(data.spec.templates["jinja"], data.examples[0].fields) == "TEST premise 0. / TEST HYPOTHESIS 0."
    bad = {**WORLD_STYLE, "templates": {"jinja": "{{ premise }} {{ nope }}"}}
    assert "'nope'" in _error(tmp_path, bad)


def test_data_dir_variable_and_hf_fallback(tmp_path, monkeypatch):
    spec = {
        **WORLD_STYLE,
        "data": {
            "format": "jsonl",
            "train": "${CKPTLAB_DATA_DIR}/toy/train.jsonl",
            "test": "${CKPTLAB_DATA_DIR}/toy/test.jsonl",
        },
        "hf": {
            "path": "org/toy",
            "name": "cfg",
            "splits": {"train": "train", "test": "validation"},
            "columns": {"premise": "sentence1", "hypothesis": "sentence2"},
            "label_map": {"0": "entailment", "1": "neutral", "2": "contradiction"},
        },
    }
    path = write_task(tmp_path, spec)
    local = T.load_task_data(T.read_task_file(path, data_dir=tmp_path))
    assert local.source == "local" and len(local.examples) == 9

    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        n = 5 if split == "validation" else 7
        return [{"sentence1": f"{split} p{i}", "sentence2": f"h{i}", "label": i % 3, "idx": i} for i in range(n)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    remote = T.load_task_data(T.read_task_file(path, data_dir=tmp_path / "missing"))
    assert remote.source == "hf" and calls == [("org/toy", "cfg", "validation"), ("org/toy", "cfg", "train")]
    assert len(remote.examples) == 5 and len(remote.fewshot) == 7
    assert remote.examples[1].fields["premise"] == "validation p1" and remote.examples[1].gold == "neutral"
    assert remote.fingerprint != local.fingerprint

    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: a clear error, not a traceback
    with pytest.raises(UserError, match="datasets"):
        T.load_task_data(T.read_task_file(path, data_dir=tmp_path / "missing"))


def test_task_names_paths_and_folders(tmp_path):
    path = write_task(tmp_path, WORLD_STYLE)
    assert T.find_task_files(["toy_nli"], [str(tmp_path)]) == [path.resolve()]
    assert T.find_task_files([str(tmp_path)]) == [path.resolve()]
    assert T.find_task_files(["sst2"])[0].name == "sst2.yaml"
    with pytest.raises(UserError, match="shipped"):
        T.find_task_files(["nonesuch"])
