"""Hub models offline: revision names, enumerating revisions for a sweep, downloading only what loading
needs, and fingerprints from the hub's published hashes that match a cached snapshot's.

`StandInHub` replaces `ckptlab.models.hub.hub_api` and answers with huggingface_hub's own dataclasses;
its downloads write the real HF cache layout (blobs named by etag, snapshot symlinks, refs), which the
real `huggingface_hub.snapshot_download(local_files_only=True)` then reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ckptlab.errors import ConfigError, UserError
from ckptlab.evaluation.models import content_hash, resolve_models
from ckptlab.models import hub
from ckptlab.models.hf import ModelSource, parse_source

LFS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class StandInHub:
    """An `HfApi` stand-in: repos of revisions (name → files), downloads into an HF cache folder."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.offline = False
        self.downloads: list[tuple[str, str | None, list[str] | None]] = []

    def add(self, repo_id: str, name: str, files: dict[str, bytes], tag: bool = False) -> str:
        commit = hashlib.sha1(f"{repo_id}@{name}".encode()).hexdigest()
        self.repos.setdefault(repo_id, {})[name] = (commit, files, tag)  # type: ignore[assignment]
        return commit

    def _revision(self, repo_id: str, revision: str | None) -> tuple[str, dict[str, bytes]]:
        from huggingface_hub.errors import RevisionNotFoundError

        for name, (commit, files, _) in self.repos[repo_id].items():  # type: ignore[misc]
            if revision in (name, commit) or (revision is None and name == "main"):
                return commit, files
        raise RevisionNotFoundError(f"404: revision {revision} not found", response=None)  # type: ignore[arg-type]

    def _online(self) -> None:
        if self.offline:
            raise ConnectionError("no network")

    def list_repo_refs(self, repo_id: str):
        from huggingface_hub.hf_api import GitRefInfo, GitRefs

        self._online()
        refs = {False: [], True: []}
        for name, (commit, _, tag) in self.repos[repo_id].items():  # type: ignore[misc]
            kind = "tags" if tag else "heads"
            refs[tag].append(GitRefInfo(name=name, ref=f"refs/{kind}/{name}", target_commit=commit))
        return GitRefs(branches=refs[False], converts=[], tags=refs[True])

    def model_info(self, repo_id: str, revision: str | None = None, files_metadata: bool = False):
        from huggingface_hub.hf_api import ModelInfo

        self._online()
        commit, files = self._revision(repo_id, revision)
        siblings = []
        for name, data in files.items():
            sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
            if name.endswith(LFS):
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        return ModelInfo(id=repo_id, sha=commit, siblings=siblings)

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None, local_files_only=False):
        from huggingface_hub import snapshot_download

        if not local_files_only:
            self._online()
            self.downloads.append((repo_id, revision, allow_patterns))
            commit, files = self._revision(repo_id, revision)
            for name in allow_patterns if allow_patterns is not None else files:
                self._write(repo_id, revision, commit, name, files[name])
        return snapshot_download(repo_id, revision=revision, local_files_only=True)  # reads HF_HUB_CACHE

    def hf_hub_download(self, repo_id, filename, revision=None, local_files_only=False):
        from huggingface_hub import hf_hub_download

        if not local_files_only:
            self._online()
            self.downloads.append((repo_id, revision, [filename]))
            commit, files = self._revision(repo_id, revision)
            self._write(repo_id, revision, commit, filename, files[filename])
        return hf_hub_download(repo_id, filename, revision=revision, local_files_only=True)

    def _write(self, repo_id: str, revision: str | None, commit: str, name: str, data: bytes) -> None:
        # The HF cache layout: blobs named by etag (LFS: SHA-256, else git blob id), snapshot links, refs.
        root = self.cache / ("models--" + repo_id.replace("/", "--"))
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS) else git_blob_id(data)
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / etag).write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(os.path.relpath(root / "blobs" / etag, link.parent), link)
        if revision != commit:
            (root / "refs").mkdir(exist_ok=True)
            (root / "refs" / (revision or "main")).write_text(commit)


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> StandInHub:
    from huggingface_hub import constants

    api = StandInHub(tmp_path / "hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(api.cache))
    monkeypatch.setattr(hub, "hub_api", lambda: api)
    return api


# Everything a real repository holds: loading reads config, tokenizer and safetensors only.
REPO_FILES = {
    "config.json": b'{"model_type": "gpt_neox"}',
    "generation_config.json": b"{}",
    "tokenizer.json": b'{"model": {}}',
    "special_tokens_map.json": b"{}",
    "model.safetensors": b"S" * 64,
    "pytorch_model.bin": b"B" * 64,
    "training_args.bin": b"T" * 8,
    "optimizer.pt": b"O" * 32,
    "model.Q4_K_M.gguf": b"G" * 32,
    "original/consolidated.00.pth": b"P" * 32,
    "README.md": b"# card",
    ".gitattributes": b"*.bin filter=lfs",
}


# --- revision names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "step", "tokens", "stage", "ingredient"),
    [
        ("step1000", 1000, None, None, None),  # Pythia
        ("step20000-tokens84B", 20000, 84 * 10**9, None, None),  # OLMo
        ("step477000-tokens2000M", 477000, 2 * 10**9, None, None),
        ("step10-tokens1T", 10, 10**12, None, None),
        ("stage1-step150-tokens1B", 150, 10**9, 1, None),  # OLMo-2
        ("stage2-ingredient1-step11931-tokens50B", 11931, 50 * 10**9, 2, 1),
        ("step-125000", 125000, None, None, None),  # SmolLM-style
        ("main", None, None, None, None),
        ("v1.0", None, None, None, None),
        ("0123456789abcdef0123456789abcdef01234567", None, None, None, None),
        ("step1000-extra", None, None, None, None),
    ],
)
def test_revision_names(name, step, tokens, stage, ingredient):
    assert hub.parse_revision(name) == hub.Revision(name, step, tokens, stage, ingredient)


