"""Language-modelling corpus: loading, tokenization (bytes or local BPE), batching.

* :func:`load_corpus` reads a UTF-8 file, a folder of text files, or (default)
  the Python standard-library sources of the running interpreter, splits it
  deterministically into train / validation by document, and tokenizes it
  either as raw UTF-8 bytes (vocab 256) or with a byte-level BPE trained
  locally on the train split with Hugging Face ``tokenizers``.
* :func:`get_batch` / :func:`batch_iterator` draw random training windows with
  a caller-supplied ``torch.Generator``; :func:`eval_windows` gives the
  deterministic non-overlapping validation windows (the whole split, or a
  sample spread evenly over it).
* A folder made by ``hypermlp prepare`` (:mod:`hypermlp.data.prepare`) opens as a
  :class:`Corpus` whose splits are memory-mapped (:mod:`hypermlp.data.shards`); the batching
  functions take those as they are.
* :func:`bits_per_byte` converts a mean token loss (nats) into bits per UTF-8
  byte, comparable across tokenizers; :meth:`Corpus.token_bytes` gives the
  bytes behind each token id, to count the bytes actually scored.

Nothing is downloaded; everything works offline.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..defaults import LM_DATA
from .common import IGNORE_INDEX, DataError, atomic_torch_save

__all__ = [
    "Corpus",
    "load_corpus",
    "default_corpus_root",
    "DEFAULT_CORPUS_MAX_BYTES",
    "get_batch",
    "batch_iterator",
    "eval_windows",
    "eval_window_plan",
    "plan_windows",
    "gather_windows",
    "bits_per_byte",
]

# Cap on the default (standard-library) corpus, so loading stays fast.
DEFAULT_CORPUS_MAX_BYTES = 8_000_000
# Directory names never read for the default corpus.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)
_DOC_SEPARATOR = "\n"  # joins consecutive documents of a split
_CHUNK_CHARS = 1 << 20  # BPE encodes long texts in ~1 MiB chunks cut at newlines
_CORPUS_FORMAT_VERSION = 1


# =========================================================================
# corpus container
# =========================================================================
@dataclass
class Corpus:
    """A tokenized train / validation corpus.

    Attributes:
        train, val: 1-D ``torch.long`` token ids of each split; for a prepared corpus
            (:func:`hypermlp.data.shards.load_prepared`) read-only 1-D ``np.memmap`` s of
            ``uint16`` / ``uint32`` ids, which the batching functions below read only where
            their windows lie.
        vocab_size: tokenizer vocabulary size (256 for bytes).
        tokenizer: ``"byte"`` or ``"bpe"``.
        n_bytes_train, n_bytes_val: UTF-8 byte counts of the text behind each
            split (for :func:`bits_per_byte`).
        source: human-readable description of where the text came from.
        n_docs_train, n_docs_val: documents per split (1 and 1 when a single
            document was split at its tail).
        tokenizer_path: the saved BPE tokenizer JSON (cache runs), else ``None``.
    """

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    tokenizer: str
    n_bytes_train: int
    n_bytes_val: int
    source: str
    n_docs_train: int = 0
    n_docs_val: int = 0
    tokenizer_path: str | None = None
    _tok: Any = field(default=None, repr=False, compare=False)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (1-D ``torch.long``) of ``text``."""
        if self.tokenizer == "byte":
            return _byte_encode(text)
        return torch.tensor(self._tok.encode(text).ids, dtype=torch.long)

    def token_bytes(self) -> torch.Tensor:
        """``(vocab_size,)`` long: how many UTF-8 bytes each token id stands for.

        1 for every id of the byte tokenizer; for the byte-level BPE the length of the token's
        string, whose characters are the byte-level alphabet (one character per byte).  So the
        bytes behind any run of ids is a sum over this table, and over a whole split it gives
        ``n_bytes_*`` back exactly.
        """
        if self.tokenizer == "byte":
            return torch.ones(self.vocab_size, dtype=torch.long)
        out = torch.zeros(self.vocab_size, dtype=torch.long)
        for token, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i < self.vocab_size:
                out[i] = len(token)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of ``ids``; invalid UTF-8 (e.g. a window cutting a character) becomes U+FFFD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().reshape(-1).tolist()
        elif isinstance(ids, np.ndarray):
            ids = ids.reshape(-1).tolist()
        else:
            ids = [int(i) for i in ids]
        if self.tokenizer == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return self._tok.decode(ids, skip_special_tokens=False)


