"""Task specifications: what each task file (`tasks/<task>.yaml`) says, and the instruction mixture.

A task has three prompt templates, as in Sun & Dredze 2024: `train_format` (the format used for
fine-tuning), `instruction` (a natural-language instruction) and `bare` (the fields concatenated).
The answer follows the rendered prompt after one space. Changing a template or how a task's data is
generated must bump that task's `version`, so cached evaluation results are never reused wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    domain: str  # general | finance
    type: str  # classification | generation
    fields: tuple[str, ...]
    instruction_text: str
    """The instruction: the first line of the `instruction` template and of mixture records."""
    input_block: str
    """The fields as the `instruction` template (and a mixture record's input) lays them out."""
    answer_cue: str
    """The last line of the `instruction` template."""
    train_input: str
    """What goes between `### Input:` and `### Output:` in the `train_format` template."""
    version: int = 1
    """Version 2 of the held-out tasks: worded with the task templates only, shorter premises and documents."""
    label_field: str | None = None
    choices: tuple[str, ...] | None = None
    choices_field: str | None = None
    target_field: str | None = None
    max_new_tokens: int = 32
    probes_pretraining_knowledge: bool = False
    in_mixture: bool = False
    """Its train split goes into the instruction-tuning mixture."""
    cross_domain_of: str | None = None
    """The task it renders on the other domain (as RTE is to MNLI); evaluation only."""

    def templates(self) -> dict[str, str]:
        return {
            "train_format": f"### Input: {self.train_input}\n### Output:",
            "instruction": f"{self.instruction_text}\n{self.input_block}\n{self.answer_cue}",
            "bare": " ".join("{" + f + "}" for f in self.fields),
        }

    def answer(self, record: dict[str, Any]) -> str:
        field = self.label_field if self.type == "classification" else self.target_field
        assert field is not None, f"{self.name}: no answer field"  # every spec below names the field its type reads
        return record[field]

    def yaml_data(self) -> dict[str, Any]:
        """The task file's content, in the order a reader expects."""
        generation = self.type == "generation"
        return {
            "task": self.name,
            "version": self.version,
            "description": self.description,
            "domain": self.domain,
            "type": self.type,
            "data": {"format": "jsonl", **{split: f"{self.name}/{split}.jsonl" for split in SPLITS}},
            "fields": list(self.fields),
            "label_field": self.label_field,
            "choices": list(self.choices) if self.choices else None,
            "choices_field": self.choices_field,
            "target_field": self.target_field,
            "templates": self.templates(),
            "metrics": ["rouge_l", "exact_match"] if generation else ["accuracy", "macro_f1"],
            "generation": {"max_new_tokens": self.max_new_tokens, "stop": ["\n"]} if generation else None,
            "fewshot": {"split": "train", "seed": 1234},
            "probes_pretraining_knowledge": self.probes_pretraining_knowledge,
        }


NLI_CHOICES = ("entailment", "neutral", "contradiction")
PARAPHRASE_CHOICES = ("yes", "no")
SENTIMENT_CHOICES = ("positive", "negative", "neutral")


def _nli(name: str, domain: str, about: str, cross: str | None) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain=domain,
        type="classification",
        fields=("premise", "hypothesis"),
        description=f"Natural-language inference over facts of {about}: does the premise entail the "
        "hypothesis, contradict it, or neither?",
        instruction_text="Does the premise entail the hypothesis? Answer entailment, neutral or contradiction.",
        input_block="Premise: {premise}\nHypothesis: {hypothesis}",
        answer_cue="Answer:",
        train_input="Premise: {premise} Hypothesis: {hypothesis}",
        label_field="label",
        choices=NLI_CHOICES,
        version=2,
        in_mixture=cross is None,
        cross_domain_of=cross,
    )


