"""The library's tokenizers (``hypermlp.data.text``) as ``transformers`` tokenizers.

* ``"byte"``: token id = UTF-8 byte (vocabulary 256). Built as a byte-level BPE without merges,
  whose 256 tokens are the byte-level alphabet in byte order, so ``tok(text).input_ids ==
  list(text.encode())`` and ``decode`` gives the text back.
* ``"bpe"``: the byte-level BPE ``hypermlp train --tokenizer bpe`` trained and saved as
  ``tokenizer.json`` beside the weights; ids unchanged.

End of text and padding: the NUL byte's token (id 0 for bytes). The corpus loader refuses text
with NUL bytes, so no model of ours was trained on it: it is free to mark the end of a text and to
fill padding, and ``eos_token`` / ``pad_token`` name it (lm-evaluation-harness and ``generate``
want both). Its string is ``"\\x00"``, so a NUL in the input still encodes to the NUL token.
"""

from __future__ import annotations

import json
from typing import Dict, Optional

__all__ = ["hf_tokenizer", "byte_tokenizer", "bpe_tokenizer", "END_OF_TEXT"]

END_OF_TEXT = "\x00"


def _byte_alphabet() -> Dict[int, str]:
    """Byte -> the character that stands for it in byte-level BPE vocabularies: printable
    Latin-1 bytes stand for themselves, the other 68 take the code points from 256 up, in byte
    order (the convention of GPT-2's tokenizer and of ``tokenizers``' ByteLevel)."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _wrap(backend, max_len: Optional[int]):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True, normalized=False)])
    kwargs = {"model_max_length": max_len} if max_len else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                   model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False,
                                   **kwargs)


def byte_tokenizer(max_len: Optional[int] = None):
    """The byte tokenizer (ids = UTF-8 bytes) as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    vocab = {alphabet[b]: b for b in range(1, 256)}
    vocab[END_OF_TEXT] = 0  # byte 0 is only ever met as the end-of-text token (see the module docstring)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return _wrap(backend, max_len)


def bpe_tokenizer(path: str, max_len: Optional[int] = None):
    """The byte-level BPE saved at ``path`` (a ``tokenizer.json`` of ``hypermlp train``) as a
    ``PreTrainedTokenizerFast`` with the same ids."""
    from tokenizers import Tokenizer

    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    model = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ValueError(f"{path} is not a byte-level BPE tokenizer (model {model.get('type')!r})")
    nul = _byte_alphabet()[0]
    vocab = model["vocab"]
    if nul not in vocab:
        raise ValueError(f"{path}: the vocabulary lacks the byte-level alphabet (no token for byte 0)")
    for merge in model.get("merges") or []:
        pieces = merge.split(" ") if isinstance(merge, str) else list(merge)
        if any(nul in p for p in pieces):
            raise ValueError(f"{path}: a merge uses byte 0, so it cannot serve as the end-of-text token")
    vocab[END_OF_TEXT] = vocab.pop(nul)  # same id, named by the character it encodes
    return _wrap(Tokenizer.from_str(json.dumps(spec)), max_len)


def hf_tokenizer(kind: str, path: Optional[str] = None, max_len: Optional[int] = None):
    """``kind`` ``"byte"`` or ``"bpe"`` (then ``path``: its ``tokenizer.json``)."""
    if kind == "byte":
        return byte_tokenizer(max_len)
    if kind == "bpe":
        if not path:
            raise ValueError("a BPE tokenizer needs the path of its tokenizer.json")
        return bpe_tokenizer(path, max_len)
    raise ValueError(f"tokenizer must be 'byte' or 'bpe', got {kind!r}")
