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
from typing import Any, Iterator, Sequence

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
        train, val: 1-D ``torch.long`` token ids of each split.
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


def _split(docs, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Train and val text pieces.  By document (hash of path) or, for one document, its tail."""
    if len(docs) == 1:
        text = docs[0][1]
        if len(text) < 2:
            raise DataError(f"{docs[0][0]}: too little text to split into train and validation")
        cut = int(round(len(text) * (1.0 - val_fraction)))
        cut = min(max(cut, 1), len(text) - 1)
        # prefer cutting at a line start, if one is close enough
        nl = text.rfind("\n", max(1, cut - 4096), cut)
        if nl != -1 and nl + 1 < len(text):
            cut = nl + 1
        return [text[:cut]], [text[cut:]]
    u = [(_doc_unit(rel, seed), i) for i, (rel, _) in enumerate(docs)]
    is_val = [x < val_fraction for x, _ in u]
    if not any(is_val):  # always keep at least one validation document ...
        is_val[min(u)[1]] = True
    if all(is_val):  # ... and at least one training document
        is_val[max(u)[1]] = False
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


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, at newlines where possible."""
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


def _train_bpe(pieces: list[str], vocab_size: int):
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
    tok.train_from_iterator((c for p in pieces for c in _chunks(p)), trainer=trainer)
    return tok


def _bpe_encode(tok, text: str) -> torch.Tensor:
    if not text:
        return torch.zeros(0, dtype=torch.long)
    encs = tok.encode_batch(_chunks(text))
    ids = [i for e in encs for i in e.ids]
    return torch.tensor(ids, dtype=torch.long)


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
def _check_ids(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if ids.numel() < seq_len + 1:
        raise DataError(f"token stream of {ids.numel()} ids is too short for seq_len={seq_len}")
    return ids


def get_batch(
    ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows: inputs ``(B, seq_len)`` and targets shifted by one.

    Start offsets are uniform over every valid position, drawn with
    ``generator`` (pass a seeded ``torch.Generator`` for reproducibility).
    """
    ids = _check_ids(ids, seq_len)
    starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    w = ids[idx].long()
    return w[:, :-1], w[:, 1:]


def batch_iterator(
    ids: torch.Tensor,
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


def eval_windows(
    ids: torch.Tensor, seq_len: int, max_windows: int | None = None
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
    """
    ids = _check_ids(ids, seq_len)
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows < 1):
        raise ValueError(f"max_windows must be a positive integer or None, got {max_windows!r}")
    n = ids.numel()
    full = (n - 1) // seq_len
    rest = (n - 1) - full * seq_len
    x = ids[: full * seq_len].reshape(full, seq_len).long()
    y = ids[1 : full * seq_len + 1].reshape(full, seq_len).long()
    if max_windows is not None and max_windows < full + (rest > 0):
        pick = ((torch.arange(max_windows, dtype=torch.float64) + 0.5) * full / max_windows).long()
        return x[pick], y[pick]
    if rest:
        tail_x = ids[n - 1 - seq_len : n - 1].long()[None]
        tail_y = ids[n - seq_len :].long().clone()[None]
        tail_y[0, : seq_len - rest] = IGNORE_INDEX  # already scored by the last full window
        x, y = torch.cat([x, tail_x]), torch.cat([y, tail_y])
    return x, y


def bits_per_byte(mean_loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """``mean_loss_nats * n_tokens / (n_bytes * ln 2)``: total bits over the UTF-8 bytes covered."""
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return float(mean_loss_nats) * float(n_tokens) / (float(n_bytes) * math.log(2.0))
