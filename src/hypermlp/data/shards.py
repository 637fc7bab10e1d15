"""Reading a prepared corpus (a folder ``hypermlp prepare`` wrote) without loading it.

The folder holds ``manifest.json`` (written last: its presence means the folder is complete),
one raw file of little-endian token ids per split (``train.bin``, ``val.bin``; the dtype,
``uint16`` or ``uint32``, is in the manifest) and, for BPE, ``tokenizer.json``.
:func:`load_prepared` opens the splits as read-only ``np.memmap`` s inside a
:class:`~hypermlp.data.text.Corpus`; the batching functions of :mod:`hypermlp.data.text` read
them only where their windows lie.

Opening checks what would otherwise fail later or silently: the manifest's format and fields,
each split's size (a whole number of ids, as many as the manifest says) and, in one sequential
pass per split that holds nothing, that every id is below the vocabulary size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .common import DataError

__all__ = [
    "MANIFEST",
    "PREPARED_FORMAT",
    "PREPARED_FORMAT_VERSION",
    "SPLITS",
    "DTYPE_LIMITS",
    "is_prepared",
    "read_manifest",
    "open_split",
    "load_prepared",
]

MANIFEST = "manifest.json"
PREPARED_FORMAT = "hypermlp-prepared-corpus"
PREPARED_FORMAT_VERSION = 1
SPLITS = ("train", "val")
DTYPE_LIMITS = {"uint16": 1 << 16, "uint32": 1 << 32}  # ids a dtype holds: vocabulary sizes up to these
_SCAN_IDS = 1 << 24  # ids per block of the vocabulary check


def is_prepared(path) -> bool:
    """Whether ``path`` is a prepared corpus's folder: it holds ``manifest.json`` and either that
    names the format or a ``train.bin`` is beside it (so a damaged manifest of ours is reported,
    while a text folder that merely has a manifest.json of its own is still read as text)."""
    if path is None or not os.path.isfile(os.path.join(path, MANIFEST)):
        return False
    if os.path.isfile(os.path.join(path, "train.bin")):
        return True
    try:
        with open(os.path.join(path, MANIFEST), "rb") as f:
            return PREPARED_FORMAT.encode() in f.read(4096)
    except OSError:
        return False


def read_manifest(folder) -> dict:
    """The manifest of the prepared corpus in ``folder``, its fields checked (DataError naming
    the problem)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"{path}: cannot read the prepared corpus's manifest ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable manifest (bad JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PREPARED_FORMAT:
        raise DataError(f"{path}: not the manifest of a prepared corpus (no 'format: {PREPARED_FORMAT}')")
    version = manifest.get("format_version")
    if version != PREPARED_FORMAT_VERSION:
        raise DataError(f"{path}: prepared corpus format {version!r}; this hypermlp reads format "
                        f"{PREPARED_FORMAT_VERSION} (prepare it again)")
    tokenizer, vocab, dtype = manifest.get("tokenizer"), manifest.get("vocab_size"), manifest.get("dtype")
    if tokenizer not in ("byte", "bpe"):
        raise DataError(f"{path}: tokenizer must be byte or bpe, got {tokenizer!r}")
    if dtype not in DTYPE_LIMITS:
        raise DataError(f"{path}: dtype must be one of {sorted(DTYPE_LIMITS)}, got {dtype!r}")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 1:
        raise DataError(f"{path}: vocab_size must be a positive integer, got {vocab!r}")
    if vocab > DTYPE_LIMITS[dtype]:
        raise DataError(f"{path}: a vocabulary of {vocab} ids is too big for {dtype} (at most {DTYPE_LIMITS[dtype]})")
    splits = manifest.get("splits")
    for name in SPLITS:
        entry = splits.get(name) if isinstance(splits, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataError(f"{path}: no '{name}' split (splits.{name}.file)")
        for key in ("tokens", "bytes", "documents"):
            v = entry.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DataError(f"{path}: splits.{name}.{key} must be a count, got {v!r}")
    if tokenizer == "bpe" and not isinstance(manifest.get("tokenizer_file"), str):
        raise DataError(f"{path}: a BPE corpus needs its tokenizer_file")
    return manifest


def open_split(folder, manifest: dict, split: str) -> np.ndarray:
    """The ids of ``split`` as a read-only 1-D np.memmap, after checking its size against the
    manifest and that every id is below ``vocab_size``."""
    entry, vocab = manifest["splits"][split], manifest["vocab_size"]
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")  # written little-endian
    path = Path(folder) / entry["file"]
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read the {split} shard ({e.strerror or e})") from None
    if size % dtype.itemsize:
        raise DataError(f"{path}: truncated or damaged shard: {size} bytes is not a whole number of "
                        f"{manifest['dtype']} ids ({dtype.itemsize} bytes each)")
    if size // dtype.itemsize != entry["tokens"]:
        raise DataError(f"{path}: the shard holds {size // dtype.itemsize} ids but the manifest says "
                        f"{entry['tokens']} (truncated, or from another prepare)")
    if size == 0:
        return np.zeros(0, dtype=dtype)  # an empty file cannot be mapped
    try:
        ids = np.memmap(path, dtype=dtype, mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot map the {split} shard ({e})") from None
    if vocab < DTYPE_LIMITS[manifest["dtype"]]:  # otherwise the dtype alone keeps ids in range
        for i in range(0, len(ids), _SCAN_IDS):
            top = int(ids[i : i + _SCAN_IDS].max())
            if top >= vocab:
                raise DataError(f"{path}: id {top} (near position {i}) is not below the vocabulary size {vocab}: "
                                f"damaged shard, or a manifest from another prepare")
    return ids


def load_prepared(folder):
    """The prepared corpus in ``folder`` as a :class:`~hypermlp.data.text.Corpus` whose
    ``train`` / ``val`` are read-only np.memmaps (nothing is loaded)."""
    from .text import Corpus, _load_bpe

    folder = Path(folder)
    manifest = read_manifest(folder)
    train, val = (open_split(folder, manifest, s) for s in SPLITS)
    tok, tok_path = None, None
    if manifest["tokenizer"] == "bpe":
        tok_path = folder / manifest["tokenizer_file"]
        try:
            tok = _load_bpe(tok_path)
        except Exception as e:  # tokenizers raises its own exception types
            raise DataError(f"{tok_path}: cannot load the BPE tokenizer ({' '.join(str(e).split())})") from None
        if tok.get_vocab_size() != manifest["vocab_size"]:
            raise DataError(f"{tok_path}: the tokenizer has {tok.get_vocab_size()} ids but the manifest says "
                            f"{manifest['vocab_size']}")
    sp = manifest["splits"]
    return Corpus(
        train=train,
        val=val,
        vocab_size=manifest["vocab_size"],
        tokenizer=manifest["tokenizer"],
        n_bytes_train=sp["train"]["bytes"],
        n_bytes_val=sp["val"]["bytes"],
        source=(f"prepared:{folder} ({sp['train']['tokens']} + {sp['val']['tokens']} tokens, "
                f"key {str(manifest.get('key'))[:16]})"),
        n_docs_train=sp["train"]["documents"],
        n_docs_val=sp["val"]["documents"],
        tokenizer_path=str(tok_path) if tok_path is not None else None,
        _tok=tok,
    )
