"""Data preparation: sources and their errors, tokenizer, shards and manifest, split, windows."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ckptlab.commands.prepare import PrepareConfig, prepare
from ckptlab.data import shards, sources
from ckptlab.data.tokenizer import load_tokenizer, tokenizer_fingerprint, train_tokenizer
from ckptlab.data.windows import TokenWindows
from ckptlab.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
TINY_TXT = FIXTURES / "tiny.txt"
TINY_JSONL = FIXTURES / "tiny.jsonl"


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def run_prepare(out: Path, **overrides) -> dict:
    values = dict(sources=[str(TINY_TXT), str(TINY_JSONL)], out=str(out), vocab_size=300, val_fraction=0.2)
    values.update(overrides)
    assert prepare(PrepareConfig(**values)) == 0
    return shards.read_manifest(out)


def split_documents(data_dir: Path, split: str) -> list[str]:
    """Decode a split back into its documents (each ends with the end-of-text id)."""
    manifest = shards.read_manifest(data_dir)
    tokenizer = load_tokenizer(data_dir / "tokenizer")
    tokens = np.concatenate([np.asarray(m) for m in shards.open_split(data_dir, split)] or [np.array([], int)])
    eos = manifest["eos_id"]
    ends = np.flatnonzero(tokens == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    run_prepare(out)
    return out


# --- sources ---------------------------------------------------------------------------------


def test_text_units(tmp_path):
    path = write(tmp_path / "a.txt", "one\ntwo\n\n\n  \nthree\r\nfour\n")
    assert list(sources.iter_documents(str(path))) == ["one\ntwo", "three\nfour"]
    assert list(sources.iter_documents(str(path), text_unit="line")) == [
        "one",
        "two",
        "three",
        "four",
    ]
    assert list(sources.iter_documents(str(path), text_unit="file")) == ["one\ntwo\n\n\n  \nthree\nfour"]


def test_fixture_paragraphs_and_jsonl():
    paragraphs = list(sources.iter_documents(str(TINY_TXT)))
    assert len(paragraphs) == 24 and all(p.count("\n") == 1 for p in paragraphs)
    records = list(sources.iter_documents(str(TINY_JSONL)))
    assert len(records) == 24 and records[0].startswith("Question: How many rivers")


def test_jsonl_skips_blank_lines_and_reads_other_field(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"body": "x"}\n\n   \n{"body": "y"}\n')
    assert list(sources.iter_documents(str(path), text_field="body")) == ["x", "y"]


def test_json_array_and_utf8_bom(tmp_path):
    array = write(tmp_path / "a.json", '[{"text": "first"},\n {"text": "second"}]\n')
    assert list(sources.iter_documents(str(array))) == ["first", "second"]
    bom = write(tmp_path / "b.txt", "\ufeffhello")
    assert list(sources.iter_documents(str(bom))) == ["hello"]


def test_directory_reads_text_and_jsonl_files_in_sorted_order(tmp_path):
    write(tmp_path / "b.txt", "bee")
    write(tmp_path / "a.jsonl", '{"text": "ay"}\n')
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.txt", "sea")
    write(tmp_path / "notes.md", "ignored")
    write(tmp_path / ".hidden.txt", "ignored")
    assert list(sources.iter_documents(str(tmp_path))) == ["ay", "bee", "sea"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .txt, .jsonl or .json files"):
        list(sources.iter_documents(str(empty)))


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", "", r"empty.txt: no text found$"),
        ("blank.txt", "\n  \n\n", r"blank.txt: no text found$"),
        ("empty.jsonl", "\n\n", r"empty.jsonl: no text found$"),
        (
            "bad.txt",
            b"fine\nalso fine\nbad \xff here\n",
            r"bad.txt:3: not UTF-8 text \(byte 0xff at byte offset 19\)",
        ),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "\xc3("}\n', r"bad.jsonl:2: not UTF-8 text"),
        ("bad.jsonl", '{"text": "a"}\n\n{"text": "b"\n', r"bad.jsonl:3: not valid JSON: Expecting"),
        (
            "bad.jsonl",
            '{"text": "a"}\n["a list"]\n',
            r"bad.jsonl:2: missing text field 'text' \(expected a JSON object",
        ),
        (
            "bad.jsonl",
            '{"text": "a"}\n{"body": "b"}\n',
            r"bad.jsonl:2: missing text field 'text' \(fields here: body",
        ),
        ("bad.jsonl", '{"text": 7}\n', r"bad.jsonl:1: text field 'text' is a number, not a string"),
        ("bad.json", '[{"text": "a"}, {"x": 1}]', r"bad.json: item 1: missing text field 'text'"),
    ],
)
def test_bad_input_is_one_line_data_error_naming_file_and_line(tmp_path, name, data, message):
    path = write(tmp_path / name, data)
    with pytest.raises(DataError, match=message) as raised:
        list(sources.iter_documents(str(path)))
    assert "\n" not in str(raised.value)
    assert str(path) in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.txt: file not found$"):
        list(sources.iter_documents(str(tmp_path / "nope.txt")))


def test_bad_text_unit():
    with pytest.raises(ConfigError, match="text_unit"):
        list(sources.iter_documents(str(TINY_TXT), text_unit="sentence"))


def test_hf_source_uses_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"text": "alpha"}, {"text": ""}, {"text": "beta"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(sources.iter_documents("hf:org/name:cfg:train")) == ["alpha", "beta"]
    assert list(sources.iter_documents("hf:org/name:validation")) == ["alpha", "beta"]
    assert calls == [("org/name", "cfg", "train"), ("org/name", None, "validation")]
    assert sources.source_sha256("hf:org/name:train") is None


def test_hf_source_errors(monkeypatch):
    def load_dataset(name, config, split):
        if name == "offline":
            raise ConnectionError("no network\nmore detail")
        return [{"text": "ok"}, {"body": "no text"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"hf:x:train: row 1: missing text field 'text'"):
        list(sources.iter_documents("hf:x:train"))
    with pytest.raises(DataError, match=r"^hf:offline:train: could not load the dataset \(no network\)$"):
        list(sources.iter_documents("hf:offline:train"))
    with pytest.raises(DataError, match=r"expected hf:NAME\[:CONFIG\]:SPLIT"):
        list(sources.iter_documents("hf:only-a-name"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(DataError, match="needs the 'datasets' package"):
        list(sources.iter_documents("hf:x:train"))


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_training_is_deterministic_with_pythia_special_tokens(tmp_path):
    documents = list(sources.iter_documents(str(TINY_TXT)))
    first = train_tokenizer(iter(documents), 320, tmp_path / "a")
    train_tokenizer(iter(documents), 320, tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert tokenizer_fingerprint(tmp_path / "a") == tokenizer_fingerprint(tmp_path / "b")
    assert len(tokenizer_fingerprint(tmp_path / "a")) == 16
    assert (first.eos_token_id, first.bos_token_id, first.pad_token_id) == (0, 0, 1)
    loaded = load_tokenizer(tmp_path / "a")
    assert loaded.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|padding|>"]
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token == "<|padding|>"
    assert len(loaded) == 320
    text = "Pellmoor's bridges, ünïcode and emoji 🙂 round-trip."
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_tokenizer(["a"], 100, tmp_path / "t")
    with pytest.raises(DataError, match="tokenizer directory not found"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no tokenizer.json"):
        tokenizer_fingerprint(tmp_path)


# --- shards, manifest, split -----------------------------------------------------------------


def test_token_dtype():
    assert shards.token_dtype(50304) == np.uint16
    assert shards.token_dtype(65535) == np.uint16
    assert shards.token_dtype(65536) == np.uint32


def test_manifest_layout(prepared):
    manifest = shards.read_manifest(prepared)
    assert manifest["format_version"] == shards.FORMAT_VERSION
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 300 and manifest["eos_id"] == 0
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(prepared / "tokenizer")
    assert "out" not in manifest["config"] and manifest["config"]["val_fraction"] == 0.2
    assert [s["source"] for s in manifest["sources"]] == [str(TINY_TXT), str(TINY_JSONL)]
    assert [s["documents"] for s in manifest["sources"]] == [24, 24]
    assert manifest["sources"][0]["sha256"] == sources.source_sha256(str(TINY_TXT))
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 48
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == sum(s["tokens"] for s in manifest["sources"])
    for split in ("train", "val"):
        memmaps = shards.open_split(prepared, split)
        assert [m.dtype for m in memmaps] == [np.uint16] * len(memmaps)
        assert sum(len(m) for m in memmaps) == splits[split]["tokens"]
        assert int(np.concatenate(memmaps)[-1]) == 0  # every document ends with end-of-text
    assert manifest["data_fingerprint"] == shards.data_fingerprint(splits)
    assert sorted(p.name for p in prepared.iterdir()) == [
        "manifest.json",
        "tokenizer",
        "train-00000.bin",
        "val-00000.bin",
    ]


def test_val_split_is_nonempty_disjoint_and_covers_every_document(prepared):
    train, val = split_documents(prepared, "train"), split_documents(prepared, "val")
    everything = list(sources.iter_documents(str(TINY_TXT))) + list(sources.iter_documents(str(TINY_JSONL)))
    assert val and train
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(everything)
    # order within a split is reading order
    assert train == [d for d in everything if d in set(train)]


def test_held_out_is_decided_by_document_not_position():
    documents = [f"document {i}".encode() for i in range(2000)]
    import hashlib

    shas = [hashlib.sha256(d).digest() for d in documents]
    held = [shards.is_held_out(s, 3, 0.1) for s in shas]
    assert 120 < sum(held) < 280
    assert [shards.is_held_out(s, 3, 0.1) for s in reversed(shas)] == held[::-1]
    assert held != [shards.is_held_out(s, 4, 0.1) for s in shas]
    assert not any(shards.is_held_out(s, 3, 0.0) for s in shas)


def test_val_gets_a_document_even_when_the_hash_gives_none(tmp_path):
    path = write(tmp_path / "two.txt", "first document\n\nsecond document\n")
    manifest = run_prepare(tmp_path / "out", sources=[str(path)], val_fraction=1e-9)
    assert manifest["splits"]["val"]["documents"] == 1
    assert split_documents(tmp_path / "out", "val") == ["second document"]
    assert split_documents(tmp_path / "out", "train") == ["first document"]


def test_train_is_never_empty_and_val_fraction_zero_means_no_val(tmp_path):
    path = write(tmp_path / "three.txt", "a b c\n\nd e f\n\ng h i\n")
    manifest = run_prepare(tmp_path / "nearly-all", sources=[str(path)], val_fraction=0.999999)
    assert manifest["splits"]["train"]["documents"] >= 1 and manifest["splits"]["val"]["documents"] >= 1
    manifest = run_prepare(tmp_path / "none", sources=[str(path)], val_fraction=0.0)
    assert manifest["splits"]["val"] == {"documents": 0, "tokens": 0, "shards": []}


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_val_fraction_is_validated(tmp_path, fraction):
    with pytest.raises(ConfigError, match=r"val_fraction.*\[0, 1\)"):
        run_prepare(tmp_path / "out", val_fraction=fraction)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="give at least one source with --sources"):
        prepare(PrepareConfig(out=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match="vocab_size"):
        run_prepare(tmp_path / "out", vocab_size=10)
    with pytest.raises(ConfigError, match="shard_tokens"):
        run_prepare(tmp_path / "out", shard_tokens=0)


def test_prepare_twice_gives_identical_bytes(tmp_path, prepared):
    run_prepare(tmp_path / "again")
    names = sorted(p.relative_to(prepared).as_posix() for p in prepared.rglob("*") if p.is_file())
    assert names == sorted(
        p.relative_to(tmp_path / "again").as_posix() for p in (tmp_path / "again").rglob("*") if p.is_file()
    )
    for name in names:
        assert (prepared / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_small_shards_split_the_same_token_stream(tmp_path, prepared):
    manifest = run_prepare(tmp_path / "small", shard_tokens=100)
    shard_list = manifest["splits"]["train"]["shards"]
    assert len(shard_list) > 3
    assert [s["file"] for s in shard_list[:2]] == ["train-00000.bin", "train-00001.bin"]
    assert all(s["tokens"] == 100 for s in shard_list[:-1]) and 0 < shard_list[-1]["tokens"] <= 100
    for split in ("train", "val"):
        small = np.concatenate(shards.open_split(tmp_path / "small", split))
        whole = np.concatenate(shards.open_split(prepared, split))
        assert np.array_equal(small, whole)
    assert manifest["data_fingerprint"] != shards.read_manifest(prepared)["data_fingerprint"]


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for d in sources.iter_documents(str(TINY_TXT)) for w in d.split()})
    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    vocab.update({f"filler{i}": i for i in range(2, 70000 - len(words))})
    vocab.update({w: 70000 - len(words) + i for i, w in enumerate(words)})  # real words above 65535
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(
        tmp_path / "big-tokenizer"
    )
    manifest = run_prepare(tmp_path / "out", sources=[str(TINY_TXT)], tokenizer=str(tmp_path / "big-tokenizer"))
    assert manifest["dtype"] == "uint32" and manifest["vocab_size"] == 70000
    tokens = np.concatenate(shards.open_split(tmp_path / "out", "train"))
    assert tokens.dtype == np.uint32 and tokens.max() > 65535


def test_existing_output_is_refused_unless_overwrite(tmp_path, prepared):
    out = tmp_path / "out"
    run_prepare(out, sources=[str(TINY_JSONL)])
    with pytest.raises(DataError, match=r"out: already holds prepared data; pass --overwrite true"):
        run_prepare(out)
    run_prepare(out, overwrite=True)
    assert shards.read_manifest(out)["data_fingerprint"] == shards.read_manifest(prepared)["data_fingerprint"]
    other = tmp_path / "other"
    other.mkdir()
    write(other / "precious.txt", "do not delete")
    with pytest.raises(DataError, match="is not a prepared data directory; refusing to replace it"):
        run_prepare(other, overwrite=True)
    assert (other / "precious.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]  # no temporary leftovers


def test_failure_leaves_no_output(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\nnot json\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        run_prepare(out, sources=[str(TINY_TXT), str(bad)])
    # a failure inside the write (here: the tokenizer) removes the half-written directory
    with pytest.raises(DataError, match="tokenizer directory not found"):
        run_prepare(out, tokenizer=str(tmp_path / "no-tokenizer"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_read_manifest_checks_completeness(tmp_path, prepared):
    with pytest.raises(DataError, match=r"not a prepared data directory \(no manifest.json\)"):
        shards.read_manifest(tmp_path)
    with pytest.raises(DataError, match="prepared data directory not found"):
        shards.read_manifest(tmp_path / "missing")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shards.read_manifest(copy, verify_hashes=True)
    train = copy / "train-00000.bin"
    data = train.read_bytes()
    train.write_bytes(data[::-1])
    with pytest.raises(DataError, match=r"train-00000.bin: sha256 does not match"):
        shards.read_manifest(copy, verify_hashes=True)
    train.write_bytes(data[:-2])
    with pytest.raises(DataError, match=r"train-00000.bin: expected \d+ tokens \(\d+ bytes\), found \d+ bytes"):
        shards.read_manifest(copy)
    train.unlink()
    with pytest.raises(DataError, match=r"train-00000.bin: shard listed in manifest.json is missing"):
        shards.read_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid manifest"):
        shards.read_manifest(copy)
    with pytest.raises(DataError, match="no split 'test'"):
        shards.open_split(prepared, "test")


# --- windows ---------------------------------------------------------------------------------


def test_windows_are_a_pure_function_of_the_global_index(prepared):
    first = TokenWindows(prepared, "train", context_length=16, seed=7)
    indices = [
        0,
        5,
        len(first) - 1,
        len(first),
        3 * len(first) + 11,
        2,
    ]  # jumps across epochs and back
    reads = [first.window(i) for i in indices]
    for i, expected in zip(reversed(indices), reversed(reads)):
        fresh = TokenWindows(prepared, "train", context_length=16, seed=7)
        got = fresh.window(i)
        assert got.dtype == np.int64 and got.shape == (17,)
        assert np.array_equal(got, expected)
    restored = pickle.loads(pickle.dumps(first))
    assert np.array_equal(restored.window(indices[4]), reads[4])
    assert np.array_equal(first.batch(4, 3), np.stack([first.window(i) for i in (4, 5, 6)]))
    assert first.fingerprint == TokenWindows(prepared, "train", 16, 7).fingerprint
    assert first.fingerprint != TokenWindows(prepared, "train", 32, 7).fingerprint
    assert first.fingerprint != TokenWindows(prepared, "val", 16, 7).fingerprint
    with pytest.raises(IndexError):
        first.window(-1)


def test_each_epoch_visits_every_window_once_in_a_new_order(prepared):
    windows = TokenWindows(prepared, "train", context_length=16, seed=0)
    tokens = np.concatenate(shards.open_split(prepared, "train")).astype(np.int64)
    assert len(windows) == (len(tokens) - 1) // 16
    everything = {tuple(tokens[k * 16 : k * 16 + 17]) for k in range(len(windows))}
    epochs = []
    for epoch in range(2):
        seen = [tuple(windows.window(epoch * len(windows) + i)) for i in range(len(windows))]
        assert set(seen) == everything and len(set(seen)) == len(seen)
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    other_seed = TokenWindows(prepared, "train", context_length=16, seed=1)
    assert [tuple(other_seed.window(i)) for i in range(len(windows))] != epochs[0]


def test_windows_never_cross_a_shard_boundary(tmp_path):
    run_prepare(tmp_path / "small", shard_tokens=100)
    windows = TokenWindows(tmp_path / "small", "train", context_length=30, seed=0)
    memmaps = shards.open_split(tmp_path / "small", "train")
    expected = {
        tuple(np.asarray(m[k * 30 : k * 30 + 31], dtype=np.int64)) for m in memmaps for k in range((len(m) - 1) // 30)
    }
    assert len(windows) == sum((len(m) - 1) // 30 for m in memmaps) == len(expected)
    assert {tuple(windows.window(i)) for i in range(len(windows))} == expected


def test_split_too_small_for_one_window(prepared):
    val_tokens = shards.read_manifest(prepared)["splits"]["val"]["tokens"]
    with pytest.raises(DataError) as raised:
        TokenWindows(prepared, "val", context_length=val_tokens, seed=0)
    message = str(raised.value)
    assert str(prepared) in message and "'val'" in message and f"{val_tokens} tokens" in message
    assert f"context_length {val_tokens} needs at least {val_tokens + 1} tokens" in message
