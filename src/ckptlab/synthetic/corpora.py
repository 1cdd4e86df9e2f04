"""Pre-training corpora: facts stated several times, in several wordings, in shuffled documents.

Each subject (a person, an organisation, a city, a company) gets as many documents as its most
repeated fact; a fact stated k times appears in k of them, each time with a different template.
The sentences of a document are shuffled. Documents about places and organisations are merged into
documents about people, so most documents mix several subjects; the documents are then shuffled.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ckptlab.synthetic.facts import TEMPLATES, Fact, render, render_some

RESTATED_SHARE = 0.5
"""Share of a subject's documents that state one of their facts twice, in two wordings.

Real text restates: a biography names the birthplace in its first line and again further down.
Without it no fact ever recurs inside one document, so predicting a value from earlier in the
context is never rewarded in pre-training, and a model had to learn to compare two statements
(NLI, paraphrase) from the fine-tuning examples alone."""


def subject_documents(
    facts: Sequence[Fact],
    repeats: tuple[int, int],
    rng: random.Random,
    mentions: dict[Fact, int],
    restated_share: float = RESTATED_SHARE,
    draw: bool | None = None,
) -> list[list[str]]:
    """The documents (lists of sentences) of one subject; records how often each fact is stated.

    A share `restated_share` of them states one of its facts a second time in another wording.
    `draw` (default: restated_share > 0) says whether each document draws its chance of doing so."""
    draw = restated_share > 0 if draw is None else draw
    counts = [rng.randint(*repeats) for _ in facts]
    documents: list[list[str]] = [[] for _ in range(max(counts))]
    stated: list[list[Fact]] = [[] for _ in documents]
    for fact, count in zip(facts, counts, strict=True):
        mentions[fact] = mentions.get(fact, 0) + count
        chosen = rng.sample(range(len(documents)), count)
        for document, sentence in zip(chosen, render_some(fact, count, rng), strict=True):
            documents[document].append(sentence)
            stated[document].append(fact)
    for sentences, in_document in zip(documents, stated, strict=True):
        if draw and in_document and rng.random() < restated_share:
            fact = rng.choice(in_document)
            again = render(fact, rng.randrange(len(TEMPLATES[fact.type])), rng)
            if again not in sentences:  # the same template twice would be a copy, not a restatement
                sentences.append(again)
                mentions[fact] += 1
    return documents


def build_corpus(
    main_subjects: Sequence[Sequence[Fact]],
    minor_subjects: Sequence[Sequence[Fact]],
    repeats: tuple[int, int],
    rng: random.Random,
    minor_repeats: tuple[int, int] | None = None,
    restated_share: float = RESTATED_SHARE,
) -> tuple[list[str], dict[Fact, int]]:
    """Documents (one paragraph each) and the number of times each fact is stated.

    Args:
        main_subjects: the facts of each subject that gets documents of its own.
        minor_subjects: the facts of subjects whose documents are merged into main ones.
        repeats: (min, max) times a fact is stated, drawn uniformly per fact.
        rng: the only source of randomness.
        minor_repeats: repeats for the minor subjects (default: `repeats`).
        restated_share: share of the main subjects' documents that restate one of their facts.
    """
    mentions: dict[Fact, int] = {}
    documents: list[list[str]] = []
    for facts in main_subjects:
        documents += subject_documents(facts, repeats, rng, mentions, restated_share)
    for facts in minor_subjects:
        # Minor subjects never restate; they draw whenever the world restates at all, which keeps
        # the random stream that generator version 3's corpora (measured in docs/world.md) came
        # from, and a world without restatement draws nothing: generator version 2's corpora exactly.
        for extra in subject_documents(
            facts, minor_repeats or repeats, rng, mentions, restated_share=0.0, draw=restated_share > 0
        ):
            documents[rng.randrange(len(documents))].extend(extra)
    for document in documents:
        rng.shuffle(document)
    rng.shuffle(documents)
    return [" ".join(document) for document in documents], mentions


def corpus_text(documents: Sequence[str]) -> str:
    """Documents separated by a blank line, one paragraph each, ending with a newline."""
    return "\n\n".join(documents) + "\n"
