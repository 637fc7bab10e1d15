"""``hypermlp.data.prepare`` and ``hypermlp.data.shards``: the prepared shards hold load_corpus's
tokens, preparing is deterministic, reused and bounded in memory, JSONL / Parquet records are
documents, and damaged shards are refused with a message naming the problem."""

import hashlib
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hypermlp
import hypermlp.data.prepare as prepare_mod
import hypermlp.data.text as text_mod
from hypermlp.config import ConfigError
from hypermlp.data import DataError, load_corpus
from hypermlp.data.prepare import prepare_corpus
from hypermlp.data.shards import is_prepared, load_prepared
from hypermlp.data.text import _Chunker, _chunks
from hypermlp.models import LanguageModel
from hypermlp.tasks import build_task
from hypermlp.train import TrainConfig, Trainer

from ..train.helpers import tiny_cfg

WORDS = ["alpha", "béta", "γάμμα", "🙂", "delta", "  ", "\t", "return", "x = 1"]


def lines(n, salt):
    rng = random.Random(salt)
    return "".join(" ".join(rng.choice(WORDS) for _ in range(1 + rng.randrange(9))) + f" {i}\n" for i in range(n))


def make_folder(root):
    """Text documents in nested folders, plus what load_corpus skips: empty, NUL, not UTF-8, hidden."""
    for i in range(14):
        sub = root / f"d{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:02d}.txt").write_text(f"# document {i}\n" + lines(15 + i, i), encoding="utf-8")
    (root / "bom.txt").write_bytes("\ufeff".encode("utf-8") + lines(10, 99).encode("utf-8"))
    (root / "empty.txt").write_bytes(b"")
    (root / "nul.txt").write_bytes(b"abc\x00def")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / ".hidden.txt").write_text("never read")
    return root


@pytest.fixture
def small_pieces(monkeypatch):
    """Chunks of 61 characters and file reads of 7 bytes: chunk cuts, and reads that split a
    character (or the BOM), happen all over a small corpus."""
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 61)
    monkeypatch.setattr(prepare_mod, "_READ_BYTES", 7)


def ids_of(split):
    return torch.from_numpy(np.asarray(split).astype(np.int64))


