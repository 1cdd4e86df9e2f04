"""Seeded entities of the world: people, places and organisations; companies and their executives.

Names are built from syllables, so they are novel tokens that no tokenizer or pre-trained model has
a prior about: a model can only know that a person was born in a city by having read it. Every
name is unique across the whole world (people, executives, cities, countries, organisations,
companies, products, exchanges), so a name found in a text identifies one entity.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from ckptlab.synthetic.templates import CHANGE_PHRASES, FINANCE_TEMPLATES, GENERAL_TEMPLATES

ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "h",
    "k",
    "kr",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "th",
    "sh",
    "j",
    "qu",
]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ia", "ei", "ou", "y"]
CODAS = ["", "", "", "", "", "", "n", "r", "l", "s", "m", "k", "x", "nd", "rn", "st"]

PROFESSIONS = [
    "teacher",
    "engineer",
    "nurse",
    "architect",
    "baker",
    "pilot",
    "farmer",
    "painter",
    "chemist",
    "lawyer",
    "surgeon",
    "carpenter",
    "librarian",
    "journalist",
    "musician",
    "tailor",
    "electrician",
    "gardener",
    "photographer",
    "translator",
    "plumber",
    "dentist",
    "geologist",
    "sculptor",
    "pharmacist",
    "astronomer",
    "mechanic",
    "historian",
    "potter",
    "veterinarian",
]
ORG_KINDS = [
    "University",
    "Hospital",
    "Museum",
    "Press",
    "Laboratory",
    "Studios",
    "Observatory",
    "Theatre",
    "Academy",
    "Library",
    "Orchestra",
    "Railway",
]
COUNTRY_ENDINGS = ["ia", "land", "mark", "ora", "istan", "ovia"]
SECTORS = [
    "shipping",
    "software",
    "insurance",
    "retail",
    "mining",
    "biotechnology",
    "aerospace",
    "telecommunications",
    "agriculture",
    "semiconductors",
    "media",
    "chemicals",
    "energy",
    "construction",
    "pharmaceuticals",
    "textiles",
]
COMPANY_SUFFIXES = ["Holdings", "Group", "Corporation", "Industries", "Enterprises", "Company"]
PRODUCT_MODELS = ["100", "200", "300", "5", "7", "9", "X", "S", "Pro", "Max", "One", "Air", "Mini", "Prime"]
# relation kind -> (word for a female relative, word for a male relative)
RELATION_WORDS = {
    "sibling": ("sister", "brother"),
    "spouse": ("wife", "husband"),
    "parent": ("mother", "father"),
    "child": ("daughter", "son"),
}


def article(word: str) -> str:
    """`word` with the indefinite article it takes ("an engineer", "a nurse")."""
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass
class Person:
    name: str
    gender: str  # "female" | "male": chooses the relation word (sister / brother)
    birth_year: int
    birthplace: str
    home_city: str
    profession: str
    employer: str
    relatives: list[tuple[str, str]] = field(default_factory=list)  # (relation word, name)


@dataclass
class Company:
    name: str
    sector: str
    ceo: str
    cfo: str
    products: list[str]
    exchange: str
    founded: int
    results: list[dict] = field(default_factory=list)  # {quarter, revenue, direction, pct}


@dataclass
class Places:
    """The shared backdrop of the general world: every pool of people lives among these."""

    countries: list[str]
    city_country: dict[str, str]
    org_city: dict[str, str]
    org_founded: dict[str, int]

    @property
    def cities(self) -> list[str]:
        return list(self.city_country)

    @property
    def orgs(self) -> list[str]:
        return list(self.org_city)


class NameBank:
    """Unique, pronounceable, novel words; no word twice, none that is a word of the templates."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        reserved = " ".join(
            t for group in (GENERAL_TEMPLATES, FINANCE_TEMPLATES, CHANGE_PHRASES) for ts in group.values() for t in ts
        )
        self.reserved = {w.lower() for w in re.findall(r"[A-Za-z]+", reserved)}
        self.reserved |= {w.lower() for w in PROFESSIONS + ORG_KINDS + SECTORS + COMPANY_SUFFIXES}

    def word(self, syllables: tuple[int, int] = (2, 2), ending: str = "") -> str:
        while True:
            count = self.rng.randint(*syllables)
            parts = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS) for _ in range(count)]
            word = ("".join(parts) + ending).capitalize()
            if word.lower() not in self.used and word.lower() not in self.reserved and 4 <= len(word) <= 9:
                self.used.add(word.lower())
                return word


