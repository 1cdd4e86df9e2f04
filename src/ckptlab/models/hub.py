"""Hub models: revision names, listing a repository's revisions, downloading only what loading needs,
and fingerprinting a revision from the hashes the hub publishes (no download).

Every call to the hub goes through `hub_api()`, one injection point that tests replace with a
stand-in object returning huggingface_hub's own dataclasses. huggingface_hub is imported inside
functions: this module is imported by `ckptlab --help`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError

# Pythia `step1000`; OLMo `step20000-tokens84B`; OLMo-2 `stage1-step150-tokens1B` and
# `stage2-ingredient1-step11931-tokens50B`; SmolLM-style `step-125000`.
_REVISION = re.compile(
    r"(?:stage(?P<stage>\d+)-)?(?:ingredient(?P<ingredient>\d+)-)?step-?(?P<step>\d+)"
    r"(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[KMBT]))?"
)
_TOKEN_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}

# Files `from_pretrained` reads besides the weights: config, generation config, tokenizer files,
# and the model's own code (trust_remote_code). Only top-level files: subfolders (original/,
# optimizer states, other formats) are never loaded from a directory.
_SIDE_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.py")
# A `.bin` is model weights only under these names (training_args.bin, optimizer.bin are not).
_BIN_WEIGHTS = ("pytorch_model*.bin", "model*.bin")


@dataclass(frozen=True)
class Revision:
    """What a hub revision name says about the checkpoint."""

    name: str
    """The branch, tag or commit as written."""
    step: int | None = None
    """Training step, when the name gives it (`step1000`); None for main, tags, commits."""
    tokens: int | None = None
    """Tokens seen, when the name gives them (`-tokens84B` → 84e9)."""
    stage: int | None = None
    """Training stage (`stage2-...`); the step counts from 0 again in each stage."""
    ingredient: int | None = None
    """Data mix of an annealing stage (`ingredient1`): runs with the same stage and step differ in it."""

    def order(self) -> tuple[int, int, int, int, str]:
        """Sort key: stage, then step, then ingredient; revisions without a step last, by name."""
        if self.step is None:
            return (1, 0, 0, 0, self.name)
        return (0, self.stage or 0, self.step, self.ingredient or 0, self.name)


def parse_revision(name: str) -> Revision:
    """Read step, tokens, stage and ingredient from a revision name; other names keep only the name."""
    match = _REVISION.fullmatch(name)
    if not match:
        return Revision(name)
    tokens = None
    if match["tokens"]:
        tokens = round(float(match["tokens"]) * _TOKEN_UNITS[match["unit"]])
    stage, ingredient = match["stage"], match["ingredient"]
    return Revision(
        name,
        int(match["step"]),
        tokens,
        int(stage) if stage else None,
        int(ingredient) if ingredient else None,
    )


def hub_api() -> Any:
    """The `huggingface_hub.HfApi` every hub call goes through (tests replace this function)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("hub model sources need huggingface_hub: pip install huggingface_hub") from None
    return HfApi()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _not_found(error: BaseException) -> bool:
    """A hub answer that no cache can fix: the repository or revision does not exist (or is gated)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    return isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError))


def list_revisions(repo_id: str) -> list[tuple[Revision, str]]:
    """Every branch and tag of a hub repository with the commit it points to, in `Revision.order`.

    Raises:
        UserError: the repository does not exist or the hub cannot be reached.
    """
    try:
        refs = hub_api().list_repo_refs(repo_id)
    except Exception as error:  # noqa: BLE001 - any failure to list is the user's to see, in one line
        raise UserError(f"hub {repo_id}: cannot list revisions: {_first_line(error)}") from None
    found = {ref.name: (parse_revision(ref.name), ref.target_commit) for ref in [*refs.branches, *refs.tags]}
    return sorted(found.values(), key=lambda pair: pair[0].order())


def every_nth(revisions: list[Revision], every: int) -> list[Revision]:
    """The revisions whose step is a multiple of `every`."""
    return [r for r in revisions if r.step is not None and r.step % every == 0]


def log_spaced(revisions: list[Revision], count: int) -> list[Revision]:
    """About `count` revisions spaced log-uniformly in step, always the first and the last.

    Steps start at 0 (Pythia's `step0`), so spacing is uniform in log(1 + step); each target takes the
    nearest revision, and targets falling on the same revision give one.
    """
    stepped = [r for r in revisions if r.step is not None]
    if len(stepped) <= count:
        return stepped
    logs = [math.log1p(r.step or 0) for r in stepped]
    low, high = min(logs), max(logs)
    chosen = {0, len(stepped) - 1}
    for k in range(1, count - 1):
        target = low + (high - low) * k / (count - 1)
        chosen.add(min(range(len(stepped)), key=lambda i: (abs(logs[i] - target), i)))
    return [stepped[i] for i in sorted(chosen)]


def loading_files(names: list[str]) -> list[str]:
    """The files of a repository that loading reads: safetensors weights when there are any, else
    `.bin` weights, plus config, tokenizer and code files; never GGUF, `.pt`/`.pth`, subfolders."""
    top = [n for n in names if "/" not in n]

    def matching(patterns: tuple[str, ...]) -> list[str]:
        return [n for n in top if any(fnmatch.fnmatch(n, p) for p in patterns)]

    weights = matching(("*.safetensors",))
    side = matching(_SIDE_FILES)
    if weights:
        side = [n for n in side if not n.endswith(".bin.index.json")]
    else:
        weights = matching(_BIN_WEIGHTS)
        side = [n for n in side if not n.endswith(".safetensors.index.json")]
    return sorted(set(weights) | set(side))


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


@dataclass
class HubFiles:
    """A hub revision as loading sees it: the commit and each needed file's content hash."""

    commit: str
    """The commit the revision resolved to (the source is pinned to it)."""
    files: dict[str, str]
    """File name → SHA-256 for LFS files (the hub's `lfs.sha256`), git blob id otherwise."""
    cached: str | None = None
    """The local snapshot directory when the hub was unreachable and the cache answered."""


def hub_files(repo_id: str, revision: str | None, file: str | None = None) -> HubFiles:
    """The commit and the needed files' hashes of a hub revision, from the hub's metadata (nothing is
    downloaded) or, offline, from a snapshot already in the local HF cache: the same answer both ways,
    since the cache names its blobs by the same hashes. `file` picks one file (a GGUF) instead.

    Raises:
        UserError: the repository or revision does not exist, or the hub is unreachable and the
            revision is not in the local cache.
    """
    where = _where(repo_id, revision)
    try:
        info = hub_api().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:  # noqa: BLE001 - unreachable hub (any transport error): try the cache
        if _not_found(error):
            raise UserError(f"model source '{where}': {_first_line(error)}") from None
        return _cached_files(repo_id, revision, file, _first_line(error))
    _remember_ref(repo_id, revision, info.sha)
    hashes = {s.rfilename: s.lfs.sha256 if s.lfs else s.blob_id for s in info.siblings or []}
    wanted = [file] if file else loading_files(list(hashes))
    return HubFiles(info.sha, _checked(where, {name: hashes.get(name) for name in wanted}))


def _remember_ref(repo_id: str, revision: str | None, commit: str) -> None:
    """Record revision → commit in the local HF cache (`refs/<revision>`, as huggingface_hub itself does
    after asking the hub): downloads are pinned to the commit, and without the ref an offline lookup by
    the revision's name would not find the cached snapshot."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if not revision or revision == commit:
        return
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / revision
    try:
        if not ref.is_file() or ref.read_text() != commit:
            from ckptlab.files import atomic_write_text

            ref.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(ref, commit)
    except OSError:
        pass  # a read-only cache: offline lookups by name just stay unavailable


def _checked(where: str, files: dict[str, str | None]) -> dict[str, str]:
    missing = sorted(name for name, digest in files.items() if not digest)
    if missing:
        raise UserError(f"model source '{where}': the hub lists no '{missing[0]}' at this revision")
    if not files:
        raise UserError(f"model source '{where}': the repository has no model files to load")
    return {name: digest for name, digest in files.items() if digest}


def _cached_files(repo_id: str, revision: str | None, file: str | None, why: str) -> HubFiles:
    where = _where(repo_id, revision)
    try:
        folder = Path(hub_api().snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache, whatever the exception says
        raise UserError(
            f"model source '{where}': the hub is unreachable ({why}) and it is not in the local cache"
        ) from None
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    wanted = [file] if file else loading_files(names)
    files: dict[str, str | None] = {}
    for name in wanted:
        blob = (folder / name).resolve()
        # The cache's snapshot files link to blobs/<etag>: the LFS SHA-256, or the git blob id.
        files[name] = blob.name if blob.parent.name == "blobs" and blob.is_file() else None
    missing = sorted(name for name, digest in files.items() if not digest)
    if missing:
        raise UserError(f"model source '{where}': offline ({why}), and the cached snapshot lacks '{missing[0]}'")
    return HubFiles(folder.name, _checked(where, files), str(folder))


def fingerprint(files: dict[str, str]) -> str:
    """SHA-256 over (file name, content hash), as `evaluation.models.content_hash` hashes directories."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def hub_snapshot(repo_id: str, revision: str | None) -> str:
    """Download (or find in the local cache) what loading a hub revision needs; return its directory."""
    resolved = hub_files(repo_id, revision)
    if resolved.cached:
        return resolved.cached
    try:
        return str(
            hub_api().snapshot_download(repo_id, revision=resolved.commit, allow_patterns=sorted(resolved.files))
        )
    except Exception as error:  # noqa: BLE001 - a failed download is the user's to see, in one line
        raise UserError(f"model source '{_where(repo_id, revision)}': cannot download: {_first_line(error)}") from None


def hub_file(repo_id: str, revision: str | None, file: str) -> str:
    """Download (or find in the local cache) one file of a hub revision (a GGUF); return its path."""
    try:
        return str(hub_api().hf_hub_download(repo_id, file, revision=revision))
    except Exception as error:  # noqa: BLE001 - a failed download is the user's to see, in one line
        if not _not_found(error):
            try:
                return str(hub_api().hf_hub_download(repo_id, file, revision=revision, local_files_only=True))
            except Exception:  # noqa: BLE001 - not cached either: report the first failure
                pass
        raise UserError(
            f"model source '{_where(repo_id, revision)}:{file}': cannot download: {_first_line(error)}"
        ) from None
