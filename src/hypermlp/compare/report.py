"""The compare outputs: report.md (summary, budgets, grid choices, machine, config),
results.json, and the plots loss_curves.png and scores.png."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Dict, List

from ..budget import format_budget_table
from .aggregate import LOWER_IS_BETTER, METRICS, Aggregate, MeanStd
from .jobs import JobResult
from .settings import TaskPlan, budget_key
from .suite import Suite

METRIC_LABELS = {"acc": "acc % (plain)", "macro_acc": "acc % (macro, MAD)", "val_loss": "val loss (nats/token)",
                 "val_bpb": "val bits/byte"}


def fmt_score(ms: MeanStd, metric: str) -> str:
    m, s = ms
    if math.isnan(m):
        return "n/a"
    if metric in ("acc", "macro_acc"):
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.4f} ± {s:.4f}"


def summary_table(suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> str:
    """Task x metric rows, one column per mixer, mean ± std over seeds."""
    mixers = suite.mixers
    lines = ["| task | metric | " + " | ".join(mixers) + " |", "|---|---|" + "---:|" * len(mixers)]
    for plan in plans:
        label = plan.entry.label
        for metric in METRICS[plan.entry.kind]:
            cells = [fmt_score(agg.table[(label, m)][metric], metric) for m in mixers]
            lines.append(f"| {label} | {METRIC_LABELS[metric]} | " + " | ".join(cells) + " |")
    if agg.overall:
        for metric in ("acc", "macro_acc"):
            cells = [fmt_score(agg.overall[m][metric], metric) for m in mixers]
            lines.append(f"| **MAD mean** | {METRIC_LABELS[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_rule_line(suite: Suite) -> str:
    """One sentence on the budget rule the suite used."""
    b = suite.budget
    tol = b.get("tol", 0.01)
    if b.get("rule") == "paper":
        return (f"Rule `paper`: the reference `{b['reference']}` keeps its configuration; every other model "
                f"is brought within {tol:.0%} of its count by shrinking its qk_rank (never past the width its "
                "name gives), then moving its MLP width. Over-parameterised bounds (`!`) are left unmatched.")
    target = b.get("target")
    what = ("the largest model" if target is None else f"`{target}`" if isinstance(target, str) else f"{target:,} parameters")
    return (f"Rule `grow`: every model within {tol:.0%} of {what}, qk_rank first, then the MLP width. "
            "Over-parameterised bounds (`!`) are left unmatched.")


def budgets_record(plans: List[TaskPlan]) -> Dict[str, dict]:
    """Budget table heading -> {"rows": match_budgets' rows}, every setting in order."""
    return {budget_key(p.entry, s): {"rows": s.budget_rows} for p in plans for s in p.settings}


# ------------------------------------------------------------------------------------ report.md
def write_report(out_dir: str, suite: Suite, plans: List[TaskPlan], agg: Aggregate, info: dict, wall_s: float,
                 config_text: str, command: str) -> str:
    mixers = suite.mixers
    lines = [
        "# hypermlp compare report",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_s / 60:.1f} min ({wall_s:.0f} s), {suite.workers} worker(s) x "
        f"{suite.threads_per_worker} thread(s)  ",
        f"Seeds: {list(suite.seeds)} (model init and batch order; the task data are fixed)  ",
        f"Mixers: {', '.join(mixers)}",
        "",
        "## Results (mean ± std over seeds)",
        "",
        "Per setting the best grid point (lr × weight decay) is kept, per task the settings are "
        "averaged. MAD accuracy is given both plain (fraction of scored positions) and macro "
        "(averaged over target token classes, as the MAD authors report it).",
        "",
        summary_table(suite, plans, agg),
        "",
        "![scores](scores.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Parameter budgets",
        "",
        "Counts of the whole LanguageModel (embeddings included) after matching; `changed` says "
        "what budget matching adjusted. The compression task adds the same decoder head to every "
        "model (not counted here).",
        "",
        budget_rule_line(suite),
        "",
    ]
    for key, b in budgets_record(plans).items():
        lines += [f"**{key}**", "", format_budget_table(b["rows"]), ""]
    lines += ["## Grid choices", "", "| task | setting | mixer | seed | lr | weight decay | steps | early stop |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    setting_labels = {p.entry.label: [s.label for s in p.settings] for p in plans}
    for key, r in sorted(agg.best.items(), key=lambda kv: (kv[0].label, kv[0].setting, mixers.index(kv[0].mixer), kv[0].seed)):
        lines.append(f"| {key.label} | {setting_labels[key.label][key.setting]} | {key.mixer} | {key.seed} | {r.lr:g} | "
                     f"{r.weight_decay:g} | {r.steps} | {'yes' if r.stopped_early else 'no'} |")
    lines += ["", "## Machine and software", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# --------------------------------------------------------------------------------- results.json
def write_results(out_dir: str, suite: Suite, plans: List[TaskPlan], results: List[JobResult], agg: Aggregate,
                  info: dict, wall_s: float) -> dict:
    """Everything as JSON: the suite (with each task's settings), budgets, every run, the scores."""
    suite_record = suite.to_dict()
    for task, plan in zip(suite_record["tasks"], plans):
        task["settings"] = [s.data for s in plan.settings]
        task["settings_labels"] = [s.label for s in plan.settings]
    payload = {
        "suite": suite_record,
        "budgets": budgets_record(plans),
        "runs": [r.to_dict() for r in sorted(results, key=lambda r: r.id)],
        "summary": [
            {"task": label, "mixer": mixer, **{m: {"mean": ms[0], "std": ms[1]} for m, ms in metrics.items()}}
            for (label, mixer), metrics in agg.table.items()
        ],
        "mad_overall": {mixer: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for mixer, d in agg.overall.items()},
        "machine": info,
        "wall_s": wall_s,
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    return payload


# ---------------------------------------------------------------------------------------- plots
def write_plots(out_dir: str, suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> List[str]:
    """loss_curves.png and scores.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, draw in (("loss_curves.png", _loss_curves), ("scores.png", _scores)):
        fig = draw(plt, suite, plans, agg)
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(path)
    return files


def _loss_curves(plt, suite: Suite, plans: List[TaskPlan], agg: Aggregate):
    """One panel per task (its first setting): the kept run's training loss per mixer, averaged
    over seeds and smoothed."""
    cols = min(3, len(plans))
    rows = -(-len(plans) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    setting = 0
    for ax, plan in zip(axes.flat, plans):
        label = plan.entry.label
        for mixer in suite.mixers:
            curves = [r.train_loss for k, r in agg.best.items() if k.label == label and k.setting == setting and k.mixer == mixer]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [c[0] for c in curves[0][:n]]
            mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
            smooth, ema = [], None
            for v in mean:  # exponential moving average: per-step losses are noisy
                ema = v if ema is None else 0.9 * ema + 0.1 * v
                smooth.append(ema)
            ax.plot(steps, smooth, label=mixer)
        ax.set_title(f"{label} ({plan.settings[setting].label})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (EMA)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(plans):]:
        ax.axis("off")
    return fig


def _scores(plt, suite: Suite, plans: List[TaskPlan], agg: Aggregate):
    """Bars with std error bars: accuracy of the token tasks, bits per byte of the LM tasks."""
    entries = [p.entry for p in plans]
    groups = [("acc", [e for e in entries if e.kind != "lm"], "accuracy (plain, scored positions)"),
              ("val_bpb", [e for e in entries if e.kind == "lm"], "validation bits per byte")]
    groups = [g for g in groups if g[1]]
    widths = [1.4 * len(g[1]) + 1.5 for g in groups]  # panel width follows its number of tasks
    fig, axes = plt.subplots(1, len(groups), figsize=(sum(widths) + 1, 4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    mixers = suite.mixers
    for ax, (metric, tasks, ylabel) in zip(axes.flat, groups):
        width = 0.8 / len(mixers)
        for j, mixer in enumerate(mixers):
            ms = [agg.table[(t.label, mixer)][metric] for t in tasks]
            xs = [i + (j - (len(mixers) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, [m for m, _ in ms], width, yerr=[s for _, s in ms], label=mixer, capsize=2)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([t.label for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if metric in LOWER_IS_BETTER:  # losses: zoom in on the differences
            lows = [agg.table[(t.label, m)][metric][0] for t in tasks for m in mixers]
            lows = [v for v in lows if not math.isnan(v)]
            if lows:
                ax.set_ylim(bottom=0.9 * min(lows))
        ax.legend(fontsize=7)
    return fig
