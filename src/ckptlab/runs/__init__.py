"""The on-disk format of a run: checkpoint directories (`checkpoint`: atomic, verified by their
manifest) and the run directory (`run_dir`: config.yaml, metrics.jsonl, run.json). The training loop
writes them; `--init_from`, evaluation and sweeps read them, so the format sits below all of those.
"""
