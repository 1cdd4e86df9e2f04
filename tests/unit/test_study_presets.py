"""The real-family study presets plan offline: `ckptlab sweep --command status` on
configs/study_olmo1b.yaml and configs/study_pythia.yaml with a stand-in hub (revisions, as
huggingface_hub returns them) and a stand-in `datasets` (the hub tasks' rows).

The shipped GLUE/SentEval tasks read the files of ../shared/data; the test skips without them.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from test_hub import REPO_FILES, StandInHub

from ckptlab.models import hub
from ckptlab.tasks.records import default_data_dir

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {"study_olmo1b": "allenai/OLMo-1B-hf", "study_pythia": "EleutherAI/pythia-1b"}
# OLMo-1B's batch is 4,194,304 tokens: its revision names carry the rounded token count.
OLMO_STEPS = [1000, 2000, 18000, 20000, 342000, 424000, 505000, 592000, 738000, 739000]
PYTHIA_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 1000)]


def hub_rows(path: str, name: str | None, split: str) -> list[dict]:
    """A few rows of each hub dataset the presets' task files name, with its real columns."""
    n = 12
    if path == "nyu-mll/glue" and name == "mnli":
        return [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3, "idx": i} for i in range(n)]
    if path == "google-research-datasets/paws":
        return [{"id": i, "sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 2} for i in range(n)]
    if path == "EdinburghNLP/xsum":
        return [{"document": f"text {i}", "summary": f"sum {i}", "id": str(i)} for i in range(n)]
    raise AssertionError(f"unexpected dataset {path} {name} {split}")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> StandInHub:
    from huggingface_hub import constants

    api = StandInHub(tmp_path / "hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(api.cache))
    monkeypatch.setattr(hub, "hub_api", lambda: api)
    for step in OLMO_STEPS:
        api.add("allenai/OLMo-1B-hf", f"step{step}-tokens{round(step * 4.194304 / 1000)}B", REPO_FILES)
    api.add("allenai/OLMo-1B-hf", "main", REPO_FILES)
    for step in PYTHIA_STEPS:
        api.add("EleutherAI/pythia-1b", f"step{step}", REPO_FILES)
    api.add("EleutherAI/pythia-1b", "main", REPO_FILES)
    datasets = types.ModuleType("datasets")
    datasets.load_dataset = lambda path, name=None, split=None: hub_rows(path, name, split)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", datasets)
    monkeypatch.chdir(ROOT)  # the presets name their task files relative to the project root
    return api


@pytest.mark.skipif(default_data_dir() is None, reason="the shipped tasks' data (../shared/data) is not here")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_study_preset_plans_offline(preset, offline_hub, tmp_path, capsys):
    from ckptlab.cli import main

    out = tmp_path / preset
    code = main(["sweep", "--config", f"configs/{preset}.yaml", "--command", "status", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code in (0, None), printed
    # 8 base checkpoints × (3 fine-tunes + evaluations of the base and of each fine-tune)
    assert "jobs" in printed and "finetune" in printed and "evaluate" in printed
    listing = json.loads((out / "hub_revisions.json").read_text())[PRESETS[preset]]
    assert listing, "the enumerated revisions are recorded for a resumed sweep"
    plan_lines = [line for line in printed.splitlines() if line.split()[:2] == ["pending", "finetune"]]
    assert len(plan_lines) == 24, printed
    if preset == "study_olmo1b":
        labels = {line.split()[2].split("@")[1] for line in plan_lines}
        assert labels == {
            "step1000-tokens4B",
            "step18000-tokens75B",
            "step342000-tokens1434B",
            "step424000-tokens1778B",
            "step505000-tokens2118B",
            "step592000-tokens2483B",
            "step738000-tokens3095B",
            "final-main",
        }
    else:
        steps = sorted(int(line.split()[2].split("@step")[1]) for line in plan_lines if "@step" in line)
        assert steps[0] == 0 and steps[-1] == 143000 and len(set(steps)) == 8


def test_study_task_files_parse():
    from ckptlab.tasks.spec import read_task_file

    for path in sorted((ROOT / "configs" / "tasks").glob("*.yaml")):
        spec = read_task_file(path)
        assert path.read_text().startswith("# ckptlab "), f"{path.name} must open with the command that uses it"
        assert set(spec.templates) == {"train_format", "instruction", "bare"}
        assert spec.hf is not None and "train[:6000]" in spec.hf["splits"]["train"]
