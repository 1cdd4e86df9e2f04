"""The synthetic world: deterministic, splits held apart, templates render, labels balanced, facts where promised."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import string
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ckptlab.synthetic import SIZES, TASKS, generate, write_world
from ckptlab.synthetic.corpora import subject_documents
from ckptlab.synthetic.facts import FACT_TYPES, TASK_TEMPLATE_COUNT, TEMPLATES, Fact, render
from ckptlab.synthetic.templates import CHANGE_PHRASES, QUESTIONS


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "tiny"
    write_world(generate(seed=0, size="tiny"), out)
    return out


@pytest.fixture(scope="module")
def records(world_dir) -> dict[str, dict[str, list[dict]]]:
    """task -> split -> records, read back through each task file's `data` paths."""
    out = {}
    for task in TASKS:
        spec = yaml.safe_load((world_dir / "tasks" / f"{task}.yaml").read_text())
        out[task] = {
            split: [json.loads(line) for line in (world_dir / "tasks" / path).read_text().splitlines()]
            for split, path in spec["data"].items()
            if split != "format"
        }
    return out


@pytest.fixture(scope="module")
def corpora(world_dir) -> dict[str, str]:
    return {name: (world_dir / "corpus" / f"{name}.txt").read_text() for name in ("general", "domain")}


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def named(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text) is not None


def word_ngrams(text: str, longest: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text)
    return {tuple(words[i : i + n]) for n in range(1, longest + 1) for i in range(len(words) - n + 1)}


def fields_text(task: str, record: dict) -> str:
    return "\n".join(str(record[f]) for f in TASKS[task].yaml_data()["fields"])


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, world_dir):
    write_world(generate(seed=0, size="tiny"), tmp_path / "again")
    write_world(generate(seed=1, size="tiny"), tmp_path / "other")
    first, again, other = files_of(world_dir), files_of(tmp_path / "again"), files_of(tmp_path / "other")
    assert first == again
    assert set(first) == set(other)
    for path in ("corpus/general.txt", "corpus/domain.txt", "tasks/world_nli/test.jsonl", "world.json"):
        assert first[path] != other[path], path


def test_manifest_lists_every_file_with_its_hash(world_dir):
    manifest = json.loads((world_dir / "world.json").read_text())
    assert manifest["size"] == "tiny" and manifest["seed"] == 0 and manifest["version"] >= 1
    on_disk = files_of(world_dir)
    del on_disk["world.json"]
    assert manifest["files"] == {path: hashlib.sha256(data).hexdigest() for path, data in on_disk.items()}
    for task in TASKS:
        for split in ("train", "validation", "test"):
            assert f"tasks/{task}/{split}.jsonl" in manifest["files"]
            assert manifest["counts"]["tasks"][task][split] > 0
    assert all(b"\r" not in data for data in on_disk.values())


def test_no_test_item_appears_in_any_train_split(records, world_dir):
    train_inputs = {fields_text(t, r) for t in TASKS for r in records[t]["train"]}
    train_subjects = {r["subject"] for t in TASKS for r in records[t]["train"]}
    mixture = [json.loads(line) for line in (world_dir / "instruct" / "mixture.jsonl").read_text().splitlines()]
    mixture_inputs = {m["input"] for m in mixture}
    for task in TASKS:
        spec = TASKS[task]
        for split in ("validation", "test"):
            for record in records[task][split]:
                assert fields_text(task, record) not in train_inputs, (task, split, record["id"])
                assert record["subject"] not in train_subjects, (task, split, record["id"])
                assert spec.input_block.format(**record) not in mixture_inputs, (task, split, record["id"])
        ids = [r["id"] for split in records[task].values() for r in split]
        assert len(ids) == len(set(ids))
        inputs = [fields_text(task, r) for split in records[task].values() for r in split]
        assert len(inputs) == len(set(inputs)), f"{task}: an example repeats"


