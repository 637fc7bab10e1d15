"""``hypermlp prepare``: stream a text corpus through a tokenizer into memory-mapped token shards.

Input (``data``): a UTF-8 text file, a JSONL file (one JSON object per line; its ``text``
field is a document), a Parquet file (its ``text`` column, one document per row; needs the
``data`` extra, pyarrow), or a folder of them, walked like :func:`~hypermlp.data.text.load_corpus`
walks one (sorted relative paths, hidden entries skipped) and read by suffix (``.jsonl``,
``.parquet``; any other file is text). A text file is one document named by its relative path
(a single file: its own name); record ``i`` (0-based line or row) of a JSONL or Parquet file
``f`` is the document ``f:i``. Text files that are unreadable, empty, not UTF-8 or hold a NUL
byte are skipped, as ``load_corpus`` skips them; so are empty records and records with a NUL.
A JSONL line that is not an object with a ``text`` string, or a Parquet file without a ``text``
column of strings, is an error naming the file (and line).

The split and the token stream are ``load_corpus``'s: a document is a validation document by
the same hash rule (``text._ValSplit``; a lone document is cut at its tail, ``text._tail_cut``),
the documents of a split are joined with ``"\\n"`` and that text is tokenized in the same
newline-cut chunks (``text._Chunker``). So for an input ``load_corpus`` reads, the shards hold
exactly its ``train`` / ``val`` ids, provided the BPE sees the same text: it is trained on the
first training documents, each cut into chunks, up to ``bpe_sample_bytes`` of UTF-8 (the first
chunk that would pass the bound ends the sample), which is the whole training split, as in
``load_corpus``, when that split is no larger.

Memory stays flat whatever the input's size: three passes stream it (a scan that validates,
hashes and counts every document and settles the split, the BPE sample, the tokenization),
holding one document of a JSONL / Parquet file, one read block of a text file and about two
chunks per split at a time.

Output folder: ``train.bin`` / ``val.bin`` (raw little-endian ids, ``uint16`` while the
vocabulary fits, else ``uint32``), ``tokenizer.json`` (BPE) and ``manifest.json`` (the
tokenizer, vocabulary and dtype, tokens / bytes / documents per split, the source files with
their sha256, the settings and the validation rule, the BPE sample). It is built in a hidden
folder beside ``out`` and renamed into place once complete, so ``out`` is either absent or
whole; an ``out`` that already holds the prepare of the same input and settings (same
``key``) is reused, any other non-empty ``out`` is an error and is left as it is.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..checkpoint import fsync_folder
from ..defaults import LM_DATA
from .common import DataError
from .shards import (DTYPE_LIMITS, MANIFEST, PREPARED_FORMAT, PREPARED_FORMAT_VERSION, SPLITS, load_prepared,
                     read_manifest)
from .text import _DOC_SEPARATOR, _bpe_ids, _Chunker, _tail_cut, _train_bpe_chunks, _ValSplit, _walk_sorted

__all__ = ["prepare_corpus", "DEFAULT_BPE_SAMPLE_BYTES"]

DEFAULT_BPE_SAMPLE_BYTES = 100_000_000  # UTF-8 bytes of training text the BPE learns from, at most
_READ_BYTES = 1 << 20  # text files are read in blocks of this many bytes
_BPE_BATCH = 4  # chunks the BPE encodes at once (in parallel); bytes go one chunk at a time
_JSONL, _PARQUET, _TEXT = "jsonl", "parquet", "text"

VALIDATION_RULE = (
    "document i named n is a validation document iff sha256(f'{seed}:{n}')[:16 hex] / 2**64 < val_fraction; "
    "with no validation document the one of smallest value is one, with no training document the one of "
    "largest value is not; a lone document of c characters is cut at round(c * (1 - val_fraction)), moved "
    "to just after the last newline of the 4096 characters before it; a split is its documents in order "
    "joined with a newline"
)


# =========================================================================
# the sources and what the scan learns about them
# =========================================================================
@dataclass
class _Source:
    rel: str  # the name documents are known by (relative path; a lone file: its name)
    path: Path
    format: str  # text, jsonl or parquet
    size: int = 0
    sha256: str = ""
    mtime_ns: int = 0
    problem: str = ""  # why a text file is no document: empty, not UTF-8 text, or unreadable (...)
    documents: int = 0  # non-empty documents
    skipped: int = 0  # records (or, for text, the file) left out
    text_bytes: int = 0  # UTF-8 bytes of its documents
    first_chars: int = 0  # characters of its first document (the lone-document cut needs them)

    def entry(self) -> dict:
        return {"path": self.rel, "format": self.format, "bytes": self.size, "sha256": self.sha256,
                "documents": self.documents, "skipped": self.skipped}


def _format_of(name: str) -> str:
    if name.endswith(".jsonl"):
        return _JSONL
    if name.endswith(".parquet"):
        return _PARQUET
    return _TEXT


def _list_sources(data: Path, out: Path) -> list[_Source]:
    if not data.exists():
        raise DataError(f"{data}: no such file or directory")
    if data.is_file():
        return [_Source(data.name, data, _format_of(data.name))]
    if not data.is_dir():
        raise DataError(f"{data}: neither a regular file nor a folder")
    out = out.resolve()
    files = [(rel, p) for rel, p in _walk_sorted(data) if out not in p.resolve().parents]  # not our own output
    if not files:
        raise DataError(f"{data}: folder is empty")
    return [_Source(rel, p, _format_of(rel)) for rel, p in files]


def _progress(total: int, desc: str, enabled):
    from tqdm import tqdm

    # enabled None: a bar only on a terminal
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                disable=(None if enabled is None else not enabled), file=sys.stderr)


# =========================================================================
# reading documents (each reader streams; the same code serves every pass)
# =========================================================================
def _text_blocks(src: _Source, bar) -> Iterator[bytes]:
    """The file's bytes in blocks; checks it is the file the scan hashed (after the scan)."""
    h = hashlib.sha256()
    with open(src.path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
            bar.update(len(block))
            yield block
    if src.sha256 and h.hexdigest() != src.sha256:
        raise DataError(f"{src.path}: changed while being prepared (its sha256 differs from the scan's)")
    src.sha256 = h.hexdigest()


def _scan_text(src: _Source, bar) -> None:
    """Hash the file and decide, as ``load_corpus`` does, whether it is a document."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    chars, ok, first = 0, True, True
    try:
        for block in _text_blocks(src, bar):
            if not ok:
                continue  # keep hashing
            if b"\x00" in block:
                ok = False
                continue
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError:
                ok = False
                continue
            if first and text:
                text, first = (text[1:] if text.startswith("\ufeff") else text), False
            chars += len(text)
            src.text_bytes += len(text.encode("utf-8"))
        if ok:
            tail = decoder.decode(b"", final=True)
            chars += len(tail)
            src.text_bytes += len(tail.encode("utf-8"))
    except UnicodeDecodeError:
        ok = False
    except OSError as e:
        src.sha256, src.problem, ok = "", f"cannot read file ({e.strerror or e})", False
    if ok and chars:
        src.documents, src.first_chars = 1, chars
        return
    src.skipped, src.text_bytes = 1, 0
    src.problem = src.problem or ("file is empty" if ok else "not UTF-8 text (binary or undecodable)")


def _text_pieces(src: _Source, bar) -> Iterator[str]:
    """The text of a text-file document, in pieces (a BOM dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    for block in _text_blocks(src, bar):
        text = decoder.decode(block)
        if first and text:
            text, first = (text[1:] if text.startswith("\ufeff") else text), False
        yield text
    yield decoder.decode(b"", final=True)


def _keep(text: str) -> bool:
    """A record is a document if its text is non-empty and has no NUL (the end-of-text byte)."""
    return bool(text) and "\x00" not in text


def _jsonl_records(src: _Source, bar) -> Iterator[tuple[int, str | None]]:
    """(line index, text or None for a record left out) of every line; errors name the line."""
    h = hashlib.sha256()
    try:
        f = open(src.path, "rb")
    except OSError as e:
        raise DataError(f"{src.path}: cannot read file ({e.strerror or e})") from None
    with f:
        for i, raw in enumerate(f):
            h.update(raw)
            bar.update(len(raw))
            where = f"{src.path} line {i + 1}"
            try:
                line = raw.decode("utf-8-sig" if i == 0 else "utf-8").strip()
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text") from None
            if not line:
                yield i, None
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(record, dict) or "text" not in record:
                raise DataError(f"{where}: no 'text' field (each line must be a JSON object with a 'text' string)")
            if not isinstance(record["text"], str):
                raise DataError(f"{where}: 'text' must be a string, got {type(record['text']).__name__}")
            yield i, (record["text"] if _keep(record["text"]) else None)
    if src.sha256 and h.hexdigest() != src.sha256:
        raise DataError(f"{src.path}: changed while being prepared (its sha256 differs from the scan's)")
    src.sha256 = h.hexdigest()


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install 'hypermlp[data]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid / OSError: not a Parquet file
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise DataError(f"{path}: no 'text' column (columns: {', '.join(names) or 'none'})")
    kind = str(pf.schema_arrow.field("text").type)
    if kind not in ("string", "large_string", "string_view"):
        raise DataError(f"{path}: the 'text' column must hold strings, it holds {kind}")
    return pf


def _parquet_records(src: _Source) -> Iterator[tuple[int, str | None]]:
    """(row index, text or None for a row left out) of every row, one record batch at a time."""
    st = src.path.stat()
    if src.sha256 and (st.st_size, st.st_mtime_ns) != (src.size, src.mtime_ns):
        raise DataError(f"{src.path}: changed while being prepared (its size or time differs from the scan's)")
    pf = _parquet_file(src.path)
    i = 0
    for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
        for text in batch.column(0).to_pylist():
            yield i, (text if text is not None and _keep(text) else None)
            i += 1


def _records(src: _Source, bar) -> Iterator[tuple[int, str | None]]:
    """(index, text or None) of every record of a JSONL or Parquet file (``bar``: JSONL bytes read)."""
    return _jsonl_records(src, bar) if src.format == _JSONL else _parquet_records(src)


def _file_sha256(path: Path, bar) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


# =========================================================================
# pass 1: scan
# =========================================================================
def _scan(sources: list[_Source], rule: _ValSplit, enabled) -> None:
    """Hash every source, count its documents and feed their names to the split rule."""
    for src in sources:
        try:
            st = src.path.stat()
        except OSError as e:
            raise DataError(f"{src.path}: cannot read file ({e.strerror or e})") from None
        src.size, src.mtime_ns = st.st_size, st.st_mtime_ns
    with _progress(sum(s.size for s in sources), "scan", enabled) as bar:
        for src in sources:
            if src.format == _TEXT:
                _scan_text(src, bar)
                if src.documents:
                    rule.add(src.rel)
                continue
            if src.format == _PARQUET:
                _parquet_file(src.path)  # its errors before hashing it
                try:
                    src.sha256 = _file_sha256(src.path, bar)
                except OSError as e:
                    raise DataError(f"{src.path}: cannot read file ({e.strerror or e})") from None
            for i, text in _records(src, bar):
                if text is None:
                    src.skipped += 1
                    continue
                if not src.documents:
                    src.first_chars = len(text)
                src.documents += 1
                src.text_bytes += len(text.encode("utf-8"))
                rule.add(f"{src.rel}:{i}")


class _NullBar:
    def update(self, n):
        pass


def _check_documents(data: Path, sources: list[_Source], rule: _ValSplit) -> None:
    """load_corpus's errors for an input with nothing to prepare."""
    if rule.n:
        if rule.n == 1:
            lone = next(s for s in sources if s.documents)
            if lone.first_chars < 2:
                raise DataError(f"{lone.path}: too little text to split into train and validation")
        return
    if len(sources) == 1 and data.is_file():
        src = sources[0]
        if src.format == _TEXT:
            raise DataError(f"{data}: {src.problem}")
        what = "empty Parquet file" if src.format == _PARQUET else "empty JSONL file"
        if src.skipped:
            what = f"all {src.skipped} records empty or holding a NUL"
        raise DataError(f"{data}: no documents ({what})")
    skipped = sum(s.skipped for s in sources)
    raise DataError(f"{data}: folder has no documents: no readable non-empty UTF-8 text files, JSONL "
                    f"or Parquet records ({skipped} skipped)")


# =========================================================================
# passes 2 and 3: the documents of each split, in order
# =========================================================================
def _documents(sources: list[_Source]) -> Iterator[tuple[str, Iterator[str]]]:
    """(name, text pieces) of every document, in order (the pieces must be read before the next)."""
    bar = _NullBar()  # these passes count the text they use, not the bytes read
    for src in sources:
        if not src.documents:
            continue
        if src.format == _TEXT:
            yield src.rel, _text_pieces(src, bar)
            continue
        for i, text in _records(src, bar):
            if text is not None:
                yield f"{src.rel}:{i}", iter((text,))


def _split_documents(sources, rule: _ValSplit, val_fraction: float) -> Iterator[tuple[str, Iterator[str]]]:
    """(split, text pieces) of every document, in order: a lone document gives its head to
    train and its tail to val."""
    if rule.n == 1:
        lone = next(s for s in sources if s.documents)
        _, pieces = next(_documents(sources))
        head, tail = _cut_tail(pieces, lone.first_chars, val_fraction, lone.path)
        yield "train", head
        yield "val", tail
        return
    for index, (name, pieces) in enumerate(_documents(sources)):
        yield ("val" if rule.is_val(index, name) else "train"), pieces


def _cut_tail(pieces: Iterator[str], n_chars: int, val_fraction: float, where: Path):
    """The head and the tail of one document streamed in ``pieces``, cut like ``load_corpus``
    cuts a lone document; the head must be read to its end before the tail."""
    lo, cut = _tail_cut(n_chars, val_fraction)
    state = {"carry": ""}  # what the head read past the cut

    def head():
        pos = 0
        window = ""  # the characters [lo, cut)
        for p in pieces:
            if pos + len(p) <= lo:
                pos += len(p)
                yield p
                continue
            if pos < lo:
                yield p[: lo - pos]
                p, pos = p[lo - pos :], lo
            need = cut - pos - len(window)
            window, rest = window + p[:need], p[need:]
            if len(window) < cut - lo:
                continue
            nl = window.rfind("\n")
            k = nl + 1 if nl != -1 else len(window)
            yield window[:k]
            state["carry"] = window[k:] + rest
            return
        raise DataError(f"{where}: the document ended before its validation cut: changed while being prepared")

    def tail():
        yield state["carry"]
        yield from pieces

    return head(), tail()


# =========================================================================
# tokenizing into a split's shard
# =========================================================================
class _ShardWriter:
    """One split: its documents joined with the separator, cut by the shared chunker, encoded and
    appended to its file."""

    def __init__(self, path: Path, encode, batch: int, dtype: str, bar):
        self.path, self.encode, self.batch, self.dtype, self.bar = path, encode, batch, np.dtype(dtype), bar
        self.file = open(path, "wb")
        self.chunker, self.pending = _Chunker(), []
        self.tokens = self.bytes = self.documents = 0

    def add(self, pieces: Iterator[str]) -> None:
        """Append a document (after the separator, unless it is the first)."""
        if self.documents:
            self._push(_DOC_SEPARATOR)
        self.documents += 1
        for p in pieces:
            self.bar.update(self._push(p))

    def _push(self, text: str) -> int:
        n = len(text.encode("utf-8"))
        self.bytes += n
        self.pending += self.chunker.push(text)
        if len(self.pending) >= self.batch:
            self._flush()
        return n

    def _flush(self) -> None:
        if self.pending:
            ids = self.encode(self.pending)
            self.file.write(ids.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self.tokens += len(ids)
            self.pending = []

    def close(self) -> dict:
        self.pending += self.chunker.finish()
        self._flush()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"file": self.path.name, "tokens": self.tokens, "bytes": self.bytes, "documents": self.documents}


def _byte_encoder(chunks: list[str]) -> np.ndarray:
    return np.frombuffer("".join(chunks).encode("utf-8"), dtype=np.uint8)




def _bpe_sample(sources, rule, val_fraction, bound: int, stats: dict, bar) -> Iterator[str]:
    """The chunks the BPE trains on: each training document cut by the chunker, in order, until
    the next chunk would take the sample past ``bound`` UTF-8 bytes."""
    for split, pieces in _split_documents(sources, rule, val_fraction):
        if split != "train":
            continue  # not read: a text file's pieces are read only when asked for
        chunker, first = _Chunker(), True
        for p in itertools.chain(pieces, [None]):
            for c in (chunker.push(p) if p is not None else chunker.finish()):
                n = len(c.encode("utf-8"))
                if stats["bytes"] + n > bound:
                    stats["complete"] = False
                    return
                stats["bytes"] += n
                stats["documents"] += first
                first = False
                bar.update(n)
                yield c
        if rule.n == 1:
            return  # the lone document's tail is validation


# =========================================================================
# public entry point
# =========================================================================
def _settings_key(settings: dict, sources: list[_Source]) -> str:
    h = hashlib.sha256(json.dumps({"format_version": PREPARED_FORMAT_VERSION, "settings": settings,
                                   "sources": [[s.rel, s.format, s.sha256] for s in sources]},
                                  sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def _check_out(out: Path) -> bool:
    """Whether ``out`` holds a manifest (a reuse candidate); an error for anything else in it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder")
    if out.is_dir():
        if (out / MANIFEST).is_file():
            return True
        if any(out.iterdir()):
            raise DataError(f"{out} holds files that are not a prepared corpus (no {MANIFEST}); "
                            f"pick a new or empty folder")
    return False


def prepare_corpus(
    data,
    out,
    tokenizer: str = "byte",
    bpe_vocab_size: int = LM_DATA["bpe_vocab_size"],
    val_fraction: float = LM_DATA["val_fraction"],
    seed: int = LM_DATA["seed"],
    bpe_sample_bytes: int = DEFAULT_BPE_SAMPLE_BYTES,
    dtype: str = "auto",
    progress: bool | None = None,
) -> dict:
    """Tokenize ``data`` into the prepared corpus folder ``out`` (see the module docstring).

    Args:
        data: a text, JSONL or Parquet file, or a folder of them.
        out: the folder to write (absent or empty), or one holding this same prepare (reused).
        tokenizer: ``"byte"`` (vocabulary 256) or ``"bpe"`` (byte-level, trained here).
        bpe_vocab_size: the BPE vocabulary asked for (>= 257; a small corpus may give fewer).
        val_fraction, seed: the validation rule's (``load_corpus``'s) settings.
        bpe_sample_bytes: at most this many UTF-8 bytes of training text train the BPE.
        dtype: ``"auto"`` (uint16 while the vocabulary fits, else uint32), ``"uint16"`` or ``"uint32"``.
        progress: bars of bytes read and tokens written; ``None``: only on a terminal.

    Returns:
        The manifest, plus ``"reused": True`` when ``out`` already held it.

    Raises:
        DataError / ValueError: a bad setting or input, or an ``out`` holding something else,
        all before anything is written.
    """
    if tokenizer not in ("byte", "bpe"):
        raise ValueError(f"tokenizer must be 'byte' or 'bpe', got {tokenizer!r}")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    for name, v, lo in (("bpe_vocab_size", bpe_vocab_size, 257), ("seed", seed, 0),
                        ("bpe_sample_bytes", bpe_sample_bytes, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if dtype not in ("auto", *DTYPE_LIMITS):
        raise ValueError(f"dtype must be auto, uint16 or uint32, got {dtype!r}")
    most = 256 if tokenizer == "byte" else bpe_vocab_size  # the largest vocabulary this can give
    if dtype != "auto" and most > DTYPE_LIMITS[dtype]:
        raise ValueError(f"a vocabulary of {most} ids is too big for {dtype} (at most {DTYPE_LIMITS[dtype]}); "
                         f"use dtype uint32 or auto")
    data, out = Path(data), Path(out)
    reuse = _check_out(out)
    settings = {"tokenizer": tokenizer, "val_fraction": float(val_fraction), "seed": seed, "dtype": dtype}
    if tokenizer == "bpe":
        settings.update(bpe_vocab_size=bpe_vocab_size, bpe_sample_bytes=bpe_sample_bytes)

    # -- pass 1: what there is, and which split each document goes to
    sources = _list_sources(data, out)
    rule = _ValSplit(val_fraction, seed)
    _scan(sources, rule, progress)
    _check_documents(data, sources, rule)
    key = _settings_key(settings, sources)
    if reuse:
        old = read_manifest(out)
        if old.get("key") != key:
            was = old.get("settings") if isinstance(old.get("settings"), dict) else {}
            diff = [f"{k} {was.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(was) | set(settings))
                    if was.get(k) != settings.get(k)]
            what = f"other settings ({', '.join(diff)})" if diff else "another input (its files or their sha256 differ)"
            raise DataError(f"{out} holds a prepared corpus of {what}; pick another --out (or remove it yourself)")
        load_prepared(out)  # its shards are whole
        return {**old, "reused": True}

    tmp = out.parent / f".{out.name}.prepare-{os.getpid()}.tmp"
    tmp.mkdir(parents=True)
    try:
        manifest = _write(tmp, data, sources, rule, settings, key, progress)
        fsync_folder(tmp)
        os.replace(tmp, out)  # out is absent or an empty folder
        fsync_folder(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own half-made folder, nothing else
        raise
    return {**manifest, "reused": False}


def _write(tmp: Path, data: Path, sources, rule, settings: dict, key: str, progress) -> dict:
    tokenizer, val_fraction = settings["tokenizer"], settings["val_fraction"]
    total = sum(s.text_bytes for s in sources)
    sample = None
    # -- pass 2 (BPE): train the tokenizer on a bounded sample of the training documents
    if tokenizer == "bpe":
        sample = {"bytes": 0, "documents": 0, "complete": True, "bound": settings["bpe_sample_bytes"]}
        with _progress(min(total, settings["bpe_sample_bytes"]), "bpe sample", progress) as bar:
            tok = _train_bpe_chunks(_bpe_sample(sources, rule, val_fraction, settings["bpe_sample_bytes"], sample,
                                                bar), settings["bpe_vocab_size"])
        tok.save(str(tmp / "tokenizer.json"))
        vocab, encode, batch = int(tok.get_vocab_size()), functools.partial(_bpe_ids, tok), _BPE_BATCH
    else:
        vocab, encode, batch = 256, _byte_encoder, 1
    dtype = settings["dtype"] if settings["dtype"] != "auto" else ("uint16" if vocab <= DTYPE_LIMITS["uint16"] else "uint32")

    # -- pass 3: tokenize every document into its split's shard
    with _progress(total, "tokenize", progress) as bar:
        writers = {s: _ShardWriter(tmp / f"{s}.bin", encode, batch, dtype, bar) for s in SPLITS}
        for split, pieces in _split_documents(sources, rule, val_fraction):
            writers[split].add(pieces)
            bar.set_postfix(tokens=f"{sum(w.tokens for w in writers.values()):,}", refresh=False)
        splits = {s: w.close() for s, w in writers.items()}  # a lone document counts once in each, as in load_corpus
        bar.set_postfix(tokens=f"{sum(sp['tokens'] for sp in splits.values()):,}", refresh=False)

    manifest = {
        "format": PREPARED_FORMAT,
        "format_version": PREPARED_FORMAT_VERSION,
        "key": key,
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "dtype": dtype,
        "byte_order": "little",
        "tokenizer_file": "tokenizer.json" if tokenizer == "bpe" else None,
        "splits": splits,
        "settings": settings,
        "validation_rule": VALIDATION_RULE,
        "bpe_sample": sample,
        "data": str(data.resolve()),
        "documents": rule.n,
        "skipped": sum(s.skipped for s in sources),
        "sources": [s.entry() for s in sources],
    }
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:  # last: its presence means complete
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return manifest
