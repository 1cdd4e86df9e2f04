"""Generate a whole world in memory: entities, the two corpora, every task's splits, the mixture.

Randomness comes only from `random.Random` instances seeded with a string naming the seed and the
part they serve ("ckptlab-world:7:corpus:general"), so the same seed and size give byte-identical
files, and a change to one task does not change the corpora or the other tasks.

Who is stated where (the split contract):
- corpus people and corpus companies: their facts are stated in the general (resp. finance) corpus.
  The knowledge probe (resp. domain QA) asks about them; its train, validation and test questions
  are about disjoint groups of them (relatives stay in the same group).
- held-out people and companies, one pool per split: never named in either corpus. All other
  tasks are built from them, each split from its own pool, so no entity (and so no example) is
  shared between splits, and those tasks can only be solved from the text they give.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import yaml

from ckptlab.synthetic import entities as E
from ckptlab.synthetic import examples as X
from ckptlab.synthetic import facts as F
from ckptlab.synthetic.corpora import RESTATED_SHARE, build_corpus, corpus_text
from ckptlab.synthetic.sizes import SIZES, WorldSize
from ckptlab.synthetic.tasks import SPLITS, TASKS, mixture_record

GENERATOR_VERSION = 3
"""Bump when anything that changes the generated files changes (templates, entities, sizes)."""
WORLD_FORMAT_VERSION = 1
"""Bump when the layout of a world directory or of world.json changes."""

PROBE_PERSON_TYPES = ("birthplace", "home_city", "birth_year", "profession", "employer", "relative")
PROBE_COMPANY_TYPES = ("sector", "ceo", "cfo", "product", "exchange", "founded")
FINE_TUNING_TASKS = (
    "world_nli",
    "world_paraphrase",
    "world_summarization",
    "world_question_generation",
    "finance_sentiment",
)


@dataclass
class World:
    seed: int
    size: str
    restated_share: float = RESTATED_SHARE
    files: dict[str, str] = field(default_factory=dict)
    """Relative path -> text, in the order written."""
    counts: dict[str, Any] = field(default_factory=dict)


def _stream(seed: int, part: str) -> random.Random:
    return random.Random(f"ckptlab-world:{seed}:{part}")


def _even(n: int) -> int:
    return n + n % 2


def split_counts(spec: WorldSize, task: str) -> dict[str, int]:
    train = spec.train if task in FINE_TUNING_TASKS else spec.few_shot_train
    return {"train": train, "validation": spec.validation, "test": spec.test}


def partition(units: list, counts: dict[str, int], rng: random.Random) -> dict[str, list]:
    """Shuffle `units` and cut them into one group per split, sized in proportion to `counts`."""
    units = list(units)
    rng.shuffle(units)
    total = sum(counts.values())
    groups, start = {}, 0
    for i, split in enumerate(SPLITS):
        end = len(units) if i == len(SPLITS) - 1 else start + round(len(units) * counts[split] / total)
        groups[split] = units[start:end]
        start = end
    return groups


def generate(seed: int, size: str, restated_share: float = RESTATED_SHARE) -> World:
    """The world of `size` ("tiny", "demo" or "large") generated from `seed`; `restated_share` of the
    corpus subjects' documents state one of their facts twice (`corpora.RESTATED_SHARE`)."""
    spec = SIZES[size]
    world = World(seed=seed, size=size, restated_share=restated_share)
    bank = E.NameBank(_stream(seed, "names"))
    first_names = E.make_first_names(bank, min(600, max(60, spec.corpus_people // 4)))

    # Corpus entities first, so held-out pools never change what the corpora say.
    places = E.make_places(bank, spec.countries, spec.cities, spec.orgs)
    corpus_people = E.make_people(
        _stream(seed, "people:corpus"), E.make_person_names(bank, first_names, _even(spec.corpus_people)), places
    )
    exchanges = E.make_exchanges(bank, spec.exchanges)

    def companies(count: int) -> list[E.Company]:
        executives = E.make_person_names(bank, first_names, 2 * count)
        return E.make_companies(bank, executives, exchanges, count, spec.quarters)

    corpus_companies = companies(spec.corpus_companies)
    held_people = {
        split: E.make_people(
            _stream(seed, f"people:{split}"), E.make_person_names(bank, first_names, _even(max(12, count))), places
        )
        for split, count in split_counts(spec, "world_nli").items()
    }
    held_companies = {
        split: companies(max(8, count // 2)) for split, count in split_counts(spec, "finance_sentiment").items()
    }

    general_docs, general_mentions = build_corpus(
        [F.person_facts(p) for p in corpus_people],
        [[F.Fact("city_country", c, country)] for c, country in places.city_country.items()]
        + [
            [F.Fact("org_city", o, places.org_city[o]), F.Fact("org_founded", o, str(places.org_founded[o]))]
            for o in places.orgs
        ],
        spec.repeats,
        _stream(seed, "corpus:general"),
        restated_share=restated_share,
    )
    domain_docs, domain_mentions = build_corpus(
        [F.company_facts(c, with_results=False) for c in corpus_companies],
        [[F.results_fact(c, r) for r in c.results] for c in corpus_companies],
        spec.repeats,
        _stream(seed, "corpus:finance"),
        minor_repeats=spec.results_repeats,
        restated_share=restated_share,
    )
    world.files["corpus/general.txt"] = corpus_text(general_docs)
    world.files["corpus/domain.txt"] = corpus_text(domain_docs)

    records = _task_records(
        seed,
        spec,
        places,
        corpus_people,
        corpus_companies,
        exchanges,
        held_people,
        held_companies,
        general_mentions,
        domain_mentions,
    )
    for name, splits in records.items():
        world.files[f"tasks/{name}.yaml"] = task_yaml(name)
        for split, rows in splits.items():
            rows = [{"id": f"{name}-{split}-{i:05d}", **row} for i, row in enumerate(rows)]
            splits[split] = rows
            world.files[f"tasks/{name}/{split}.jsonl"] = jsonl(rows)
    mixture = [
        mixture_record(TASKS[name], row) for name in TASKS if TASKS[name].in_mixture for row in records[name]["train"]
    ]
    _stream(seed, "mixture").shuffle(mixture)
    world.files["instruct/mixture.jsonl"] = jsonl(mixture)

    world.counts = {
        "corpus": {
            "general": {
                "documents": len(general_docs),
                "bytes": len(world.files["corpus/general.txt"].encode()),
                "facts": len(general_mentions),
                "statements": sum(general_mentions.values()),
            },
            "domain": {
                "documents": len(domain_docs),
                "bytes": len(world.files["corpus/domain.txt"].encode()),
                "facts": len(domain_mentions),
                "statements": sum(domain_mentions.values()),
            },
        },
        "entities": {
            "corpus_people": len(corpus_people),
            "cities": spec.cities,
            "countries": spec.countries,
            "organisations": spec.orgs,
            "corpus_companies": len(corpus_companies),
            "exchanges": len(exchanges),
            "held_out_people": {s: len(p) for s, p in held_people.items()},
            "held_out_companies": {s: len(c) for s, c in held_companies.items()},
        },
        "tasks": {name: {split: len(rows) for split, rows in splits.items()} for name, splits in records.items()},
        "instruct": {"mixture": len(mixture)},
    }
    return world


def _task_records(
    seed: int,
    spec: WorldSize,
    places: E.Places,
    corpus_people: list[E.Person],
    corpus_companies: list[E.Company],
    exchanges: list[str],
    held_people: dict[str, list[E.Person]],
    held_companies: dict[str, list[E.Company]],
    general_mentions: dict[F.Fact, int],
    domain_mentions: dict[F.Fact, int],
) -> dict[str, dict[str, list[dict]]]:
    """task -> split -> records. Probes ask about corpus entities; every other task uses held-out ones."""
    out: dict[str, dict[str, list[dict]]] = {}
    # Option values repeat as often as they occur, so distractors are as frequent as answers.
    gender_of = {p.name: p.gender for p in corpus_people}
    person_values = {
        "birthplace": [p.birthplace for p in corpus_people],
        "home_city": [p.home_city for p in corpus_people],
        "birth_year": [str(p.birth_year) for p in corpus_people],
        "profession": [p.profession for p in corpus_people],
        "employer": [p.employer for p in corpus_people],
        "female": [p.name for p in corpus_people if p.gender == "female"],
        "male": [p.name for p in corpus_people if p.gender == "male"],
    }
    company_values = {
        "sector": [c.sector for c in corpus_companies],
        "exchange": [c.exchange for c in corpus_companies],
        "product": [c.name for c in corpus_companies for _ in c.products],
        "ceo": [c.ceo for c in corpus_companies],
        "cfo": [c.cfo for c in corpus_companies],
        "founded": [str(c.founded) for c in corpus_companies],
    }

    def person_options(fact: F.Fact) -> list[str]:
        return person_values[gender_of[fact.value] if fact.type == "relative" else fact.type]

    pairs = [corpus_people[i : i + 2] for i in range(0, len(corpus_people), 2)]
    counts = split_counts(spec, "world_knowledge")
    groups = partition(pairs, counts, _stream(seed, "probe-split:general"))
    out["world_knowledge"] = {
        split: X.multiple_choice(
            "world_knowledge",
            [F.person_facts(p) for pair in groups[split] for p in pair],
            PROBE_PERSON_TYPES,
            counts[split],
            general_mentions,
            _stream(seed, f"task:world_knowledge:{split}"),
            person_options,
        )
        for split in SPLITS
    }
    counts = split_counts(spec, "finance_qa")
    groups = partition(corpus_companies, counts, _stream(seed, "probe-split:finance"))
    out["finance_qa"] = {
        split: X.multiple_choice(
            "finance_qa",
            [F.company_facts(c, with_results=False) for c in groups[split]],
            PROBE_COMPANY_TYPES,
            counts[split],
            domain_mentions,
            _stream(seed, f"task:finance_qa:{split}"),
            lambda f: company_values[f.type],
        )
        for split in SPLITS
    }

    for name in TASKS:
        if name not in out:
            out[name] = {
                split: _held_out_records(
                    name,
                    held_people[split],
                    held_companies[split],
                    places,
                    exchanges,
                    count,
                    _stream(seed, f"task:{name}:{split}"),
                )
                for split, count in split_counts(spec, name).items()
            }
    return {name: out[name] for name in TASKS}


def _held_out_records(
    name: str,
    people: list[E.Person],
    companies: list[E.Company],
    places: E.Places,
    exchanges: list[str],
    count: int,
    rng: random.Random,
) -> list[dict]:
    """`count` records of task `name` built from one split's held-out people or companies."""
    if name == "world_summarization":
        return X.person_summaries(name, people, places, count, rng)
    if name == "finance_summarization":
        return X.results_summaries(name, companies, count, rng)
    if name == "finance_sentiment":
        return X.sentiment(name, companies, count, rng)
    pool = X.general_pool(people, places) if name.startswith("world_") else X.finance_pool(companies, exchanges)
    if name.endswith("_nli"):
        return X.nli(name, pool, count, rng)
    if name.endswith("_paraphrase"):
        return X.paraphrase(name, pool, count, rng)
    if name == "world_question_generation":
        return X.question_generation(name, pool, count, rng)
    raise ValueError(f"no builder for task {name!r}")


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n" for row in rows)


class _TaskDumper(yaml.SafeDumper):
    """Block mappings; lists of scalars on one line; strings with line breaks double-quoted."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"' if "\n" in text else None)


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flat = all(not isinstance(item, (dict, list)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_TaskDumper.add_representer(str, _represent_str)
_TaskDumper.add_representer(list, _represent_list)


def task_yaml(name: str) -> str:
    header = (
        f"# Task file of the synthetic world (ckptlab world, generator version {GENERATOR_VERSION}).\n"
        "# Templates are Python str.format strings over the fields; the answer follows the rendered\n"
        "# prompt after one space. Paths under `data` are relative to this file.\n"
    )
    body = yaml.dump(TASKS[name].yaml_data(), Dumper=_TaskDumper, sort_keys=False, allow_unicode=True, width=4096)
    return header + body
