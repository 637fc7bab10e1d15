"""``run_inspect``: probe one input through a checkpoint's model and write the pictures of
``plots.py`` and one ``inspect.md`` that shows them per layer and head (``hypermlp inspect``).

Every argument, the checkpoint and the input are checked before anything is written; an output
folder that already holds an ``inspect.md`` is refused unless ``force`` (which rewrites only the
files this command writes).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import torch

from . import plots
from .probe import InspectError, LayerProbe, active_fraction, flip_layout, probe
from .source import Example, load_model, prompt_example, run_record, task_example

__all__ = ["run_inspect", "SPLITS"]

SPLITS = ("val", "test")
REPORT = "inspect.md"
TOP_SLOTS = 3  # the strongest slots of the last query listed per head
BATCH_CHUNK = 4  # rows of the batch probed at once

WHAT = {
    "hyperglu": "HyperGLU: a = softplus(z'_scale) * ReLU(z'_gate / rho) (docs/math.md §2.6)",
    "hypermlp": "HyperMLP: a = ReLU(z' / rho) (docs/math.md §2.6)",
    "relu": "ReLU attention: a = ReLU(z / rho), no sequence mixing (docs/math.md §5)",
    "softmax": "softmax attention: weights = softmax(q . k / sqrt(d_k)) (docs/math.md §5)",
}


def _check_request(prompt, task, example, split, batch_size, out, force) -> None:
    if (prompt is None) == (task is None):
        raise InspectError("give either a prompt or a task (with an example index), not both or neither")
    if task is not None and example is None:
        raise InspectError("a task needs an example index (--example N)")
    if task is None and example is not None:
        raise InspectError("--example N goes with --task, not with a prompt")
    if split not in SPLITS:
        raise InspectError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InspectError(f"the batch size must be a positive integer, got {batch_size!r}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise InspectError(f"{out} exists and is not a folder")
    if os.path.isfile(os.path.join(out, REPORT)) and not force:
        raise InspectError(f"{out} already holds an {REPORT}; use --force to overwrite it or pick another --out")


def _top_slots(lp: LayerProbe, row: int, labels: List[str]) -> str:
    """The strongest real slots of the input's last query, 'key j (label) weight' each."""
    tr = lp.trace
    w = flip_layout(tr.weights[0, row].float())[-1]  # (S,) by key
    valid = flip_layout(tr.valid[0, 0], fill=False)[-1]
    w = w.masked_fill(~valid, float("-inf"))
    k = min(TOP_SLOTS, int(valid.sum()))
    vals, keys = torch.topk(w, k) if k else (torch.empty(0), torch.empty(0, dtype=torch.long))
    return ", ".join(f"key {int(j)} (`{_md(labels[int(j)])}`) {float(v):.3g}" for v, j in zip(vals, keys))


def _md(label: str) -> str:
    """A token label safe inside a code span of a markdown table."""
    return label.replace("`", "'").replace("|", "\\|")


def _layer_section(lp: LayerProbe, files: Dict[str, str], sparsity: Optional[tuple], labels: List[str]) -> List[str]:
    lines = [f"## Layer {lp.layer}: {lp.kind}", "", WHAT[lp.kind] + ".", ""]
    lines += ["| head | slots active (this input) | slots active (batch mean) | strongest slots of the last query |",
              "|---:|---:|---:|---|"]
    for row, head in enumerate(lp.heads):
        if sparsity is None:
            here = there = "all (softmax)"
        else:
            here, there = (f"{float(x[row].nanmean()) * 100:.1f}%" for x in sparsity)
        lines.append(f"| {head} | {here} | {there} | {_top_slots(lp, row, labels)} |")
    lines.append("")
    captions = {
        "memory": "Activated memory, query position x key position (grey: no slot). "
                  + ("Softmax: the attention weights." if lp.kind == "softmax" else
                     "Left: the activated slots a; right (when R(2) is on): the final slot weights after R(2), "
                     "which the readout sums the values with (red positive, blue negative)."),
        "sparsity": "Fraction of a query's real slots that are active (a > 0) against its position, per head: "
                    "solid this input, dashed the mean over the batch.",
        "mixing": "The learned sequence mixings: p against lag, and A diag(s) B^T over the input's lags for s the "
                  "input's mean gate; entry (l, l') is how much the score at lag l adds to the one at lag l' "
                  "(R(1) on the scores, R(2) on the activated slots).",
        "glu": "HyperGLU routing versus magnitude (Prop. 2.4): which slots the gate branch lets through, the scale "
               "branch's softplus magnitudes, and their product a.",
    }
    for kind in ("memory", "sparsity", "mixing", "glu"):
        if kind in files:
            lines += [captions[kind], "", f"![layer {lp.layer} {kind}]({files[kind]})", ""]
    return lines


