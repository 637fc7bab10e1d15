"""Tests for the text corpus loader, tokenizers, batching and bits-per-byte."""

import math
import shutil

import pytest
import torch

from hypermlp.data import (
    DataError,
    batch_iterator,
    bits_per_byte,
    default_corpus_root,
    eval_windows,
    get_batch,
    load_corpus,
)

SAMPLE = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Ünïcödé: naïve café, 東京, emoji 🙂 and tabs\tand  double  spaces.\n"
)


def _text(n_lines=400, salt=0):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "théta", "λ", "🙂", "  ", "\t"]
    lines = []
    for i in range(n_lines):
        k = (i * 7 + salt) % 11
        lines.append(" ".join(words[(k + j) % len(words)] for j in range(1 + i % 9)) + f" {i}")
    return "\n".join(lines) + "\n"


def _make_folder(root, n_docs=40):
    docs = {}
    for i in range(n_docs):
        sub = root / f"d{i % 3}" / ("deep" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"doc{i:02d}.txt"
        text = f"# document {i}\n" + _text(20, salt=i)
        p.write_text(text, encoding="utf-8")
        docs[p.relative_to(root).as_posix()] = text
    return docs


# --------------------------------------------------------------- byte-level
def test_single_file_byte_roundtrip(tmp_path):
    text = SAMPLE * 50
    f = tmp_path / "a.txt"
    f.write_text(text, encoding="utf-8")
    c = load_corpus(f, val_fraction=0.1)
    assert c.tokenizer == "byte" and c.vocab_size == 256
    assert c.train.dtype == torch.long and c.train.dim() == 1 and c.val.dim() == 1
    assert c.n_docs_train == 1 and c.n_docs_val == 1
    # one document: its tail is the validation split
    assert c.decode(c.train) + c.decode(c.val) == text
    assert c.n_bytes_train == c.train.numel() and c.n_bytes_val == c.val.numel()
    assert c.n_bytes_train + c.n_bytes_val == len(text.encode("utf-8"))
    frac = c.n_bytes_val / (c.n_bytes_train + c.n_bytes_val)
    assert 0.03 < frac < 0.2
    assert torch.equal(c.encode(SAMPLE), torch.tensor(list(SAMPLE.encode("utf-8"))))
    assert c.decode(c.encode(SAMPLE)) == SAMPLE
    assert str(f) in c.source


def test_folder_reading_and_deterministic_split(tmp_path):
    root = tmp_path / "corpus"
    docs = _make_folder(root)
    # files that must be skipped
    (root / "binary.bin").write_bytes(b"\x00\x01\x02binary\x00")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (root / ".hidden.txt").write_text("HIDDEN TEXT", encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    a = load_corpus(root, val_fraction=0.2)
    b = load_corpus(root, val_fraction=0.2)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert a.n_docs_train + a.n_docs_val == len(docs)
    assert a.n_docs_val >= 1 and a.n_docs_train > a.n_docs_val
    train_text, val_text = a.decode(a.train), a.decode(a.val)
    assert "HIDDEN" not in train_text + val_text and "binary" not in train_text + val_text
    assert "caf" not in train_text + val_text
    # every document lands whole in exactly one split, train docs in sorted order
    in_val = {rel: text in val_text for rel, text in docs.items()}
    for rel, text in docs.items():
        assert (text in train_text) != in_val[rel]
    train_docs = [docs[r] for r in sorted(docs) if not in_val[r]]
    assert train_text == "\n".join(train_docs)
    assert a.n_bytes_train == len(train_text.encode("utf-8"))
    # stable across locations (hash of the relative path, not the absolute one)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    m = load_corpus(moved, val_fraction=0.2)
    assert torch.equal(m.train, a.train) and torch.equal(m.val, a.val)
    # a different seed gives a different split
    s = load_corpus(root, val_fraction=0.2, seed=1)
    assert not torch.equal(s.val, a.val)


def test_default_stdlib_corpus():
    c = load_corpus()
    assert c.vocab_size == 256
    assert c.n_bytes_train > 1_000_000 and c.n_bytes_val > 10_000
    assert c.n_bytes_train + c.n_bytes_val <= 8_000_000 + c.n_docs_train + c.n_docs_val
    assert c.n_docs_train > 50 and c.n_docs_val >= 1
    assert "stdlib" in c.source and str(default_corpus_root()) in c.source
    head = c.decode(c.train[:5000])
    assert "def " in head or "import " in head or "class " in head
    assert "site-packages" not in c.source
    # deterministic
    c2 = load_corpus()
    assert torch.equal(c.val, c2.val)


# --------------------------------------------------------------- BPE
def test_bpe_trains_and_roundtrips(tmp_path):
    f = tmp_path / "small.txt"
    text = _text(1500)
    f.write_text(text, encoding="utf-8")
    cache = tmp_path / "cache"
    c = load_corpus(f, tokenizer="bpe", bpe_vocab_size=320, val_fraction=0.1, cache_dir=cache)
    assert c.tokenizer == "bpe"
    assert 256 < c.vocab_size <= 320
    assert int(c.train.max()) < c.vocab_size and int(c.val.max()) < c.vocab_size
    assert c.decode(c.train) + c.decode(c.val) == text
    assert c.train.numel() < c.n_bytes_train  # merges compress
    for s in (SAMPLE, "  leading spaces\n\n\ttab", "日本語 ✓ 🙂🙂", ""):
        assert c.decode(c.encode(s)) == s
    # the tokenizer JSON is cached and reused; identical ids on the second load
    saved = list(cache.glob("bpe-*.json"))
    assert len(saved) == 1 and c.tokenizer_path == str(saved[0])
    c2 = load_corpus(f, tokenizer="bpe", bpe_vocab_size=320, val_fraction=0.1, cache_dir=cache)
    assert torch.equal(c.train, c2.train) and torch.equal(c.val, c2.val)
    assert len(list(cache.glob("bpe-*.json"))) == 1


def test_bpe_trained_on_train_split_only(tmp_path):
    root = tmp_path / "c"
    docs = _make_folder(root, n_docs=30)
    split = load_corpus(root, val_fraction=0.2)
    val_text = split.decode(split.val)
    val_docs = [rel for rel, text in docs.items() if text in val_text]
    assert val_docs and len(val_docs) < len(docs)
    # a marker made of letters absent from the training docs, only in validation docs
    marker = "qxjk" * 50 + "\n"
    for rel in val_docs:
        (root / rel).write_text(docs[rel] + marker, encoding="utf-8")
    c = load_corpus(root, tokenizer="bpe", bpe_vocab_size=400, val_fraction=0.2)
    assert c.n_docs_val == len(val_docs)
    assert "qxjk" in c.decode(c.val) and "qxjk" not in c.decode(c.train)
    assert c.encode("qxjkqxjk").numel() == 8  # no merge learned from validation text
    assert c.decode(c.encode(c.decode(c.val))) == c.decode(c.val)
    # control: the same text in a training document is merged
    (root / sorted(set(docs) - set(val_docs))[0]).write_text(marker * 3, encoding="utf-8")
    c2 = load_corpus(root, tokenizer="bpe", bpe_vocab_size=400, val_fraction=0.2)
    assert c2.encode("qxjkqxjk").numel() < 8


# --------------------------------------------------------------- errors
def test_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_corpus(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_corpus(empty)
    folder = tmp_path / "emptydir"
    folder.mkdir()
    with pytest.raises(DataError, match="empty"):
        load_corpus(folder)
    binonly = tmp_path / "binonly"
    binonly.mkdir()
    (binonly / "x.bin").write_bytes(b"\x00\xff\x00")
    with pytest.raises(DataError, match="no readable"):
        load_corpus(binonly)
    binfile = tmp_path / "blob.bin"
    binfile.write_bytes(b"\xff\xfe\x00\x00garbage")
    with pytest.raises(DataError, match="UTF-8"):
        load_corpus(binfile)
    try:
        load_corpus(tmp_path / "missing.txt")
    except DataError as e:
        msg = str(e)
        assert "missing.txt" in msg and "\n" not in msg
        assert isinstance(e, ValueError)
    with pytest.raises(ValueError):
        load_corpus(empty, tokenizer="word")


# --------------------------------------------------------------- batching and metrics
def test_bits_per_byte():
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 10, 40) == pytest.approx(2.0 * 10 / (40 * math.log(2)))
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 1, 0)


def test_get_batch_shapes_and_determinism():
    ids = torch.arange(1000)
    g1, g2, g3 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    x1, y1 = get_batch(ids, 8, 16, g1)
    x2, y2 = get_batch(ids, 8, 16, g2)
    x3, _ = get_batch(ids, 8, 16, g3)
    assert x1.shape == y1.shape == (8, 16) and x1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert torch.equal(y1, x1 + 1)  # contiguous windows, targets shifted by one
    assert int(y1.max()) < 1000
    batches = list(batch_iterator(ids, 4, 10, torch.Generator().manual_seed(0), num_batches=3))
    assert len(batches) == 3 and all(b[0].shape == (4, 10) for b in batches)
    # windows reach both ends of the stream over many draws
    xs, _ = get_batch(ids[:20], 2000, 10, torch.Generator().manual_seed(0))
    assert int(xs[:, 0].min()) == 0 and int(xs[:, 0].max()) == 9
    with pytest.raises(DataError):
        get_batch(torch.arange(5), 2, 10)


def test_eval_windows_cover_the_whole_split_or_spread_a_sample_over_it():
    ids = torch.arange(105)  # 104 targets: 10 full windows of 10 and 4 left over
    x, y = eval_windows(ids, 10)
    assert x.shape == y.shape == (11, 10)
    assert torch.equal(x[:10].reshape(-1), ids[:100]) and torch.equal(y[:10], x[:10] + 1)
    # the tail window ends at the end of the split and scores only the 4 targets not yet scored
    assert torch.equal(x[10], ids[94:104]) and y[10, :6].eq(-100).all() and torch.equal(y[10, 6:], ids[101:])
    scored = y[y != -100]
    assert torch.equal(scored.sort().values, ids[1:])  # every target once: len(ids) - 1
    # a split that fills its windows exactly has no tail window
    x, y = eval_windows(torch.arange(101), 10)
    assert x.shape == (10, 10) and int((y != -100).sum()) == 100
    # a sample: full windows spread evenly from the start to the end, not the first ones
    x, y = eval_windows(ids, 10, max_windows=3)
    assert x.shape == (3, 10) and [int(r[0]) for r in x] == [10, 50, 80]
    assert torch.equal(y, x + 1)
    x, y = eval_windows(torch.arange(10_001), 10, max_windows=4)  # 1000 windows
    assert [int(r[0]) for r in x] == [1250, 3750, 6250, 8750]
    # asking for as many windows as the whole split takes (or more) gives the whole split
    assert eval_windows(ids, 10, max_windows=11)[0].shape == (11, 10)
    assert eval_windows(ids, 10, max_windows=500)[0].shape == (11, 10)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_windows"):
            eval_windows(ids, 10, max_windows=bad)