def test_mixture_holds_only_train_records_of_mixture_tasks(records, world_dir):
    mixture = [json.loads(line) for line in (world_dir / "instruct" / "mixture.jsonl").read_text().splitlines()]
    expected = Counter()
    for task, spec in TASKS.items():
        if spec.in_mixture:
            expected.update((task, spec.input_block.format(**r), spec.answer(r)) for r in records[task]["train"])
    assert all(set(m) == {"instruction", "input", "output", "task"} for m in mixture)
    assert Counter((m["task"], m["input"], m["output"]) for m in mixture) == expected
    assert {m["task"] for m in mixture} == {t for t, s in TASKS.items() if s.in_mixture}


def test_every_template_renders_every_example(records, world_dir):
    for task in TASKS:
        spec = yaml.safe_load((world_dir / "tasks" / f"{task}.yaml").read_text())
        assert set(spec["templates"]) == {"train_format", "instruction", "bare"}
        assert spec["templates"]["train_format"].startswith("### Input: ")
        assert spec["templates"]["train_format"].endswith("\n### Output:")
        used = {name for t in spec["templates"].values() for _, name, _, _ in string.Formatter().parse(t) if name}
        assert used == set(spec["fields"]), task
        for split, rows in records[task].items():
            assert rows, (task, split)
            for record in rows:
                for name, template in spec["templates"].items():
                    prompt = template.format(**record)
                    assert "{" not in prompt and "}" not in prompt, (task, name, record["id"])
                if spec["type"] == "classification":
                    choices = spec["choices"] or record[spec["choices_field"]]
                    assert record[spec["label_field"]] in choices
                    assert len(set(choices)) == len(choices)
                else:
                    assert record[spec["target_field"]].strip()


def test_classification_labels_are_balanced(records):
    for task, spec in TASKS.items():
        if spec.type != "classification":
            continue
        for split, rows in records[task].items():
            if spec.choices:
                shares = Counter(r["label"] for r in rows)
                classes = spec.choices
            else:  # per-example options: the correct option's position must not give it away
                shares = Counter(r["options"].index(r["label"]) for r in rows)
                classes = range(len(rows[0]["options"]))
            for label in classes:
                assert abs(shares[label] / len(rows) - 1 / len(classes)) <= 0.05, (task, split, shares)


def test_probed_facts_are_stated_several_times_in_their_corpus(records, corpora):
    documents = {name: text.split("\n\n") for name, text in corpora.items()}
    low, high = SIZES["tiny"].repeats
    for task, corpus in (("world_knowledge", "general"), ("finance_qa", "domain")):
        for rows in records[task].values():
            for record in rows:
                value = record["label"]
                if record["fact_type"] == "product":
                    value = re.fullmatch(r"Which company makes the (.+)\?", record["question"]).group(1)
                together = sum(named(record["subject"], d) and named(value, d) for d in documents[corpus])
                # stated in `low`..`high` documents, and again (restated) in at most each of them
                assert low <= together and low <= record["mentions"] <= 2 * high, (task, record)
                assert 2 * together >= record["mentions"], (task, record)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_share_of_documents_restates_one_of_their_facts_in_another_wording(share):
    facts = [
        Fact("birthplace", "Ana Tor", "Pelk"),
        Fact("profession", "Ana Tor", "baker"),
        Fact("birth_year", "Ana Tor", "1970"),
    ]
    mentions: dict[Fact, int] = {}
    documents = subject_documents(facts, (3, 6), random.Random(3), mentions, restated_share=share)
    for sentences in documents:
        assert len(set(sentences)) == len(sentences)  # a restatement is another wording, never a copy
    values = [sum(f.value in s for s in sentences) for sentences in documents for f in facts]
    assert sum(mentions.values()) == sum(len(sentences) for sentences in documents)
    if share == 0.0:
        assert max(values) == 1
    else:  # every document states one fact twice (unless the draw repeated its wording)
        twice = sum(max(sum(f.value in s for s in sentences) for f in facts) == 2 for sentences in documents)
        assert twice >= len(documents) - 1 and max(values) == 2


