"""Models: build a causal LM from a config, or load one from an HF directory, a hub id@revision or a GGUF file.

(Being written: see the brief in docs/design.md.)
"""