def run_inspect(
    checkpoint: str,
    out: str,
    *,
    prompt: Optional[str] = None,
    task: Optional[str] = None,
    example: Optional[int] = None,
    split: str = "test",
    layers: Optional[Sequence[int]] = None,
    heads: Optional[Sequence[int]] = None,
    batch_size: int = 16,
    device: str = "cpu",
    force: bool = False,
) -> List[str]:
    """Probe ``prompt`` (a text model) or example ``example`` of ``task``'s ``split`` through
    the model of ``checkpoint`` (a checkpoint or a run folder) and write the PNGs and
    ``inspect.md`` into ``out``. ``layers`` / ``heads``: which to show (default all);
    ``batch_size``: examples or validation windows behind the mean sparsity. Returns the paths
    written, ``inspect.md`` first. Every mistake is an ``InspectError`` raised before writing."""
    _check_request(prompt, task, example, split, batch_size, out, force)
    model, folder = load_model(checkpoint)
    record = run_record(checkpoint, folder)
    if prompt is not None:
        ex: Example = prompt_example(model, folder, record, prompt, batch_size)
    else:
        ex = task_example(model, folder, record, task, example, split, batch_size)
    model = model.to(device).eval()
    probes = probe(model, ex.tokens.to(device), layers, heads)  # checks layers and heads first
    batch_fractions: Dict[int, List[torch.Tensor]] = {i: [] for i in probes}
    for chunk in ex.batch.split(BATCH_CHUNK):  # a few rows at a time: a trace holds (rows, H, T, T) tensors
        for i, lp in probe(model, chunk.to(device), layers, heads).items():
            batch_fractions[i].append(active_fraction(lp.trace))

    os.makedirs(out, exist_ok=True)
    n = ex.tokens.shape[1]
    labels = ex.labels
    written: List[str] = []
    sections: List[str] = []
    for i, lp in probes.items():
        files = {}
        name = f"layer{i}_memory.png"
        plots.memory_figure(os.path.join(out, name), lp, labels)
        files["memory"] = name
        sparsity = None
        if lp.kind != "softmax":
            here = active_fraction(lp.trace)[0]  # (H, T)
            there = torch.cat(batch_fractions[i]).nanmean(0)  # (H, T')
            sparsity = (here, there)
            name = f"layer{i}_sparsity.png"
            plots.sparsity_figure(os.path.join(out, name), lp, here, there, ex.batch_description)
            files["sparsity"] = name
        if lp.tables[0] is not None or lp.tables[1] is not None:
            name = f"layer{i}_mixing.png"
            plots.mixing_figure(os.path.join(out, name), lp, n)
            files["mixing"] = name
        if lp.kind == "hyperglu":
            name = f"layer{i}_glu.png"
            plots.glu_figure(os.path.join(out, name), lp, labels)
            files["glu"] = name
        written += [os.path.join(out, f) for f in files.values()]
        sections += _layer_section(lp, files, sparsity, labels)

    cfg = model.config
    shown = ", ".join(f"{i} ({lp.kind}, heads {', '.join(map(str, lp.heads))})" for i, lp in probes.items())
    text = "\n".join([
        "# hypermlp inspect", "",
        f"- checkpoint: `{folder}`",
        f"- model: {cfg.n_layers} layers of {', '.join(dict.fromkeys(cfg.mixers()))}, d_model {cfg.d_model}, "
        f"vocabulary {cfg.vocab_size}, max_len {cfg.max_len}",
        f"- input: {ex.description}",
        f"- tokens: {' '.join(f'`{_md(t)}`' for t in labels)}" if n <= 256 else f"- tokens: {n} (not listed)",
        f"- batch mean (sparsity): {ex.batch_description}",
        f"- layers shown: {shown}",
        "- computed by the readable reference core (`hyper_core_trace`, one query at a time; softmax directly); "
        "positions and keys count from 0, lag = query position - key position.",
        "", *sections,
        "Files: " + ", ".join(f"`{os.path.basename(p)}`" for p in written), "",
    ])
    report = os.path.join(out, REPORT)
    with open(report, "w", encoding="utf-8") as f:
        f.write(text)
    return [report, *written]
