"""Checkpoints: atomic, durable file writes, the run folder's checkpoints, loading them back.

A training run keeps its newest checkpoint in ``out_dir/checkpoints/step-XXXXXXXX/``:

* ``model.safetensors`` + ``config.json``: the LanguageModel (``LanguageModel.load`` reads them);
* whatever the task adds (``Task.save_extra_files``: the compression head's
  ``decoder.safetensors``, a BPE ``tokenizer.json``);
* ``trainer_state.pt``: optimizer, schedule, sampler and RNG states, step, evaluations.

A checkpoint is written into a temp folder (every file fsync'd), renamed into place, and then
the ``latest`` pointer is replaced the same way, so a crash at any moment, ``kill -9``
included, leaves the previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Callable, Optional

import torch

__all__ = [
    "CheckpointError",
    "write_atomic",
    "write_json_atomic",
    "save_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
]

STATE_FILE = "trainer_state.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match the requested run."""


# ----------------------------------------------------------------------------- atomic writes
def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Create ``path`` whole or not at all: ``write(tmp)`` fills a temp file beside it, which is
    fsync'd and then renamed over ``path`` (a rename within one folder is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        _fsync_file(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def write_json_atomic(path: str, obj) -> None:
    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)

    write_atomic(path, dump)


def _write_text_atomic(path: str, text: str) -> None:
    def dump(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    write_atomic(path, dump)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX; elsewhere folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- writing
def save_checkpoint(out_dir: str, step: int, task, model: torch.nn.Module, state: dict) -> str:
    """Write the checkpoint of ``step`` (see the module docstring), point ``latest`` at it and
    drop older ones. Returns its folder."""
    root = os.path.join(out_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    # the temp folder is the atomic unit: its files are written in place, then all fsync'd
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    task.language_model(model).save(tmp)  # model.safetensors + config.json
    task.save_extra_files(model, tmp)
    torch.save(state, os.path.join(tmp, STATE_FILE))
    for name in os.listdir(tmp):
        _fsync_file(os.path.join(tmp, name))
    _fsync_folder(tmp)

    name = f"step-{step:08d}"
    final = os.path.join(root, name)
    if os.path.exists(final):  # left by an earlier run that stopped after this step
        trash = tempfile.mkdtemp(prefix=".old-", dir=root)
        os.replace(final, os.path.join(trash, name))
        shutil.rmtree(trash)
    os.replace(tmp, final)
    _fsync_folder(root)
    _write_text_atomic(os.path.join(root, "latest"), name + "\n")
    for old in os.listdir(root):  # keep only the newest checkpoint (and no debris of a crashed write)
        if old.startswith(("step-", ".tmp-", ".old-")) and old != name:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- reading
def latest_checkpoint(out_dir: str) -> Optional[str]:
    """Path of the newest complete checkpoint under ``out_dir``, or None."""
    root = os.path.join(out_dir, "checkpoints")
    pointer = os.path.join(root, "latest")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(root, f.read().strip())
        if os.path.isfile(os.path.join(path, STATE_FILE)):
            return path
    # pointer missing (crash between rename and pointer update): newest complete folder
    if not os.path.isdir(root):
        return None
    done = sorted(
        d for d in os.listdir(root)
        if d.startswith("step-") and os.path.isfile(os.path.join(root, d, STATE_FILE))
    )
    return os.path.join(root, done[-1]) if done else None


def load_checkpoint(ckpt: str, task, model: torch.nn.Module, model_cfg, device) -> dict:
    """Check that ``ckpt`` was made for ``model_cfg`` and ``task``, load its weights into
    ``model`` and return the trainer state. Every mismatch is a ``CheckpointError``."""
    _check_model_config(ckpt, model_cfg)
    _load_weights(ckpt, task, model, device)
    try:
        state = torch.load(os.path.join(ckpt, STATE_FILE), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {ckpt}/{STATE_FILE}: {str(e).splitlines()[0]}") from e
    if state.get("task") != task.name:
        raise CheckpointError(f"checkpoint {ckpt} was made for task {state.get('task')!r}, not {task.name!r}")
    return state


def _check_model_config(ckpt: str, model_cfg) -> None:
    try:
        with open(os.path.join(ckpt, "config.json")) as f:
            saved = type(model_cfg).from_dict(json.load(f)).to_dict()  # old key names read as today's
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {ckpt}/config.json: {' '.join(str(e).split())}") from e
    wanted = model_cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs requested {wanted.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint {ckpt} was made for another model ({detail})")


def _load_weights(ckpt: str, task, model: torch.nn.Module, device) -> None:
    from safetensors.torch import load_model

    try:
        load_model(task.language_model(model), os.path.join(ckpt, "model.safetensors"), strict=True, device=str(device))
        task.load_extra_files(model, ckpt, device)
    except Exception as e:
        raise CheckpointError(f"checkpoint {ckpt} does not fit the model: {str(e).splitlines()[0]}") from e
