"""The ``lm`` task's evaluation: the whole validation split (or a sample spread evenly over it),
and bits per byte of the bytes actually scored."""

import math
import random

import pytest
import torch

from hypermlp.data import IGNORE_INDEX
from hypermlp.models import LanguageModel
from hypermlp.tasks import LMTask, build_task
from hypermlp.train import TrainConfig, Trainer

from ..train.helpers import tiny_cfg

SEQ = 16


def words(n, seed):
    rng = random.Random(seed)
    vocab = ["return", "import", "self", "value", "lambda", "print", "while", "yield"]
    return "".join(" ".join(rng.choice(vocab) for _ in range(8)) + "\n" for _ in range(n))


def noise(n, seed):
    rng = random.Random(seed)
    return "".join("".join(rng.choice("qzxkjvwy0123456789") for _ in range(40)) + "\n" for _ in range(n))


def lm_task(tmp_path, text, **data):
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return build_task("lm", {"path": str(path), "seq_len": SEQ, **data}, str(tmp_path / "cache"))[0]


def by_hand(model, ids):
    """Summed next-token loss over every target of ``ids`` (windows of SEQ, context reset at
    each window start, the tail in a window that ends at the end), and the count."""
    total, n = 0.0, 0
    starts = list(range(0, ids.numel() - 1, SEQ))
    with torch.no_grad():
        for s in starts:
            e = min(s + SEQ, ids.numel() - 1)  # targets s+1 .. e
            lo = max(0, e - SEQ)  # the tail window: the last SEQ inputs
            logits = model(ids[lo:e][None])[0]  # (e - lo, V)
            keep = slice(s - lo, e - lo)
            total += float(torch.nn.functional.cross_entropy(logits[keep], ids[s + 1 : e + 1], reduction="sum"))
            n += e - s
    return total, n


def test_the_evaluation_scores_every_target_of_the_validation_split(tmp_path):
    task = lm_task(tmp_path, words(300, 0) + noise(100, 1), val_fraction=0.3)
    val = task.corpus.val
    assert (val.numel() - 1) % SEQ  # the split ends in a partial window
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg(vocab=256, max_len=SEQ)).eval()
    ev = task.evaluate(model)
    assert ev["val_scope"] == "full" and ev["val_coverage"] == 1.0
    assert ev["val_tokens"] == val.numel() - 1 == ev["val_bytes"]  # bytes: one per token
    assert ev["val_windows"] == -(-(val.numel() - 1) // SEQ)
    total, n = by_hand(model, val)
    assert n == ev["val_tokens"]
    assert ev["val_loss"] == pytest.approx(total / n, rel=1e-5)
    assert ev["val_bpb"] == pytest.approx(total / (n * math.log(2)), rel=1e-5)
    # the end of the split counts: change its last tokens and the loss moves (a score of the
    # first windows alone would not see it)
    task.corpus.val = torch.cat([val[:-SEQ], torch.full((SEQ,), ord("~"))])
    changed = LMTask(task.corpus, seq_len=SEQ).evaluate(model)
    assert changed["val_tokens"] == ev["val_tokens"] and changed["val_loss"] != ev["val_loss"]


def test_a_sample_is_spread_over_the_split_during_training_and_the_final_evaluation_is_whole(tmp_path):
    task = lm_task(tmp_path, words(300, 0) + noise(100, 1), val_fraction=0.3, eval_windows=3)
    val = task.corpus.val
    model = LanguageModel(tiny_cfg(vocab=256, max_len=SEQ)).eval()
    ev = task.evaluate(model)
    assert ev["val_scope"] == "sample" and ev["val_windows"] == 3 and ev["val_tokens"] == 3 * SEQ
    assert ev["val_coverage"] == pytest.approx(3 * SEQ / (val.numel() - 1))
    starts = [int(s) for s in (torch.arange(3) + 0.5) * ((val.numel() - 1) // SEQ) / 3]
    x, _ = task.sample
    assert [torch.equal(x[i], val[s * SEQ : s * SEQ + SEQ]) for i, s in enumerate(starts)] == [True] * 3
    assert starts[-1] * SEQ > 0.6 * val.numel()  # the last sampled window lies in the split's last third
    assert task.evaluate(model, final=True)["val_scope"] == "full" and task.final_eval_differs

    # through the Trainer: evaluations during training use the sample, the last one the whole split
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=2, device="cpu", progress=False)
    res = Trainer(tiny_cfg(vocab=256, max_len=SEQ), task, cfg).fit()
    assert [(r["step"], r["val_scope"]) for r in res["evals"]] == [(2, "sample"), (4, "sample"), (6, "full")]
    assert res["final"]["val_tokens"] == val.numel() - 1
    # a run stopped early still ends with a whole-split evaluation
    stop = TrainConfig(steps=6, batch_size=4, eval_every=2, device="cpu", progress=False,
                       early_stop_metric="val_loss", early_stop_at=100.0)
    res = Trainer(tiny_cfg(vocab=256, max_len=SEQ), task, stop).fit()
    assert res["stopped_early"] and res["step"] == 2
    assert [(r["step"], r["val_scope"]) for r in res["evals"]] == [(2, "sample"), (2, "full")]


def test_bits_per_byte_divide_by_the_bytes_actually_scored(tmp_path):
    # BPE on text whose validation split is word-like (several bytes per token) then noise-like
    # (about one): a sample's bytes per token differs from the whole split's
    text = words(200, 0) + noise(60, 1) + words(150, 2) + noise(150, 3)
    task = lm_task(tmp_path, text, tokenizer="bpe", bpe_vocab_size=400, val_fraction=0.5, eval_windows=2)
    corpus = task.corpus
    torch.manual_seed(0)
    model = LanguageModel(tiny_cfg(vocab=corpus.vocab_size, max_len=SEQ)).eval()
    ev = task.evaluate(model)
    _, y = task.sample
    scored = y[y != IGNORE_INDEX]
    n_bytes = len(corpus.decode(scored).encode("utf-8"))  # ASCII text: the bytes behind the scored tokens
    assert ev["val_bytes"] == n_bytes and ev["val_tokens"] == scored.numel()
    total = ev["val_loss"] * ev["val_tokens"]
    assert ev["val_bpb"] == pytest.approx(total / (math.log(2) * n_bytes), rel=1e-9)
    whole_ratio = corpus.n_bytes_val / corpus.val.numel()
    sample_ratio = n_bytes / scored.numel()
    assert abs(sample_ratio / whole_ratio - 1) > 0.1, (sample_ratio, whole_ratio)  # the case matters
    wrong = total / (math.log(2) * ev["val_tokens"] * whole_ratio)  # the whole split's ratio
    assert abs(ev["val_bpb"] / wrong - 1) > 0.1
    # the whole split: every byte but the first token's
    full = task.evaluate(model, final=True)
    assert full["val_bytes"] == len(corpus.decode(corpus.val[1:]).encode("utf-8"))
    assert full["val_bytes"] == corpus.n_bytes_val - len(corpus.decode(corpus.val[:1]).encode("utf-8"))


@pytest.mark.parametrize("bad", [0, -3, 2.5, "all", True])
def test_eval_windows_must_be_a_positive_count_or_null(tmp_path, bad):
    from hypermlp.config import ConfigError

    with pytest.raises(ConfigError, match="eval_windows"):
        lm_task(tmp_path, words(100, 0), eval_windows=bad)
