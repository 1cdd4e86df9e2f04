"""Task examples: records built from the facts of one pool of entities.

Every builder takes the entities of one split's pool, so no two splits share an entity and no test
item can leak into a train split. Labels cycle through the choices (and the correct option through
the four positions), so every split is balanced by construction. Each builder returns `count`
distinct records or raises if the pool is too small (a bug in `sizes.py`, not user input).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ckptlab.synthetic import facts as F
from ckptlab.synthetic.entities import PROFESSIONS, SECTORS, Company, Person, Places, article, relation_words
from ckptlab.synthetic.facts import Fact
from ckptlab.synthetic.tasks import NLI_CHOICES, PARAPHRASE_CHOICES, SENTIMENT_CHOICES
from ckptlab.synthetic.templates import PERSON_SUMMARY, RESULTS_SUMMARY

Record = dict[str, Any]


@dataclass
class Pool:
    """The entities of one split of one domain, and how to state and alter their facts."""

    subjects: list[str]
    facts_of: Callable[[str], list[Fact]]
    functional: tuple[str, ...]
    other_value: Callable[[Fact, random.Random], Fact]
    """A fact of the same type and subject with a different value: it contradicts `fact`."""
    confusable: Callable[[Fact, random.Random], Fact | None]
    """A different fact naming the same entities (born in C / lives in C), or None: hard negatives."""


class Collector:
    """Distinct records up to `count`; gives up after many duplicates (the pool is too small)."""

    def __init__(self, task: str, count: int):
        self.task, self.count, self.misses = task, count, 0
        self.records: list[Record] = []
        self.seen: set[tuple] = set()

    def add(self, record: Record, key: tuple) -> None:
        if key in self.seen:
            self.misses += 1
            if self.misses > 50 * self.count + 1000:
                raise RuntimeError(f"{self.task}: pool too small for {self.count} distinct examples")
            return
        self.seen.add(key)
        self.records.append(record)

    @property
    def full(self) -> bool:
        return len(self.records) >= self.count


def _distractors(
    values: Sequence[str], answer: str, avoid: str, count: int, rng: random.Random, task: str
) -> list[str]:
    """`count` different values other than `answer` and `avoid`, each drawn as often as it occurs."""
    chosen: list[str] = []
    for _ in range(1000 * count):
        value = rng.choice(values)
        if value not in (answer, avoid) and value not in chosen:
            chosen.append(value)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"{task}: too few different values to draw {count} distractors for {answer!r}")


def general_pool(people: list[Person], places: Places) -> Pool:
    by_name = {p.name: p for p in people}
    by_gender = {g: [p.name for p in people if p.gender == g] for g in ("female", "male")}

    def other_value(fact: Fact, rng: random.Random) -> Fact:
        value = fact.value
        while value in (fact.value, fact.subject):
            if fact.type in ("birthplace", "home_city"):
                value = rng.choice(places.cities)
            elif fact.type == "birth_year":
                value = str(int(fact.value) + rng.choice([-1, 1]) * rng.randint(1, 30))
            elif fact.type == "profession":
                value = rng.choice(PROFESSIONS)
            elif fact.type == "employer":
                value = rng.choice(places.orgs)
            elif fact.type == "relative":
                value = rng.choice(by_gender[by_name[fact.value].gender])
        return fact.with_value(value)

    def confusable(fact: Fact, rng: random.Random) -> Fact | None:
        if fact.type in ("birthplace", "home_city"):
            return fact.as_type("home_city" if fact.type == "birthplace" else "birthplace")
        if fact.type == "relative":  # the same two people, another relation: sister -> wife
            words = [w for w in relation_words(by_name[fact.value].gender) if w != fact.get("relation")]
            return fact.as_type("relative", relation=rng.choice(words))
        return None

    return Pool(
        subjects=[p.name for p in people],
        facts_of=lambda name: F.person_facts(by_name[name]),
        functional=F.FUNCTIONAL_PERSON_TYPES,
        other_value=other_value,
        confusable=confusable,
    )


def finance_pool(companies: list[Company], exchanges: list[str]) -> Pool:
    by_name = {c.name: c for c in companies}
    executives = [e for c in companies for e in (c.ceo, c.cfo)]
    products = [p for c in companies for p in c.products]

    def other_value(fact: Fact, rng: random.Random) -> Fact:
        if fact.type == "results":
            direction = rng.choice([d for d in ("up", "down", "flat") if d != fact.value])
            pct = "0" if direction == "flat" else str(rng.randint(2, 40))
            return fact.with_value(direction, pct=pct)
        value = fact.value
        while value == fact.value:
            if fact.type == "sector":
                value = rng.choice(SECTORS)
            elif fact.type in ("ceo", "cfo"):
                value = rng.choice(executives)
            elif fact.type == "product":
                value = rng.choice(products)
            elif fact.type == "exchange":
                value = rng.choice(exchanges)
            elif fact.type == "founded":
                value = str(int(fact.value) + rng.choice([-1, 1]) * rng.randint(1, 40))
        return fact.with_value(value)

    def confusable(fact: Fact, rng: random.Random) -> Fact | None:
        if fact.type in ("ceo", "cfo"):  # the same person in the other post
            return fact.as_type("cfo" if fact.type == "ceo" else "ceo")
        if fact.type == "results":  # the same quarter and revenue, another change on the year
            return other_value(fact, rng)
        return None

    return Pool(
        subjects=[c.name for c in companies],
        facts_of=lambda name: F.company_facts(by_name[name]),
        functional=F.FUNCTIONAL_COMPANY_TYPES,
        other_value=other_value,
        confusable=confusable,
    )


def multiple_choice(
    task: str,
    subjects: Sequence[Sequence[Fact]],
    types: Sequence[str],
    count: int,
    mentions: dict[Fact, int],
    rng: random.Random,
    option_values: Callable[[Fact], list[str]],
) -> list[Record]:
    """Closed-book four-option questions, equally many per fact type; the answer's position cycles.

    `option_values(fact)` lists the values of that kind of fact over all subjects, repeated as often
    as they occur, and distractors are drawn from it: a distractor is as frequent as answers are, so
    picking the option seen most often in the corpus stays at chance.
    """
    by_type: dict[str, list[Fact]] = {t: [] for t in types}
    for facts in subjects:
        for fact in facts:
            if fact.type in by_type:
                by_type[fact.type].append(fact)
    chosen: list[Fact] = []
    for i, fact_type in enumerate(types):
        quota = count // len(types) + (1 if i < count % len(types) else 0)
        if len(by_type[fact_type]) < quota:
            raise RuntimeError(f"{task}: {len(by_type[fact_type])} {fact_type} facts, {quota} needed")
        chosen += rng.sample(by_type[fact_type], quota)
    rng.shuffle(chosen)
    records = []
    for i, fact in enumerate(chosen):
        answer = fact.subject if fact.type == "product" else fact.value
        options = _distractors(option_values(fact), answer, fact.subject, 3, rng, task)  # never "X is X's sister"
        options.insert(i % 4, answer)
        records.append(
            {
                "question": F.question(fact),
                "options": options,
                "label": answer,
                "fact_type": fact.type,
                "subject": fact.subject,
                "mentions": mentions[fact],
            }
        )
    return records


PREMISE_FACTS = 1
"""How many facts a premise states. With two or three, a 1.3M-parameter model fine-tuned for 6,400
examples stayed at chance (it learned the label prior); with one it learns the relation."""


def nli(task: str, pool: Pool, count: int, rng: random.Random) -> list[Record]:
    """Premise: PREMISE_FACTS functional facts of one subject. The hypothesis is about the same subject.
    Entailment restates a premise fact in another wording; contradiction states the same kind of
    fact with another value, also in another wording than the premise's; neutral states a kind of
    fact the premise does not (each kind equally often; true or not), and when that kind is where
    the subject lives (was born) and the premise says where they were born (live), half the time
    the trap: lives (born) in that same city.

    Surface cues are kept off the label: every label draws premises the same way, hypotheses from
    the same templates and each kind of fact about equally often; only comparing the hypothesis with
    the premise tells the label.
    """
    out = Collector(task, count)
    while not out.full:
        label = NLI_CHOICES[len(out.records) % 3]
        subject = rng.choice(pool.subjects)
        # functional facts, one per type (a company's quarterly results are one type)
        functional = [f for f in pool.facts_of(subject) if f.type in pool.functional]
        first_of_type = list({f.type: f for f in rng.sample(functional, len(functional))}.values())
        premise_facts = rng.sample(first_of_type, PREMISE_FACTS)
        wordings = [F.render_for_task(f, rng) for f in premise_facts]
        premise = " ".join(text for text, _ in wordings)
        template_of = {f: index for f, (_, index) in zip(premise_facts, wordings)}
        if label in ("entailment", "contradiction"):
            stated = rng.choice(premise_facts)
            fact = stated if label == "entailment" else pool.other_value(stated, rng)
            hypothesis, _ = F.render_for_task(fact, rng, avoid=template_of[stated])
        else:
            stated_types = {f.type for f in premise_facts}
            # a kind of fact the premise does not state (or another quarter's results), each kind
            # equally often, so the kind of hypothesis does not give the label away
            unstated = [
                f for f in functional if f not in premise_facts and (f.type not in stated_types or f.type == "results")
            ]
            fact_type = rng.choice(sorted({f.type for f in unstated}))
            fact = rng.choice([f for f in unstated if f.type == fact_type])
            # the trap: born in C does not tell where one lives, nor the other way round
            places = [f for f in premise_facts if {f.type, fact_type} == {"birthplace", "home_city"}]
            if places and rng.random() < 0.5:
                confused = pool.confusable(places[0], rng)
                assert confused is not None  # birthplace and home_city always have their confusable twin
                fact = confused
            elif rng.random() < 0.5:
                fact = pool.other_value(fact, rng)
            hypothesis, _ = F.render_for_task(fact, rng)
        out.add(
            {"premise": premise, "hypothesis": hypothesis, "label": label, "subject": subject, "fact_type": fact.type},
            (premise, hypothesis),
        )
    return out.records


def paraphrase(task: str, pool: Pool, count: int, rng: random.Random) -> list[Record]:
    """Yes: one fact in two wordings. No: a fact and, in another wording, a different fact: the same
    kind of fact with another value, a fact naming the same entities in another relation (born in C /
    lives in C; sister / wife; CEO / CFO) or another fact of the same subject, weighted 5:3:2 where
    the kind of fact has such a relation, else 5:2. The first fact's kind is drawn uniformly for
    either label, so which kinds of fact a pair mentions says nothing about the label."""
    out = Collector(task, count)
    while not out.full:
        label = PARAPHRASE_CHOICES[len(out.records) % 2]
        subject = rng.choice(pool.subjects)
        facts = pool.facts_of(subject)
        fact_type = rng.choice(sorted({f.type for f in facts}))  # each kind of fact equally often
        fact = rng.choice([f for f in facts if f.type == fact_type])
        confusable = pool.confusable(fact, rng)
        if label == "yes":
            other = fact
        else:
            kinds, weights = ["value", "other"], [5, 2]
            if confusable is not None:
                kinds, weights = kinds + ["confusable"], weights + [3]
            kind = rng.choices(kinds, weights=weights)[0]
            if kind == "value":
                other = pool.other_value(fact, rng)
            elif kind == "confusable":
                assert confusable is not None  # "confusable" is among the kinds only when there is one
                other = confusable
            else:
                other = rng.choice([f for f in facts if f.type != fact.type])
        sentence1, first = F.render_for_task(fact, rng)
        # always two wordings, so "yes" is never a repeated sentence
        sentence2, _ = F.render_for_task(other, rng, avoid=first if other.type == fact.type else None)
        if rng.random() < 0.5:
            sentence1, sentence2 = sentence2, sentence1
        out.add(
            {
                "sentence1": sentence1,
                "sentence2": sentence2,
                "label": label,
                "subject": subject,
                "fact_type": fact.type,
            },
            (sentence1, sentence2),
        )
    return out.records


def person_summaries(task: str, people: list[Person], places: Places, count: int, rng: random.Random) -> list[Record]:
    """A short biography and its one-sentence summary. The biography states the person's five
    functional facts (so it says where they live as well as where they were born: the summary must
    pick the birthplace) and one more fact: the relative, the employer's city, the birthplace's
    country or a fact of the relative. Six sentences keep prompt and summary within a 128-token
    context."""
    if len(people) < count:
        raise RuntimeError(f"{task}: {len(people)} people, {count} needed")
    by_name = {p.name: p for p in people}
    records = []
    for person in rng.sample(people, count):
        own = F.person_facts(person)
        relative = by_name[person.relatives[0][1]]
        extras = [f for f in own if f.type == "relative"]
        extras += [
            Fact("org_city", person.employer, places.org_city[person.employer]),
            Fact("city_country", person.birthplace, places.city_country[person.birthplace]),
            rng.choice([f for f in F.person_facts(relative) if f.type in F.FUNCTIONAL_PERSON_TYPES]),
        ]
        facts = [f for f in own if f.type in F.FUNCTIONAL_PERSON_TYPES] + [rng.choice(extras)]
        rng.shuffle(facts)
        document = " ".join(F.render_for_task(f, rng)[0] for f in facts)
        summary = PERSON_SUMMARY.format(
            person=person.name,
            a_profession=article(person.profession),
            city=person.birthplace,
            year=person.birth_year,
            org=person.employer,
        )
        records.append({"document": document, "summary": summary, "subject": person.name})
    return records


def results_summaries(task: str, companies: list[Company], count: int, rng: random.Random) -> list[Record]:
    """A quarterly report (the quarter's results among three other facts of the company) and its
    one-sentence headline."""
    reports = [(c, r) for c in companies for r in c.results]
    if len(reports) < count:
        raise RuntimeError(f"{task}: {len(reports)} quarterly reports, {count} needed")
    records = []
    for company, result in rng.sample(reports, count):
        facts = [F.results_fact(company, result)] + rng.sample(F.company_facts(company, with_results=False), 3)
        rng.shuffle(facts)
        document = " ".join(F.render_for_task(f, rng)[0] for f in facts)
        summary = RESULTS_SUMMARY[result["direction"]].format(
            company=company.name, pct=f"{result['pct']}%", revenue=result["revenue"], quarter=result["quarter"]
        )
        records.append(
            {"document": document, "summary": summary, "subject": company.name, "quarter": result["quarter"]}
        )
    return records


def question_generation(task: str, pool: Pool, count: int, rng: random.Random) -> list[Record]:
    """Context: 2-4 facts of a person; answer: the value of one of them (found once in the context);
    target: the question that asks for it."""
    out = Collector(task, count)
    while not out.full:
        subject = rng.choice(pool.subjects)
        facts = pool.facts_of(subject)
        context_facts = rng.sample(facts, rng.randint(2, min(3, len(facts))))
        context = " ".join(F.render_for_task(f, rng)[0] for f in context_facts)
        fact = rng.choice(context_facts)
        if len(re.findall(rf"\b{re.escape(fact.value)}\b", context)) != 1:
            continue
        out.add(
            {
                "context": context,
                "answer": fact.value,
                "question": F.question(fact),
                "subject": subject,
                "fact_type": fact.type,
            },
            (context, fact.value),
        )
    return out.records


def sentiment(task: str, companies: list[Company], count: int, rng: random.Random) -> list[Record]:
    """A sentence reporting a quarter's revenue; positive if it grew on the year, negative if it fell,
    neutral if unchanged."""
    label_of = {"up": "positive", "down": "negative", "flat": "neutral"}
    by_label: dict[str, list[Fact]] = {label: [] for label in SENTIMENT_CHOICES}
    for company in companies:
        for result in company.results:
            by_label[label_of[result["direction"]]].append(F.results_fact(company, result))
    for label, items in by_label.items():
        if len(items) < count // 3 + 1:
            raise RuntimeError(f"{task}: {len(items)} {label} results, {count // 3 + 1} needed")
        rng.shuffle(items)
    records = []
    for i in range(count):
        label = SENTIMENT_CHOICES[i % 3]
        fact = by_label[label][i // 3]
        sentence, _ = F.render_for_task(fact, rng)
        records.append({"sentence": sentence, "label": label, "subject": fact.subject, "quarter": fact.get("quarter")})
    return records