# --------------------------------------------------------------------------- same tokens
def reference_chunks(text, size):
    """The chunk rule written out as a loop over the whole text (load_corpus's original)."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = min(n, i + size)
        if j < n:
            k = text.rfind("\n", i + 1, j)
            if k != -1:
                j = k + 1
        out.append(text[i:j])
        i = j
    return out


def test_the_streaming_chunker_cuts_like_the_whole_text_loop():
    rng = random.Random(0)
    for trial in range(60):
        size = rng.choice([1, 2, 5, 17, 64])
        text = "".join(rng.choice(["a", "b", "\n", "é", "🙂", "\n\n"]) for _ in range(rng.randrange(0, 300)))
        expected = reference_chunks(text, size)
        assert _chunks(text, size) == expected
        chunker, got, i = _Chunker(size), [], 0
        while i < len(text):  # the same text in random parts
            j = i + rng.randrange(0, 40)
            got += chunker.push(text[i:j])
            i = j
        assert got + chunker.finish() == expected, (trial, size)


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
@pytest.mark.parametrize("shape", ["folder", "one_file"])
def test_a_prepared_corpus_holds_the_in_memory_tokens(tmp_path, small_pieces, tokenizer, shape):
    if shape == "folder":
        data = make_folder(tmp_path / "corpus")
    else:
        data = tmp_path / "one.txt"
        data.write_bytes("\ufeff".encode("utf-8") + lines(400, 7).encode("utf-8"))
    settings = dict(tokenizer=tokenizer, bpe_vocab_size=320, val_fraction=0.25, seed=3)
    m = prepare_corpus(data, tmp_path / "prep", **settings)
    ref = load_corpus(data, **settings)
    got = load_prepared(tmp_path / "prep")
    assert isinstance(got.train, np.memmap) and isinstance(got.val, np.memmap)  # nothing loaded
    for split in ("train", "val"):
        assert torch.equal(ids_of(getattr(got, split)), getattr(ref, split)), split
    assert (got.vocab_size, got.n_bytes_train, got.n_bytes_val) == (ref.vocab_size, ref.n_bytes_train, ref.n_bytes_val)
    assert (got.n_docs_train, got.n_docs_val) == (ref.n_docs_train, ref.n_docs_val)
    assert got.decode(got.val) == ref.decode(ref.val)
    assert m["splits"]["train"]["tokens"] == ref.train.numel() and m["dtype"] == "uint16"
    if shape == "folder":
        assert ref.n_docs_train > 1 and ref.n_docs_val > 1
        assert m["documents"] == 15 and m["skipped"] == 3  # empty, NUL, latin-1; the hidden file is not listed
        assert ".hidden.txt" not in [s["path"] for s in m["sources"]]
        doc = next(s for s in m["sources"] if s["path"] == "bom.txt")
        assert doc["sha256"] == hashlib.sha256((data / "bom.txt").read_bytes()).hexdigest()
    if tokenizer == "bpe":  # the whole training split was the sample: its bytes less the separators
        assert m["bpe_sample"]["complete"] and m["bpe_sample"]["bytes"] == ref.n_bytes_train - (ref.n_docs_train - 1)
        assert got.encode("béta 🙂").tolist() == ref.encode("béta 🙂").tolist()


def test_uint32_shards_hold_the_same_ids(tmp_path):
    data = tmp_path / "one.txt"
    data.write_text(lines(100, 2))
    m = prepare_corpus(data, tmp_path / "prep", dtype="uint32")
    got, ref = load_prepared(tmp_path / "prep"), load_corpus(data)
    assert m["dtype"] == "uint32" and got.train.dtype == np.dtype("<u4")
    assert os.path.getsize(tmp_path / "prep" / "train.bin") == 4 * ref.train.numel()
    assert torch.equal(ids_of(got.train), ref.train) and torch.equal(ids_of(got.val), ref.val)


def test_the_bpe_trains_on_a_bounded_sample_of_the_first_training_documents(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    docs = {f"f{i:02d}.txt": lines(60, i) for i in range(20)}
    for name, text in docs.items():
        (data / name).write_text(text)
    bound = 5000
    m = prepare_corpus(data, tmp_path / "prep", tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.2,
                       bpe_sample_bytes=bound)
    got = load_prepared(tmp_path / "prep")
    ref = load_corpus(data, tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.2)  # trained on everything
    # the sample: training documents in order, each cut into chunks, up to the bound
    train_docs = [t for n, t in sorted(docs.items()) if t in ref.decode(ref.train)]
    used = 0
    for c in (c for t in train_docs for c in _chunks(t)):
        if used + len(c.encode()) > bound:
            break
        used += len(c.encode())
    assert m["bpe_sample"] == {"bytes": used, "documents": m["bpe_sample"]["documents"], "complete": False,
                               "bound": bound}
    assert 0 < used <= bound < sum(len(t.encode()) for t in train_docs)
    # another tokenizer than the whole split's, and still the same text
    assert not torch.equal(ids_of(got.train)[:200], ref.train[:200])
    assert got.decode(got.train) == ref.decode(ref.train) and got.decode(got.val) == ref.decode(ref.val)


# --------------------------------------------------------------------------- JSONL and Parquet
RECORDS = [lines(8, i) for i in range(30)] + ["", "has a \x00 NUL"]


def unit(name, seed=0):
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:16], 16) / 2.0**64


def expected_splits(names_texts, val_fraction):
    """The validation rule written out: by the hash of each document's name."""
    val = [t for n, t in names_texts if unit(n) < val_fraction]
    train = [t for n, t in names_texts if unit(n) >= val_fraction]
    assert val and train  # the fallbacks are not needed for these names
    return "\n".join(train), "\n".join(val)


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(records):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
            if i == 3:
                f.write("\n")  # a blank line is no record, but has its line index


