"""What a run shows: plain lines when stdout is not a terminal, TensorBoard scalars, curves.png,
the final summary line."""

import os
import re
import sys

import pytest

from hypermlp.checkpoint import remove_run
from hypermlp.config import ConfigError
from hypermlp.runlog import check_tensorboard, format_duration, summary_line
from hypermlp.train import TrainConfig, Trainer, read_metrics

from .helpers import recall_task, tiny_cfg

STEP_LINE = re.compile(r"^step (\d+)/6 \| loss \d+\.\d{4} \| lr \d\.\d\de[-+]\d\d \| [\d,]+ tok/s \| eta \d+(s|m\d\ds)"
                       r"( \| val_loss \d+\.\d{4})?$")
EVAL_LINE = re.compile(r"^eval step (\d+) \| val_loss [\d.]+ \| val_acc [\d.]+ \| val_macro_acc [\d.]+$")


def test_plain_lines_every_n_steps_and_per_evaluation_when_stdout_is_not_a_terminal(tmp_path, capsys):
    assert not sys.stdout.isatty()  # capsys: a pipe, as in a batch job
    cfg = TrainConfig(steps=6, batch_size=16, eval_every=3, log_every=2, device="cpu")
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path)).fit()
    lines = capsys.readouterr().out.splitlines()
    steps = [STEP_LINE.match(l) for l in lines if l.startswith("step ")]
    evals = [EVAL_LINE.match(l) for l in lines if l.startswith("eval ")]
    assert all(steps) and all(evals), lines
    assert [int(m.group(1)) for m in steps] == [2, 4, 6] and [int(m.group(1)) for m in evals] == [3, 6]
    assert len(lines) == 5
    # the validation loss of the latest evaluation rides on the later step lines
    assert steps[0].group(3) is None and steps[1].group(3) is not None
    val = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "eval"]
    assert f"val_loss {val[0]:.4f}" in lines[2]
    # curves.png: a PNG, in the run folder
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("options", [{"progress": False}, {"log_every": 0}])
def test_no_lines_without_progress_or_log_every(capsys, options):
    cfg = TrainConfig(**{"steps": 3, "batch_size": 16, "log_every": 1, "device": "cpu", **options})
    Trainer(tiny_cfg(), recall_task(), cfg).fit()
    assert capsys.readouterr().out == ""


def test_summary_line_and_durations():
    result = {"step": 12, "stopped_early": True,
              "final": {"type": "eval", "step": 12, "val_loss": 2.3141592, "val_bpb": 1.0, "val_tokens": 500,
                        "val_scope": "full", "test_acc": 0.5},
              "cost": {"train_tokens": 3072, "train_wall_s": 75.2, "train_tokens_per_s": 768.4}}
    assert summary_line(result) == ("done: step 12 | val_loss 2.314 | val_bpb 1 | test_acc 0.5 | "
                                    "3,072 train tokens in 1m15s (768 tok/s) (early stop)")
    assert [format_duration(s) for s in (0, 59.4, 75, 7260)] == ["0s", "59s", "1m15s", "2h01m"]


def test_tensorboard_scalars_and_force_removes_only_their_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(steps=4, batch_size=16, eval_every=2, tensorboard=True, progress=False, device="cpu")
    Trainer(tiny_cfg(), recall_task(), cfg, out_dir=str(tmp_path)).fit()
    board = tmp_path / "tensorboard"
    events = EventAccumulator(str(board))
    events.Reload()
    logged = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "train"]
    got = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert got == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in logged]
    assert [e.step for e in events.Scalars("eval/val_acc")] == [2, 4]
    (board / "my_notes.txt").write_text("mine")
    remove_run(str(tmp_path))
    assert os.listdir(board) == ["my_notes.txt"] and not (tmp_path / "curves.png").exists()


def test_tensorboard_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'hypermlp\[tensorboard\]'"):
        check_tensorboard()
