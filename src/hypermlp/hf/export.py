"""``export_run``: a ``hypermlp train`` run (or one of its checkpoints) -> a Hugging Face folder.

The folder holds ``config.json`` (``HyperMLPConfig``, with the ``auto_map``), ``model.safetensors``
(the same tensors as the run's, renamed: ``hypermlp.hf.modeling``), ``generation_config.json``,
``modeling_hypermlp.py`` (three lines pointing transformers at the installed package) and, for a
text model, the tokenizer as a ``PreTrainedTokenizerFast`` (``tokenizer.json`` +
``tokenizer_config.json``): bytes, or the run's BPE. It is written into a temp folder beside the
target and renamed into place, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

from ..checkpoint import CheckpointError, first_line, resolve_model_folder, verify_checksums
from .configuration import MODEL_TYPE, HFCheckpointError

__all__ = ["export_run", "resolve_run_checkpoint", "is_hf_folder"]


def is_hf_folder(path: str) -> bool:
    """Whether ``path`` holds a hypermlp Hugging Face model (its config.json says so)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") == MODEL_TYPE


def resolve_run_checkpoint(path: str) -> str:
    """The checkpoint folder of ``path``: itself (config.json + model.safetensors of a
    LanguageModel) or a run folder's newest checkpoint."""
    if is_hf_folder(path):
        raise HFCheckpointError(f"{path} is already a Hugging Face folder (model type {MODEL_TYPE!r}); "
                                "load it with AutoModelForCausalLM.from_pretrained")
    try:
        return resolve_model_folder(path)
    except CheckpointError as e:
        raise HFCheckpointError(str(e)) from None


def _task_of(ckpt: str) -> Optional[str]:
    """The task the checkpoint was trained on (its run's run.yaml, else its trainer state)."""
    import yaml

    run_yaml = os.path.normpath(os.path.join(ckpt, os.pardir, os.pardir, "run.yaml"))
    if os.path.isfile(run_yaml):
        try:
            with open(run_yaml, encoding="utf-8") as f:
                task = (yaml.safe_load(f) or {}).get("task")
            if isinstance(task, str):
                return task
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    state = os.path.join(ckpt, "trainer_state.pt")
    if os.path.isfile(state):
        import torch

        try:
            task = torch.load(state, map_location="cpu", weights_only=True, mmap=True).get("task")
            return task if isinstance(task, str) else None
        except Exception:  # an unreadable state only costs the task name
            return None
    return None


def _tokenizer_kind(ckpt: str, vocab_size: int) -> Optional[str]:
    if os.path.isfile(os.path.join(ckpt, "tokenizer.json")):
        return "bpe"
    task = _task_of(ckpt)
    if task is not None and task != "lm":
        return None  # a synthetic task's tokens are not text
    return "byte" if vocab_size == 256 else None


def export_run(checkpoint: str, out: str, force: bool = False) -> dict:
    """Convert ``checkpoint`` (a run folder or a checkpoint folder) into a Hugging Face folder
    ``out``. An existing non-empty ``out`` is refused unless ``force`` and it holds an earlier
    export. Returns what was written (out, checkpoint, tokenizer, params, ...).

    Raises ``HFCheckpointError`` / ``CheckpointError`` (ValueErrors) naming the problem."""
    from ..models.lm import LanguageModel
    from .modeling import HyperMLPForCausalLM
    from .tokenizer import END_OF_TEXT, hf_tokenizer

    ckpt = resolve_run_checkpoint(checkpoint)
    if os.path.exists(out) and not os.path.isdir(out):
        raise HFCheckpointError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not force:
            raise HFCheckpointError(f"{out} already holds files; use --force to replace an earlier export or pick "
                                    "another --out")
        if not is_hf_folder(out):
            raise HFCheckpointError(f"{out} holds files that are not a hypermlp Hugging Face export: --force replaces "
                                    "only an earlier export; remove them yourself or pick another --out")
    try:
        lm = LanguageModel.load(ckpt)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"cannot load {ckpt}: {first_line(e)}") from None
    kind = _tokenizer_kind(ckpt, lm.config.vocab_size)
    tokenizer = None
    if kind == "bpe":
        verify_checksums(ckpt, ["tokenizer.json"])
        try:
            tokenizer = hf_tokenizer("bpe", os.path.join(ckpt, "tokenizer.json"), lm.config.max_len)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot convert {ckpt}/tokenizer.json: {first_line(e)}") from None
    elif kind == "byte":
        tokenizer = hf_tokenizer("byte", max_len=lm.config.max_len)
    special = {}
    if tokenizer is not None:
        eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        if not (0 <= eos < lm.config.vocab_size):
            raise CheckpointError(f"{ckpt}: the tokenizer's end-of-text id {eos} is outside the model's vocabulary")
        special = {"eos_token_id": eos, "pad_token_id": eos}
    model = HyperMLPForCausalLM.from_language_model(lm, **special)

    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if os.path.isdir(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.old-", dir=parent)
            os.replace(out, os.path.join(old, "previous"))
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": out,
        "checkpoint": ckpt,
        "tokenizer": kind,
        "params": model.num_parameters(),
        "mixer": lm.config.mixer,
        "vocab_size": lm.config.vocab_size,
        "max_len": lm.config.max_len,
    }
