"""lm-evaluation-harness task YAMLs read as ckptlab tasks: prompts, choices, answers, errors, and scores
checked against lm-eval 0.4 itself (installed with the test extra)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from tiny_models import tokenizer_adding_bos

from ckptlab.errors import UserError
from ckptlab.evaluation.plan import EvaluateConfig, plan_units
from ckptlab.evaluation.runner import Evaluator, Unit, prompts_for
from ckptlab.evaluation.store import ResultStore
from ckptlab.tasks.spec import load_task_data, read_task_file

QUESTIONS = [
    ("Which is a fruit?", ["apple", "chair", "rock", "cloud"], "A"),
    ("Which can fly?", ["stone", "bird", "table", "shoe"], "B"),
    ("Which is cold?", ["fire", "sun", "ice", "oven"], "C"),
    ("Which is a colour?", ["dog", "car", "tree", "blue"], "D"),
    ("Which one swims?", ["fish", "lamp", "door", "cake"], "A"),
    ("Which is loud?", ["feather", "thunder", "cotton", "milk"], "B"),
]

WORDS = [q for q, _, _ in QUESTIONS] + [" ".join(t) for _, t, _ in QUESTIONS]

BASE = """\
output_type: multiple_choice
dataset_path: json
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def arc_task(tmp_path: Path) -> Path:
    """An ARC-style task: a base file included, Jinja choices and an index target, a description."""
    with open(tmp_path / "questions.jsonl", "w", encoding="utf-8") as out:
        for i, (question, texts, key) in enumerate(QUESTIONS):
            record = {"id": f"q{i}", "question": question, "choices": {"text": texts, "label": list("ABCD")}}
            out.write(json.dumps({**record, "answerKey": key}) + "\n")
    write(tmp_path / "base.yaml", BASE)
    return write(
        tmp_path / "arcish.yaml",
        f"""\
        include: base.yaml
        task: arcish
        dataset_kwargs:
          data_files: {tmp_path / "questions.jsonl"}
        test_split: train
        description: "The following are questions about {{{{ 'the world' }}}}.\\n\\n"
        """,
    )


@pytest.fixture
def csv_task(tmp_path: Path) -> Path:
    """A CSV task with an integer label column named as the target, multi-token choices, two splits."""
    rows = [("the film was a delight", 1), ("dull and far too long", 0), ("a warm, funny story", 1)]
    for split, part in (("train", rows), ("test", rows[::-1] + [("nothing works here", 0)])):
        lines = ["sentence,label"] + [f'"{text}",{label}' for text, label in part]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return write(
        tmp_path / "sentiment.yaml",
        f"""\
        task: sentiment_lm_eval
        output_type: multiple_choice
        dataset_path: csv
        dataset_kwargs:
          data_files:
            train: {tmp_path / "train.csv"}
            test: {tmp_path / "test.csv"}
        training_split: train
        test_split: test
        doc_to_text: "Review: {{{{sentence}}}}\\nSentiment:"
        doc_to_choice: ["very negative", "very positive"]
        doc_to_target: label
        num_fewshot: 2
        """,
    )


def test_reads_an_arc_style_task_with_include_jinja_choices_and_index_target(arc_task: Path) -> None:
    spec = read_task_file(arc_task)
    data = load_task_data(spec)
    assert (spec.name, spec.type, spec.source_format) == ("arcish", "classification", "lm-eval")
    assert spec.metrics == ["accuracy", "accuracy_norm"]
    assert spec.eval_split == "train" and spec.fewshot_split is None  # the scored split gives no demonstrations
    assert [e.choices for e in data.examples[:2]] == [QUESTIONS[0][1], QUESTIONS[1][1]]
    assert [e.gold for e in data.examples] == ["apple", "bird", "ice", "blue", "fish", "thunder"]
    (prompt, *_) = prompts_for(Unit(data, "default", 0, 1234, data.examples))
    assert prompt == "The following are questions about the world.\n\nQuestion: Which is a fruit?\nAnswer:"


def test_csv_integer_labels_index_the_choices_and_demonstrations_use_them(csv_task: Path) -> None:
    spec = read_task_file(csv_task)
    data = load_task_data(spec)
    assert spec.fewshot_split == "train" and spec.fewshot_shots == [2]
    assert [e.gold for e in data.examples] == ["very positive", "very negative", "very positive", "very negative"]
    (prompt, *_) = prompts_for(Unit(data, "default", 2, 1234, data.examples[:1]))
    assert prompt.count("Sentiment: very ") == 2 and prompt.endswith("Review: a warm, funny story\nSentiment:")