def test_jsonl_and_parquet_records_are_documents(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    data = tmp_path / "corpus"
    data.mkdir()
    write_jsonl(data / "a.jsonl", RECORDS)
    table = pa.table({"id": list(range(len(RECORDS) + 1)), "text": RECORDS + [None]})
    pq.write_table(table, data / "b.parquet", row_group_size=7)
    (data / "c.txt").write_text(lines(20, 5))
    m = prepare_corpus(data, tmp_path / "prep", val_fraction=0.3)
    got = load_prepared(tmp_path / "prep")

    jsonl_lines = list(range(4)) + [i + 1 for i in range(4, len(RECORDS))]  # after the blank line, one more
    docs = [(f"a.jsonl:{ln}", t) for ln, t in zip(jsonl_lines, RECORDS)]
    docs += [(f"b.parquet:{i}", t) for i, t in enumerate(RECORDS)]
    docs += [("c.txt", lines(20, 5))]
    kept = [(n, t) for n, t in docs if t and "\x00" not in t]
    train, val = expected_splits(kept, 0.3)
    assert got.decode(got.train) == train and got.decode(got.val) == val
    assert got.n_bytes_train == len(train.encode()) and got.n_bytes_val == len(val.encode())
    assert m["documents"] == len(kept) == 61
    by_path = {s["path"]: s for s in m["sources"]}
    assert by_path["a.jsonl"]["skipped"] == 3 and by_path["b.parquet"]["skipped"] == 3  # empty, NUL, blank / null
    assert by_path["b.parquet"]["format"] == "parquet" and by_path["a.jsonl"]["documents"] == 30


# --------------------------------------------------------------------------- determinism, reuse, memory
def test_preparing_is_deterministic_and_a_second_run_reuses_the_folder(tmp_path):
    data = make_folder(tmp_path / "corpus")
    args = dict(tokenizer="bpe", bpe_vocab_size=300, val_fraction=0.2)
    first = prepare_corpus(data, tmp_path / "a", **args)
    second = prepare_corpus(data, tmp_path / "b", **args)
    assert not first["reused"] and not second["reused"]
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == ["manifest.json", "tokenizer.json", "train.bin", "val.bin"] == sorted(os.listdir(tmp_path / "b"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    stamps = {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files}
    again = prepare_corpus(data, tmp_path / "a", **args)
    assert again["reused"] and again["key"] == first["key"]
    assert {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files} == stamps  # not rewritten
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers
    # an --out inside the input is not read as input
    inside = prepare_corpus(data, data / "prepared", **args)
    assert inside["key"] == first["key"] and prepare_corpus(data, data / "prepared", **args)["reused"]
    # another input or setting is an error that names it, and leaves the folder alone
    with pytest.raises(DataError, match=r"other settings \(val_fraction 0.2 -> 0.3\)"):
        prepare_corpus(data, tmp_path / "a", **{**args, "val_fraction": 0.3})
    (data / "d0" / "doc00.txt").write_text("changed\n" * 20)
    with pytest.raises(DataError, match="another input"):
        prepare_corpus(data, tmp_path / "a", **args)
    assert {f: os.stat(tmp_path / "a" / f).st_mtime_ns for f in files} == stamps


MEASURE = textwrap.dedent("""
    import resource, sys
    from hypermlp.data.prepare import prepare_corpus
    for data, out in (sys.argv[1:3], sys.argv[3:5]):
        m = prepare_corpus(data, out)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"])
""")


def test_memory_stays_flat_on_an_input_larger_than_the_cap(tmp_path):
    cap_mb, size = 40, 64 << 20  # the input: 64 MB of text, 1.6x the cap (its int64 ids: 13x)
    block = lines(20_000, 1).encode()
    with open(tmp_path / "big.txt", "wb") as f:
        for _ in range(size // len(block) + 1):
            f.write(block)
    (tmp_path / "small.txt").write_bytes(block[: block.index(b"\n", 50_000) + 1])
    # one fresh process prepares the small input, then the big one: its peak resident memory after each
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(hypermlp.__file__))}
    argv = [str(tmp_path / n) for n in ("small.txt", "p_small", "big.txt", "p_big")]
    res = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    (base_kb, _), (peak_kb, tokens) = [map(int, line.split()) for line in res.stdout.split("\n")[:2]]
    assert tokens == os.path.getsize(tmp_path / "big.txt") > size  # it did tokenize everything
    assert (peak_kb - base_kb) / 1024 < cap_mb, (base_kb, peak_kb)


# --------------------------------------------------------------------------- damaged shards
@pytest.fixture
def prepared(tmp_path):
    data = tmp_path / "one.txt"
    data.write_text(lines(200, 1))
    prepare_corpus(data, tmp_path / "prep")
    return tmp_path / "prep"


def edit_manifest(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "train.bin").write_bytes((p / "train.bin").read_bytes()[:-1]), "not a whole number of uint16 ids"),
    (lambda p: (p / "train.bin").write_bytes((p / "train.bin").read_bytes()[:-4]), "holds .* ids but the manifest says"),
    (lambda p: (p / "val.bin").unlink(), "cannot read the val shard"),
    (lambda p: (p / "val.bin").write_bytes(np.array([1, 2, 300], "<u2").tobytes() + (p / "val.bin").read_bytes()[6:]),
     "id 300 .* not below the vocabulary size 256"),
    (lambda p: edit_manifest(p, vocab_size=70_000), "vocabulary of 70000 ids is too big for uint16"),
    (lambda p: edit_manifest(p, format_version=99), "format 99; this hypermlp reads format 1"),
    (lambda p: edit_manifest(p, splits={"train": {"file": "train.bin"}}), "splits.train.tokens must be a count"),
    (lambda p: (p / "manifest.json").write_text("{"), "bad JSON"),
])
def test_a_damaged_prepared_corpus_is_refused_naming_the_problem(prepared, damage, message):
    load_prepared(prepared)
    damage(prepared)
    with pytest.raises(DataError, match=message):
        load_prepared(prepared)


