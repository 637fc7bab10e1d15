"""The byte and BPE tokenizers as transformers tokenizers: the library's ids, text back, and the
NUL token as end of text and padding."""

import random

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hypermlp.data.text import load_corpus
from hypermlp.hf import hf_tokenizer

from .helpers import TEXT


def random_texts(n=100, seed=0):
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x400, 0x4FF), (0x4E00, 0x4E80), (0x1F600, 0x1F64F)]
    out = []
    for _ in range(n):
        lo_hi = [rng.choice(pools) for _ in range(rng.randint(1, 30))]
        out.append("".join(chr(rng.randint(lo, hi)) for lo, hi in lo_hi) + rng.choice(["", "\n", "  \t"]))
    return out


def test_byte_tokenizer_ids_are_the_utf8_bytes(tmp_path):
    tok = hf_tokenizer("byte", max_len=128)
    assert isinstance(tok, PreTrainedTokenizerFast) and len(tok) == 256
    assert tok.eos_token_id == tok.pad_token_id == 0 and tok.model_max_length == 128
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for t in (tok, again):
        for s in random_texts() + ["Āé\x00x", ""]:
            ids = t(s)["input_ids"]
            assert ids == list(s.encode("utf-8")), s
            assert t.decode(ids) == s
    assert again.decode([72, 105, 0], skip_special_tokens=True) == "Hi"
    batch = again(["ab", "abcd"], padding=True, padding_side="left")
    assert batch["input_ids"][0] == [0, 0, 97, 98] and batch["attention_mask"][0] == [0, 0, 1, 1]
    assert "token_type_ids" not in batch


def test_bpe_tokenizer_keeps_the_trained_ids(tmp_path):
    corpus = load_corpus(_write(tmp_path), tokenizer="bpe", bpe_vocab_size=300, cache_dir=str(tmp_path / "cache"))
    tok = hf_tokenizer("bpe", corpus.tokenizer_path, max_len=64)
    nul = corpus._tok.token_to_id("Ā")  # the byte-level character of byte 0
    assert tok.eos_token_id == tok.pad_token_id == nul and len(tok) == corpus.vocab_size
    tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    for s in random_texts(50) + [TEXT[:500], "def f7(x):\n    return x * 7"]:
        assert again(s)["input_ids"] == corpus.encode(s).tolist(), s
        assert again.decode(again(s)["input_ids"]) == s
    assert again("a\x00b")["input_ids"] == corpus.encode("a\x00b").tolist()


def _write(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT)
    return str(p)
