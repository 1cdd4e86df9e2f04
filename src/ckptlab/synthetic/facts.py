"""Facts: (type, subject, value) triples of the world and how each is rendered as a sentence.

A fact type names the slot that holds its subject and the slot that holds its value; the templates
of each type live in `templates.py`. Rendering a fact picks one of its templates; a corpus that
states a fact k times uses k different templates (while it has that many).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ckptlab.synthetic.entities import Company, Person, Places, article
from ckptlab.synthetic.templates import CHANGE_PHRASES, FINANCE_TEMPLATES, GENERAL_TEMPLATES, QUESTIONS

# type -> (domain, subject slot, value slot)
FACT_TYPES: dict[str, tuple[str, str, str]] = {
    "birthplace": ("general", "person", "city"),
    "home_city": ("general", "person", "city"),
    "birth_year": ("general", "person", "year"),
    "profession": ("general", "person", "profession"),
    "employer": ("general", "person", "org"),
    "relative": ("general", "person", "relative"),
    "city_country": ("general", "city", "country"),
    "org_city": ("general", "org", "city"),
    "org_founded": ("general", "org", "year"),
    "sector": ("finance", "company", "sector"),
    "ceo": ("finance", "company", "executive"),
    "cfo": ("finance", "company", "executive"),
    "product": ("finance", "company", "product"),
    "exchange": ("finance", "company", "exchange"),
    "founded": ("finance", "company", "year"),
    "results": ("finance", "company", "direction"),
}
TEMPLATES: dict[str, list[str]] = {**GENERAL_TEMPLATES, **FINANCE_TEMPLATES}
# Task records (NLI, paraphrase, summaries, ...) are worded with the first TASK_TEMPLATE_COUNT
# templates of each type only, the corpora with all of them. Two plain wordings per kind of fact
# let a ~1M-parameter model learn the task's relation (does the hypothesis restate the premise?)
# from a few thousand examples; with six it needed about twice as many, with 22 it stayed at
# chance. Two is the fewest that keeps "the same fact in other words" (the first template is
# subject-first, the second often value-first). Every label draws from the same templates, so the
# wording says nothing about the label.
TASK_TEMPLATE_COUNT = 2
# Types for which a person or company has exactly one value, so another value contradicts it.
FUNCTIONAL_PERSON_TYPES = ("birthplace", "home_city", "birth_year", "profession", "employer")
FUNCTIONAL_COMPANY_TYPES = ("sector", "ceo", "exchange", "founded", "results")


@dataclass(frozen=True)
class Fact:
    """One fact. `extra` holds further slots: the relation word, or a quarter's figures."""

    type: str
    subject: str
    value: str
    extra: tuple[tuple[str, str], ...] = ()

    def slots(self) -> dict[str, str]:
        _, subject_slot, value_slot = FACT_TYPES[self.type]
        slots = {subject_slot: self.subject, value_slot: self.value, **dict(self.extra)}
        if self.type == "profession":
            slots["a_profession"] = article(self.value)
        if self.type == "sector":
            slots["a_sector"] = article(self.value)
        return slots

    def get(self, key: str) -> str:
        return self.slots()[key]

    def as_type(self, fact_type: str, **extra: str) -> Fact:
        """The fact of another type with the same subject and value (born in C -> lives in C)."""
        merged = {**dict(self.extra), **extra}
        return Fact(fact_type, self.subject, self.value, tuple(sorted(merged.items())))

    def with_value(self, value: str, **extra: str) -> Fact:
        """The same fact about the same subject with another value (a contradicting fact)."""
        merged = {**dict(self.extra), **extra}
        return Fact(self.type, self.subject, value, tuple(sorted(merged.items())))


def render(fact: Fact, template_index: int, rng: random.Random) -> str:
    """The sentence stating `fact` with template `template_index` (rng picks a change phrase)."""
    slots = fact.slots()
    if fact.type == "results":
        phrase = rng.choice(CHANGE_PHRASES[fact.value])
        slots["change"] = phrase.format(pct=f"{slots['pct']}%")
    return TEMPLATES[fact.type][template_index].format(**slots)


def task_template(fact_type: str, rng: random.Random, avoid: int | None = None) -> int:
    """A template index for a task record: one of the first TASK_TEMPLATE_COUNT, never `avoid`."""
    choices = [i for i in range(min(TASK_TEMPLATE_COUNT, len(TEMPLATES[fact_type]))) if i != avoid]
    return rng.choice(choices)


def render_for_task(fact: Fact, rng: random.Random, avoid: int | None = None) -> tuple[str, int]:
    """`fact` worded with a task template (not `avoid`), and the template's index."""
    index = task_template(fact.type, rng, avoid)
    return render(fact, index, rng), index


def render_some(fact: Fact, count: int, rng: random.Random) -> list[str]:
    """`count` sentences stating `fact`, with as many different templates as there are."""
    order: list[int] = []
    templates = len(TEMPLATES[fact.type])
    while len(order) < count:
        order += rng.sample(range(templates), templates)
    return [render(fact, i, rng) for i in order[:count]]


def two_wordings(fact: Fact, rng: random.Random) -> tuple[str, str]:
    """Two sentences stating `fact` with two different templates."""
    first, second = rng.sample(range(len(TEMPLATES[fact.type])), 2)
    return render(fact, first, rng), render(fact, second, rng)


def question(fact: Fact) -> str:
    return QUESTIONS[fact.type].format(**fact.slots())


def person_facts(person: Person) -> list[Fact]:
    facts = [
        Fact("birthplace", person.name, person.birthplace),
        Fact("home_city", person.name, person.home_city),
        Fact("birth_year", person.name, str(person.birth_year)),
        Fact("profession", person.name, person.profession),
        Fact("employer", person.name, person.employer),
    ]
    facts += [Fact("relative", person.name, name, (("relation", word),)) for word, name in person.relatives]
    return facts


def place_facts(places: Places) -> list[Fact]:
    facts = [Fact("city_country", city, country) for city, country in places.city_country.items()]
    for org, city in places.org_city.items():
        facts.append(Fact("org_city", org, city))
        facts.append(Fact("org_founded", org, str(places.org_founded[org])))
    return facts


def results_fact(company: Company, result: dict) -> Fact:
    extra = (("pct", str(result["pct"])), ("quarter", result["quarter"]), ("revenue", result["revenue"]))
    return Fact("results", company.name, result["direction"], extra)


def company_facts(company: Company, with_results: bool = True) -> list[Fact]:
    facts = [
        Fact("sector", company.name, company.sector),
        Fact("ceo", company.name, company.ceo),
        Fact("cfo", company.name, company.cfo),
        *(Fact("product", company.name, product) for product in company.products),
        Fact("exchange", company.name, company.exchange),
        Fact("founded", company.name, str(company.founded)),
    ]
    if with_results:
        facts += [results_fact(company, result) for result in company.results]
    return facts
