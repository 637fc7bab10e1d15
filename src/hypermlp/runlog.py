"""What a training run shows and leaves while it trains (rank 0 only), apart from metrics.jsonl.

* On a terminal (stderr is a TTY, not CI): a tqdm bar with the loss, tokens/s and the last
  validation loss.
* When stdout is not a terminal (a log file, a pipe, a batch job): one plain line every
  ``log_every`` steps and one per evaluation, e.g.
  ``step 120/2000 | loss 3.412 | lr 1.2e-03 | 8,431 tok/s | eta 4m12s`` and
  ``eval step 125 | val_loss 3.201 | val_bpb 1.234``.
* ``tensorboard``: the same scalars through TensorBoard's own writer (``torch.utils.tensorboard``,
  the ``tensorboard`` extra), in ``out_dir/tensorboard``; imported only when asked for.
* ``curves.png`` in the run folder: train and validation loss against the step, redrawn from the
  whole metrics.jsonl (resumes included) at every evaluation.

``summary_line(result)`` is the run's final line. The public entry point is ``RunLog``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

from .checkpoint import TENSORBOARD_DIR, write_atomic
from .config import ConfigError

__all__ = ["RunLog", "check_tensorboard", "format_duration", "summary_line", "plot_curves"]

# eval metrics worth a place on the progress line, in this order (others are listed after them)
_FIRST_METRICS = ("val_loss", "val_bpb", "val_acc", "val_macro_acc")
_NOT_SHOWN = ("val_tokens", "val_bytes", "val_windows", "val_coverage", "val_scope")


def check_tensorboard() -> None:
    """A ConfigError saying how to install TensorBoard, unless its writer imports."""
    import importlib

    try:
        importlib.import_module("torch.utils.tensorboard")  # imports tensorboard itself
    except ImportError as e:
        raise ConfigError(f"tensorboard logging needs the tensorboard package ({e.name or e}): "
                          f"pip install 'hypermlp[tensorboard]'") from None


def format_duration(seconds: float) -> str:
    """4m12s, 2h05m, 37s."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _eval_keys(record: dict, prefixes=("val_",)) -> list:
    """The numeric metrics of an eval record worth showing, the usual ones first."""
    keys = [k for k in _FIRST_METRICS if k in record]
    keys += sorted(k for k in record if k.startswith(prefixes) and k not in keys and k not in _NOT_SHOWN)
    return [k for k in keys if isinstance(record[k], (int, float)) and not isinstance(record[k], bool)]


def _eval_parts(record: dict, prefixes=("val_",)) -> list:
    return [f"{k} {_fmt(record[k])}" for k in _eval_keys(record, prefixes)]


def summary_line(result: dict) -> str:
    """The final line of a run: ``done: step 12 | val_loss 2.31 | ... | 3,072 tokens in 4s``."""
    final = result["final"]
    cost = result.get("cost") or {}
    parts = [f"done: step {result['step']}"] + _eval_parts(final, ("val_", "test_"))
    if cost.get("train_tokens"):
        rate = cost.get("train_tokens_per_s")
        parts.append(f"{cost['train_tokens']:,} train tokens in {format_duration(cost.get('train_wall_s', 0.0))}"
                     + (f" ({rate:,.0f} tok/s)" if rate else ""))
    return " | ".join(parts) + (" (early stop)" if result.get("stopped_early") else "")


def plot_curves(metrics_path: str, png_path: str) -> None:
    """Train loss (thin) and validation loss (dots) against the step, from a metrics.jsonl."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    with open(metrics_path) as f:
        for line in f:
            r = json.loads(line) if line.strip() else {}
            if r.get("type") == "train":
                train.append((r["step"], r["loss"]))
            elif r.get("type") == "eval" and "val_loss" in r:
                val.append((r["step"], r["val_loss"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), lw=0.8, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    write_atomic(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


class RunLog:
    """The bar, the plain lines, the TensorBoard writer and curves.png of one ``Trainer.fit``.

    total_steps / start_step: the run's length and where this call starts (a resume).
    out_dir: the run folder (None: no TensorBoard, no curves.png). Every method is a no-op on
    ranks other than 0."""

    def __init__(self, name: str, total_steps: int, start_step: int, out_dir: Optional[str], *,
                 progress: bool, log_every: int, tensorboard: bool, rank: int = 0):
        from tqdm.auto import tqdm

        self.total, self.start_step, self.out_dir, self.active = total_steps, start_step, out_dir, rank == 0
        in_ci = os.environ.get("CI", "").lower() in ("1", "true")
        show_bar = progress and self.active and sys.stderr.isatty() and not in_ci
        self.lines = progress and self.active and log_every > 0 and not sys.stdout.isatty()
        self.log_every = log_every
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not show_bar, desc=name, dynamic_ncols=True)
        self.writer = None
        if tensorboard and self.active and out_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a crashed run wrote after its last checkpoint are dropped
            self.writer = SummaryWriter(os.path.join(out_dir, TENSORBOARD_DIR), purge_step=start_step + 1)
        self.t0 = time.perf_counter()
        self.last_val = None

    def _eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)

    def train(self, rec: dict) -> None:
        """One training step's record (step, loss, lr, tokens_per_s, grad_norm)."""
        if not self.active:
            return
        step = rec["step"]
        self.bar.update(1)
        post = dict(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        if self.last_val is not None:
            post["val_loss"] = f"{self.last_val:.4f}"
        self.bar.set_postfix(post, refresh=False)
        if self.lines and (step % self.log_every == 0 or step == self.total):
            line = (f"step {step}/{self.total} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
                    f"{rec['tokens_per_s']:,.0f} tok/s | eta {format_duration(self._eta(step))}")
            if self.last_val is not None:
                line += f" | val_loss {self.last_val:.4f}"
            print(line, flush=True)
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                if rec.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", rec[key], step)

    def eval(self, rec: dict, metrics_path: Optional[str]) -> None:
        """One evaluation's record; redraws curves.png from ``metrics_path`` (the whole run)."""
        if not self.active:
            return
        if isinstance(rec.get("val_loss"), float) and math.isfinite(rec["val_loss"]):
            self.last_val = rec["val_loss"]
        if self.lines:
            print(" | ".join([f"eval step {rec['step']}"] + _eval_parts(rec)), flush=True)
        if self.writer is not None:
            for key in _eval_keys(rec, ("val_", "test_")):
                self.writer.add_scalar(f"eval/{key}", rec[key], rec["step"])
            self.writer.flush()
        if self.out_dir is not None and metrics_path is not None and os.path.exists(metrics_path):
            plot_curves(metrics_path, os.path.join(self.out_dir, "curves.png"))

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
