"""Run one job of a sweep, in this process, by calling the verb's own function with its config.

`run_job` is what both executors call (the Ray executor in a worker process). It marks the job
running, sends everything the job prints to its `log.txt`, and ends with `done.json` (written last,
atomically) or `failed.json` holding a one-line reason. Training verbs always run with `resume`, so
a job interrupted by a kill continues from its newest checkpoint; evaluations continue from the
store's per-example cache. Only a job stopped by SIGTERM/SIGINT (the loop checkpoints and returns)
writes neither marker: it raises `JobStopped` and the sweep stops.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckptlab import config as configlib
from ckptlab.errors import TrainingDiverged, UserError
from ckptlab.sweeps import state
from ckptlab.sweeps.spec import Verbs

STORE = "results.sqlite"


class JobStopped(Exception):
    """A training job stopped before its last step (SIGTERM/SIGINT); it resumes on the next run."""


@contextlib.contextmanager
def _captured(log: Path, cwd: str) -> Iterator[None]:
    """Print into the job's log, in the directory the sweep was planned from (relative paths)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    with (
        open(log, "a", encoding="utf-8", buffering=1) as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
    ):
        os.chdir(cwd)
        try:
            yield
        finally:
            os.chdir(previous)


def run_job(job: Any, out: str, verbs: Verbs) -> dict[str, Any]:
    """Run `job` to completion (or failure); returns {status, wall_s, reason?}. Raises JobStopped.

    `verbs` runs the training verbs (`ckptlab.commands.VerbTable`).
    """
    # Hugging Face would draw a progress bar for every weight load; the sweep draws its own.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    directory = state.job_dir(Path(out), job)
    state.clear_marker(directory, "failed")
    # Where the job runs: a Ray task with GPUs sees only its own (its cuda:0), one without sees none ("").
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    running = {"pid": os.getpid(), "started": state.now(), "job": job.id, "cuda_visible_devices": visible}
    state.write_marker(directory, "running", running)
    started = time.perf_counter()
    reason = None
    try:
        with _captured(directory / "log.txt", job.cwd or os.getcwd()):
            where = "" if visible is None else f" with CUDA_VISIBLE_DEVICES={visible!r}"
            print(f"== {job.kind} {job.name} (job {job.id}){where}", flush=True)
            try:
                record = RUNNERS[job.kind](job, Path(out), directory, verbs)
            except (JobStopped, KeyboardInterrupt):
                raise
            except (UserError, TrainingDiverged) as error:
                reason = " ".join(str(error).split())
            except Exception as error:  # noqa: BLE001 - a job's crash must not stop independent jobs
                traceback.print_exc()
                reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
            if reason is not None:
                print(f"failed: {reason}", flush=True)
    finally:
        state.clear_marker(directory, "running")
        _release_memory()
    wall = round(time.perf_counter() - started, 3)
    if reason is not None:
        state.write_marker(directory, "failed", {"job": job.id, "reason": reason, "wall_s": wall, "at": state.now()})
        return {"status": "failed", "reason": reason, "wall_s": wall}
    state.write_marker(
        directory,
        "done",
        {"job": job.id, "kind": job.kind, "name": job.name, "wall_s": wall, "at": state.now(), **record},
    )
    return {"status": "done", "wall_s": wall}


def _release_memory() -> None:
    """One process runs many jobs: free the last job's models (and CUDA's cached blocks) now."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- models: where they are ---------------------------------------------------------------


def run_dir(out: Path, producer: str) -> Path:
    return out / "jobs" / producer / "run"


def final_checkpoint(run: Path) -> Path:
    """The model a training run ends with: `final` of a fine-tune, else its newest checkpoint."""
    from ckptlab.runs.run_dir import RunDir

    manifest = RunDir(run).read_run_manifest()
    final = (manifest.get("final") or {}).get("model")
    if final is None:
        entries = manifest.get("checkpoints") or []
        if not entries:
            raise UserError(f"{run}: the run lists no checkpoint")
        final = max(entries, key=lambda c: c["step"])["path"]
    return run / final


def model_source(model: dict[str, Any], out: Path) -> str:
    """Where a sweep model loads from: its source, or the final checkpoint of the job that made it."""
    if model.get("source"):
        return str(model["source"])
    return str(final_checkpoint(run_dir(out, model["producer"])))


# --- training jobs ------------------------------------------------------------------------


def _train(job: Any, out: Path, directory: Path, verbs: Verbs) -> dict[str, Any]:
    from ckptlab.runs.checkpoint import list_step_dirs
    from ckptlab.runs.run_dir import RunDir

    run = directory / "run"
    if run.exists() and not list_step_dirs(run / "checkpoints"):
        # Killed before its first checkpoint: nothing to resume, and the metrics it logged would
        # stay in front of the new run's.
        shutil.rmtree(run)
    values = copy.deepcopy(job.values)
    values.update(out=str(run), resume=True)
    values.setdefault("train", {})["progress"] = False  # the sweep shows one progress line per job instead
    if job.kind != "pretrain":
        values["init_from"] = model_source(job.model, out)
    config = configlib.build(verbs.config_class(job.kind), values)
    verbs.run(job.kind, config)
    manifest = RunDir(run).read_run_manifest()
    if manifest.get("status") != "complete":
        raise JobStopped(f"{job.kind} {job.name} stopped at step {manifest.get('latest_step')}; it resumes next time")
    return {"model": str(final_checkpoint(run).relative_to(out))}


# --- evaluation jobs ----------------------------------------------------------------------


def _model_fp(source: str, dtype: str, store: Any) -> tuple[Any, str, str]:
    """(model ref, content hash, evaluation fingerprint) as `ckptlab evaluate` computes them."""
    from ckptlab.evaluation.models import content_hash, model_fingerprint, resolve_models

    (ref,) = resolve_models([source], "latest")
    content = content_hash(ref, store.file_sha256)
    return ref, content, model_fingerprint(content, dtype)


def _shown(source: str, out: Path) -> str:
    """A path inside the sweep directory relative to it, so that two copies of a sweep agree."""
    try:
        return str(Path(source).resolve().relative_to(out.resolve()))
    except ValueError:
        return source


def _compute(model: dict[str, Any], out: Path) -> dict[str, Any] | None:
    """What training the model cost: the run's own `compute` record, completed from what it lists."""
    if not model.get("producer"):
        return None
    from ckptlab.runs.run_dir import RunDir

    manifest = RunDir(run_dir(out, model["producer"])).read_run_manifest()
    compute = dict(manifest.get("compute") or {})
    entries = manifest.get("checkpoints") or []
    if entries:
        compute.setdefault("tokens", max(entries, key=lambda c: c["step"]).get("tokens_seen"))
    done = state.read_marker(out / "jobs" / model["producer"], "done") or {}
    if done.get("wall_s") is not None:
        compute.setdefault("wall_s", done["wall_s"])
    return compute


