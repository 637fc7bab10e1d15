"""``hypermlp train`` end to end: YAML with flag overrides, resume, refusing to overwrite a run."""

import json
import os

import pytest

from hypermlp.checkpoint import latest_checkpoint
from hypermlp.cli import main
from hypermlp.train import read_metrics

from ..helpers import assert_one_line_error, snapshot
from .helpers import lm_args


def test_yaml_config_with_flag_overrides(tmp_path, corpus):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        "task: lm\n"
        f"data: {{path: {corpus}, seq_len: 16, eval_windows: 2}}\n"
        "model: {d_model: 32, n_layers: 1, mixer: softmax, mixer_args: {n_heads: 2}}\n"
        "train: {steps: 9, batch_size: 4, lr: 1e-3, warmup_steps: 0}\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--steps", "3", "--mixer", "hypermlp", "--out", str(out)]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2, 3]
    saved = json.loads(open(os.path.join(latest_checkpoint(str(out)), "config.json")).read())
    assert saved["mixer"] == "hypermlp" and saved["n_layers"] == 1 and saved["max_len"] == 16
    assert [r["lr"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"][0] == pytest.approx(1e-3)


def test_resume_continues_and_refuses_overwrite(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "6", "--ckpt-every", "3")) == 0
    before = snapshot(out)
    capsys.readouterr()
    # same folder again without --resume / --force: refused, nothing touched
    assert_one_line_error(capsys, main(lm_args(corpus, out)), "already holds a run", "--resume")
    assert snapshot(out) == before
    # --resume with a longer run continues from step 6
    assert main(lm_args(corpus, out, "--resume")) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 13))
    # --force starts over
    assert main(lm_args(corpus, out, "--steps", "2", "--force")) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2]


def test_resume_from_the_run_folder_alone(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert main(lm_args(corpus, out, "--steps", "4", "--ckpt-every", "2")) == 0
    # only --out and --resume: task, data, model and training settings come from run.yaml
    assert main(["train", "--out", str(out), "--resume", "--steps", "6"]) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 7))
    capsys.readouterr()
    assert_one_line_error(capsys, main(["train", "--out", str(tmp_path / "none"), "--resume"]), "no run to resume")