def test_generation_task_reads_until_and_max_gen_toks(tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text('{"q": "2+2?", "a": "4"}\n{"q": "3+3?", "a": "6"}\n', encoding="utf-8")
    path = write(
        tmp_path / "qa.yaml",
        f"""\
        task: qa
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {tmp_path / "qa.jsonl"}}}}}
        test_split: test
        output_type: generate_until
        doc_to_text: q
        doc_to_target: a
        generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
        """,
    )
    spec = read_task_file(path)
    data = load_task_data(spec)
    assert (spec.type, spec.stop, spec.max_new_tokens, spec.metrics) == ("generation", ["\n"], 8, ["exact_match"])
    assert spec.strict_exact_match and [e.gold for e in data.examples] == ["4", "6"]
    assert prompts_for(Unit(data, "default", 0, 1234, data.examples)) == ["2+2?", "3+3?"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("process_results: !function utils.process_results", "process_results.*!function.*does not run"),
        ("filter_list: [{name: strict}]", "key 'filter_list' is outside the lm-eval subset"),
        ("output_type: loglikelihood", "output_type 'loglikelihood' is not read"),
        ("metric_list: [{metric: bleu}]", r"metric_list\[0\]: metric 'bleu' is not read"),
        ("fewshot_split: validation", "fewshot_split 'validation' is not among the data's splits"),
    ],
)
def test_outside_the_subset_is_a_one_line_error_naming_the_key(arc_task: Path, line: str, message: str) -> None:
    text = arc_task.read_text(encoding="utf-8")
    key = line.split(":")[0]
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(key)) + "\n" + line + "\n"
    arc_task.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message) as caught:
        load_task_data(read_task_file(arc_task))
    assert "\n" not in str(caught.value) and str(arc_task) in str(caught.value)


def test_a_target_outside_the_choices_names_the_file_and_line(arc_task: Path, tmp_path: Path) -> None:
    lines = (tmp_path / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2].replace('"answerKey": "C"', '"answerKey": "E"')
    (tmp_path / "questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(
        UserError, match=r"questions.jsonl, line 3: doc_to_target cannot be rendered \(ValueError: .E. is not in list\)"
    ):
        load_task_data(read_task_file(arc_task))


# --- against lm-eval itself --------------------------------------------------------------------------------------


@pytest.fixture
def lm_eval_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """lm-eval's own TaskManager over the test's folder (its datasets cache kept in tmp_path)."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    def load(name: str):
        manager = TaskManager(include_path=str(tmp_path))
        return manager.load([name])["tasks"][name] if hasattr(manager, "load") else None

    return load


@pytest.mark.slow
def test_prompts_choices_and_answers_equal_lm_evals(arc_task: Path, csv_task: Path, lm_eval_tasks) -> None:
    for path in (arc_task, csv_task):
        spec = read_task_file(path)
        data = load_task_data(spec)
        theirs = lm_eval_tasks(spec.name)
        docs = list(theirs.test_docs())
        ours = prompts_for(Unit(data, "default", 0, 1234, data.examples))
        assert ours == [theirs.fewshot_context(doc, 0) for doc in docs]
        for example, doc in zip(data.examples, docs):
            choices = theirs.doc_to_choice(doc)
            target = theirs.doc_to_target(doc)
            assert example.choices == choices
            assert example.gold == (choices[target] if isinstance(target, int) else target)


@pytest.mark.slow
@pytest.mark.parametrize("add_bos", ["auto", False])
def test_log_likelihoods_equal_lm_evals_on_a_model_whose_tokenizer_adds_bos(
    arc_task: Path, lm_eval_tasks, tmp_path: Path, add_bos
) -> None:
    """Per example and choice, ckptlab's log-likelihoods are lm-eval's (HFLM, its default add_bos_token) when
    add_bos is auto, and differ when BOS is left out: the measured reason for the agreement gap."""
    import torch
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    from ckptlab.models.hf import ModelConfig, build_model

    tokenizer = tokenizer_adding_bos(tmp_path / "tok", WORDS)
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="llama", size="tiny", context_length=128), len(tokenizer), 0, 0, 1)
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu")
    out = evaluator.simple_evaluate(model=lm, tasks=[lm_eval_tasks("arcish")], log_samples=True, bootstrap_iters=0)
    theirs = {s["doc"]["id"]: [float(r[0][0]) for r in s["resps"]] for s in out["samples"]["arcish"]}

    store = ResultStore(str(tmp_path / "store.sqlite"))
    config = EvaluateConfig(model=["tiny"], tasks=[str(arc_task)], add_bos=add_bos)
    units = plan_units(config, print)
    Evaluator(store, batch_size=4, resamples=0).run_model("tiny", {}, units, lambda: (model, tokenizer))
    rows = store.examples(("tiny", units[0].task.fingerprint, "default", 0, units[0].seed), list(theirs))
    ours = {row["example_id"]: row["scores"]["ll"] for row in rows}
    store.close()
    assert set(ours) == set(theirs)
    gap = max(abs(a - b) for key in ours for a, b in zip(ours[key], theirs[key]))
    if add_bos == "auto":
        assert gap < 1e-4
        from ckptlab.evaluation.metrics import metric_value

        assert out["results"]["arcish"]["acc,none"] == pytest.approx(metric_value("accuracy", rows))
        assert out["results"]["arcish"]["acc_norm,none"] == pytest.approx(metric_value("accuracy_norm", rows))
    else:
        assert gap > 1e-3


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.slow
def test_chat_prompts_equal_lm_evals(arc_task: Path, lm_eval_tasks, tmp_path: Path) -> None:
    """With a chat template and a system instruction, the rendered prompt is lm-eval's, character for character."""
    from ckptlab.evaluation.prompting import PromptFormat

    tokenizer = tokenizer_adding_bos(tmp_path / "tok", WORDS)
    tokenizer.chat_template = CHAT_TEMPLATE
    spec = read_task_file(arc_task)
    data = load_task_data(spec)
    chat = PromptFormat(apply_chat_template=True, system_instruction="Answer briefly.")
    ours = prompts_for(Unit(data, "default", 0, 1234, data.examples, chat), tokenizer)
    theirs = lm_eval_tasks("arcish")

    def render(messages, add_generation_prompt=True):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    expected = [
        theirs.fewshot_context(
            doc, 0, system_instruction="Answer briefly.", apply_chat_template=True, chat_template=render
        )
        for doc in theirs.test_docs()
    ]
    assert ours == expected
    assert ours[0].startswith("<|system|>Answer briefly.\n\nThe following are questions about the world.")