def test_revisions_order_by_stage_then_step_then_ingredient():
    names = [
        "main",
        "stage2-ingredient2-step100-tokens1B",
        "stage1-step300-tokens3B",
        "stage2-ingredient1-step100-tokens1B",
        "stage1-step20-tokens1B",
        "stage2-ingredient1-step50-tokens1B",
    ]
    ordered = sorted((hub.parse_revision(n) for n in names), key=hub.Revision.order)
    assert [r.name for r in ordered] == [
        "stage1-step20-tokens1B",
        "stage1-step300-tokens3B",
        "stage2-ingredient1-step50-tokens1B",
        "stage2-ingredient1-step100-tokens1B",
        "stage2-ingredient2-step100-tokens1B",
        "main",
    ]


def test_every_and_log_selections():
    revisions = [
        hub.parse_revision(f"step{s}") for s in [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 1000)]
    ]
    assert [r.step for r in hub.every_nth(revisions, 50000)] == [0, 50000, 100000]
    chosen = [r.step for r in hub.log_spaced(revisions, 8)]
    assert chosen[0] == 0 and chosen[-1] == 143000 and 6 <= len(chosen) <= 8
    assert chosen == sorted(chosen)
    # Log spacing: the early steps get as many picks as the late ones (linear spacing would give none).
    assert sum(1 for s in chosen if s < 1000) >= 3
    assert hub.log_spaced(revisions[:3], 8) == revisions[:3]


