"""``hypermlp train``'s switches at scale end to end: flags and YAML keys reach the run and its
run.yaml, the plain progress lines and the final summary line, a resume from the folder alone,
``models:`` with ``--model``, and one readable line for every bad value."""

import os

import pytest
import yaml

from hypermlp.cli import main
from hypermlp.train import read_metrics

from ..helpers import assert_one_line_error
from .helpers import lm_args


def test_scale_flags_reach_the_run_and_its_record(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = lm_args(corpus, out, "--grad-accum", "2", "--precision", "bf16", "--activation-checkpointing",
                   "--keep-checkpoints", "2", "--ckpt-every", "4", "--log-every", "4", "--eval-every", "6",
                   "--device", "cpu")
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "precision bf16" in lines[0] and "12 steps of 256 tokens x grad_accum 2" in lines[0]
    assert [l.split(" |")[0] for l in lines if l.startswith("step ")] == ["step 4/12", "step 8/12", "step 12/12"]
    assert [l.split(" |")[0] for l in lines if l.startswith("eval ")] == ["eval step 6", "eval step 12"]
    done = [l for l in lines if l.startswith("done: ")]
    assert len(done) == 1 and done[0].startswith("done: step 12 | val_loss ") and "{" not in done[0]
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert {k: run["train"][k] for k in ("grad_accum", "precision", "activation_checkpointing", "keep_checkpoints",
                                         "log_every")} == {"grad_accum": 2, "precision": "bf16",
                                                           "activation_checkpointing": True, "keep_checkpoints": 2,
                                                           "log_every": 4}
    assert run["resolved"] == {"precision": "bf16", "device": "cpu", "processes": 1, "tokens_per_step": 256}
    assert sorted(d for d in os.listdir(out / "checkpoints") if d.startswith("step-")) == ["step-00000008",
                                                                                         "step-00000012"]
    assert (out / "curves.png").is_file()
    # resume from the folder alone: run.yaml's 'resolved:' is for the reader, the settings come back
    assert main(["train", "--out", str(out), "--resume", "--steps", "14", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == list(range(1, 15))
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["train"]["grad_accum"] == 2 and run["train"]["precision"] == "bf16"


def test_the_default_precision_is_auto_and_resolves_to_fp32_on_cpu(tmp_path, corpus, capsys):
    assert main(lm_args(corpus, tmp_path / "run", "--steps", "2", "--device", "cpu")) == 0
    run = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run["train"]["precision"] == "auto" and run["resolved"]["precision"] == "fp32"
    assert "precision fp32" in capsys.readouterr().out


def test_yaml_models_and_model_flag(tmp_path, corpus, capsys):
    cfg = tmp_path / "two.yaml"
    cfg.write_text(
        "task: lm\n"
        f"data: {{path: {corpus}, seq_len: 16, eval_windows: 2}}\n"
        f"out: {tmp_path / 'runs'}\n"
        "models:\n"
        "  hyper: {d_model: 32, n_layers: 1, mixer: hyperglu, mixer_args: {n_heads: 2}}\n"
        "  base: {d_model: 32, n_layers: 1, mixer: softmax, mixer_args: {n_heads: 2}}\n"
        "train: {steps: 2, batch_size: 4, grad_accum: 2, log_every: 0}\n"
    )
    capsys.readouterr()
    assert_one_line_error(capsys, main(["train", "--config", str(cfg)]), "several models (hyper, base)", "--model NAME")
    assert main(["train", "--config", str(cfg), "--model", "base"]) == 0
    run = yaml.safe_load((tmp_path / "runs" / "base" / "run.yaml").read_text())  # OUT/NAME
    assert run["model"]["mixer"] == "softmax" and run["train"]["grad_accum"] == 2 and "models" not in run
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hyper: hyperglu" in out and "base: softmax" in out and "budget: hyper " in out


@pytest.mark.parametrize("extra, message", [
    (["--grad-accum", "0"], "grad_accum must be a positive integer"),
    (["--grad-accum", "3"], "batch_size=8 is not divisible by grad_accum=3"),
    (["--precision", "fp16", "--device", "cpu"], "precision fp16 needs a GPU"),
    (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    (["--fsdp"], "fsdp shards the model over torchrun processes"),
    (["--keep-checkpoints", "-2"], "keep_checkpoints must be an integer >= 0"),
    (["--log-every", "-1"], "log_every must be an integer >= 0"),
    (["--world-size", "2"], "--world-size is for --dry-run"),
    (["--model", "hyperglu"], "--model picks one of a config's 'models:'"),
])
def test_bad_scale_flags_are_one_line_and_write_nothing(tmp_path, corpus, capsys, extra, message):
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(lm_args(corpus, out, *extra)), message)
    assert not out.exists()


def test_bad_scale_yaml_keys_name_the_field(tmp_path, corpus, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"task: lm\ndata: {{path: {corpus}, seq_len: 16}}\ntrain: {{steps: 2, precision: half}}\n")
    assert_one_line_error(capsys, main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]),
                          "precision must be one of auto, fp32, bf16, fp16, got 'half'")
    cfg.write_text(f"task: lm\ndata: {{path: {corpus}, seq_len: 16}}\nmodel: {{d_model: 32}}\n"
                   "models: {a: {d_model: 32}}\n")
    assert_one_line_error(capsys, main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]),
                          "both 'model:' and 'models:'")
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_its_package_is_one_line(tmp_path, corpus, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    out = tmp_path / "run"
    assert_one_line_error(capsys, main(lm_args(corpus, out, "--tensorboard")), "pip install 'hypermlp[tensorboard]'")
    assert not out.exists()
