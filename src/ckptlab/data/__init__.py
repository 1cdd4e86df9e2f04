"""Data: text sources → tokenizer → token shards with a manifest → deterministic training windows.

- `sources`: read documents from text files, JSON Lines, directories and HF datasets.
- `tokenizer`: train a byte-level BPE (Pythia's special tokens) or load an existing tokenizer.
- `shards`: write and read memmap token shards and their `manifest.json`, atomically.
- `windows`: `TokenWindows`, the pre-training sampler, a pure function of the global sample index.

- `sft`, `finetune`, `classification`, `mlm`, `batches`: what fine-tuning and continued pre-training
  train on, and every batch producer (global sample indices → tensors).

This package imports nothing heavy itself; import the module you need.
"""