def _pretrain_compute(ref: Any) -> dict[str, Any] | None:
    """What a kept pre-training checkpoint cost: its run's `compute` record scaled to the tokens the
    checkpoint had seen (FLOPs, wall time and energy grow with tokens at a fixed shape), so the
    report can weigh a score against pre-training compute too. None outside a ckptlab run."""
    if not ref.run or not ref.tokens_seen:
        return None
    from ckptlab.runs.run_dir import RunDir

    try:
        compute = RunDir(Path(ref.run)).read_run_manifest().get("compute") or {}
    except (OSError, ValueError, UserError):
        return None
    if not compute.get("tokens") or compute.get("flops") is None:
        return None
    share = ref.tokens_seen / compute["tokens"]
    scaled = {k: v * share for k, v in compute.items() if k in ("flops", "wall_s", "energy_kwh") and v is not None}
    kept = {k: v for k, v in compute.items() if k not in scaled and k not in ("tokens", "target_tokens")}
    return {**kept, **scaled, "tokens": ref.tokens_seen, "scaled_from_run_tokens": compute["tokens"]}


def _evaluate(job: Any, out: Path, directory: Path, verbs: Verbs) -> dict[str, Any]:
    from ckptlab.evaluation.models import eval_precision, load_for_eval
    from ckptlab.evaluation.plan import EvaluateConfig, plan_units
    from ckptlab.evaluation.runner import Evaluator
    from ckptlab.evaluation.store import ResultStore

    model = job.model
    source = model_source(model, out)
    config = configlib.build(
        EvaluateConfig, {**copy.deepcopy(job.values), "model": [source], "store": str(out / STORE)}
    )
    units = plan_units(config, print)
    store = ResultStore(config.store)
    # Resolved once, as `ckptlab evaluate` does: fingerprint, models row and load agree (auto: bf16 on CUDA).
    dtype, device = eval_precision(config.dtype, config.device)
    try:
        ref, content, model_fp = _model_fp(source, dtype, store)
        store.add_model(
            {
                "model_fp": model_fp,
                "content_hash": content,
                "kind": ref.kind,
                "source": ref.source,
                "label": model["key"],
                "run": ref.run,
                "step": ref.step,
                "tokens_seen": ref.tokens_seen,
                "dtype": dtype,
                "trust_remote_code": int(config.trust_remote_code),
            }
        )
        evaluator = Evaluator(
            store, config.batch_size, config.bootstrap, config.bootstrap_seed, config.length_normalized, say=print
        )
        meta = {"model_source": _shown(source, out), "model_label": model["key"]}
        trust = config.trust_remote_code
        results, sensitivity = evaluator.run_model(
            model_fp, meta, units, lambda: load_for_eval(ref.source, dtype, device, print, trust)
        )
        if config.report_to:
            from ckptlab.runs.trackers import log_evaluation

            rows = [row for result in results for row in result.metric_rows] + sensitivity
            public = [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]
            name = f"{job.sweep}-{model['key']}"
            log_evaluation(config.report_to, public, name, directory, configlib.to_dict(config))
        base = model.get("base") or model
        step, tokens = base.get("step"), base.get("tokens_seen")
        if step is None and base.get("producer"):  # a model pre-trained by the sweep itself
            base_ref = ref if base is model else _model_fp(model_source(base, out), dtype, store)[0]
            step, tokens = base_ref.step, base_ref.tokens_seen
        parent = model.get("parent")
        store.add_sweep_model(
            {
                "model_fp": model_fp,
                "sweep": job.sweep,
                "job_id": job.id,
                "role": model["role"],
                "checkpoint": model.get("checkpoint"),
                "step": step,
                "tokens_seen": tokens,
                "finetune": model.get("finetune"),
                "finetune_task": model.get("finetune_task"),
                "method": model.get("method"),
                "variant": model.get("variant"),
                "parent_fp": _model_fp(model_source(parent, out), dtype, store)[2] if parent else None,
                "compute": _compute(model, out) if model.get("producer") else _pretrain_compute(ref),
            }
        )
    finally:
        store.close()
    return {"model_fp": model_fp}


RUNNERS = {"pretrain": _train, "finetune": _train, "cpt": _train, "evaluate": _evaluate}
