"""Evaluation: task files, prompt templates, log-likelihood scoring, generation, metrics, results store.

`ckptlab evaluate` (the verb, `ckptlab/evaluate.py`) ties these together. The modules that touch
the model (`scoring`, `generation`, `runner`) import torch inside their functions, so that task
files can be read and checked before anything heavy loads.
"""
