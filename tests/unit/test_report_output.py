"""What `report()` writes: the HTML with every figure embedded and every data string escaped, CSVs, JSON."""

from __future__ import annotations

import base64
import csv
import json

import pytest
from report_fixtures import build_store, sun_dredze_store

from ckptlab.commands.report import ReportConfig, report
from ckptlab.errors import UserError
from ckptlab.evaluation.store import ResultStore

XSS_TASK = "<script>alert(1)</script>"
XSS_RECIPE = "<img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sun_dredze_store(root / "sweep" / "results.sqlite")
    assert report(ReportConfig(sweep=str(root / "sweep"), bootstrap=200)) == 0
    return root / "sweep" / "report"


def rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_figure_is_written_and_embedded(written):
    html = (written / "report.html").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in (written / "figures").glob("*.png"))
    assert pngs == ["cpt.png", "curves.png", "forgetting.png", "gains.png", "heatmaps.png", "sensitivity.png"]
    for name in pngs:
        data = (written / "figures" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html.lower()


def test_findings_json_and_html_agree(written):
    found = json.loads((written / "findings.json").read_text())
    assert [f["id"] for f in found] == ["i", "ii", "iii", "iv"]
    assert all(f["test"] and f["statistics"] for f in found)
    assert {f["id"]: f["outcome"] for f in found} == {
        "i": "replicated",
        "ii": "inconclusive",  # three eval sets with an in-task fine-tune: too few for a rank correlation
        "iii": "replicated",
        "iv": "replicated",
    }
    assert all(s["role"] in ("decides", "context") and "p_value" in s for f in found for s in f["statistics"])
    html = (written / "report.html").read_text(encoding="utf-8")
    for finding in found:
        assert finding["claim"] in html and finding["summary"] in html
    assert "at chance at every checkpoint on 3 of 6 eval sets (finance_nli, world_nli, world_paraphrase)" in html
    assert "95% paired bootstrap" in html and "<th>p (Holm)</th>" in html


def test_tables_hold_every_model_and_relation(written):
    assert sorted(p.name for p in (written / "tables").glob("*.csv")) == [
        "compute.csv",
        "cpt.csv",
        "findings.csv",
        "forgetting.csv",
        "frontier.csv",
        "gain_per_pflop.csv",
        "gains.csv",
        "recommendation.csv",
        "scores.csv",
        "seeds.csv",
        "sensitivity.csv",
        "sequential.csv",
        "sequential_replay.csv",
    ]
    scores = rows(written / "tables" / "scores.csv")
    assert len(scores) == 10 * 6  # 3 base + 6 fine-tuned + 1 cpt models × 6 eval sets
    assert {r["role"] for r in scores} == {"base", "finetuned", "cpt"}
    assert all(float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) for r in scores)
    forgetting = rows(written / "tables" / "forgetting.csv")
    relation = {(r["recipe"], r["task"]): r["relation"] for r in forgetting}
    assert relation[("nli (world_nli)", "world_nli")] == "in-task"
    assert relation[("nli (world_nli)", "finance_nli")] == "cross-domain"
    assert relation[("nli (world_nli)", "world_knowledge")] == "cross-task"
    cpt = {r["task"]: r for r in rows(written / "tables" / "cpt.csv")}
    assert cpt["finance_qa"]["group"] == "domain" and float(cpt["finance_qa"]["change"]) == pytest.approx(
        0.15, abs=0.01
    )
    assert float(cpt["mean of general sets (4)"]["change"]) == pytest.approx(-0.05, abs=0.01)


def test_dataset_strings_are_escaped(tmp_path):
    build_store(
        tmp_path / "results.sqlite",
        ["world_nli", XSS_TASK],
        [10, 100],
        {XSS_RECIPE: "world_nli"},
        base=lambda task, step: 0.5,
        tuned=lambda recipe, task, step: 0.7,
        n=40,
    )
    report(
        ReportConfig(store=str(tmp_path / "results.sqlite"), out=str(tmp_path / "out"), bootstrap=50, confidence=0.9)
    )
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "90% paired bootstrap" in html and "<th>90% CI</th>" in html and "95%" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html.lower()
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "<img src=x" not in html
    assert XSS_TASK in (tmp_path / "out" / "tables" / "scores.csv").read_text(encoding="utf-8")


def test_bad_input_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(UserError, match="sweep directory not found"):
        report(ReportConfig(sweep=str(tmp_path / "missing")))
    with pytest.raises(UserError, match=r"results\.sqlite: no results store in the sweep directory"):
        report(ReportConfig(sweep=str(tmp_path)))
    ResultStore(tmp_path / "results.sqlite").close()
    with pytest.raises(UserError, match=r"results\.sqlite: the results store is empty"):
        report(ReportConfig(sweep=str(tmp_path)))
    store = ResultStore(tmp_path / "results.sqlite")
    store.add_metrics(
        [
            {
                "model_fp": "m",
                "task": "t",
                "task_fp": "f",
                "template": "a",
                "shots": 0,
                "seed": 0,
                "metric": "accuracy",
                "value": 0.5,
                "n": 10,
            }
        ]
    )
    store.close()
    with pytest.raises(UserError, match="no sweep_models rows"):
        report(ReportConfig(sweep=str(tmp_path)))


def test_unknown_template_or_sweep_name_is_refused(written):
    store = str(written.parent / "results.sqlite")
    with pytest.raises(UserError, match="template 'nope' is not among the templates evaluated"):
        report(ReportConfig(store=store, template="nope"))
    with pytest.raises(UserError, match="no sweep_models rows of sweep 'other'"):
        report(ReportConfig(store=store, sweep_name="other"))


def test_report_warns_when_models_were_scored_in_different_dtypes():
    from ckptlab.reporting.data import dtype_notes

    assert dtype_notes(["0123456789abcdef", "fedcba9876543210"]) == []
    assert dtype_notes(["0123456789abcdef-bfloat16", "fedcba9876543210-bfloat16"]) == []
    (note,) = dtype_notes(["0123456789abcdef", "fedcba9876543210-bfloat16", "00112233aabbccdd-bfloat16"])
    assert "different dtypes (bfloat16: 2, float32: 1)" in note and "--dtype" in note
