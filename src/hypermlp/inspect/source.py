"""What ``hypermlp inspect`` looks at: the model of a checkpoint, the tokens of one input (a text
prompt, or example N of a task's split) with a label per token, and a batch of validation data
for the mean sparsity.

The task data is rebuilt from the run's own record, ``run.yaml`` (task, data settings with their
seed, cache folder), found beside the run folder's checkpoints; a checkpoint without one is
rebuilt with the task's default data settings, and the choice is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch

from ..checkpoint import CheckpointError, first_line, resolve_model_folder, verify_checksums
from .probe import InspectError

__all__ = ["Example", "load_model", "run_record", "prompt_example", "task_example"]

DERIVED_DATA_KEYS = ("source", "vocab_size")  # run.yaml notes for the reader, not data settings


@dataclass
class Example:
    """One input and what the sparsity mean is taken over."""

    tokens: torch.Tensor  # (1, T) long
    labels: List[str]  # one short label per token, for the plots' axes
    description: str  # what the input is, one line for inspect.md
    batch: torch.Tensor  # (N, T') long: validation inputs for the mean sparsity
    batch_description: str


def load_model(checkpoint: str):
    """(LanguageModel, the folder it was loaded from) or an InspectError naming the problem."""
    from ..models import LanguageModel

    try:
        folder = resolve_model_folder(checkpoint)
        return LanguageModel.load(folder), folder
    except (CheckpointError, FileNotFoundError) as e:
        raise InspectError(str(e)) from None
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise InspectError(f"cannot load {checkpoint}: {first_line(e)}") from None


def run_record(checkpoint: str, folder: str) -> Optional[dict]:
    """The run.yaml of the run ``checkpoint`` belongs to (the run folder itself, or the run two
    levels above a ``checkpoints/step-*`` folder), or None when there is none."""
    import yaml

    for path in (os.path.join(checkpoint, "run.yaml"), os.path.join(folder, os.pardir, os.pardir, "run.yaml")):
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    record = yaml.safe_load(f)
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise InspectError(f"cannot read {os.path.normpath(path)}: {first_line(e)}") from None
            if not isinstance(record, dict):
                raise InspectError(f"{os.path.normpath(path)} is not a run record (expected a YAML mapping)")
            return record
    return None


def _text_codec(model, folder: str):
    """(encode, label) for the model's text: its tokenizer.json, or bytes; an InspectError for a
    model that reads no text (a synthetic task's small vocabulary)."""
    vocab = model.config.vocab_size
    tok_file = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(tok_file):
        from tokenizers import Tokenizer

        try:
            verify_checksums(folder, ["tokenizer.json"])
            tok = Tokenizer.from_file(tok_file)
        except Exception as e:  # tokenizers raises its own exception type for a damaged file
            raise InspectError(f"cannot read {tok_file}: {first_line(e)}") from None
        return (lambda text: tok.encode(text).ids), (lambda i: tok.id_to_token(i) or str(i))
    if vocab < 256:
        raise InspectError(f"{folder} has a {vocab}-token vocabulary and no tokenizer.json: not a text model "
                           f"(give --task and --example instead of --prompt)")
    return (lambda text: list(text.encode("utf-8"))), (lambda i: repr(chr(i))[1:-1] if i < 128 else f"x{i:02x}")


def _check_length(n: int, model, what: str) -> None:
    if n > model.config.max_len:
        raise InspectError(f"{what} has {n} tokens but the model's max_len is {model.config.max_len}")


def _lm_validation(record: Optional[dict], batch_size: int):
    """Validation windows of the run's corpus, or None when the run records no lm data."""
    from ..config import ConfigError
    from ..data.common import DataError
    from ..tasks import build_task

    if not record or record.get("task") != "lm" or not isinstance(record.get("data"), dict):
        return None
    data = {k: v for k, v in record["data"].items() if k not in DERIVED_DATA_KEYS}
    try:
        task, _ = build_task("lm", data, record.get("cache_dir"))
    except (ConfigError, DataError, OSError, ValueError):
        return None  # the corpus moved or changed: the prompt stands in (reported)
    return task.full[0][:batch_size]


def prompt_example(model, folder: str, record: Optional[dict], prompt: str, batch_size: int) -> Example:
    """The tokens of a text prompt; the mean sparsity over the run's validation windows."""
    encode, label = _text_codec(model, folder)
    ids = encode(prompt)
    if not ids:
        raise InspectError("the prompt is empty")
    if max(ids) >= model.config.vocab_size:
        raise InspectError(f"the prompt has token ids beyond the model's vocabulary ({model.config.vocab_size})")
    _check_length(len(ids), model, "the prompt")
    tokens = torch.tensor([ids])
    batch = _lm_validation(record, batch_size)
    if batch is None or batch.shape[1] > model.config.max_len:
        batch, what = tokens, "the prompt itself (the checkpoint's run records no validation text)"
    else:
        what = f"{batch.shape[0]} validation windows of {batch.shape[1]} tokens from the run's corpus"
    return Example(tokens, [label(i) for i in ids], f"prompt {prompt!r} ({len(ids)} tokens)", batch, what)


def task_example(model, folder: str, record: Optional[dict], task_name: str, index: int, split: str,
                 batch_size: int) -> Example:
    """Example ``index`` of the ``split`` ("val" or "test") of ``task_name``, rebuilt from the
    run's recorded data settings; the mean sparsity over the first ``batch_size`` examples."""
    from ..config import ConfigError
    from ..data.common import DataError
    from ..tasks import build_task, parse_task_name

    try:
        kind, _ = parse_task_name(task_name)
    except ConfigError as e:
        raise InspectError(str(e)) from None
    if record is not None and record.get("task") != task_name:
        raise InspectError(f"the checkpoint's run was trained on {record.get('task')!r}, not {task_name!r}")
    if record is not None and isinstance(record.get("data"), dict):
        data = {k: v for k, v in record["data"].items() if k not in DERIVED_DATA_KEYS}
        origin = "the run's recorded data settings (run.yaml)"
    else:
        data, origin = {}, "the task's default data settings (no run.yaml beside the checkpoint)"
    try:
        task, settings = build_task(task_name, data, record.get("cache_dir") if record else None)
    except (ConfigError, DataError, OSError, ValueError) as e:
        raise InspectError(f"cannot rebuild the data of {task_name}: {first_line(e)}") from None
    if task.vocab_size != model.config.vocab_size:
        raise InspectError(f"{task_name} has {task.vocab_size} tokens but the model's vocabulary has "
                           f"{model.config.vocab_size}: not a model of this task")
    if kind == "lm":
        inputs = task.full[0]  # the validation windows (the lm task has no test split)
        split = "val"
    else:
        inputs = task.data.val_inputs if split == "val" else task.data.test_inputs
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < inputs.shape[0]:
        raise InspectError(f"--example {index} does not exist: the {split} split has {inputs.shape[0]} examples "
                           f"(0-{inputs.shape[0] - 1})")
    _check_length(inputs.shape[1], model, f"example {index}")
    seed = settings.get("seed")
    desc = (f"example {index} of the {split} split of {task_name} ({inputs.shape[1]} tokens), rebuilt from "
            f"{origin}, seed {seed}")
    tokens = inputs[index : index + 1]
    batch = inputs[:batch_size]
    return Example(tokens, [str(int(i)) for i in tokens[0]], desc, batch,
                   f"the first {batch.shape[0]} examples of the {split} split")
