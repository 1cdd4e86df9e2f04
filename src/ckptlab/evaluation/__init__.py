"""Evaluation: what to evaluate (`plan`), which models and their fingerprints (`models`), log-likelihood
scoring, generation, metrics, and the results store. Task files and templates are `ckptlab.tasks`.

`ckptlab evaluate` (the verb, `ckptlab/commands/evaluate.py`) ties these together. The modules that
touch the model (`scoring`, `generation`, `runner`) import torch inside their functions, so that task
files can be read and checked before anything heavy loads.
"""
