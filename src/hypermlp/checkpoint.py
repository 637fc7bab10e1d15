"""Checkpoints: atomic, durable file writes, the run folder's checkpoints, loading them back.

A training run keeps its newest checkpoint (or its newest ``keep_checkpoints``) in
``out_dir/checkpoints/step-XXXXXXXX/``:

* ``model.safetensors`` + ``config.json``: the LanguageModel (``LanguageModel.load`` reads them);
* whatever the task adds (``Task.save_extra_files``: the compression head's
  ``decoder.safetensors``, a BPE ``tokenizer.json``);
* ``trainer_state.pt``: optimizer, schedule, sampler and RNG states, step, evaluations.

* ``checksums.json``: the sha256 of every other file but ``config.json`` (which may be edited
  by hand, e.g. ``impl``, and is checked against the weights' shapes instead), verified
  before anything is loaded: a damaged file is named; weights that are not finite are refused.

A checkpoint is written into a temp folder (every file and the folder fsync'd), renamed into
place (fsync of ``checkpoints/``), and then the ``latest`` pointer is replaced the same way; the
previous checkpoint is removed only after that (``keep`` > 1 keeps the newest few). So a crash at any moment, ``kill -9`` included,
leaves the previous checkpoint or the new one, never a half-written one; the debris of an
interrupted write (``.tmp-*``, ``.old-*``, temp files) is removed when the next run starts
(``clean_debris``).

The run folder carries a marker (``.hypermlp-run``) written by the Trainer; ``remove_run``
(``train --force``) removes only a marked folder's own files (metrics, run.yaml, curves.png,
checkpoints, TensorBoard event files) and leaves everything else in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Callable, Dict, Iterable, Optional

import torch

__all__ = [
    "CheckpointError",
    "write_atomic",
    "write_json_atomic",
    "save_checkpoint",
    "prune_checkpoints",
    "latest_checkpoint",
    "resolve_model_folder",
    "load_checkpoint",
    "load_weights",
    "write_checksums",
    "verify_checksums",
    "clean_debris",
    "write_run_marker",
    "has_run_marker",
    "remove_run",
    "first_line",
    "RUN_MARKER",
]

STATE_FILE = "trainer_state.pt"
CHECKSUMS = "checksums.json"
UNCHECKED = (CHECKSUMS, "config.json")  # config.json may be edited by hand; load checks it against the weights
RUN_MARKER = ".hypermlp-run"  # in a run folder the Trainer made: --force may remove its files
RUN_FILES = ("metrics.jsonl", "run.yaml", "curves.png")  # what a run writes beside checkpoints/ and tensorboard/
TENSORBOARD_DIR = "tensorboard"  # the run's TensorBoard event files (train.tensorboard)
_TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # write_atomic's temp files


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name (never fails)."""
    for line in str(e).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(e).__name__


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
    fsync_folder(folder)


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


