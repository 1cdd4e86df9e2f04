"""Models: build, load and save Hugging Face models, and choose what of them trains.

- `hf`: `ModelConfig` and named sizes, build from scratch, load a directory / hub id@revision / GGUF, save.
- `init_from`: what `--init_from` names (a run, a checkpoint, an HF directory, a hub id, a GGUF file).
- `methods`: the trainable parts of a fine-tune (full, LoRA, last_k, head); `lora` is the peft glue.
- `heads`: models with a task head: masked-LM encoders, sequence classifiers.

Torch and transformers are imported inside the functions that need them.
"""
