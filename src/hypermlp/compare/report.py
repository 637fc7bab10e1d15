"""The compare outputs: report.md (scores with 95% intervals, per-seed values, compute, the claims
check, budgets, grid choices, machine, config), results.json, and the plots loss_curves.png
(training loss beside the validation curve) and scores.png (bars, per-seed points, 95% intervals,
chance lines; axes from zero).

Every mixer keeps one colour in every plot and every report (``mixer_colour``).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import zlib
from typing import Dict, List, Optional

from ..budget import format_budget_table
from .aggregate import REPORT_METRICS, SELECT_METRIC, Aggregate, mad_mean_label
from .claims import RULE, check_claims, claims_record, claims_table
from .jobs import JobResult
from .settings import TaskPlan, budget_key
from .stats import Estimate, format_estimate
from .suite import Suite

METRIC_LABELS = {
    "test_acc": "test acc % (plain)", "test_macro_acc": "test acc % (macro, MAD)",
    "val_acc": "val acc % (plain)", "val_macro_acc": "val acc % (macro, MAD)",
    "val_loss": "val loss (nats/token)", "val_bpb": "val bits/byte",
}
ACCURACY = ("acc", "macro_acc")

# one colour per mixer name, the same in every plot; a registered name takes the colour of the
# variant it is (hypermlp = R-cg-q-12o); other names get one from their hash
COLOURS = {
    "S-pc": "#1f77b4", "S-c-q": "#6baed6", "S-c-v": "#08519c", "S-p": "#9467bd",
    "R-pc": "#2ca02c", "R-cg-q": "#98df8a", "R-c-q": "#bcbd22", "R-c-v": "#8c564b",
    "R-cg-q-12o": "#ff7f0e", "R-g-q-12o": "#ffbb78", "R-12!": "#7f7f7f", "R-12o!": "#17becf",
    "G-cg-q-1o": "#e377c2", "G-cg-q-12o": "#d62728",
}
_HASHED = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39",
           "#ad494a", "#a55194", "#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd", "#9c9ede")


def mixer_colour(name: str, design: Optional[str] = None) -> str:
    """The fixed colour of a mixer: its own, its variant's, or one picked by its name's hash."""
    if name in COLOURS:
        return COLOURS[name]
    if design in COLOURS:
        return COLOURS[design]
    return _HASHED[zlib.crc32(name.encode()) % len(_HASHED)]


def suite_colours(suite: Suite, plans: List[TaskPlan]) -> Dict[str, str]:
    """mixer -> colour for one suite; two mixers that would share one (e.g. ``hypermlp`` beside
    ``R-cg-q-12o``) keep it for the one named so, the other takes its hash colour."""
    designs = _designs(plans)
    out: Dict[str, str] = {}
    for m in sorted(suite.mixers, key=lambda m: m not in COLOURS):  # own-named colours first
        c = mixer_colour(m, designs.get(m))
        if c in out.values():
            c = _HASHED[zlib.crc32(m.encode()) % len(_HASHED)]
        out[m] = c
    return {m: out[m] for m in suite.mixers}


def _designs(plans: List[TaskPlan]) -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for p in plans:
        for s in p.settings[:1]:
            for m, d in s.designs.items():
                out.setdefault(m, d)
    return out


def is_accuracy(metric: str) -> bool:
    return metric.endswith(ACCURACY)


def fmt_score(e: Estimate, metric: str, n_expected: Optional[int] = None) -> str:
    """``mean ± 95% CI`` (accuracy in %, one decimal; losses four); ``mean (n=1)`` for one seed."""
    if is_accuracy(metric):
        return format_estimate(e, 100.0, 1, n_expected)
    return format_estimate(e, 1.0, 4, n_expected)


def _mixer_cell(mixer: str, designs: Dict[str, Optional[str]]) -> str:
    d = designs.get(mixer)
    return f"{mixer} (= {d})" if d and d != mixer else mixer


def summary_table(suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> str:
    """One table per reported metric: a row per mixer, a column per task (and the MAD mean),
    mean ± 95% CI over seeds."""
    designs = _designs(plans)
    n = len(suite.seeds)
    blocks = []
    token = [p for p in plans if p.entry.kind != "lm"]
    lm = [p for p in plans if p.entry.kind == "lm"]
    if token:
        for metric in REPORT_METRICS["mad"]:
            cols = [p.entry.label for p in token]
            head = list(cols) + ([mad_mean_label(agg.mad_tasks)] if agg.overall else [])
            lines = [f"**{METRIC_LABELS[metric]}**", "", "| mixer | " + " | ".join(head) + " |",
                     "|---|" + "---:|" * len(head)]
            for m in suite.mixers:
                cells = [fmt_score(agg.table[(c, m)][metric], metric, n) for c in cols]
                if agg.overall:
                    cells.append(fmt_score(agg.overall[m][metric], metric, n))
                lines.append(f"| {_mixer_cell(m, designs)} | " + " | ".join(cells) + " |")
            blocks.append("\n".join(lines))
    if lm:
        head = [f"{p.entry.label}: {METRIC_LABELS[k]}" for p in lm for k in REPORT_METRICS["lm"]]
        lines = ["**language model**", "", "| mixer | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for m in suite.mixers:
            cells = [fmt_score(agg.table[(p.entry.label, m)][k], k, n) for p in lm for k in REPORT_METRICS["lm"]]
            lines.append(f"| {_mixer_cell(m, designs)} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def per_seed_table(suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> str:
    """Long form: every task x metric x mixer with n, the mean, the 95% interval and each seed's value."""
    lines = ["| task | metric | mixer | n | mean | 95% CI | per seed |", "|---|---|---|---:|---:|---|---|"]

    def row(task: str, metric: str, mixer: str, e: Estimate) -> str:
        scale, digits = (100.0, 1) if is_accuracy(metric) else (1.0, 4)
        f = lambda x: f"{scale * x:.{digits}f}"  # noqa: E731
        ci = "–" if e.n < 2 else f"[{f(e.interval()[0])}, {f(e.interval()[1])}]"
        seeds = ", ".join(f"{s}: {f(v)}" for s, v in zip(e.seeds, e.values)) or "–"
        mean = f(e.mean) if e.n else "n/a"
        return f"| {task} | {METRIC_LABELS[metric]} | {mixer} | {e.n} | {mean} | {ci} | {seeds} |"

    for p in plans:
        for metric in REPORT_METRICS[p.entry.kind]:
            for m in suite.mixers:
                lines.append(row(p.entry.label, metric, m, agg.table[(p.entry.label, m)][metric]))
    if agg.overall:
        for metric in REPORT_METRICS["mad"]:
            for m in suite.mixers:
                lines.append(row(mad_mean_label(agg.mad_tasks), metric, m, agg.overall[m][metric]))
    return "\n".join(lines)