def fsync_folder(folder: "str | os.PathLike") -> None:
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
def save_checkpoint(out_dir: str, step: int, task, model: torch.nn.Module, state: dict, keep: int = 1) -> str:
    """Write the checkpoint of ``step`` (see the module docstring), point ``latest`` at it and
    keep the ``keep`` newest step checkpoints (0: all of them; ``prune_checkpoints``). Returns
    its folder."""
    root = os.path.join(out_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    # the temp folder is the atomic unit: its files are written in place, then all fsync'd
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    task.language_model(model).save(tmp)  # model.safetensors + config.json
    task.save_extra_files(model, tmp)
    torch.save(state, os.path.join(tmp, STATE_FILE))
    write_checksums(tmp, [n for n in os.listdir(tmp) if n not in UNCHECKED])
    for name in os.listdir(tmp):
        _fsync_file(os.path.join(tmp, name))
    fsync_folder(tmp)

    name = f"step-{step:08d}"
    current = _pointer(root)
    if name == current:  # saving again at the latest checkpoint's step: keep it until this one is in
        k = 1
        while os.path.exists(os.path.join(root, f"{name}-{k}")):
            k += 1
        name = f"{name}-{k}"
    final = os.path.join(root, name)
    if os.path.exists(final):  # left by an earlier run that stopped after this step; not the latest
        trash = tempfile.mkdtemp(prefix=".old-", dir=root)
        os.replace(final, os.path.join(trash, name))
        shutil.rmtree(trash)
    os.replace(tmp, final)
    fsync_folder(root)
    _write_text_atomic(os.path.join(root, "latest"), name + "\n")
    prune_checkpoints(root, name, keep)
    return final


_STEP_FOLDER = re.compile(r"^step-(\d{8})(?:-(\d+))?$")  # step-XXXXXXXX, or -k: saved again at that step


def prune_checkpoints(root: str, newest: str, keep: int) -> None:
    """In ``root`` (a run's ``checkpoints/``), after ``newest`` was written: remove the debris of
    crashed writes, the step checkpoints *after* ``newest`` (left by a run that was resumed from
    an earlier one: a past that no longer happened), and all but the ``keep`` newest of the rest
    (0: none of them). ``newest`` itself always stays; nothing but ``step-*`` folders is touched."""
    steps = []
    for name in os.listdir(root):
        if name.startswith((".tmp-", ".old-")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        m = _STEP_FOLDER.match(name)
        if m and os.path.isdir(os.path.join(root, name)):
            steps.append(((int(m.group(1)), int(m.group(2) or 0)), name))
    at = dict((n, k) for k, n in steps)[newest]
    past = sorted((k, n) for k, n in steps if k <= at)
    drop = [n for k, n in steps if k > at]
    if keep:
        drop += [n for _, n in past[: max(0, len(past) - keep)]]
    for name in drop:
        if name != newest:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str, names: Iterable[str]) -> None:
    """Record the sha256 of ``folder/name`` for each name in ``folder/checksums.json`` (entries
    of other files already there are kept)."""
    sums = _read_checksums(folder) or {}
    sums.update({n: _sha256(os.path.join(folder, n)) for n in names})
    write_json_atomic(os.path.join(folder, CHECKSUMS), {"sha256": sums})


def _read_checksums(folder: str) -> Optional[Dict[str, str]]:
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.exists(path):
        return None  # written before checksums were recorded
    try:
        with open(path) as f:
            sums = json.load(f)["sha256"]
        if not isinstance(sums, dict):
            raise ValueError("no table of files")
        return sums
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None


def verify_checksums(folder: str, names: Optional[Iterable[str]] = None) -> None:
    """Check ``names`` (default: every file listed) against ``checksums.json``; a folder without
    one (older checkpoints) passes. A missing or changed file is a CheckpointError naming it."""
    sums = _read_checksums(folder)
    if sums is None:
        return
    for name in sums if names is None else [n for n in names if n in sums]:
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise CheckpointError(f"checkpoint {folder} is missing {name} (listed in {CHECKSUMS})")
        if _sha256(path) != sums[name]:
            raise CheckpointError(f"{path} is damaged: its sha256 checksum differs from the one recorded "
                                  f"when it was written")


def load_weights(module: torch.nn.Module, path: str, device="cpu", misfit: str = "does not fit the model") -> None:
    """Load a safetensors file into ``module`` strictly, naming every missing, unexpected or
    mis-shaped tensor in one line (``"{path} {misfit}: ..."``), and refusing weights that are not
    finite."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    try:
        with safe_open(path, framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged header
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    bad = [f"{k}: file {shapes[k]} vs model {want[k]}" for k in shapes if k in want and shapes[k] != want[k]]
    if bad:
        raise CheckpointError(f"{path} {misfit}: shape of {'; '.join(bad)}")
    try:
        missing, unexpected = load_model(module, path, strict=False, device=str(device))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {first_line(e)}") from None
    if missing or unexpected:
        parts = ([f"missing {sorted(missing)}"] if missing else []) + ([f"unexpected {sorted(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{path} {misfit}: {', '.join(parts)}")
    check_finite(module, path)


def check_finite(module: torch.nn.Module, where: str) -> None:
    """A CheckpointError naming the first tensor of ``module`` with a NaN or an infinity."""
    for name, t in module.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name} is not finite (NaN or inf): refusing to load it")


# ----------------------------------------------------------------------------- reading
def latest_checkpoint(out_dir: str) -> Optional[str]:
    """Path of the newest complete checkpoint under ``out_dir``, or None."""
    root = os.path.join(out_dir, "checkpoints")
    name = _pointer(root)
    if name:
        path = os.path.join(root, name)
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


def resolve_model_folder(path: str) -> str:
    """The folder holding a LanguageModel (config.json + model.safetensors): ``path`` itself, or
    the newest checkpoint of the run folder ``path``. A CheckpointError naming ``path`` otherwise."""
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"no such checkpoint folder: {path}")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(
            f"{path} holds no checkpoint (expected config.json + model.safetensors, or a `hypermlp train` run folder)")
    return ckpt


def _pointer(root: str) -> Optional[str]:
    """The folder name ``checkpoints/latest`` holds, or None."""
    try:
        with open(os.path.join(root, "latest")) as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def load_checkpoint(ckpt: str, task, model: torch.nn.Module, model_cfg, device) -> dict:
    """Check that ``ckpt`` is intact (checksums) and was made for ``model_cfg`` and ``task``,
    load its weights into ``model`` (finite ones only) and return the trainer state. Every
    mismatch is a ``CheckpointError`` naming the file."""
    verify_checksums(ckpt)
    _check_model_config(ckpt, model_cfg)
    _load_weights(ckpt, task, model, device)
    try:
        state = torch.load(os.path.join(ckpt, STATE_FILE), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {ckpt}/{STATE_FILE}: {first_line(e)}") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{ckpt}/{STATE_FILE} is not a trainer state")
    if state.get("task") != task.name:
        raise CheckpointError(f"checkpoint {ckpt} was made for task {state.get('task')!r}, not {task.name!r}")
    return state


def _check_model_config(ckpt: str, model_cfg) -> None:
    try:
        with open(os.path.join(ckpt, "config.json")) as f:
            saved = type(model_cfg).from_dict(json.load(f)).to_dict()  # old key names read as today's
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"cannot read {ckpt}/config.json: {first_line(e)}") from None
    wanted = model_cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs requested {wanted.get(k)!r}" for k in diff)
        raise CheckpointError(f"checkpoint {ckpt} was made for another model ({detail})")


def _load_weights(ckpt: str, task, model: torch.nn.Module, device) -> None:
    load_weights(task.language_model(model), os.path.join(ckpt, "model.safetensors"), device)
    try:
        task.load_extra_files(model, ckpt, device)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {ckpt} does not fit the model: {first_line(e)}") from None
    check_finite(model, ckpt)


# ----------------------------------------------------------------------------- run folders
def clean_debris(out_dir: str) -> None:
    """Remove what an interrupted write left in a run folder: ``checkpoints/.tmp-*`` and
    ``.old-*`` folders and write_atomic's temp files (here and in ``checkpoints/``)."""
    root = os.path.join(out_dir, "checkpoints")
    for folder in (out_dir, root):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if folder == root and name.startswith((".tmp-", ".old-")) and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif _TEMP_FILE.match(name) and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)