def test_held_out_entities_are_named_in_no_corpus(records, corpora):
    everything = word_ngrams(corpora["general"] + "\n" + corpora["domain"])
    subjects = 0
    for task, spec in TASKS.items():
        if spec.probes_pretraining_knowledge:
            continue
        for rows in records[task].values():
            for record in rows:
                subjects += 1
                assert tuple(re.findall(r"\w+", record["subject"])) not in everything, (task, record["subject"])
    assert subjects > 100


def test_general_and_domain_corpora_do_not_share_entities(records, corpora):
    general, domain = word_ngrams(corpora["general"]), word_ngrams(corpora["domain"])

    def words(name: str) -> tuple[str, ...]:
        return tuple(re.findall(r"\w+", name))

    for record in (r for rows in records["finance_qa"].values() for r in rows):
        assert words(record["subject"]) in domain and words(record["subject"]) not in general, record
        if record["fact_type"] in ("ceo", "cfo", "exchange"):  # names, not years or sectors
            assert words(record["label"]) not in general, record
    for record in (r for rows in records["world_knowledge"].values() for r in rows):
        assert words(record["subject"]) in general and words(record["subject"]) not in domain, record
        if record["fact_type"] in ("relative", "employer"):
            assert words(record["label"]) not in domain, record


def test_summaries_only_state_what_the_document_says(records):
    for task in ("world_summarization", "finance_summarization"):
        for rows in records[task].values():
            for record in rows:
                names = re.findall(r"[A-Z][a-z]+(?: [A-Z][a-z]+)*|\$[\d.]+ \w+|\d+%?|Q\d \d{4}", record["summary"])
                for name in names:
                    if name.endswith("%"):
                        continue  # the document words the change in its own way ("up 12%" vs "12% higher")
                    assert name in record["document"], (task, name, record)


def test_sentiment_labels_follow_the_direction_of_the_change(records):
    words = {"positive": CHANGE_PHRASES["up"], "negative": CHANGE_PHRASES["down"], "neutral": CHANGE_PHRASES["flat"]}
    for rows in records["finance_sentiment"].values():
        for record in rows:
            patterns = [re.escape(p).replace(re.escape("{pct}"), r"\d+%") for p in words[record["label"]]]
            assert any(re.search(p, record["sentence"]) for p in patterns), record


def test_every_fact_type_has_at_least_20_distinct_templates_that_state_the_fact():
    rng = random.Random(0)
    for fact_type in FACT_TYPES:
        templates = TEMPLATES[fact_type]
        assert len(templates) >= 20 and len(set(templates)) == len(templates), fact_type
        extra = {
            "relative": (("relation", "sister"),),
            "results": (("pct", "12"), ("quarter", "Q3 2020"), ("revenue", "$41.5 million")),
        }.get(fact_type, ())
        value = {"results": "up"}.get(fact_type, "Valueword")
        fact = Fact(fact_type, "Subjectword", value, extra)
        for i, template in enumerate(templates):
            sentence = render(fact, i, rng)
            assert "Subjectword" in sentence and "{" not in sentence, (fact_type, template)
            assert fact_type == "results" or "Valueword" in sentence, (fact_type, template)
    assert all(len(phrases) >= 8 for phrases in CHANGE_PHRASES.values())
    assert set(QUESTIONS) <= set(FACT_TYPES)


def test_tiny_world_is_fast():
    start = time.perf_counter()
    generate(seed=3, size="tiny")
    assert time.perf_counter() - start < 2.0


def task_sentence_pattern() -> re.Pattern:
    """A regex that matches one sentence worded with a task template (any fact type, any slots)."""
    alternatives = []
    for templates in TEMPLATES.values():
        for template in templates[:TASK_TEMPLATE_COUNT]:
            literal = re.split(r"\{\w+\}", template)
            alternatives.append(".+?".join(re.escape(part) for part in literal))
    return re.compile("(?:" + "|".join(alternatives) + ")")


def test_held_out_tasks_word_facts_with_the_task_templates_only(records):
    sentence = task_sentence_pattern().pattern
    for task, fields in (
        ("world_nli", ("hypothesis",)),
        ("finance_nli", ("hypothesis",)),
        ("world_paraphrase", ("sentence1", "sentence2")),
        ("finance_paraphrase", ("sentence1", "sentence2")),
        ("finance_sentiment", ("sentence",)),
    ):
        for rows in records[task].values():
            for record in rows:
                for name in fields:
                    assert re.fullmatch(sentence, record[name]), (task, name, record[name])