def _si(x: float) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2f}{unit}"
    return f"{x:.0f}"


def compute_table(suite: Suite, plans: List[TaskPlan], agg: Aggregate) -> str:
    """Per task and mixer: parameters, and the kept runs' cost (mean over seeds; a task's
    settings summed): wall time, training tokens, tokens/s, estimated training FLOPs; then the
    wall time of every grid point run."""
    lines = ["| task | mixer | params | wall s | train tokens | tokens/s | est. train FLOPs | "
             "wall s, all grid runs |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in plans:
        params = {r["name"]: r["params"] for r in p.settings[0].budget_rows} if p.settings else {}
        for m in suite.mixers:
            c = agg.compute[(p.entry.label, m)]
            wall = c["train_wall_s"]
            lines.append(
                f"| {p.entry.label} | {m} | {params.get(m, 0):,} | "
                + (f"{wall.mean:.1f}" if wall.n else "n/a")
                + f" | {_si(c['train_tokens'].mean)} | {_si(c['train_tokens_per_s'].mean)} | "
                f"{_si(c['train_flops'].mean)} | {agg.grid_wall_s.get((p.entry.label, m), 0.0):.0f} |")
    return "\n".join(lines)


def selection_line(plans: List[TaskPlan]) -> str:
    kinds = []
    for p in plans:
        if p.entry.kind not in kinds:
            kinds.append(p.entry.kind)
    parts = [f"{k}: `{SELECT_METRIC[k]}`" for k in kinds]
    line = ("Per setting the grid point (lr × weight decay) with the best validation score is kept "
            f"({', '.join(parts)}); the validation split is held apart from train and test and test "
            "labels never choose. The tables report the kept runs' test scores")
    if "lm" in kinds:
        line += (" (the language model has no test split: its validation split, scored in full, is what "
                 "it reports; with one grid point nothing is chosen on it)")
    return line + "; per task the settings are averaged per seed, then mean ± 95% t-interval over seeds."


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


def _seeds_line(suite: Suite) -> str:
    n = len(suite.seeds)
    note = "" if n >= 3 else (" — one seed: no interval, each score says n=1" if n == 1 else
                              " — two seeds: the 95% t-interval is wide (t = 12.7)")
    return f"Seeds: {list(suite.seeds)} (model init and batch order; the task data are fixed){note}  "


# ------------------------------------------------------------------------------------ report.md
def write_report(out_dir: str, suite: Suite, plans: List[TaskPlan], agg: Aggregate, info: dict, wall_s: float,
                 config_text: str, command: str) -> str:
    mixers = suite.mixers
    claims = check_claims(suite, plans, agg)
    lines = [
        "# hypermlp compare report",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_s / 60:.1f} min ({wall_s:.0f} s), {suite.workers} worker(s) x "
        f"{suite.threads_per_worker} thread(s)  ",
        _seeds_line(suite),
        f"Mixers: {', '.join(mixers)}",
        "",
        "## Results (mean ± 95% CI over seeds)",
        "",
        selection_line(plans) + " MAD accuracy is given both plain (fraction of scored positions) and "
        "macro (averaged over target token classes, as the MAD authors report it)"
        + (f"; the {mad_mean_label(agg.mad_tasks)} is the mean over those tasks per seed, then over seeds." if agg.overall else "."),
        "",
        summary_table(suite, plans, agg),
        "",
        "![scores](scores.png)",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "## Claims check",
        "",
        "Each claim of the paper's design study, the comparison that tests it at this scale, and a verdict. "
        f"Rule: {RULE} A suite mixer stands for a variant when its model, before budget matching, is that "
        "variant. This is a check at this suite's scale, not a verdict on the paper.",
        "",
        claims_table(claims, agg.mad_tasks),
        "",
        "## Compute",
        "",
        "Matched parameters are not matched compute. Per task and mixer, the kept runs (mean over seeds, a "
        "task's settings summed): wall time of one training run (evaluations included), training tokens, "
        "tokens per second of training steps, and estimated training FLOPs (3 × forward: 6 × dense "
        "parameters per token plus each mixer's sequence terms, `hypermlp.flops`); then the wall time of "
        "every run of the grid.",
        "",
        compute_table(suite, plans, agg),
        "",
        "## Per-seed values",
        "",
        per_seed_table(suite, plans, agg),
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
    lines += ["## Grid choices", "",
              "| task | setting | mixer | seed | lr | weight decay | selected on | its value | steps | early stop |",
              "|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    setting_labels = {p.entry.label: [s.label for s in p.settings] for p in plans}
    kinds = {p.entry.label: p.entry.kind for p in plans}
    for key, r in sorted(agg.best.items(), key=lambda kv: (kv[0].label, kv[0].setting, mixers.index(kv[0].mixer), kv[0].seed)):
        sel = SELECT_METRIC[kinds[key.label]]
        v = r.final.get(sel)
        value = "diverged" if v is None else (f"{100 * v:.1f}" if is_accuracy(sel) else f"{v:.4f}")
        lines.append(f"| {key.label} | {setting_labels[key.label][key.setting]} | {key.mixer} | {key.seed} | {r.lr:g} | "
                     f"{r.weight_decay:g} | {sel} | {value} | {r.steps} | {'yes' if r.stopped_early else 'no'} |")
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
    """Everything as JSON: the suite (with each task's settings), budgets, every run, the scores
    (n, mean, std, sem, 95% CI half-width, per-seed values), compute, the MAD mean, the claims."""
    designs = _designs(plans)
    kinds = {p.entry.label: p.entry.kind for p in plans}
    suite_record = suite.to_dict()
    for task, plan in zip(suite_record["tasks"], plans):
        task["settings"] = [s.data for s in plan.settings]
        task["settings_labels"] = [s.label for s in plan.settings]
        task["chance"] = [s.chance for s in plan.settings]
    payload = {
        "suite": suite_record,
        "selection": {"metric": {p.entry.label: SELECT_METRIC[p.entry.kind] for p in plans},
                      "reported": {p.entry.label: list(REPORT_METRICS[p.entry.kind]) for p in plans}},
        "budgets": budgets_record(plans),
        "runs": [r.to_dict() for r in sorted(results, key=lambda r: r.id)],
        "selected": [  # the kept grid point of every (task, setting, mixer, seed)
            {"task": k.label, "setting": k.setting, "mixer": k.mixer, "seed": k.seed, "run": r.id, "lr": r.lr,
             "weight_decay": r.weight_decay, "metric": sel, "value": r.final.get(sel)}
            for k, r in sorted(agg.best.items()) for sel in [SELECT_METRIC[kinds[k.label]]]
        ],
        "summary": [
            {"task": label, "mixer": mixer, "design": designs.get(mixer), **{m: e.to_dict() for m, e in metrics.items()}}
            for (label, mixer), metrics in agg.table.items()
        ],
        "compute": [
            {"task": label, "mixer": mixer, **{m: e.to_dict() for m, e in c.items()},
             "grid_wall_s": agg.grid_wall_s.get((label, mixer), 0.0)}
            for (label, mixer), c in agg.compute.items()
        ],
        "mad_mean": {"label": mad_mean_label(agg.mad_tasks), "tasks": list(agg.mad_tasks),
                     "scores": {mixer: {m: e.to_dict() for m, e in d.items()} for mixer, d in agg.mad_mean.items()}},
        "claims": claims_record(check_claims(suite, plans, agg)),
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

    colours = suite_colours(suite, plans)
    files = []
    for name, draw in (("loss_curves.png", _loss_curves), ("scores.png", _scores)):
        fig = draw(plt, suite, plans, agg, colours)  # each lays itself out
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def _ema(xs: List[float], decay: float = 0.9) -> List[float]:
    out, ema = [], None
    for v in xs:  # per-step losses are noisy
        ema = v if ema is None else decay * ema + (1 - decay) * v
        out.append(ema)
    return out


def _loss_curves(plt, suite: Suite, plans: List[TaskPlan], agg: Aggregate, colours: Dict[str, str]):
    """A row per task (its first setting): the kept runs' training loss (mean over seeds, EMA) on
    the left, their validation curve, the selection metric, per seed on the right."""
    fig, axes = plt.subplots(len(plans), 2, figsize=(11, 3.0 * len(plans)), squeeze=False)
    setting = 0
    for (ax_train, ax_val), plan in zip(axes, plans):
        label, kind = plan.entry.label, plan.entry.kind
        metric = SELECT_METRIC[kind]
        scale = 100.0 if is_accuracy(metric) else 1.0
        for mixer in suite.mixers:
            runs = [r for k, r in sorted(agg.best.items()) if k.label == label and k.setting == setting and k.mixer == mixer]
            curves = [r.train_loss for r in runs if r.train_loss]
            colour = colours[mixer]
            if curves:
                n = min(len(c) for c in curves)
                steps = [c[0] for c in curves[0][:n]]
                mean = [statistics.fmean(c[i][1] for c in curves) for i in range(n)]
                ax_train.plot(steps, _ema(mean), label=mixer, color=colour, lw=1.2)
            for i, r in enumerate(runs):
                pts = [(e["step"], scale * e[metric]) for e in r.evals if e.get(metric) is not None]
                if pts:
                    ax_val.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=0.9, alpha=0.8,
                                marker=".", ms=3, label=mixer if i == 0 else None)
        title = label if len(plan.settings) == 1 else f"{label} ({plan.settings[setting].label})"
        ax_train.set_title(f"{title}: training loss", fontsize=9)
        ax_train.set_xlabel("step")
        ax_train.set_ylabel("train loss (EMA, mean over seeds)", fontsize=8)
        ax_val.set_title(f"{title}: {METRIC_LABELS.get(metric, metric)}, each seed", fontsize=9)
        ax_val.set_xlabel("step")
        ax_val.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
        if is_accuracy(metric):
            ax_val.set_ylim(0, 100)
            chance = plan.settings[setting].chance.get("test_acc")
            if chance is not None:
                ax_val.axhline(100 * chance, color="k", ls="--", lw=0.8, label="chance")
        ax_val.legend(fontsize=6, ncol=2 if len(suite.mixers) > 6 else 1)
    fig.tight_layout()
    return fig


def _scores(plt, suite: Suite, plans: List[TaskPlan], agg: Aggregate, colours: Dict[str, str]):
    """Bars of the mean, 95% intervals, each seed as a point. Token tasks (and the MAD mean):
    test macro accuracy from 0 to 100 with each task's chance level dashed; the LM: validation
    bits per byte from 0, so that small gaps look small."""
    mixers = suite.mixers
    token = [p for p in plans if p.entry.kind != "lm"]
    lm = [p for p in plans if p.entry.kind == "lm"]
    groups = []
    if token:
        metric = "test_macro_acc"
        items = [(p.entry.label, {m: agg.table[(p.entry.label, m)][metric] for m in mixers},
                  _mean_chance(p, metric)) for p in token]
        if agg.overall:
            items.append((f"MAD mean\n({len(agg.mad_tasks)} tasks)", {m: agg.overall[m][metric] for m in mixers},
                          _mad_mean_chance(plans, agg, metric)))
        groups.append((metric, items, "test accuracy % (macro, MAD metric)", 100.0))
    if lm:
        items = [(p.entry.label, {m: agg.table[(p.entry.label, m)]["val_bpb"] for m in mixers}, None) for p in lm]
        groups.append(("val_bpb", items, "validation bits per byte (lower is better)", 1.0))
    per_group = 0.16 * len(mixers) + 0.5
    widths = [per_group * len(items) + 1.2 for _, items, _, _ in groups]
    stack = sum(widths) > 14  # many mixers x tasks: one panel per row
    fig_w = (max(widths) if stack else sum(widths)) + 2.2
    if stack:
        fig, axes = plt.subplots(len(groups), 1, figsize=(fig_w, 4.0 * len(groups)), squeeze=False)
    else:
        fig, axes = plt.subplots(1, len(groups), figsize=(fig_w, 4.4), squeeze=False,
                                 gridspec_kw={"width_ratios": widths})
    width = 0.8 / len(mixers)
    for ax, (metric, items, ylabel, scale) in zip(axes.flat, groups):
        top = 0.0
        for j, mixer in enumerate(mixers):
            xs = [i + (j - (len(mixers) - 1) / 2) * width for i in range(len(items))]
            ests = [est[mixer] for _, est, _ in items]
            means = [scale * e.mean if e.n else 0.0 for e in ests]
            errs = [scale * e.ci95 if e.n > 1 else 0.0 for e in ests]
            ax.bar(xs, means, width, yerr=errs, color=colours[mixer], label=mixer, capsize=1.5,
                   error_kw={"lw": 0.8}, edgecolor="none")
            for x, e in zip(xs, ests):
                if e.n:
                    ax.scatter([x] * e.n, [scale * v for v in e.values], s=6, color="k", zorder=3, linewidths=0)
                    top = max(top, max(scale * v for v in e.values))
        for i, (_, _, chance) in enumerate(items):
            if chance is not None:
                ax.hlines(scale * chance, i - 0.45, i + 0.45, colors="k", linestyles="--", lw=0.9,
                          label="chance (best constant guess)" if i == 0 else None)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([name for name, _, _ in items], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_ylim(0, 100 if scale == 100.0 else max(top, 1e-9) * 1.1)  # from zero: gaps at their size
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig_w, 1))  # the legend keeps the right margin
    return fig


def _mean_chance(plan: TaskPlan, metric: str) -> Optional[float]:
    vals = [s.chance.get(metric) for s in plan.settings]
    return statistics.fmean(vals) if vals and all(v is not None for v in vals) else None


def _mad_mean_chance(plans: List[TaskPlan], agg: Aggregate, metric: str) -> Optional[float]:
    vals = [_mean_chance(p, metric) for p in plans if p.entry.label in agg.mad_tasks]
    return statistics.fmean(vals) if vals and all(v is not None for v in vals) else None