def test_bad_settings_are_refused_before_anything_is_written(tmp_path):
    data = tmp_path / "one.txt"
    data.write_text(lines(50, 0))
    for kwargs, message in [
        (dict(tokenizer="bpe", bpe_vocab_size=70_000, dtype="uint16"), "70000 ids is too big for uint16"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(tokenizer="words"), "tokenizer"),
        (dict(bpe_sample_bytes=0), "bpe_sample_bytes"),
    ]:
        with pytest.raises(ValueError, match=message):
            prepare_corpus(data, tmp_path / "out", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]


# --------------------------------------------------------------------------- training from the shards
def test_the_lm_task_trains_and_scores_from_the_shards_as_from_memory(tmp_path, one_thread):
    data = tmp_path / "corpus"
    for i in range(8):
        (data / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (data / f"d{i % 2}" / f"{i}.txt").write_text(lines(6, i))
    prepare_corpus(data, tmp_path / "prep", val_fraction=0.3)
    assert is_prepared(tmp_path / "prep") and not is_prepared(data)
    settings = {"seq_len": 16, "eval_windows": 3, "val_fraction": 0.3}
    shards, s = build_task("lm", {"path": str(tmp_path / "prep"), **settings}, str(tmp_path / "cache"))
    memory, _ = build_task("lm", {"path": str(data), **settings}, str(tmp_path / "cache"))
    assert isinstance(shards.corpus.train, np.memmap) and s["source"].startswith("prepared:")
    assert shards.corpus.n_docs_val > 1 and len(shards.corpus.val) > 3 * 16  # the sample is a sample
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg(vocab=256, max_len=16)).eval()
    sample, full = shards.evaluate(model), shards.evaluate(model, final=True)
    assert sample["val_scope"] == "sample" and full["val_scope"] == "full" and full["val_coverage"] == 1.0
    assert sample == memory.evaluate(model) and full == memory.evaluate(model, final=True)
    cfg = TrainConfig(steps=4, batch_size=4, eval_every=4, device="cpu", progress=False)
    a = Trainer(tiny_cfg(vocab=256, max_len=16), shards, cfg).fit()
    b = Trainer(tiny_cfg(vocab=256, max_len=16), memory, cfg).fit()
    assert a["train_loss"] == b["train_loss"] and a["final"]["val_loss"] == b["final"]["val_loss"]
    # the manifest fixes the tokenizer and the split
    with pytest.raises(ConfigError, match="val_fraction=0.05.*made with val_fraction=0.3"):
        build_task("lm", {"path": str(tmp_path / "prep"), "val_fraction": 0.05})
    (data / "manifest.json").write_text('{"a text folder": "with a manifest of its own"}')
    assert not is_prepared(data)  # still a folder of text documents