@pytest.fixture
def ckptlab_task(tmp_path: Path) -> Path:
    """A ckptlab task: TSV rows, a label map, a format-string template and a Jinja one."""
    rows = ["text\tlabel", "a fine film\t1", "a dull film\t0", "great fun\t1", "too long\t0"]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "test.tsv").write_text("\n".join(rows[:1] + rows[:0:-1]) + "\n", encoding="utf-8")
    return write(
        tmp_path / "mini.yaml",
        """\
        task: mini
        type: classification
        data: {format: tsv, train: train.tsv, test: test.tsv}
        fields: [text]
        label_field: label
        choices: [bad, good]
        label_map: {'0': bad, '1': good}
        templates:
          plain: "Review: {text}\\nVerdict:"
          jinja: "{% if text %}Text: {{ text | upper }}{% endif %} =>"
        fewshot: {shots: [2]}
        """,
    )


def test_exported_tasks_read_back_as_the_same_prompts_choices_and_answers(ckptlab_task: Path, tmp_path: Path) -> None:
    from ckptlab.tasks.export import to_lm_eval

    original = load_task_data(read_task_file(ckptlab_task))
    written = to_lm_eval(original, tmp_path / "exported")
    assert [p.name for p in written] == ["mini_plain.yaml", "mini_jinja.yaml"]
    for path, template in zip(written, ["plain", "jinja"]):
        back = load_task_data(read_task_file(path))
        assert back.spec.source_format == "lm-eval" and back.spec.fewshot_shots == [2]
        assert [(e.id, e.choices, e.gold) for e in back.examples] == [
            (e.id, e.choices, e.gold) for e in original.examples
        ]
        assert prompts_for(Unit(back, "default", 0, 1, back.examples)) == prompts_for(
            Unit(original, template, 0, 1, original.examples)
        )
    assert prompts_for(Unit(original, "jinja", 0, 1, original.examples[:1])) == ["Text: TOO LONG =>"]


@pytest.mark.slow
def test_lm_eval_runs_exported_tasks_with_our_prompts(ckptlab_task: Path, tmp_path: Path, lm_eval_tasks) -> None:
    from ckptlab.tasks.export import to_lm_eval

    original = load_task_data(read_task_file(ckptlab_task))
    to_lm_eval(original, tmp_path)  # lm_eval_tasks reads tmp_path
    for template in ("plain", "jinja"):
        theirs = lm_eval_tasks(f"mini_{template}")
        docs = list(theirs.test_docs())
        assert [theirs.fewshot_context(d, 0) for d in docs] == prompts_for(
            Unit(original, template, 0, 1, original.examples)
        )
        assert [theirs.doc_to_choice(d)[theirs.doc_to_choice(d).index(theirs.doc_to_target(d))] for d in docs] == [
            e.gold for e in original.examples
        ]


@pytest.mark.slow
def test_first_n_demonstrations_give_lm_evals_k_shot_prompts(ckptlab_task: Path, tmp_path: Path, lm_eval_tasks) -> None:
    """With `fewshot.sampling: first_n` (exported as lm-eval's `first_n` sampler) both tools build the same
    2-shot prompts."""
    from ckptlab.tasks.export import to_lm_eval

    text = ckptlab_task.read_text(encoding="utf-8").replace(
        "fewshot: {shots: [2]}", "fewshot: {shots: [2], sampling: first_n}"
    )
    ckptlab_task.write_text(text, encoding="utf-8")
    original = load_task_data(read_task_file(ckptlab_task))
    assert original.spec.fewshot_sampling == "first_n"
    to_lm_eval(original, tmp_path)
    theirs = lm_eval_tasks("mini_plain")
    docs = list(theirs.test_docs())
    ours = prompts_for(Unit(original, "plain", 2, 1, original.examples))
    assert ours == [theirs.fewshot_context(d, 2) for d in docs]
    assert ours[0].count("Verdict: ") == 2
    back = read_task_file(tmp_path / "mini" / "mini_plain.yaml")
    assert back.fewshot_sampling == "first_n"
