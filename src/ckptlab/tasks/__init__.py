"""Tasks: task files (`spec`: YAML → `TaskSpec` and its data), prompt templates (`templates`) and
records read from JSONL / TSV / CSV or a hub dataset (`records`); the shipped tasks are the YAML
files beside this module. Evaluation scores tasks and fine-tuning trains on them.
"""
