"""``hypermlp generate`` from what ``hypermlp train`` wrote: checkpoints, tokenizers, mismatches."""

import json
import os

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.cli import main
from hypermlp.train import read_metrics

from ..helpers import assert_one_line_error, snapshot
from .helpers import lm_args


def test_train_then_generate(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--ckpt-every", "5")) == 0
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs if r["type"] == "train"] == list(range(1, 13))
    final = [r for r in recs if r["type"] == "eval"][-1]
    assert final["val_loss"] > 0 and final["val_bpb"] > 0
    ckpt = latest_checkpoint(str(out))
    assert ckpt.endswith("step-00000012")
    assert sorted(os.listdir(ckpt)) == ["checksums.json", "config.json", "model.safetensors", "trainer_state.pt"]
    capsys.readouterr()

    args = ["generate", "--checkpoint", str(out), "--prompt", "def f1", "--max-new-tokens", "20", "--temperature", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("def f1")
    assert main(args) == 0
    assert capsys.readouterr().out == text  # greedy: deterministic
    assert main(args[:-2] + ["--temperature", "1.0", "--top-k", "5", "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("def f1")


def test_bpe_tokenizer_travels_with_the_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "bpe"
    assert main(lm_args(corpus, out, "--tokenizer", "bpe", "--data-arg", "bpe_vocab_size=300")) == 0
    ckpt = latest_checkpoint(str(out))
    assert "tokenizer.json" in os.listdir(ckpt)
    assert json.load(open(os.path.join(ckpt, "config.json")))["vocab_size"] > 256
    capsys.readouterr()
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "def f2", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("def f2")


def test_mismatched_checkpoint_is_refused_and_left_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "3")) == 0
    before = snapshot(out)
    capsys.readouterr()
    # resume with another model shape
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--resume", "--d-model", "48")), "another model", "d_model")
    assert snapshot(out) == before
    # a checkpoint whose weights do not match its config.json
    ckpt = latest_checkpoint(str(out))
    cfg_path = os.path.join(ckpt, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["d_model"] = 48
    json.dump(cfg, open(cfg_path, "w"))
    tampered = snapshot(out)
    assert_one_line_error(capsys, main(["generate", "--checkpoint", ckpt, "--prompt", "x"]), "does not match",
                          "embed.weight")
    assert_one_line_error(capsys, main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"]), "no such")
    assert snapshot(out) == tampered