# --- parsing the hub GGUF form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("org/name@main:model.Q4.gguf", ModelSource("hub", repo_id="org/name", revision="main", file="model.Q4.gguf")),
        ("org/name:sub/model.gguf", ModelSource("hub", repo_id="org/name", file="sub/model.gguf")),
    ],
)
def test_parse_source_hub_gguf(source, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_source(source) == expected


def test_parse_source_local_gguf_still_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no such directory or file"):
        parse_source("./missing.gguf")


# --- downloading only what loading needs --------------------------------------------------------


def test_loading_files_prefers_safetensors_then_bin():
    assert hub.loading_files(list(REPO_FILES)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
    ]
    no_safetensors = [n for n in REPO_FILES if not n.endswith(".safetensors")] + ["pytorch_model.bin.index.json"]
    assert [n for n in hub.loading_files(no_safetensors) if "json" not in n] == ["pytorch_model.bin"]
    assert "pytorch_model.bin.index.json" in hub.loading_files(no_safetensors)


def test_hub_snapshot_downloads_only_loading_files(stand_in):
    commit = stand_in.add("org/m", "step1000", REPO_FILES)
    folder = Path(hub.hub_snapshot("org/m", "step1000"))
    assert stand_in.downloads == [("org/m", commit, hub.loading_files(list(REPO_FILES)))]
    assert sorted(p.name for p in folder.iterdir()) == hub.loading_files(list(REPO_FILES))


def test_hub_gguf_downloads_that_file_only(stand_in):
    commit = stand_in.add("org/m", "main", REPO_FILES)
    path = Path(hub.hub_file("org/m", None, "model.Q4_K_M.gguf"))
    assert path.read_bytes() == REPO_FILES["model.Q4_K_M.gguf"]
    assert stand_in.downloads == [("org/m", None, ["model.Q4_K_M.gguf"])]
    assert path.parent.name == commit


def test_hub_model_loads_through_the_stand_in(stand_in, tmp_path):
    from tiny_models import tiny_model

    from ckptlab.models.hf import load_model, save_model_dir

    model = save_model_dir(tiny_model(), None, tmp_path / "tiny")
    files = {p.name: p.read_bytes() for p in model.iterdir()}
    stand_in.add("org/tiny", "step10", {**files, "optimizer.pt": b"O" * 8})
    loaded = load_model("org/tiny@step10")
    assert loaded.config.model_type == "gpt_neox"
    assert stand_in.downloads[0][2] == sorted(files)


# --- fingerprints without downloading -----------------------------------------------------------


def test_hub_fingerprint_needs_no_download_and_matches_the_cache_offline(stand_in):
    commit = stand_in.add("org/m", "step1000", REPO_FILES)
    (online_ref,) = resolve_models(["org/m@step1000"])
    online = content_hash(online_ref)
    assert stand_in.downloads == []  # the hub's published hashes were enough
    assert online_ref.source == f"org/m@{commit}"  # pinned to what was fingerprinted
    assert online_ref.step == 1000

    hub.hub_snapshot("org/m", "step1000")  # now the revision is in the local cache
    stand_in.offline = True
    (offline_ref,) = resolve_models(["org/m@step1000"])
    assert content_hash(offline_ref) == online
    assert offline_ref.source == f"org/m@{commit}"


def test_hub_fingerprint_covers_only_loading_files(stand_in):
    stand_in.add("org/a", "main", REPO_FILES)
    stand_in.add("org/b", "main", {**REPO_FILES, "optimizer.pt": b"changed", "README.md": b"new card"})
    stand_in.add("org/c", "main", {**REPO_FILES, "model.safetensors": b"S" * 63 + b"!"})
    a, b, c = (content_hash(resolve_models([f"org/{x}"])[0]) for x in "abc")
    assert a == b
    assert a != c


def test_hub_gguf_fingerprint_equals_the_local_files(stand_in, tmp_path):
    stand_in.add("org/m", "main", REPO_FILES)
    local = tmp_path / "copy.gguf"
    local.write_bytes(REPO_FILES["model.Q4_K_M.gguf"])
    (hub_ref,) = resolve_models(["org/m:model.Q4_K_M.gguf"])
    assert content_hash(hub_ref) == content_hash(resolve_models([str(local)])[0])
    assert stand_in.downloads == []


def test_offline_and_not_cached_is_one_line(stand_in):
    stand_in.add("org/m", "main", REPO_FILES)
    stand_in.offline = True
    with pytest.raises(UserError, match="unreachable .*not in the local cache") as info:
        content_hash(resolve_models(["org/m"])[0])
    assert "\n" not in str(info.value)


def test_unknown_revision_is_a_user_error_not_a_cache_lookup(stand_in):
    stand_in.add("org/m", "main", REPO_FILES)
    with pytest.raises(UserError, match="org/m@nope"):
        hub.hub_files("org/m", "nope")


# --- sweep checkpoints --------------------------------------------------------------------------


def pythia_like(api: StandInHub, steps: list[int]) -> None:
    for step in steps:
        api.add("EleutherAI/pythia-tiny", f"step{step}", REPO_FILES)
    api.add("EleutherAI/pythia-tiny", "main", REPO_FILES)
    api.add("EleutherAI/pythia-tiny", "v0", REPO_FILES, tag=True)


def checkpoints(tmp_path: Path, *entries: dict):
    from ckptlab.commands.sweep import spec_from_dict

    return spec_from_dict({"name": "hub", "out": str(tmp_path / "out"), "checkpoints": list(entries)}).checkpoints


def test_sweep_enumerates_revisions_pinned_to_commits(stand_in, tmp_path):
    pythia_like(stand_in, [0, 1000, 2000, 3000, 4000, 10000])
    found = checkpoints(tmp_path, {"hub": "EleutherAI/pythia-tiny", "revisions": {"every": 2000}, "prefix": "p-"})
    assert [c.label for c in found] == ["p-step0", "p-step2000", "p-step4000", "p-step10000"]
    commit = stand_in.repos["EleutherAI/pythia-tiny"]["step2000"][0]
    assert found[1].source == f"EleutherAI/pythia-tiny@{commit}"
    assert (found[1].step, found[1].kind) == (2000, "hub")
    every = checkpoints(tmp_path, {"hub": "EleutherAI/pythia-tiny", "revisions": "all"})
    assert [c.step for c in every] == [0, 1000, 2000, 3000, 4000, 10000]  # main and the tag give no step
    at_steps = checkpoints(tmp_path, {"hub": "EleutherAI/pythia-tiny", "revisions": {"steps": [3000, 0]}})
    assert [c.label for c in at_steps] == ["step0", "step3000"]
    logged = checkpoints(tmp_path, {"hub": "EleutherAI/pythia-tiny", "revisions": {"log": 3}})
    assert [c.step for c in logged][0] == 0 and logged[-1].step == 10000


def test_sweep_reuses_the_recorded_listing_offline(stand_in, tmp_path):
    pythia_like(stand_in, [0, 1000])
    entry = {"hub": "EleutherAI/pythia-tiny", "revisions": "all"}
    first = checkpoints(tmp_path, entry)
    record = json.loads((tmp_path / "out" / "hub_revisions.json").read_text())
    assert [r["name"] for r in record["EleutherAI/pythia-tiny"]] == ["step0", "step1000", "main", "v0"]
    stand_in.add("EleutherAI/pythia-tiny", "step2000", REPO_FILES)  # the repository moves on
    stand_in.offline = True
    assert checkpoints(tmp_path, entry) == first  # resumed: same revisions, same commits, no hub
    (tmp_path / "out" / "hub_revisions.json").unlink()  # the documented refresh
    stand_in.offline = False
    assert [c.step for c in checkpoints(tmp_path, entry)] == [0, 1000, 2000]


def test_sweep_stage_revisions_do_not_collide(stand_in, tmp_path):
    for name in [
        "stage1-step100-tokens1B",
        "stage2-ingredient1-step100-tokens1B",
        "stage2-ingredient2-step100-tokens1B",
    ]:
        stand_in.add("allenai/olmo-tiny", name, REPO_FILES)
    found = checkpoints(tmp_path, {"hub": "allenai/olmo-tiny", "revisions": "all"})
    assert [(c.stage, c.ingredient, c.step, c.tokens_seen) for c in found] == [
        (1, None, 100, 10**9),
        (2, 1, 100, 10**9),
        (2, 2, 100, 10**9),
    ]
    with pytest.raises(ConfigError, match=r"step 100 of allenai/olmo-tiny is in several revisions \(stage1-step100"):
        checkpoints(tmp_path, {"hub": "allenai/olmo-tiny", "revisions": {"steps": [100]}})


def test_named_revisions_plan_without_the_hub(stand_in, tmp_path):
    stand_in.offline = True
    found = checkpoints(tmp_path, {"hub": "allenai/OLMo-1B", "revisions": ["step20000-tokens84B", "main"]})
    assert [(c.label, c.source, c.step, c.tokens_seen) for c in found] == [
        ("step20000-tokens84B", "allenai/OLMo-1B@step20000-tokens84B", 20000, 84 * 10**9),
        ("main", "allenai/OLMo-1B@main", None, None),
    ]


@pytest.mark.parametrize(
    ("revisions", "message"),
    [
        ({"every": 0}, r"checkpoints\[0\]\.revisions\.every: expected an integer ≥ 1, got 0"),
        ({"log": 1}, r"checkpoints\[0\]\.revisions\.log: expected an integer ≥ 2"),
        ({"evry": 2}, r"checkpoints\[0\]\.revisions: unknown key 'evry'"),
        ({"every": 2, "log": 3}, r"checkpoints\[0\]\.revisions: give one key"),
        ({"steps": [1000, 1500]}, r"revisions\.steps: EleutherAI/pythia-tiny has no revision at step 1500 \(nearest"),
        ({"steps": "1000"}, r"checkpoints\[0\]\.revisions\.steps: expected a list of step numbers"),
        ([], r"checkpoints\[0\]\.revisions: expected all, a list"),
        (3, r"checkpoints\[0\]\.revisions: expected all, a list"),
        (
            {"every": 7},
            r"checkpoints\[0\]\.revisions: selects no revision of EleutherAI/pythia-tiny \(steps 1000..2000\)",
        ),
    ],
)
def test_bad_revisions_are_one_line_config_errors(stand_in, tmp_path, revisions, message):
    pythia_like(stand_in, [1000, 2000])
    with pytest.raises(ConfigError, match=message) as info:
        checkpoints(tmp_path, {"hub": "EleutherAI/pythia-tiny", "revisions": revisions})
    assert "\n" not in str(info.value)


# --- the report says which checkpoints the step-based parts leave out ---------------------------


def base_model(checkpoint: str, step: int | None):
    from ckptlab.reporting.data import SweepModel

    return SweepModel(checkpoint, "base", checkpoint, step, None, None, None, None, None, None, {})


def test_report_notes_checkpoints_without_a_step_and_mixed_stages():
    from ckptlab.reporting.data import step_notes

    assert step_notes([base_model("step1000", 1000), base_model("step2000", 2000)]) == []
    (note,) = step_notes([base_model("step1000", 1000), base_model("main", None), base_model("v1.0", None)])
    assert note.startswith("2 base checkpoint(s) have no training step") and "main, v1.0" in note
    olmo = [
        base_model("olmo-stage1-step100-tokens1B", 100),
        base_model("olmo-stage2-ingredient1-step100-tokens1B", 100),
    ]
    assert [m.stage for m in olmo] == [1, 2]
    (note,) = step_notes(olmo)
    assert "2 training stages (stage 1, stage 2)" in note


# --- trust_remote_code --------------------------------------------------------------------------


@pytest.fixture
def custom_code_model(tmp_path) -> Path:
    """A model directory whose config points at the repository's own classes (never run here)."""
    folder = tmp_path / "custom"
    folder.mkdir()
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps({"model_type": "x_custom_lm", "auto_map": auto_map}))
    return folder


