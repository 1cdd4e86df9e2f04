"""What an eval set is relative to a fine-tuning task, and where task metadata comes from."""

from __future__ import annotations

import json

import pytest

from ckptlab.errors import UserError
from ckptlab.reporting.taxonomy import Taxonomy, training_name


def test_world_tasks_relate_by_family_and_domain():
    taxonomy = Taxonomy()
    assert taxonomy.relation("world_nli", "world_nli") == "in-task"
    assert taxonomy.relation("finance_nli", "world_nli") == "cross-domain"
    assert taxonomy.relation("rte", "world_nli") == "cross-domain"  # as RTE is to MNLI
    assert taxonomy.relation("world_knowledge", "world_nli") == "cross-task"
    assert taxonomy.relation("world_summarization", "world_paraphrase") == "cross-task"
    assert taxonomy.domain("finance_qa") == "finance" and taxonomy.domain("world_nli") == "general"
    assert taxonomy.domain("sst2") == "general" and taxonomy.family("mr") == "sentiment"
    assert taxonomy.info("finance_qa").probes_knowledge and not taxonomy.info("finance_nli").probes_knowledge


def test_fine_tuning_task_given_as_a_path_or_a_mixture():
    assert training_name("world/tasks/world_nli.yaml") == "world_nli"
    taxonomy = Taxonomy(covers={"world/instruct/mixture.jsonl": ["world_nli", "world_paraphrase"]})
    assert taxonomy.relation("world_paraphrase", "mixture") == "in-task"
    assert taxonomy.relation("finance_nli", "mixture") == "cross-domain"
    assert taxonomy.relation("finance_qa", "mixture") == "cross-task"


def test_overrides_win_over_naming_rules():
    taxonomy = Taxonomy(families={"medqa": "qa", "finance_qa": "qa"}, domains={"medqa": "medicine"}, probes=["medqa"])
    assert taxonomy.relation("medqa", "finance_qa") == "cross-domain"
    assert taxonomy.domain("medqa") == "medicine"
    assert taxonomy.info("medqa").probes_knowledge and not taxonomy.info("world_knowledge").probes_knowledge


def test_task_dirs_read_world_manifest_and_task_files(tmp_path):
    world = tmp_path / "world"
    (world / "tasks").mkdir(parents=True)
    (world / "world.json").write_text(
        json.dumps(
            {
                "tasks": {
                    "law_nli": {"domain": "law", "cross_domain_of": "world_nli"},
                    "world_nli": {"domain": "general", "in_mixture": True},
                    "law_facts": {"domain": "law", "probes_pretraining_knowledge": True},
                }
            }
        )
    )
    (world / "tasks" / "extra.yaml").write_text("task: extra\ndomain: law\nprobes_pretraining_knowledge: true\n")
    taxonomy = Taxonomy(task_dirs=[str(world)])
    assert taxonomy.relation("law_nli", "world_nli") == "cross-domain"
    assert taxonomy.domain("law_facts") == "law" and "law_facts" in taxonomy.probes and "extra" in taxonomy.probes
    assert taxonomy.relation("world_nli", "mixture") == "in-task"
    with pytest.raises(UserError, match="not a directory"):
        Taxonomy(task_dirs=[str(tmp_path / "missing")])