def _paraphrase(name: str, domain: str, about: str, cross: str | None) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain=domain,
        type="classification",
        fields=("sentence1", "sentence2"),
        description=f"Paraphrase detection on facts of {about}: do the two sentences state the same "
        "fact (reworded), or different facts?",
        instruction_text="Do the two sentences state the same fact? Answer yes or no.",
        input_block="Sentence 1: {sentence1}\nSentence 2: {sentence2}",
        answer_cue="Answer:",
        train_input="Sentence 1: {sentence1} Sentence 2: {sentence2}",
        label_field="label",
        choices=PARAPHRASE_CHOICES,
        version=2,
        in_mixture=cross is None,
        cross_domain_of=cross,
    )


def _summarization(name: str, domain: str, what: str, cross: str | None) -> TaskSpec:
    return TaskSpec(
        name=name,
        domain=domain,
        type="generation",
        fields=("document",),
        description=f"Summarize {what} in one sentence (generation, scored with ROUGE-L).",
        instruction_text="Summarize the text in one sentence.",
        input_block="Text: {document}",
        answer_cue="Summary:",
        train_input="{document}",
        target_field="summary",
        max_new_tokens=48,
        version=2,
        in_mixture=cross is None,
        cross_domain_of=cross,
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            name="world_knowledge",
            domain="general",
            type="classification",
            fields=("question",),
            description="Closed-book knowledge probe: questions about people whose facts only the general "
            "pre-training corpus states; four options each (the yardstick for forgetting).",
            instruction_text="Answer the question about the world with a name, a place, a job or a year.",
            input_block="Question: {question}",
            answer_cue="Answer:",
            train_input="{question}",
            label_field="label",
            choices_field="options",
            probes_pretraining_knowledge=True,
            version=2,
        ),
        _nli("world_nli", "general", "the general world", None),
        _paraphrase("world_paraphrase", "general", "the general world", None),
        _summarization("world_summarization", "general", "a short biography", None),
        TaskSpec(
            name="world_question_generation",
            domain="general",
            type="generation",
            fields=("context", "answer"),
            description="Question generation: write the question that the answer answers, given the context.",
            instruction_text="Write the question about the context whose answer is given.",
            input_block="Context: {context}\nAnswer: {answer}",
            answer_cue="Question:",
            train_input="Context: {context} Answer: {answer}",
            target_field="question",
            version=2,
            in_mixture=True,
        ),
        TaskSpec(
            name="finance_qa",
            domain="finance",
            type="classification",
            fields=("question",),
            description="Closed-book domain QA: questions about companies whose facts only the finance "
            "corpus states; four options each (measures domain knowledge from continued pre-training).",
            instruction_text="Answer the question about companies and markets with a name, a sector or a year.",
            input_block="Question: {question}",
            answer_cue="Answer:",
            train_input="{question}",
            label_field="label",
            choices_field="options",
            probes_pretraining_knowledge=True,
            version=2,
        ),
        TaskSpec(
            name="finance_sentiment",
            domain="finance",
            type="classification",
            fields=("sentence",),
            description="Domain classification: is a quarterly-results sentence positive, negative or "
            "neutral news for the company (as Financial PhraseBank)?",
            instruction_text="Is this financial news positive, negative or neutral for the company?",
            input_block="Text: {sentence}",
            answer_cue="Answer:",
            train_input="{sentence}",
            label_field="label",
            choices=SENTIMENT_CHOICES,
            version=2,
        ),
        _nli("finance_nli", "finance", "the finance domain", "world_nli"),
        _paraphrase("finance_paraphrase", "finance", "the finance domain", "world_paraphrase"),
        _summarization("finance_summarization", "finance", "a company's quarterly report", "world_summarization"),
    ]
}


def mixture_record(spec: TaskSpec, record: dict[str, Any]) -> dict[str, str]:
    """An Alpaca-style instruction-tuning record made from one task record."""
    return {
        "instruction": spec.instruction_text,
        "input": spec.input_block.format(**record),
        "output": spec.answer(record),
        "task": spec.name,
    }
