"""`ckptlab tasks` in a subprocess: check an lm-eval YAML, refuse a bad one with exit code 2, export to lm-eval."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def ckptlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ckptlab", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_check_export_and_a_bad_key(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(
        '{"q": "Is ice cold?", "label": 1}\n{"q": "Is fire cold?", "label": 0}\n', encoding="utf-8"
    )
    task = tmp_path / "yesno.yaml"
    task.write_text(
        "task: yesno\noutput_type: multiple_choice\ndataset_path: json\n"
        "dataset_kwargs: {data_files: rows.jsonl}\ntest_split: train\n"
        'doc_to_text: "Question: {{q}}\\nAnswer:"\ndoc_to_choice: ["no", "yes"]\ndoc_to_target: label\n',
        encoding="utf-8",
    )
    checked = ckptlab("tasks", "check", "--tasks", str(task), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "yesno: ok (2 train examples" in checked.stdout

    exported = ckptlab("tasks", "export", "--tasks", str(task), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "yesno" / "yesno_default.yaml").is_file()
    again = ckptlab("tasks", "check", "--tasks", str(tmp_path / "out" / "yesno"), cwd=tmp_path)
    assert again.returncode == 0 and "yesno_default: ok (2 train examples" in again.stdout

    task.write_text(task.read_text(encoding="utf-8") + "process_docs: !function utils.process_docs\n", encoding="utf-8")
    bad = ckptlab("tasks", "check", "--tasks", str(task), cwd=tmp_path)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert f"file {task}, line 9" in line and "!function utils.process_docs" in line