# =========================================================================
# reading documents
# =========================================================================
def default_corpus_root() -> Path:
    """Directory of the running interpreter's standard library (``os.py``'s folder)."""
    return Path(os.path.dirname(os.__file__))


def _decode_text(raw: bytes) -> str | None:
    """The text of ``raw`` if it is UTF-8 text without NUL bytes, else ``None``."""
    if b"\x00" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("\ufeff"):  # drop a BOM
        text = text[1:]
    return text


def _walk_sorted(root: Path, excluded_dirs: frozenset[str] = frozenset(), suffix: str | None = None) -> list[tuple[str, Path]]:
    """(posix relative path, path) of every regular file below ``root``, sorted by relative path.

    Hidden files and directories (name starting with '.') are skipped; symlinked
    directories are not followed.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in excluded_dirs)
        for fn in filenames:
            if fn.startswith("."):
                continue
            if suffix is not None and not fn.endswith(suffix):
                continue
            p = Path(dirpath) / fn
            if not p.is_file():
                continue
            found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda t: t[0])
    return found


def _read_folder(root: Path, files, max_bytes: int | None) -> tuple[list[tuple[str, str]], int]:
    docs, total, skipped = [], 0, 0
    for rel, p in files:
        try:
            raw = p.read_bytes()
        except OSError:
            skipped += 1
            continue
        text = _decode_text(raw)
        if text is None or not text:
            skipped += 1
            continue
        n = len(text.encode("utf-8"))
        if max_bytes is not None and total + n > max_bytes:
            if docs:
                break
            continue  # a single file larger than the cap: try the next
        docs.append((rel, text))
        total += n
    return docs, skipped


def _read_documents(path, max_bytes: int | None) -> tuple[list[tuple[str, str]], str]:
    """Documents ``[(relative path, text), ...]`` in sorted order, and a source description."""
    if path is None:
        root = default_corpus_root()
        cap = DEFAULT_CORPUS_MAX_BYTES if max_bytes is None else max_bytes
        files = _walk_sorted(root, _STDLIB_EXCLUDED_DIRS, suffix=".py")
        docs, _ = _read_folder(root, files, cap)
        if not docs:
            raise DataError(f"{root}: no readable Python standard-library sources for the default corpus")
        n = sum(len(t.encode("utf-8")) for _, t in docs)
        return docs, f"python-stdlib:{root} ({len(docs)} files, {n} bytes, cap {cap})"

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if p.is_file():
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise DataError(f"{p}: cannot read file ({e.strerror or e})") from e
        if not raw:
            raise DataError(f"{p}: file is empty")
        text = _decode_text(raw)
        if text is None:
            raise DataError(f"{p}: not UTF-8 text (binary or undecodable)")
        if not text:
            raise DataError(f"{p}: file is empty")
        if max_bytes is not None:
            b = text.encode("utf-8")[:max_bytes]
            text = b.decode("utf-8", errors="ignore")
        return [(p.name, text)], f"file:{p} ({len(text.encode('utf-8'))} bytes)"
    if p.is_dir():
        files = _walk_sorted(p)
        if not files:
            raise DataError(f"{p}: folder is empty")
        docs, skipped = _read_folder(p, files, max_bytes)
        if not docs:
            raise DataError(f"{p}: folder has no readable non-empty UTF-8 text files ({skipped} skipped)")
        n = sum(len(t.encode("utf-8")) for _, t in docs)
        return docs, f"folder:{p} ({len(docs)} files, {n} bytes, {skipped} skipped)"
    raise DataError(f"{p}: neither a regular file nor a folder")


# =========================================================================
# splitting
# =========================================================================
def _doc_unit(rel: str, seed: int) -> float:
    """Stable pseudo-uniform number in [0, 1) from the document's relative path."""
    h = hashlib.sha256(f"{seed}:{rel}".encode("utf-8")).hexdigest()
    return int(h[:16], 16) / float(1 << 64)


