"""`ckptlab demo --size tiny` end to end: world → pretrain → sweep → report, and a re-run that redoes nothing."""

from __future__ import annotations

import csv
import json

from conftest import run_cli


def test_tiny_demo_runs_the_whole_study_and_resumes_without_redoing_work(tmp_path):
    out = tmp_path / "demo"
    first = run_cli("demo", "--size", "tiny", "--out", str(out), "--progress", "false", timeout=600)
    report = out / "report" / "report.html"
    assert f"report: {report}" in first.stdout
    html = report.read_text(encoding="utf-8")
    assert html.count("<img") >= 5, "every figure is embedded"

    findings = json.loads((out / "report" / "findings.json").read_text())
    assert [f["id"] for f in findings] == ["i", "ii", "iii", "iv"]
    outcomes = {"replicated", "not replicated", "partly replicated", "inconclusive"}
    assert all(f["outcome"] in outcomes and f["statistics"] for f in findings)

    with open(out / "sweep" / "results.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    models = {(r["role"], r["finetune"], r["checkpoint"]) for r in rows}
    checkpoints = {c for _, _, c in models}
    assert len(checkpoints) == 2
    assert {f for role, f, _ in models if role == "finetuned"} == {"nli", "paraphrase", "summarization"}
    assert len(models) == 2 + 2 * 3, "every base and every fine-tuned model is evaluated"
    tasks = {r["task"] for r in rows}
    assert len(tasks) == 8 and {r["template"] for r in rows} >= {"train_format", "instruction", "bare"}

    again = run_cli("demo", "--size", "tiny", "--out", str(out), "--progress", "false", timeout=600)
    assert "sweep: 0 job(s) run now, 14 of 14 done" in again.stdout, again.stdout
    with open(out / "sweep" / "results.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == rows
