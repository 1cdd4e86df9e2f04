"""World sizes: how many entities, how often a fact is stated, how many task examples.

`tiny` is for tests (well under a second), `demo` for `ckptlab demo` on a laptop CPU (about 2.5 MB of
general pre-training text, enough for a 1-3M-parameter model to pick up some facts in minutes),
`large` for longer studies (about 40 MB). The split sizes of the fine-tuning tasks in `large`
follow Sun & Dredze 2024 (6,000 training examples per task).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorldSize:
    corpus_people: int
    """People whose facts the general corpus states (the knowledge probe asks about them)."""
    countries: int
    cities: int
    orgs: int
    """Organisations: the employers of the general world."""
    corpus_companies: int
    """Companies whose facts the domain corpus states (domain QA asks about them)."""
    exchanges: int
    quarters: int
    """Quarterly results reported per company."""
    repeats: tuple[int, int]
    """(min, max) times the corpus states a fact, drawn uniformly per fact."""
    results_repeats: tuple[int, int]
    """(min, max) times the domain corpus states a quarter's results (not probed)."""
    train: int
    validation: int
    test: int
    """Split sizes of the tasks meant for fine-tuning."""
    few_shot_train: int
    """Train split of evaluation-only tasks (knowledge probes, cross-domain sets): few-shot examples."""


SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize(
        corpus_people=60,
        countries=4,
        cities=12,
        orgs=12,
        corpus_companies=36,
        exchanges=6,
        quarters=4,
        repeats=(5, 8),
        results_repeats=(1, 2),
        train=48,
        validation=24,
        test=48,
        few_shot_train=12,
    ),
    "demo": WorldSize(
        corpus_people=700,
        countries=10,
        cities=60,
        orgs=80,
        corpus_companies=240,
        exchanges=8,
        quarters=6,
        repeats=(5, 15),
        results_repeats=(1, 3),
        train=1800,
        validation=180,
        test=360,
        few_shot_train=60,
    ),
    "large": WorldSize(
        corpus_people=9000,
        countries=24,
        cities=400,
        orgs=900,
        corpus_companies=3000,
        exchanges=12,
        quarters=8,
        repeats=(5, 20),
        results_repeats=(1, 3),
        train=6000,
        validation=600,
        test=1200,
        few_shot_train=120,
    ),
}
