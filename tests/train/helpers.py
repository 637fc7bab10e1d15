"""Small tasks and models shared by the trainer, checkpoint and task tests."""

from hypermlp.data import make_task
from hypermlp.models import ModelConfig
from hypermlp.tasks import task_from_data
from hypermlp.train import read_metrics


def recall_task(seq_len=32, num_train=256):
    return task_from_data(make_task("in_context_recall", vocab_size=16, seq_len=seq_len,
                                    num_train=num_train, num_test=64, seed=0))


def tiny_cfg(mixer="hyperglu", vocab=16, max_len=32):
    return ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, mixer=mixer, mixer_args={"n_heads": 2}, max_len=max_len)


def train_losses(path):
    return [(r["step"], r["loss"]) for r in read_metrics(path) if r["type"] == "train"]


TIMINGS = ("train_wall_s", "train_step_s", "train_tokens_per_s")  # the clock's, not the run's


def eval_records(path):
    """The eval records of a metrics.jsonl, without the wall-clock timings (which no rerun repeats)."""
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_metrics(path) if r["type"] == "eval"]


class Interrupt(Exception):
    pass


class FlakyTask:
    """Wraps a task (everything else is the task's); its forward raises (or returns NaN) from a
    given call on."""

    def __init__(self, task, at_call, mode):
        self._task, self._at, self._mode, self._calls = task, at_call, mode, 0

    def __getattr__(self, name):
        return getattr(self._task, name)

    def forward(self, model, x):
        if model.training:
            self._calls += 1
            if self._calls >= self._at:
                if self._mode == "raise":
                    raise Interrupt()
                return self._task.forward(model, x) * float("nan")
        return self._task.forward(model, x)