class _ValSplit:
    """The per-document validation rule, fed one document name at a time (so a stream of
    documents far too large to hold can use it: :mod:`hypermlp.data.prepare`).

    Document ``i`` named ``name`` goes to validation iff ``_doc_unit(name, seed) < val_fraction``,
    except that at least one document lands in each split: with no validation document the
    one of smallest unit goes there, with no training document the one of largest unit stays
    in train.
    """

    def __init__(self, val_fraction: float, seed: int):
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self.n = self.n_val = 0
        self.lowest = self.highest = None  # (unit, index) of the extreme documents

    def unit(self, name: str) -> float:
        return _doc_unit(name, self.seed)

    def add(self, name: str) -> None:
        """Count document number ``self.n`` (they must come in order)."""
        key = (self.unit(name), self.n)
        self.n_val += key[0] < self.val_fraction
        self.lowest = key if self.lowest is None or key < self.lowest else self.lowest
        self.highest = key if self.highest is None or key > self.highest else self.highest
        self.n += 1

    def is_val(self, index: int, name: str) -> bool:
        """Whether document ``index`` (named ``name``) is a validation document; after every ``add``."""
        if self.n_val == 0 and index == self.lowest[1]:
            return True
        if self.n_val == self.n and index == self.highest[1]:
            return False
        return self.unit(name) < self.val_fraction


def _tail_cut(n_chars: int, val_fraction: float) -> tuple[int, int]:
    """Where one document of ``n_chars`` characters is cut into train and validation: the
    nominal cut ``c`` (characters ``[c:]`` are validation) and the start ``lo`` of the window
    ``[lo, c)`` whose last newline, if any, moves the cut to just after it (a line start)."""
    cut = int(round(n_chars * (1.0 - val_fraction)))
    cut = min(max(cut, 1), n_chars - 1)
    return max(1, cut - 4096), cut


