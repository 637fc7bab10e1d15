"""lm-evaluation-harness on a HyperMLP model (``hypermlp eval``).

The harness's own ``hf`` model loads the folder with ``AutoModelForCausalLM`` and
``trust_remote_code=True`` exactly as ``lm_eval --model hf --model_args
pretrained=DIR,trust_remote_code=True`` does; this module only resolves the folder (a
``hypermlp train`` run is exported to a temporary folder first), checks the task names, and
returns the harness's results.
"""

from __future__ import annotations

import os
import tempfile
from typing import List, Optional

from ..checkpoint import CheckpointError

__all__ = ["EvalError", "evaluate", "results_table"]


class EvalError(CheckpointError):
    """A bad evaluation request (unknown task, empty task list); a ValueError."""


def _task_manager(tasks: List[str], include_path: Optional[str]):
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not os.path.isdir(include_path):
            raise EvalError(f"--include-path {include_path} is not a folder")
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local  # indexing the harness's ~15k built-in tasks takes seconds: skip it when not needed
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path else " (local YAML tasks: --include-path FOLDER)"
        raise EvalError(f"unknown lm-eval task(s) {unknown}: not among the harness's tasks{where}")
    return manager


def evaluate(checkpoint: str, tasks: List[str], include_path: Optional[str] = None, limit: Optional[float] = None,
             batch_size: int = 1, device: str = "cpu", num_fewshot: Optional[int] = None, seed: int = 0) -> dict:
    """Run the harness's ``tasks`` on the model in ``checkpoint`` (a Hugging Face folder of ours,
    or a ``hypermlp train`` run / checkpoint, exported to a temporary folder for the run). Returns
    the harness's results dict (``results[task][metric]``)."""
    from lm_eval import simple_evaluate

    from .export import export_run, is_hf_folder  # importing hypermlp.hf registered the Auto classes

    tasks = [t for t in tasks if t]
    if not tasks:
        raise EvalError("no task given")
    manager = _task_manager(tasks, include_path)
    with tempfile.TemporaryDirectory(prefix="hypermlp-eval-") as tmp:
        folder = checkpoint
        if not is_hf_folder(checkpoint):
            folder = os.path.join(tmp, "hf")
            export_run(checkpoint, folder)  # a run folder; anything else is refused with a clear error
        if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
            raise EvalError(f"{checkpoint} has no tokenizer (not a text model): the harness needs one")
        results = simple_evaluate(
            model="hf",
            model_args={"pretrained": folder, "trust_remote_code": True, "backend": "causal"},
            tasks=tasks, num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
            task_manager=manager, log_samples=False, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
    return results


def results_table(results: dict) -> str:
    """The harness's Markdown table of ``results`` (the one ``lm_eval`` prints)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table