def write_run_marker(out_dir: str) -> None:
    """Mark ``out_dir`` as a run folder hypermlp made (``remove_run`` then may clear it)."""
    if not has_run_marker(out_dir):
        write_json_atomic(os.path.join(out_dir, RUN_MARKER), {"made_by": "hypermlp train"})


def has_run_marker(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, RUN_MARKER))


def remove_run(out_dir: str) -> None:
    """Remove a marked run's own files (metrics.jsonl, run.yaml, the checkpoints and their
    debris, the marker); anything else in the folder stays. An unmarked folder is refused."""
    if not has_run_marker(out_dir):
        raise CheckpointError(f"{out_dir} holds files hypermlp did not create (no {RUN_MARKER} marker); "
                              f"remove them yourself or pick another --out")
    clean_debris(out_dir)
    root = os.path.join(out_dir, "checkpoints")
    if os.path.isdir(root):
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name.startswith("step-") and os.path.isdir(path):
                shutil.rmtree(path)
            elif name == "latest" and os.path.isfile(path):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only if nothing else is in it
    board = os.path.join(out_dir, TENSORBOARD_DIR)
    if os.path.isdir(board):
        for name in os.listdir(board):
            if name.startswith("events.out.tfevents.") and os.path.isfile(os.path.join(board, name)):
                os.unlink(os.path.join(board, name))
        with contextlib.suppress(OSError):
            os.rmdir(board)  # only if nothing else is in it
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out_dir, name))
    os.unlink(os.path.join(out_dir, RUN_MARKER))