def test_remote_code_is_refused_in_one_line_naming_the_key(custom_code_model, monkeypatch):
    import io
    import sys

    from ckptlab.models.hf import load_model
    from ckptlab.models.init_from import read_model_config

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # transformers must not ask, even on a terminal
    for load in (load_model, read_model_config):
        with pytest.raises(UserError, match="set trust_remote_code: true") as info:
            load(str(custom_code_model))
        assert "\n" not in str(info.value)


def test_trust_remote_code_is_an_opt_in_of_every_verb_that_loads_a_model(monkeypatch):
    from ckptlab import config as configlib
    from ckptlab.commands.cpt import CptConfig
    from ckptlab.commands.finetune import FinetuneConfig
    from ckptlab.evaluation.plan import EvaluateConfig
    from ckptlab.models import hf

    for config_class in (EvaluateConfig, FinetuneConfig, CptConfig):
        assert config_class().trust_remote_code is False
        assert configlib.to_dict(configlib.build(config_class, {"trust_remote_code": True}))["trust_remote_code"]
    seen = []
    monkeypatch.setattr(hf, "_resolve", lambda source: ("dir", None))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda path, **kw: seen.append(kw))
    hf.load_tokenizer("org/m", trust_remote_code=True)
    hf.load_tokenizer("org/m")
    assert seen == [{"trust_remote_code": True}, {"trust_remote_code": False}]


def test_a_hub_gguf_init_from_is_read_as_a_gguf_not_as_a_repository_snapshot(monkeypatch):
    from types import SimpleNamespace

    from ckptlab.models import hf, init_from

    def no_snapshot(*args, **kwargs):
        raise AssertionError("a hub GGUF must not download the repository's snapshot")

    monkeypatch.setattr(hub, "hub_snapshot", no_snapshot)
    monkeypatch.setattr(hf, "hub_snapshot", no_snapshot)
    monkeypatch.setattr(hf, "load_model", lambda source, **kwargs: SimpleNamespace(config={"from": source}))
    source = "HuggingFaceTB/SmolLM2-135M-GGUF@main:model.Q4_K_M.gguf"
    assert init_from.read_model_config(source) == {"from": source}
    with pytest.raises(UserError, match=r"a \.gguf file holds a causal LM"):
        init_from.model_directory(source)