def bag_of_words(text: str) -> list[str]:
    words = re.findall(r"\w+", text.lower())
    return words + [f"{a}_{b}" for a, b in zip(words, words[1:])]


def naive_bayes_accuracy(train: list[dict], test: list[dict], features) -> float:
    """Test accuracy of multinomial naive Bayes (add-one smoothing) on `features(record)`."""
    prior = Counter(r["label"] for r in train)
    counts = {label: Counter() for label in prior}
    for record in train:
        counts[record["label"]].update(features(record))
    vocabulary = set().union(*counts.values())
    totals = {label: sum(c.values()) + len(vocabulary) for label, c in counts.items()}

    def score(record: dict, label: str) -> float:
        return math.log(prior[label]) + sum(
            math.log((counts[label][w] + 1) / totals[label]) for w in features(record) if w in vocabulary
        )

    return sum(max(prior, key=lambda label: score(r, label)) == r["label"] for r in test) / len(test)


def test_nli_premise_is_one_fact_and_the_hypothesis_is_about_its_subject(demo_records):
    sentence = task_sentence_pattern()
    for task in ("world_nli", "finance_nli"):
        for record in (r for split in demo_records[task].values() for r in split):
            assert sentence.fullmatch(record["premise"]), record
            assert record["subject"] in record["premise"] and record["subject"] in record["hypothesis"], record
            assert record["premise"] != record["hypothesis"], record


@pytest.fixture(scope="module")
def demo_records() -> dict[str, dict[str, list[dict]]]:
    world = generate(seed=0, size="demo")
    return {
        task: {
            split: [json.loads(line) for line in world.files[f"tasks/{task}/{split}.jsonl"].splitlines()]
            for split in ("train", "validation", "test")
        }
        for task in ("world_nli", "world_paraphrase", "finance_nli")
    }


def test_surface_features_do_not_give_nli_or_paraphrase_labels_away(demo_records):
    """A bag-of-words classifier of the hypothesis alone (or of premise and hypothesis as two
    separate bags, which cannot compare them) stays near chance: the label is in the relation
    between the two texts, not in the wording of either."""
    for task, first, second in (("world_nli", "premise", "hypothesis"), ("world_paraphrase", "sentence1", "sentence2")):
        train, test = demo_records[task]["train"], demo_records[task]["test"]
        chance = 1 / len(TASKS[task].choices)
        second_only = naive_bayes_accuracy(train, test, lambda r: bag_of_words(r[second]))
        two_bags = naive_bayes_accuracy(
            train,
            test,
            lambda r: [f"1:{w}" for w in bag_of_words(r[first])] + [f"2:{w}" for w in bag_of_words(r[second])],
        )
        assert second_only < chance + 0.07 and two_bags < chance + 0.07, (task, second_only, two_bags)


def test_restated_share_zero_is_the_earlier_corpus_and_the_default_is_the_generators(tmp_path):
    from ckptlab.commands.world import WorldConfig
    from ckptlab.synthetic.corpora import RESTATED_SHARE

    assert WorldConfig().restated_share == RESTATED_SHARE
    plain, restated = generate(seed=0, size="tiny", restated_share=0.0), generate(seed=0, size="tiny")
    # restatement adds sentences to the corpora and changes nothing else a task is built from
    for corpus in ("general", "domain"):
        assert plain.counts["corpus"][corpus]["statements"] < restated.counts["corpus"][corpus]["statements"]
        assert plain.counts["corpus"][corpus]["facts"] == restated.counts["corpus"][corpus]["facts"]
    for path, text in plain.files.items():
        if path.startswith("tasks/world_nli/") or path.startswith("tasks/world_paraphrase/"):
            assert restated.files[path] == text, path
    write_world(plain, tmp_path / "w")
    assert json.loads((tmp_path / "w" / "world.json").read_text())["restated_share"] == 0.0
