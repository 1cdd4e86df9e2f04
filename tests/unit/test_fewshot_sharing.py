"""Shared demonstrations (`fewshot.sampling` shared / first_n) and the unit's common prefix scored from its
KV cache: the same scores as scoring every prompt whole, on a tiny model built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckptlab.evaluation.plan import EvaluateConfig, plan_units  # noqa: E402
from ckptlab.evaluation.runner import Evaluator, prompts_for  # noqa: E402
from ckptlab.evaluation.store import ResultStore  # noqa: E402
from ckptlab.tasks import templates as tpl  # noqa: E402

PAIRS = [(f"the cat sat on mat number {i}", "yes" if i % 3 else "no maybe") for i in range(24)]


def test_demonstrations_per_example_shared_and_first_n() -> None:
    per_example = {tuple(tpl.demonstrations(50, 4, 7, f"ex{i}")) for i in range(10)}
    shared = {tuple(tpl.demonstrations(50, 4, 7, f"ex{i}", "shared")) for i in range(10)}
    assert len(per_example) > 1 and len(shared) == 1
    assert tpl.demonstrations(50, 4, 7, "x", "first_n") == [0, 1, 2, 3]
    assert tpl.demonstrations(3, 4, 7, "x", "first_n") == [0, 1, 2]
    with pytest.raises(ValueError, match="few-shot sampling"):
        tpl.demonstrations(5, 1, 0, "x", "balanced")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ckptlab.data.tokenizer import train_tokenizer
    from ckptlab.models.hf import ModelConfig, build_model

    root = tmp_path_factory.mktemp("share")
    for split, rows in (("train", PAIRS[:12]), ("test", PAIRS[12:])):
        lines = [json.dumps({"id": f"{split}{i}", "text": t, "label": y}) for i, (t, y) in enumerate(rows)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "task.yaml").write_text(
        "task: mini\ntype: classification\ndata: {train: train.jsonl, test: test.jsonl}\nfields: [text]\n"
        "label_field: label\nchoices: ['yes', 'no maybe']\n"
        "templates: {instruction: 'Is the cat on the mat? Answer yes or no.\\nText: {text}\\nAnswer:'}\n"
        "fewshot: {shots: [0, 3], sampling: shared}\n",
        encoding="utf-8",
    )
    tokenizer = train_tokenizer(
        [t for t, _ in PAIRS] + ["Is the cat on the mat? Answer yes or no maybe"] * 5, 300, root / "tok"
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="llama", size="tiny", context_length=256), len(tokenizer), 0, 0, 1)
    return root, model.eval(), tokenizer


def scored(root: Path, model, tokenizer, scorer: str, **options) -> dict:
    store = ResultStore(str(root / f"{scorer}-{len(list(root.glob('*.sqlite')))}.sqlite"))
    units = plan_units(EvaluateConfig(model=["m"], tasks=[str(root / "task.yaml")], **options), print)
    Evaluator(store, batch_size=5, resamples=0, scorer=scorer).run_model("m", {}, units, lambda: (model, tokenizer))
    rows = {}
    for unit in units:
        key = ("m", unit.task.fingerprint, unit.template, unit.shots, unit.seed)
        rows.update({(unit.shots, r["example_id"]): r for r in store.examples(key)})
    store.close()
    return rows


@pytest.mark.parametrize("sampling", [None, "first_n"])
def test_shared_demonstrations_from_the_prefix_cache_score_as_whole_prompts(setup, sampling) -> None:
    root, model, tokenizer = setup
    cached = scored(root, model, tokenizer, "shared", fewshot_sampling=sampling)
    whole = scored(root, model, tokenizer, "full", fewshot_sampling=sampling)
    assert set(cached) == set(whole) and {shots for shots, _ in cached} == {0, 3}
    for key, row in cached.items():
        assert row["scores"]["ll"] == pytest.approx(whole[key]["scores"]["ll"], abs=1e-5)
        assert row["prediction"] == whole[key]["prediction"]


def test_every_prompt_of_a_shared_unit_starts_with_the_same_demonstrations(setup) -> None:
    from ckptlab.evaluation import scoring

    root, model, tokenizer = setup
    units = [u for u in plan_units(EvaluateConfig(model=["m"], tasks=[str(root / "task.yaml")]), print) if u.shots]
    prompts = prompts_for(units[0])
    head = prompts[0][: prompts[0].rindex("\n\n") + 2]
    assert head.count("Answer:") == 3 and all(p.startswith(head) for p in prompts)
    requests = scoring.encode_requests(tokenizer, prompts, [["yes", "no maybe"]] * len(prompts))
    prefix = Evaluator._prefix(model, requests)  # what the scorer reuses: the demonstrations and more
    assert prefix is not None and len(prefix.tokens) >= len(tokenizer(head)["input_ids"]) - 1
    per_example = plan_units(
        EvaluateConfig(model=["m"], tasks=[str(root / "task.yaml")], fewshot_sampling="per_example"), print
    )
    assert per_example[0].task.fingerprint != units[0].task.fingerprint  # the sampling is part of the key
