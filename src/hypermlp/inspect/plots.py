"""The PNGs of ``hypermlp inspect``, one figure per layer and picture (docs/math.md §2):

* ``memory_figure``: the activated memory, position x key, per head (softmax: attention weights);
* ``sparsity_figure``: the fraction of active slots against position, per head, for the input
  and as the mean over a batch;
* ``mixing_figure``: R(1) and R(2): p against lag and A diag(s) B^T for the input's mean gate s
  as a lag x lag map (how far back each mixing reaches);
* ``glu_figure``: HyperGLU's routing pattern ReLU(gate) > 0 beside the softplus(scale)
  magnitudes and their product (the paper's Prop. 2.4).

matplotlib (Agg) is imported when the first figure is drawn. Slots that do not exist (a key after
the query) are drawn grey.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .probe import LayerProbe, flip_layout, mixing_operator

__all__ = ["memory_figure", "sparsity_figure", "mixing_figure", "glu_figure", "MAX_LABELS"]

MAX_LABELS = 64  # token labels on the axes up to this many tokens; positions beyond
DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panel_size(labels: Optional[Sequence[str]]) -> float:
    """Inches per map: larger when token labels are drawn, so that they stay readable."""
    if labels is None or len(labels) > MAX_LABELS:
        return 3.2
    return max(3.2, 0.085 * len(labels) + 1.2)


def _grid(rows: int, cols: int, size: float = 3.2):
    plt = _plt()
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 0.6, size * rows + 0.4), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: str, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the title
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _heatmap(ax, values: torch.Tensor, title: str, labels: Optional[Sequence[str]], *, signed: bool = False,
             xlabel: str = "key position", ylabel: str = "query position"):
    """One (T, S) map; NaN (no slot) grey; signed maps centred on 0."""
    import matplotlib

    data = values.detach().float().cpu().numpy()
    cmap = matplotlib.colormaps["RdBu_r" if signed else "viridis"].with_extremes(bad="#dddddd")
    finite = data[~(data != data)]
    if signed:
        lim = float(abs(finite).max()) if finite.size else 1.0
        im = ax.imshow(data, cmap=cmap, vmin=-lim or -1.0, vmax=lim or 1.0, interpolation="nearest")
    else:
        im = ax.imshow(data, cmap=cmap, vmin=0.0, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    t, s = data.shape
    if labels is not None and max(t, s) <= MAX_LABELS:
        ax.set_xticks(range(s), labels[:s], rotation=90, fontsize=5)
        ax.set_yticks(range(t), labels[:t], fontsize=5)
        xlabel, ylabel = f"{xlabel} 0-{s - 1} (ticks: its token)", f"{ylabel} 0-{t - 1} (ticks: its token)"
    else:
        ax.tick_params(labelsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)


def _key_map(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """A (T, S) lag-layout slot map in key layout, NaN (grey) where no real slot is."""
    return flip_layout(values.float()).masked_fill(~flip_layout(valid, fill=False), float("nan"))


def memory_figure(path: str, lp: LayerProbe, labels: Optional[List[str]], batch_index: int = 0) -> None:
    """Which slots fire and how strongly, position x key, one row per head: the activated slots
    a and, when R(2) is on, the final slot weights after it; softmax: its attention weights."""
    tr = lp.trace
    if lp.kind == "softmax":
        panels = [("attention weights", tr.weights, False)]
    else:
        panels = [("activated slots a", tr.a, False)]
        if lp.tables[1] is not None:
            panels.append(("slot weights after R(2)", tr.weights, True))
    plt, fig, axes = _grid(len(lp.heads), len(panels), _panel_size(labels))
    for row, head in enumerate(lp.heads):
        for col, (name, values, signed) in enumerate(panels):
            _heatmap(axes[row, col], _key_map(values[batch_index, row], tr.valid[batch_index, 0]), f"head {head}: {name}",
                     labels, signed=signed)
    _save(plt, fig, path, f"layer {lp.layer} ({lp.kind}): activated memory")


def sparsity_figure(path: str, lp: LayerProbe, example: torch.Tensor, batch_mean: torch.Tensor, batch_what: str) -> None:
    """Fraction of active slots against position: ``example`` (H, T) for the input (solid) and
    ``batch_mean`` (H, T') over a batch (dashed), one colour per head."""
    plt, fig, axes = _grid(1, 1, size=4.0)
    ax = axes[0, 0]
    for row, head in enumerate(lp.heads):
        line, = ax.plot(example[row].cpu().numpy(), label=f"head {head}: this input")
        ax.plot(batch_mean[row].cpu().numpy(), linestyle="--", color=line.get_color(), label=f"head {head}: batch mean")
    ax.set_xlabel("query position", fontsize=8)
    ax.set_ylabel("fraction of slots active (a > 0)", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(f"dashed: mean over {batch_what}"[:80], fontsize=8)
    _save(plt, fig, path, f"layer {lp.layer} ({lp.kind}): sparsity")


def _score_head_names(lp: LayerProbe) -> List[str]:
    if lp.kind == "hyperglu":
        return [f"gate branch of head {h}" for h in lp.heads] + [f"scale branch of head {h}" for h in lp.heads]
    return [f"head {h}" for h in lp.heads]


def mixing_figure(path: str, lp: LayerProbe, n: int, batch_index: int = 0) -> None:
    """R(1) and R(2) over the first ``n`` lags, one row per (score or readout) head: p against
    lag, and A diag(s) B^T for s the mean gate over the input's positions (a typical gate)."""
    rows = []  # (mixing, head name, tables, head row, gate (r,))
    for name, tables, gates, names in (("R(1)", lp.tables[0], lp.gates[0], _score_head_names(lp)),
                                       ("R(2)", lp.tables[1], lp.gates[1], [f"head {h}" for h in lp.heads])):
        if tables is None:
            continue
        for i, head_name in enumerate(names):
            rows.append((name, head_name, tables, i, gates[batch_index, i].float().mean(0)))
    plt, fig, axes = _grid(len(rows), 2)
    for r, (name, head_name, tables, i, gate) in enumerate(rows):
        p, m = mixing_operator(tables, gate, i, n, lp.layout)
        ax = axes[r, 0]
        ax.plot(p.cpu().numpy())
        ax.axhline(0.0, color="#999999", linewidth=0.5)
        ax.set_title(f"{name}, {head_name}: p", fontsize=9)
        ax.set_xlabel("lag", fontsize=8)
        ax.tick_params(labelsize=7)
        _heatmap(axes[r, 1], m, f"{name}, {head_name}: A diag(s) B^T", None, signed=True,
                 xlabel="to lag l'", ylabel="from lag l")
    _save(plt, fig, path, f"layer {lp.layer} ({lp.kind}): sequence mixing, s = mean gate over the input")


def glu_figure(path: str, lp: LayerProbe, labels: Optional[List[str]], batch_index: int = 0) -> None:
    """HyperGLU, per head: where the gate branch routes (ReLU(gate) > 0), the scale branch's
    magnitudes softplus(scale), and their product a, position x key."""
    tr = lp.trace
    plt, fig, axes = _grid(len(lp.heads), 3, _panel_size(labels))
    for row, head in enumerate(lp.heads):
        valid = tr.valid[batch_index, 0]
        pattern = _key_map((tr.routed[batch_index, row] > 0).float(), valid)
        magnitude = _key_map(tr.magnitude[batch_index, row], valid)
        a = _key_map(tr.a[batch_index, row], valid)
        _heatmap(axes[row, 0], pattern, f"head {head}: routing ReLU(gate) > 0", labels)
        _heatmap(axes[row, 1], magnitude, f"head {head}: magnitude softplus(scale)", labels)
        _heatmap(axes[row, 2], a, f"head {head}: a = magnitude x routing", labels)
    _save(plt, fig, path, f"layer {lp.layer} (hyperglu): routing versus magnitude")