def make_first_names(bank: NameBank, count: int) -> list[str]:
    return [bank.word((1, 2)) for _ in range(count)]


def make_person_names(bank: NameBank, first_names: list[str], count: int) -> list[str]:
    """`count` full names: a shared first name and a surname used by no one else."""
    return [f"{bank.rng.choice(first_names)} {bank.word()}" for _ in range(count)]


def make_places(bank: NameBank, countries: int, cities: int, orgs: int) -> Places:
    rng = bank.rng
    country_names = [bank.word((1, 2), ending=rng.choice(COUNTRY_ENDINGS)) for _ in range(countries)]
    city_country = {bank.word(): country_names[i % countries] for i in range(cities)}
    city_names = list(city_country)
    org_city, org_founded = {}, {}
    for i in range(orgs):
        name = f"{bank.word()} {ORG_KINDS[i % len(ORG_KINDS)]}"
        org_city[name] = rng.choice(city_names)
        org_founded[name] = rng.randint(1750, 1995)
    return Places(country_names, city_country, org_city, org_founded)


def make_people(rng: random.Random, names: list[str], places: Places) -> list[Person]:
    """People of one pool; each is paired with one other person of the same pool as a relative.

    Pairs stay within a pool, so a relative never links a held-out person to a corpus person.
    """
    people = []
    for name in names:
        birthplace = rng.choice(places.cities)
        people.append(
            Person(
                name=name,
                gender=rng.choice(["female", "male"]),
                birth_year=rng.randint(1930, 2000),
                birthplace=birthplace,
                home_city=birthplace if rng.random() < 0.3 else rng.choice(places.cities),
                profession=rng.choice(PROFESSIONS),
                employer=rng.choice(places.orgs),
            )
        )
    for a, b in zip(people[0::2], people[1::2], strict=False):  # an odd one out stays single
        kind = rng.choice(["sibling", "spouse", "parent"])
        if kind == "parent":  # b is a's parent: born 20 to 40 years earlier
            b.birth_year = a.birth_year - rng.randint(20, 40)
        back = {"sibling": "sibling", "spouse": "spouse", "parent": "child"}[kind]
        a.relatives.append((relation_word(kind, b.gender), b.name))
        b.relatives.append((relation_word(back, a.gender), a.name))
    return people


def relation_words(gender: str) -> list[str]:
    """Every relation word that can name a relative of `gender`."""
    return [pair[0 if gender == "female" else 1] for pair in RELATION_WORDS.values()]


def relation_word(kind: str, gender: str) -> str:
    female, male = RELATION_WORDS[kind]
    return female if gender == "female" else male


def make_exchanges(bank: NameBank, count: int) -> list[str]:
    return [f"{bank.word()} Stock Exchange" for _ in range(count)]


def make_companies(
    bank: NameBank, executives: list[str], exchanges: list[str], count: int, quarters: int
) -> list[Company]:
    """`count` companies, each with two executives of its own and `quarters` quarterly results.

    Year-on-year changes are consistent with the revenue series: the first four quarters are a base
    and each reported quarter's revenue is the same quarter a year earlier times (1 + change).
    """
    rng = bank.rng
    companies = []
    for i in range(count):
        name = f"{bank.word()} {rng.choice(COMPANY_SUFFIXES)}"
        products = [f"{bank.word()} {rng.choice(PRODUCT_MODELS)}" for _ in range(rng.randint(1, 2))]
        company = Company(
            name=name,
            sector=rng.choice(SECTORS),
            ceo=executives[2 * i],
            cfo=executives[2 * i + 1],
            products=products,
            exchange=rng.choice(exchanges),
            founded=rng.randint(1850, 2012),
        )
        start_year = rng.randint(2012, 2018)
        series = [round(rng.uniform(20, 900), 1) for _ in range(4)]
        for q in range(quarters):
            direction = rng.choice(["up", "down", "flat"])
            pct = 0 if direction == "flat" else rng.randint(2, 40)
            sign = {"up": 1, "down": -1, "flat": 0}[direction]
            revenue = round(series[q] * (1 + sign * pct / 100), 1)
            series.append(revenue)
            year, quarter = start_year + 1 + q // 4, q % 4 + 1
            company.results.append(
                {"quarter": f"Q{quarter} {year}", "revenue": money(revenue), "direction": direction, "pct": pct}
            )
        companies.append(company)
    return companies


def money(millions: float) -> str:
    """ "$45.2 million" or "$1.3 billion"."""
    if millions >= 1000:
        return f"${millions / 1000:.1f} billion"
    return f"${millions:.1f} million"
