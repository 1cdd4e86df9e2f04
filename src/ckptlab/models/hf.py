"""Models: build a causal LM from a config, or load one from an HF directory, a hub id@revision or a GGUF file.

Everything returned is a plain Hugging Face `PreTrainedModel`, so checkpoints are ordinary HF
directories that other tools can read. torch and transformers are imported inside the functions
that need them: this module is imported by `ckptlab --help`, which must stay fast.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptlab.errors import ConfigError, UserError
from ckptlab.models.hub import hub_file, hub_snapshot

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

#: Named from-scratch sizes. Parameter counts (untied gpt_neox): tiny ~0.23M and small ~1.05M
#: with a 1024-token vocabulary, demo ~3.05M, base ~20M (27M with 8192 tokens), medium ~98M with
#: an 8192-token vocabulary. The feed-forward width is 4x the hidden size.
SIZES: dict[str, dict[str, int]] = {
    name: {"hidden_size": h, "num_layers": n, "num_heads": a, "intermediate_size": 4 * h}
    for name, (h, n, a) in {
        "tiny": (64, 2, 4),
        "small": (128, 4, 4),
        "demo": (192, 6, 6),
        "base": (512, 6, 8),
        "medium": (768, 12, 12),
    }.items()
}

# Config attribute names that mean the same thing across architectures; the first one the
# architecture's config knows is set (GPT-2 calls the feed-forward width `n_inner`).
_INTERMEDIATE_KEYS = ("intermediate_size", "n_inner", "ffn_dim")
DROPOUT_KEYS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_DTYPES = ("float32", "bfloat16", "float16")
# A hub id: `name` or `org/name`, letters, digits, `-`, `_`, `.` (the hub's own rule).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# One GGUF file of a hub repository: `org/name[@revision]:file.gguf` (git refs cannot hold `:`).
_HUB_GGUF = re.compile(r"^(?P<repo>[^@:]+)(?:@(?P<revision>[^:]+))?:(?P<file>[\w./-]+\.gguf)$", re.IGNORECASE)


@dataclass
class ModelConfig:
    """Architecture and size of a model trained from scratch."""

    architecture: str = "gpt_neox"
    """Hugging Face model type (gpt_neox, llama, qwen2, gpt2, ...): any type with a causal-LM class."""
    size: str = "tiny"
    """Named size: tiny (~0.2M parameters), small (~1M), demo (~3M), base (~25M), medium (~100M)."""
    hidden_size: int | None = None
    """Width of the residual stream; null takes it from `size`."""
    num_layers: int | None = None
    """Number of transformer blocks; null takes it from `size`."""
    num_heads: int | None = None
    """Attention heads per block (must divide hidden_size); null takes it from `size`."""
    intermediate_size: int | None = None
    """Width of the feed-forward layer; null takes it from `size` (4x hidden_size)."""
    context_length: int = 256
    """Longest sequence the model is built for (max_position_embeddings)."""
    dropout: float = 0.0
    """Attention and hidden dropout probability during training."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; small values avoid denormal gradients on CPU."""
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra Hugging Face config keys, set last (e.g. {rope_theta: 10000, tie_word_embeddings: true})."""

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"model.size '{self.size}' is unknown (sizes: {', '.join(SIZES)})")
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {value}")
        if self.context_length < 1:
            raise ConfigError(f"model.context_length must be a positive integer, got {self.context_length}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.init_std <= 0:
            raise ConfigError(f"model.init_std must be positive, got {self.init_std}")
        dims = self.resolved()
        if dims["hidden_size"] % dims["num_heads"]:
            raise ConfigError(
                f"model.hidden_size {dims['hidden_size']} is not divisible by model.num_heads {dims['num_heads']}"
            )

    def resolved(self) -> dict[str, int]:
        """The four size numbers, explicit fields winning over the named size."""
        dims = dict(SIZES[self.size])
        for name in dims:
            if getattr(self, name) is not None:
                dims[name] = getattr(self, name)
        return dims


def build_hf_config(
    config: ModelConfig,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None,
) -> PretrainedConfig:
    """The Hugging Face config for `config` (no weights are made)."""
    from transformers import AutoConfig

    try:
        default = AutoConfig.for_model(config.architecture)
    except ValueError:
        raise ConfigError(
            f"model.architecture '{config.architecture}' is not a Hugging Face model type "
            "(e.g. gpt_neox, llama, qwen2, gpt2)"
        ) from None
    dims = config.resolved()
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": dims["hidden_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_heads"],
        "max_position_embeddings": config.context_length,
        "initializer_range": config.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    # Pass only the names this architecture knows: unknown kwargs would be stored and ignored.
    for key in _INTERMEDIATE_KEYS:
        if hasattr(default, key):
            kwargs[key] = dims["intermediate_size"]
            break
    kwargs.update({key: config.dropout for key in DROPOUT_KEYS if hasattr(default, key)})
    if hasattr(default, "num_key_value_heads"):
        kwargs["num_key_value_heads"] = dims["num_heads"]  # plain multi-head attention
    if config.architecture == "gpt_neox":
        kwargs["tie_word_embeddings"] = False  # as in Pythia
    kwargs.update(config.hf_overrides)
    try:
        return AutoConfig.for_model(config.architecture, **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model config for '{config.architecture}': {error}") from None


def build_model(
    config: ModelConfig,
    vocab_size: int,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None,
) -> PreTrainedModel:
    """A freshly initialised fp32 causal LM.

    Weights are drawn from N(0, config.init_std) by the architecture's own init, so the result
    is the same for the same `torch.manual_seed`.

    Raises:
        ConfigError: the architecture is unknown or has no causal-LM class.
    """
    import torch
    from transformers import AutoModelForCausalLM

    hf_config = build_hf_config(config, vocab_size, bos_token_id, eos_token_id, pad_token_id)
    try:
        return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    except ValueError as error:
        raise ConfigError(f"model.architecture '{config.architecture}': {error}") from None


def count_parameters(model: Any, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once), optionally only trainable ones."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) in seen or (trainable_only and not param.requires_grad):
            continue
        seen.add(id(param))
        total += param.numel()
    return total


# Keys that fix parameter shapes (n_inner is GPT-2's intermediate_size).
_SHAPE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "n_inner",
    "max_position_embeddings",
    "tie_word_embeddings",
)


def shape_fingerprint(hf_config: Any) -> str:
    """A short hash of the config keys that fix the parameter shapes.

    Two models with the same fingerprint can load each other's weights; resuming a run into a
    model with a different fingerprint is refused. Accepts an HF config or a plain mapping.
    """
    get = hf_config.get if isinstance(hf_config, dict) else lambda k: getattr(hf_config, k, None)
    shape = {key: get(key) for key in _SHAPE_KEYS if get(key) is not None}
    text = json.dumps(shape, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ModelSource:
    """Where an existing model comes from: a local directory, a GGUF file or a hub id."""

    kind: str
    """One of 'directory', 'gguf', 'hub'."""
    path: str | None = None
    """The local directory or .gguf file (kind 'directory' or 'gguf')."""
    repo_id: str | None = None
    """The hub repository, `org/name` (kind 'hub')."""
    revision: str | None = None
    """Branch, tag or commit after `@` (kind 'hub'); null is the default branch."""
    file: str | None = None
    """The one file to load from the hub repository, a .gguf after `:` (kind 'hub'); null loads the model files."""

    @property
    def is_gguf(self) -> bool:
        """A GGUF file: a local one, or one file of a hub repository (`org/name[@revision]:file.gguf`)."""
        return self.kind == "gguf" or self.file is not None


def _looks_like_path(source: str) -> bool:
    if source.startswith(("./", "../", "/", "~", ".\\")) or source in (".", ".."):
        return True
    # `runs/a/step_100` where `runs` exists is a mistyped path, not a hub id.
    first = Path(source).parts[0] if Path(source).parts else source
    return "/" in source and Path(first).exists()


def parse_source(source: str) -> ModelSource:
    """Classify a model source: an HF directory, a `.gguf` file, `org/name[@revision]`, or one GGUF
    file of a hub repository, `org/name[@revision]:file.gguf`.

    Raises:
        UserError: a path that does not exist, or text that is neither a path nor a hub id.
    """
    if not source.strip():
        raise UserError("model source is empty: give a directory, a .gguf file or a hub id")
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelSource("directory", path=str(path))
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", path=str(path))
        raise UserError(f"model source '{source}': expected a model directory or a .gguf file")
    hub_gguf = _HUB_GGUF.match(source)
    if hub_gguf and _REPO_ID.match(hub_gguf["repo"]) and not _looks_like_path(hub_gguf["repo"]):
        return ModelSource("hub", repo_id=hub_gguf["repo"], revision=hub_gguf["revision"], file=hub_gguf["file"])
    if source.lower().endswith(".gguf") or _looks_like_path(source):
        raise UserError(f"model source '{source}': no such directory or file")
    repo_id, at, revision = source.partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision):
        raise UserError(f"model source '{source}': not a directory, a .gguf file, or a hub id org/name[@revision]")
    return ModelSource("hub", repo_id=repo_id, revision=revision or None)


def _resolve(source: str) -> tuple[str, str | None]:
    """(directory, gguf file name or None) to hand to `from_pretrained`."""
    parsed = parse_source(source)
    if parsed.kind == "gguf":
        assert parsed.path is not None
        return str(Path(parsed.path).parent), Path(parsed.path).name
    if parsed.kind == "hub" and parsed.file:
        assert parsed.repo_id is not None
        path = Path(hub_file(parsed.repo_id, parsed.revision, parsed.file))
        return str(path.parent), path.name
    if parsed.kind == "hub":
        assert parsed.repo_id is not None
        directory = hub_snapshot(parsed.repo_id, parsed.revision)
    else:
        assert parsed.path is not None
        directory = parsed.path
    if not (Path(directory) / "config.json").is_file():
        raise UserError(f"model source '{source}': {directory} has no config.json (not an HF model directory)")
    return directory, None


def _drop_gguf_quantizer(model: Any) -> None:
    # GGUF weights are dequantised to plain tensors on load, but the model keeps a record of the
    # quantizer and `save_pretrained` refuses to write it; the weights need neither.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")


def load_error(source: str, error: BaseException, what: str = "") -> UserError:
    """One line for a failed `from_pretrained`; a model that ships its own code names the key to allow it."""
    text = str(error).strip()
    if "trust_remote_code" in text:
        return UserError(
            f"model source '{source}': it runs its own code from the repository; set trust_remote_code: true "
            "(--trust_remote_code true) if you trust it"
        )
    return UserError(f"model source '{source}': {what}{text.splitlines()[0] if text else type(error).__name__}")


def remote_code_kwargs(trust_remote_code: bool) -> dict[str, Any]:
    """`from_pretrained` keyword for the opt-in, always explicit: left unset, transformers asks on the terminal
    (and a job waits forever)."""
    return {"trust_remote_code": bool(trust_remote_code)}


def load_model(source: str, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a causal LM from a model source (see `parse_source`), in eval mode.

    `trust_remote_code` lets a repository's own model code run (off: such a model is a one-line error).

    Raises:
        UserError: the source does not exist, is not a model, or needs a missing package.
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of {', '.join(_DTYPES)}")
    import torch
    from transformers import AutoModelForCausalLM

    directory, gguf_file = _resolve(source)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), **remote_code_kwargs(trust_remote_code)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    except ImportError as error:
        raise UserError(f"model source '{source}': {error} (GGUF needs: pip install gguf)") from None
    except (OSError, ValueError) as error:
        raise load_error(source, error) from None
    if gguf_file:
        _drop_gguf_quantizer(model)
        model.to(getattr(torch, dtype))  # GGUF dequantises to fp32 whatever dtype was asked for
    return model


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer that comes with a model source (see `parse_source`); `trust_remote_code` as in `load_model`.

    Raises:
        UserError: the source has no usable tokenizer.
    """
    from transformers import AutoTokenizer

    directory, gguf_file = _resolve(source)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(directory, **kwargs, **remote_code_kwargs(trust_remote_code))
    except (OSError, ValueError, TypeError) as error:
        raise load_error(source, error, "no usable tokenizer: ") from None


def save_model_dir(model: Any, tokenizer: Any, directory: str | Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Write `model` (safetensors) and `tokenizer` (if not None) as one HF directory.

    `state_dict`: the weights to write instead of the model's own (the whole state gathered from FSDP shards).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _drop_gguf_quantizer(model)
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