def _split(docs, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Train and val text pieces.  By document (hash of path) or, for one document, its tail."""
    if len(docs) == 1:
        text = docs[0][1]
        if len(text) < 2:
            raise DataError(f"{docs[0][0]}: too little text to split into train and validation")
        lo, cut = _tail_cut(len(text), val_fraction)
        # prefer cutting at a line start, if one is close enough
        nl = text.rfind("\n", lo, cut)
        if nl != -1:
            cut = nl + 1
        return [text[:cut]], [text[cut:]]
    rule = _ValSplit(val_fraction, seed)
    for rel, _ in docs:
        rule.add(rel)
    is_val = [rule.is_val(i, rel) for i, (rel, _) in enumerate(docs)]
    train = [t for (_, t), v in zip(docs, is_val) if not v]
    val = [t for (_, t), v in zip(docs, is_val) if v]
    return train, val


def _join(pieces: list[str]) -> str:
    return _DOC_SEPARATOR.join(pieces)


# =========================================================================
# tokenizers
# =========================================================================
def _byte_encode(text: str) -> torch.Tensor:
    arr = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return torch.from_numpy(arr)


class _Chunker:
    """Cuts a stream of text into pieces of about ``size`` characters (``_CHUNK_CHARS``), at
    the last newline of each piece where there is one: a piece ends at character ``size`` of
    what is left, or just after the last ``"\\n"`` among its characters 1 to size-1.  Text may
    arrive in parts of any size; the pieces are the same as for the whole text at once."""

    def __init__(self, size: int | None = None):
        self.size = _CHUNK_CHARS if size is None else int(size)
        self.rest = ""  # text not yet cut off

    def push(self, text: str) -> list[str]:
        """The pieces complete once ``text`` is appended (a piece is complete when more than
        ``size`` characters follow its start)."""
        rest, out, i = self.rest + text, [], 0
        while len(rest) - i > self.size:  # by index: a long text is copied once, not once per piece
            k = rest.rfind("\n", i + 1, i + self.size)
            j = k + 1 if k != -1 else i + self.size
            out.append(rest[i:j])
            i = j
        self.rest = rest[i:]
        return out

    def finish(self) -> list[str]:
        """The last piece (the text left), if any."""
        out, self.rest = ([self.rest] if self.rest else []), ""
        return out


def _chunks(text: str, size: int | None = None) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, at newlines where possible."""
    chunker = _Chunker(size)
    return chunker.push(text) + chunker.finish()


def _train_bpe(pieces: list[str], vocab_size: int):
    """A byte-level BPE trained on ``pieces`` (documents), each cut by :func:`_chunks`."""
    return _train_bpe_chunks((c for p in pieces for c in _chunks(p)), vocab_size)


def _train_bpe_chunks(chunks: Iterable[str], vocab_size: int):
    """A byte-level BPE trained on a stream of text chunks (consumed once, never held whole)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(chunks, trainer=trainer)
    return tok


def _bpe_ids(tok, chunks: list[str]) -> np.ndarray:
    """The BPE ids of ``chunks`` one after another, int64 (each chunk encoded on its own, in
    parallel; without offsets where this tokenizers version can, which also keeps its memory flat)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return np.fromiter((i for e in encode(chunks) for i in e.ids), dtype=np.int64)


def _bpe_encode(tok, text: str) -> torch.Tensor:
    if not text:
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(_bpe_ids(tok, _chunks(text)))


def _load_bpe(path: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


# =========================================================================
# public loader
# =========================================================================
def load_corpus(
    path: str | os.PathLike | None = None,
    tokenizer: str = "byte",
    bpe_vocab_size: int = LM_DATA["bpe_vocab_size"],
    val_fraction: float = LM_DATA["val_fraction"],
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_bytes: int | None = None,
) -> Corpus:
    """Load, split and tokenize a text corpus.

    Args:
        path: a UTF-8 text file, or a folder read recursively in sorted
            relative-path order (hidden entries skipped; files with NUL bytes
            or invalid UTF-8 skipped).  ``None``: the ``*.py`` sources of the
            running interpreter's standard library (folders named
            site-packages, dist-packages, test, tests, idle_test and
            __pycache__ excluded), whole files in sorted order up to
            :data:`DEFAULT_CORPUS_MAX_BYTES` (8 MB) of UTF-8.
        tokenizer: ``"byte"`` (ids = UTF-8 bytes, vocab 256) or ``"bpe"``
            (byte-level BPE trained on the train split only).
        bpe_vocab_size: requested BPE vocabulary (>= 257); the trained
            vocabulary can be smaller on a tiny corpus.
        val_fraction: share of documents (or, for a single document, of its
            characters, taken from its tail) that goes to validation.
        cache_dir: where to keep the tokenized splits and the BPE tokenizer
            JSON, keyed by a sha256 of the text and settings; ``None`` = no cache.
        seed: salts the document hash, so different seeds give different
            (still machine-independent) splits.
        max_bytes: optional cap on the text read (whole files, sorted order);
            ``None`` = no cap for ``path``, 8 MB for the default corpus.

    Split: a document goes to validation iff
    ``sha256(f"{seed}:{relative path}")`` mapped to [0, 1) is below
    ``val_fraction`` (at least one document lands in each split).  Documents
    of a split are joined with a single ``"\\n"``; ``n_bytes_*`` count the
    UTF-8 bytes of the joined text, and ``decode(split ids)`` gives it back.

    Raises:
        DataError: missing path, empty file or folder, or no readable text.
    """
    if tokenizer not in ("byte", "bpe"):
        raise ValueError(f"tokenizer must be 'byte' or 'bpe', got {tokenizer!r}")
    if not (0.0 < float(val_fraction) < 1.0):
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if tokenizer == "bpe" and int(bpe_vocab_size) < 257:
        raise ValueError(f"bpe_vocab_size must be >= 257, got {bpe_vocab_size}")

    docs, source = _read_documents(path, max_bytes)
    train_pieces, val_pieces = _split(docs, float(val_fraction), int(seed))
    train_text, val_text = _join(train_pieces), _join(val_pieces)
    n_bytes_train = len(train_text.encode("utf-8"))
    n_bytes_val = len(val_text.encode("utf-8"))

    key = None
    cache_file = None
    if cache_dir is not None:
        h = hashlib.sha256()
        h.update(json.dumps({
            "format": _CORPUS_FORMAT_VERSION,
            "tokenizer": tokenizer,
            "bpe_vocab_size": int(bpe_vocab_size) if tokenizer == "bpe" else None,
        }, sort_keys=True).encode())
        for piece in (train_text, "\x00SPLIT\x00", val_text):
            h.update(piece.encode("utf-8"))
        key = h.hexdigest()[:24]
        cache_file = Path(cache_dir) / f"corpus-{tokenizer}-{key}.pt"

    tok_obj, tok_path = None, None
    if tokenizer == "bpe":
        if cache_dir is not None:
            th = hashlib.sha256(f"bpe:{int(bpe_vocab_size)}:".encode())
            th.update(train_text.encode("utf-8"))
            tok_path = Path(cache_dir) / f"bpe-{int(bpe_vocab_size)}-{th.hexdigest()[:24]}.json"
            if tok_path.exists():
                try:
                    tok_obj = _load_bpe(tok_path)
                except Exception:
                    tok_obj = None
        if tok_obj is None:
            tok_obj = _train_bpe(train_pieces, int(bpe_vocab_size))
            if tok_path is not None:
                tok_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = tok_path.with_name(f".{tok_path.name}.{os.getpid()}.tmp")
                tok_obj.save(str(tmp))
                os.replace(tmp, tok_path)
        vocab_size = int(tok_obj.get_vocab_size())
    else:
        vocab_size = 256

    train_ids = val_ids = None
    if cache_file is not None and cache_file.exists():
        try:
            d = torch.load(cache_file, map_location="cpu", weights_only=True)
            if d.get("vocab_size") == vocab_size:
                train_ids, val_ids = d["train"], d["val"]
        except Exception:
            train_ids = val_ids = None
    if train_ids is None:
        if tokenizer == "byte":
            train_ids, val_ids = _byte_encode(train_text), _byte_encode(val_text)
        else:
            train_ids, val_ids = _bpe_encode(tok_obj, train_text), _bpe_encode(tok_obj, val_text)
        if cache_file is not None:
            atomic_torch_save({"train": train_ids, "val": val_ids, "vocab_size": vocab_size}, cache_file)

    return Corpus(
        train=train_ids,
        val=val_ids,
        vocab_size=vocab_size,
        tokenizer=tokenizer,
        n_bytes_train=n_bytes_train,
        n_bytes_val=n_bytes_val,
        source=source,
        n_docs_train=len(train_pieces),
        n_docs_val=len(val_pieces),
        tokenizer_path=str(tok_path) if tok_path is not None else None,
        _tok=tok_obj,
    )


# =========================================================================
# batching and metrics
# =========================================================================
def _check_ids(ids, seq_len: int):
    """``ids`` as a 1-D token stream (a torch tensor, or a numpy array such as a prepared
    split's memmap, left as it is so that nothing is read), long enough for ``seq_len``."""
    if not isinstance(ids, np.ndarray):
        ids = torch.as_tensor(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if len(ids) < seq_len + 1:
        raise DataError(f"token stream of {len(ids)} ids is too short for seq_len={seq_len}")
    return ids


def gather_windows(ids, starts: torch.Tensor, length: int) -> torch.Tensor:
    """``(W, length)`` long: row ``w`` is ``ids[starts[w] : starts[w] + length]``.

    ``ids`` is a 1-D tensor or numpy array; a np.memmap is read only where the windows lie.
    """
    idx = starts.long()[:, None] + torch.arange(length)  # (W, length)
    if isinstance(ids, np.ndarray):
        return torch.from_numpy(ids[idx.numpy()].astype(np.int64))
    return ids[idx].long()


def get_batch(
    ids, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs ``(B, seq_len)`` and targets shifted by one.

    Start offsets are uniform over every valid position, drawn with
    ``generator`` (pass a seeded ``torch.Generator`` for reproducibility).  ``ids`` may be a
    prepared split's np.memmap: the same draws give the same windows as its tensor would.
    """
    ids = _check_ids(ids, seq_len)
    starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=generator)
    w = gather_windows(ids, starts, seq_len + 1)  # (B, T + 1)
    return w[:, :-1], w[:, 1:]


def batch_iterator(
    ids,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator | None = None,
    num_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield :func:`get_batch` batches, forever or ``num_batches`` times."""
    _check_ids(ids, seq_len)
    i = 0
    while num_batches is None or i < num_batches:
        yield get_batch(ids, batch_size, seq_len, generator)
        i += 1


def eval_window_plan(n: int, seq_len: int, max_windows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Where :func:`eval_windows`' windows lie in a split of ``n`` ids, without reading it:
    ``starts`` and ``skip``, both ``(W,)`` long.  Window ``w`` has inputs
    ``ids[starts[w] : starts[w] + seq_len]``, targets one further, and its first ``skip[w]``
    targets are not scored (they were, by an earlier window)."""
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 1):
        raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    full = (n - 1) // seq_len
    rest = (n - 1) - full * seq_len
    starts = torch.arange(full, dtype=torch.long) * seq_len
    if max_windows is not None and max_windows < full + (rest > 0):
        pick = ((torch.arange(max_windows, dtype=torch.float64) + 0.5) * full / max_windows).long()
        return starts[pick], torch.zeros(max_windows, dtype=torch.long)
    skip = torch.zeros(full, dtype=torch.long)
    if rest:
        starts = torch.cat([starts, torch.tensor([n - 1 - seq_len])])
        skip = torch.cat([skip, torch.tensor([seq_len - rest])])
    return starts, skip


def plan_windows(ids, seq_len: int, starts: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and targets ``(W, seq_len)`` of an :func:`eval_window_plan` (``-100`` = not
    scored), read from ``ids`` (a tensor or a np.memmap)."""
    w = gather_windows(ids, starts, seq_len + 1)  # (W, T + 1)
    x, y = w[:, :-1], w[:, 1:].clone()
    y[torch.arange(seq_len)[None, :] < skip[:, None]] = IGNORE_INDEX
    return x, y


def eval_windows(
    ids, seq_len: int, max_windows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic validation windows: inputs and targets ``(W, seq_len)``; a target of
    ``-100`` is not scored.

    With ``n = len(ids)`` there are ``n - 1`` targets (every id but the first).  Full window
    ``w`` takes inputs ``ids[w*T : (w+1)*T]`` and targets ``ids[w*T+1 : (w+1)*T+1]``
    (``T = seq_len``), for ``w < W_full = (n - 1) // T``.

    * ``max_windows=None`` (or at least the windows the whole split takes): the whole split.
      The ``r = (n - 1) % T`` targets left after the full windows get one more window that
      ends at the end of the split (inputs ``ids[n-1-T : n-1]``, targets ``ids[n-T:]``) and
      scores only its last ``r`` targets. Every target is scored exactly once: ``n - 1``.
    * ``max_windows=N`` smaller than that: ``N`` of the full windows spread evenly over the
      whole split (window ``floor((i + 1/2) * W_full / N)`` for ``i < N``), so the sample
      reaches from its start to its end instead of covering a slice at the start.

    Where the windows lie: :func:`eval_window_plan` (what the ``lm`` task reads batch by batch).
    """
    ids = _check_ids(ids, seq_len)
    starts, skip = eval_window_plan(len(ids), seq_len, max_windows)
    return plan_windows(ids, seq_len, starts, skip)


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """``mean_loss_nats * n_tokens / (n_bytes * ln 2)``: total bits over the UTF-8 bytes covered."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return float(mean_loss_nats) * float(n_tokens) / (float(n_bytes) * math.log(2.0))
