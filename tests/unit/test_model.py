"""Building, counting, fingerprinting, saving and loading models (tiny models built in code)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ckptlab import config as cfg
from ckptlab.errors import ConfigError, UserError
from ckptlab.models import hf as M
from ckptlab.models.hf import ModelConfig, ModelSource

SENTENCES = [
    "The cat sat on the mat.",
    "A dog ran in the park and barked at the birds.",
    "Checkpoints are saved every hundred steps.",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|padding|>")


def _build(tokenizer, **fields):
    return M.build_model(
        ModelConfig(**fields),
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _logits(model, tokenizer, text="The cat sat on the mat."):
    ids = tokenizer(text, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


# --- sizes and building -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "vocab", "low", "high"),
    [
        ("tiny", 1024, 0.15e6, 0.3e6),
        ("small", 1024, 0.8e6, 1.3e6),
        ("demo", 1024, 2.5e6, 3.5e6),
        ("base", 8192, 20e6, 30e6),
        ("medium", 8192, 85e6, 115e6),
    ],
)
def test_named_sizes_have_stated_parameter_counts(size, vocab, low, high):
    # The meta device makes shapes without memory, so "medium" costs nothing here.
    with torch.device("meta"):
        model = M.build_model(ModelConfig(size=size), vocab, 0, 0, 1)
    assert low <= M.count_parameters(model) <= high
    dims = M.SIZES[size]
    assert model.config.hidden_size == dims["hidden_size"]
    assert model.config.num_hidden_layers == dims["num_layers"]
    assert model.config.intermediate_size == 4 * dims["hidden_size"]


def test_gpt_neox_tiny_maps_config_and_runs(tokenizer):
    model = _build(tokenizer, size="tiny", context_length=64, dropout=0.1)
    c = model.config
    assert c.model_type == "gpt_neox"
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (64, 2, 4, 256)
    assert c.max_position_embeddings == 64
    assert c.attention_dropout == 0.1 and c.hidden_dropout == 0.1
    assert c.vocab_size == len(tokenizer)
    assert c.eos_token_id == tokenizer.eos_token_id and c.pad_token_id == tokenizer.pad_token_id
    # Pythia keeps input and output embeddings separate.
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert next(model.parameters()).dtype == torch.float32
    logits = _logits(model, tokenizer)
    assert logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(logits).all()


def test_llama_tiny_uses_plain_multi_head_attention(tokenizer):
    model = _build(tokenizer, architecture="llama", hidden_size=32, num_layers=2, num_heads=4)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads == 4
    assert model.config.intermediate_size == 256  # from "tiny": explicit fields override only themselves
    assert torch.isfinite(_logits(model, tokenizer)).all()


def test_gpt2_feed_forward_width_goes_to_n_inner(tokenizer):
    model = _build(tokenizer, architecture="gpt2", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=96)
    assert model.config.n_inner == 96
    assert model.transformer.h[0].mlp.c_fc.weight.shape[-1] == 96


def test_build_is_deterministic_under_manual_seed(tokenizer):
    torch.manual_seed(0)
    first = _build(tokenizer).state_dict()
    torch.manual_seed(0)
    second = _build(tokenizer).state_dict()
    torch.manual_seed(1)
    third = _build(tokenizer).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["gpt_neox.embed_in.weight"], third["gpt_neox.embed_in.weight"])


@pytest.mark.parametrize("std", [0.02, 0.05])
def test_weights_are_drawn_with_init_std(tokenizer, std):
    torch.manual_seed(0)
    model = _build(tokenizer, init_std=std)
    matrices = torch.cat([p.detach().flatten() for p in model.parameters() if p.dim() == 2])
    assert abs(matrices.std().item() - std) < 0.1 * std
    assert abs(matrices.mean().item()) < 0.1 * std


def test_hf_overrides_are_applied_last(tokenizer):
    model = _build(tokenizer, hf_overrides={"layer_norm_eps": 1e-6, "tie_word_embeddings": True})
    assert model.config.layer_norm_eps == 1e-6
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="'no_such_arch'"):
        M.build_model(ModelConfig(architecture="no_such_arch"), 100, 0, 0, None)
    with pytest.raises(ConfigError, match="'vit'"):  # a real model type with no causal LM
        M.build_model(ModelConfig(architecture="vit"), 100, 0, 0, None)


# --- config validation --------------------------------------------------------------------------


def test_bad_size_lists_the_sizes():
    with pytest.raises(ConfigError, match="huge.*tiny, small, demo, base, medium"):
        ModelConfig(size="huge")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 66}, "not divisible"),  # tiny has 4 heads
        ({"size": "demo", "num_heads": 5}, "not divisible"),
        ({"num_layers": 0}, "num_layers must be a positive"),
        ({"intermediate_size": -1}, "intermediate_size must be a positive"),
        ({"context_length": 0}, "context_length"),
        ({"dropout": 1.0}, "dropout"),
        ({"init_std": 0.0}, "init_std"),
    ],
)
def test_invalid_fields_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**fields)


def test_model_config_follows_typed_config_conventions():
    docs = cfg.field_docs(ModelConfig)
    assert set(docs) == set(ModelConfig.__dataclass_fields__)
    assert all(docs.values())
    built = cfg.build(ModelConfig, {"size": "small", "hf_overrides": {"rope_theta": 5000}})
    assert built.resolved()["hidden_size"] == 128 and built.hf_overrides == {"rope_theta": 5000}
    with pytest.raises(ConfigError, match="huge"):
        cfg.build(ModelConfig, {"size": "huge"})


def test_importing_the_module_does_not_import_torch():
    code = "import sys, ckptlab.models.hf; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- counting and fingerprints ------------------------------------------------------------------


def test_count_parameters_counts_shared_once_and_trainable(tokenizer):
    model = _build(tokenizer, size="tiny")
    embed = model.get_input_embeddings().weight
    total = M.count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    embed.requires_grad_(False)
    assert M.count_parameters(model, trainable_only=True) == total - embed.numel()
    tied = _build(tokenizer, hf_overrides={"tie_word_embeddings": True})
    assert M.count_parameters(tied) == total - embed.numel()


def test_shape_fingerprint_tracks_shape_only(tokenizer):
    base = M.build_hf_config(ModelConfig(), 300, 0, 0, 1)
    same = M.build_hf_config(ModelConfig(dropout=0.2, init_std=0.01), 300, 0, 0, 1)
    fp = M.shape_fingerprint(base)
    assert len(fp) == 16
    assert fp == M.shape_fingerprint(same)
    assert fp == M.shape_fingerprint(base.to_dict())
    assert fp != M.shape_fingerprint(M.build_hf_config(ModelConfig(), 301, 0, 0, 1))
    assert fp != M.shape_fingerprint(M.build_hf_config(ModelConfig(num_layers=3), 300, 0, 0, 1))
    assert fp != M.shape_fingerprint(M.build_hf_config(ModelConfig(context_length=512), 300, 0, 0, 1))
    assert fp != M.shape_fingerprint(M.build_hf_config(ModelConfig(architecture="llama"), 300, 0, 0, 1))


# --- saving and loading -------------------------------------------------------------------------


@pytest.fixture()
def saved_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = _build(tokenizer, size="tiny")
    directory = M.save_model_dir(model, tokenizer, tmp_path / "out" / "model")
    return directory, model


def test_save_then_from_pretrained_gives_identical_logits(saved_dir, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, model = saved_dir
    assert (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(directory)
    assert torch.equal(_logits(model, tokenizer), _logits(reloaded, tokenizer))
    tok = AutoTokenizer.from_pretrained(directory)
    assert tok(SENTENCES[1]).input_ids == tokenizer(SENTENCES[1]).input_ids
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|padding|>"


def test_save_without_tokenizer(tmp_path, tokenizer):
    M.save_model_dir(_build(tokenizer), None, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not (tmp_path / "tokenizer.json").exists()


def test_load_model_and_tokenizer_from_directory(saved_dir, tokenizer):
    directory, model = saved_dir
    loaded = M.load_model(str(directory))
    assert not loaded.training
    assert torch.equal(_logits(model, tokenizer), _logits(loaded, M.load_tokenizer(str(directory))))
    assert M.load_model(str(directory), dtype="bfloat16").dtype == torch.bfloat16


def test_load_model_rejects_unknown_dtype(saved_dir):
    with pytest.raises(ConfigError, match="float8"):
        M.load_model(str(saved_dir[0]), dtype="float8")


def test_directory_without_config_json_is_a_user_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match="config.json") as info:
        M.load_model(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_directory_without_weights_is_a_user_error(saved_dir):
    directory, _ = saved_dir
    (directory / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model source"):
        M.load_model(str(directory))


def test_hub_source_goes_through_hub_snapshot(saved_dir, tokenizer, monkeypatch):
    directory, model = saved_dir
    calls = []

    def fake_snapshot(repo_id, revision):
        calls.append((repo_id, revision))
        return str(directory)

    monkeypatch.setattr(M, "hub_snapshot", fake_snapshot)
    loaded = M.load_model("EleutherAI/pythia-tiny@step1000")
    tok = M.load_tokenizer("EleutherAI/pythia-tiny")
    assert calls == [("EleutherAI/pythia-tiny", "step1000"), ("EleutherAI/pythia-tiny", None)]
    assert torch.equal(_logits(model, tokenizer), _logits(loaded, tok))


def test_hub_snapshot_without_config_json_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "hub_snapshot", lambda repo_id, revision: str(tmp_path))
    with pytest.raises(UserError, match="org/name@main.*config.json"):
        M.load_model("org/name@main")


# --- parsing sources ----------------------------------------------------------------------------


def test_parse_source_local_kinds(tmp_path, monkeypatch):
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    assert M.parse_source(str(tmp_path)) == ModelSource("directory", path=str(tmp_path))
    assert M.parse_source(str(gguf)) == ModelSource("gguf", path=str(gguf))
    monkeypatch.chdir(tmp_path)
    assert M.parse_source("m.Q4.gguf").kind == "gguf"
    assert M.parse_source(".").kind == "directory"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert M.parse_source("~/m.Q4.gguf") == ModelSource("gguf", path=str(gguf))


@pytest.mark.parametrize(
    ("source", "repo_id", "revision"),
    [
        ("EleutherAI/pythia-160m", "EleutherAI/pythia-160m", None),
        ("EleutherAI/pythia-160m@step1000", "EleutherAI/pythia-160m", "step1000"),
        ("gpt2", "gpt2", None),
        ("org/name.v2@refs/pr/1", "org/name.v2", "refs/pr/1"),
    ],
)
def test_parse_source_hub_ids(source, repo_id, revision, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing here can be mistaken for a local path
    assert M.parse_source(source) == ModelSource("hub", repo_id=repo_id, revision=revision)


@pytest.mark.parametrize(
    "source", ["./missing", "../missing/model", "/no/such/dir", "~/no-such-model", "missing.gguf", "runs/a/step_100"]
)
def test_parse_source_missing_paths(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/...` starts like a real path, so it is one
    with pytest.raises(UserError, match=f"model source '{source}': no such directory or file"):
        M.parse_source(source)


@pytest.mark.parametrize("source", ["", "org/name@", "two words", "a/b/c"])
def test_parse_source_rejects_non_ids(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="model source"):
        M.parse_source(source)


def test_parse_source_rejects_other_files(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="directory or a .gguf file"):
        M.parse_source(str(weights))
