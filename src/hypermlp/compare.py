"""``hypermlp compare``: several mixers at matched parameter budgets on a task suite, several seeds.

Flow: expand the suite into task settings -> match budgets per setting (vocabulary and length
change the count) -> one training job per (setting, mixer, seed, grid point) -> keep the best
grid point per (setting, mixer, seed) -> aggregate over settings (per task) and seeds (mean ±
std) -> report.md, results.json, loss_curves.png, scores.png.

Jobs are independent, so they run in a pool of worker processes (``workers``), each with a few
torch threads (``threads_per_worker``): on a small CPU box two 1-thread workers do much more
than one 2-thread process on these tiny models.

Suite config (YAML, see configs/demo.yaml)::

    mixers: [softmax, softmax_conv, relu, hypermlp, hyperglu]
    variants:                             # optional: named mixers with their own arguments
      softmax_conv: {mixer: softmax, mixer_args: {conv_size: 4}}
    seeds: [0, 1]
    workers: 2
    threads_per_worker: 1
    model: {d_model: 64, n_layers: 2, mixer_args: {n_heads: 2}}
    budget: {target: null, tol: 0.01}     # target: null = largest model, an int, or a mixer name
    tasks:
      - task: mad:in_context_recall       # mad:<name> | mqar | lm
        preset: quick                     # MAD: quick = baseline setting + MAD_QUICK protocol,
                                          #      full = + every change, MAD_PROTOCOL (200 epochs, grid)
        data: {seq_len: 64, num_train: 2048}
        train: {epochs: 10, batch_size: 64}
        grid: {lr: [1e-3], weight_decay: [0.0]}
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import time
from dataclasses import asdict
from typing import Dict, List

import torch

from .budget import format_budget_table, match_budgets
from .config import ConfigError
from .models import ModelConfig
from .registry import MIXERS
from .tasks import build_task, default_cache_dir, mad_protocol, parse_task_name, resolve_train
from .train import TrainConfig, Trainer, TrainingError

__all__ = ["DEFAULT_MIXERS", "run_compare", "load_suite", "machine_info"]

DEFAULT_MIXERS = ["softmax", "relu", "hypermlp", "hyperglu"]
SUITE_KEYS = {"mixers", "variants", "seeds", "workers", "threads_per_worker", "model", "budget", "tasks", "cache_dir", "device"}
TASK_KEYS = {"task", "label", "preset", "data", "train", "grid", "model"}
# what each kind reports, the first is the one that picks the best grid point
METRICS = {"mad": ["acc", "macro_acc"], "mqar": ["acc", "macro_acc"], "lm": ["val_loss", "val_bpb"]}
LOWER_IS_BETTER = {"val_loss", "val_bpb", "test_loss"}


# ----------------------------------------------------------------------------- suite
def load_suite(cfg: dict) -> dict:
    """Check a compare config and fill in defaults. Raises ConfigError naming the problem."""
    if not isinstance(cfg, dict):
        raise ConfigError("the compare config must be a YAML mapping")
    unknown = sorted(set(cfg) - SUITE_KEYS)
    if unknown:
        raise ConfigError(f"unknown compare setting(s) {unknown}; known: {sorted(SUITE_KEYS)}")
    suite = {
        "mixers": list(cfg.get("mixers") or DEFAULT_MIXERS),
        "seeds": list(cfg.get("seeds") or [0]),
        "workers": int(cfg.get("workers") or 1),
        "threads_per_worker": int(cfg.get("threads_per_worker") or max(1, torch.get_num_threads())),
        "model": dict(cfg.get("model") or {}),
        "budget": dict(cfg.get("budget") or {}),
        "cache_dir": cfg.get("cache_dir") or default_cache_dir(),
        "device": cfg.get("device") or "auto",
        "tasks": [],
    }
    # variants: named mixers with their own arguments, e.g. softmax with the Hyper layers' conv
    suite["variants"] = {}
    for name, v in (cfg.get("variants") or {}).items():
        if not isinstance(v, dict) or v.get("mixer") not in MIXERS or set(v) - {"mixer", "mixer_args"}:
            raise ConfigError(
                f"variant {name!r} must be a mapping with 'mixer' (one of {sorted(MIXERS)}) and optional 'mixer_args'"
            )
        suite["variants"][name] = {"mixer": v["mixer"], "mixer_args": dict(v.get("mixer_args") or {})}
    for m in suite["mixers"]:
        if m not in MIXERS and m not in suite["variants"]:
            raise ConfigError(f"unknown mixer {m!r}; choose from {sorted(MIXERS)} or a name under 'variants'")
    if len(set(suite["mixers"])) != len(suite["mixers"]):
        raise ConfigError(f"mixers {suite['mixers']} repeat a name")
    for key in ("mixer", "vocab_size", "max_len"):
        if key in suite["model"]:
            raise ConfigError(f"model.{key} is set by compare itself (mixers / the task); remove it")
    tasks = cfg.get("tasks")
    if not tasks or not isinstance(tasks, list):
        raise ConfigError("the compare config needs a non-empty list 'tasks'")
    labels = set()
    for t in tasks:
        if not isinstance(t, dict) or "task" not in t:
            raise ConfigError(f"every entry of 'tasks' needs a 'task' key, got {t!r}")
        bad = sorted(set(t) - TASK_KEYS)
        if bad:
            raise ConfigError(f"unknown task setting(s) {bad} in {t['task']!r}; known: {sorted(TASK_KEYS)}")
        kind, name = parse_task_name(t["task"])
        label = t.get("label") or (name or kind)
        if label in labels:
            raise ConfigError(f"task label {label!r} is used twice; give each entry its own 'label'")
        labels.add(label)
        preset = t.get("preset", "quick")
        train = resolve_train(t["task"], dict(t.get("train") or {}), preset)
        train = asdict(TrainConfig.from_dict(train).validate())  # bad keys or values -> error now
        # MAD: the protocol's lr x weight-decay grid unless the entry sets its own (or its own lr)
        grid = dict(t.get("grid") or {})
        if kind == "mad":
            user = dict(t.get("train") or {})
            proto = mad_protocol(preset)["grid"]
            if "lr" not in grid and "lr" not in user:
                grid["lr"] = proto["lr"]
            if "weight_decay" not in grid and "weight_decay" not in user:
                grid["weight_decay"] = proto["weight_decay"]
        bad = sorted(set(grid) - {"lr", "weight_decay"})
        if bad:
            raise ConfigError(f"grid keys must be lr and/or weight_decay, got {bad}")
        suite["tasks"].append({
            "task": t["task"], "kind": kind, "label": label, "preset": preset,
            "data": dict(t.get("data") or {}), "train": train,
            "grid": {"lr": _numbers(grid.get("lr") or [train["lr"]], "grid.lr"),
                     "weight_decay": _numbers(grid.get("weight_decay") or [train["weight_decay"]], "grid.weight_decay")},
            "model": dict(t.get("model") or {}),
        })
    return suite


def _numbers(xs, what: str) -> List[float]:
    if not isinstance(xs, list):
        xs = [xs]
    try:
        return [float(x) for x in xs]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of numbers, got {xs!r}") from None


def _settings_of(t: dict) -> List[dict]:
    """The data settings of one suite entry: one, or for a full MAD preset one per change."""
    if t["kind"] != "mad" or t["preset"] == "quick":
        return [dict(t["data"])]
    if t["preset"] != "full":
        raise ConfigError(f"preset must be quick or full, got {t['preset']!r}")
    from .data.mad import mad_settings

    name = t["task"][4:]
    base = mad_settings(name, "quick")[0]
    out = []
    for s in mad_settings(name, "full"):
        changed = {k: v for k, v in s.items() if base.get(k) != v}
        out.append({**t["data"], **changed})  # the change wins over the suite's reductions
    return out


# ----------------------------------------------------------------------------- jobs
def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_job(job: dict) -> dict:
    """Train one model; returns its final metrics and a (thinned) loss curve."""
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    task, _ = build_task(job["task"], job["data"], job["cache_dir"])
    trainer = Trainer(ModelConfig.from_dict(job["model"]), task, TrainConfig.from_dict(job["train"]))
    out = {
        **{k: job[k] for k in ("id", "label", "setting", "mixer", "seed")},
        "lr": job["train"]["lr"],
        "weight_decay": job["train"]["weight_decay"],
    }
    try:
        res = trainer.fit()
    except TrainingError as e:  # a diverged grid point is a result (the grid keeps the best), not a crash
        return {**out, "final": {}, "evals": trainer.evals, "steps": trainer.step, "stopped_early": False,
                "train_loss": [], "error": str(e), "wall_s": time.perf_counter() - start}
    curve = res["train_loss"]
    stride = max(1, len(curve) // 400)
    return {
        **out,
        "final": {k: v for k, v in res["final"].items() if k not in ("type",)},
        "evals": res["evals"],
        "steps": res["step"],
        "stopped_early": res["stopped_early"],
        "train_loss": curve[::stride],
        "wall_s": time.perf_counter() - start,
    }


def _job_cost(job: dict, steps_hint: int) -> float:
    # rough: steps x batch x length, quadratic mixers a little dearer; longest first balances the pool
    factor = {"softmax": 1.0, "relu": 1.3, "hypermlp": 1.8, "hyperglu": 2.4}.get(job["mixer"], 2.0)
    return steps_hint * job["train"]["batch_size"] * job["seq_len"] * factor


# ----------------------------------------------------------------------------- aggregation
def _mean_std(xs: List[float]):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(ms, metric: str) -> str:
    m, s = ms
    if math.isnan(m):
        return "n/a"
    if metric in ("acc", "macro_acc"):
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.4f} ± {s:.4f}"


def _best(runs: List[dict], metric: str) -> dict:
    def badness(r):
        v = r["final"].get(metric)
        if v is None or math.isnan(v):
            return math.inf
        return v if metric in LOWER_IS_BETTER else -v

    return min(runs, key=badness)


def aggregate(suite: dict, results: List[dict]) -> dict:
    """Best grid point per (setting, mixer, seed); then task scores per seed; then mean ± std."""
    best = {}
    for t in suite["tasks"]:
        primary = METRICS[t["kind"]][0]
        groups: Dict[tuple, List[dict]] = {}
        for r in results:
            if r["label"] == t["label"]:
                groups.setdefault((r["setting"], r["mixer"], r["seed"]), []).append(r)
        for key, runs in groups.items():
            best[(t["label"],) + key] = _best(runs, primary)

    table = {}  # (label, mixer) -> metric -> (mean, std) over seeds of the per-setting mean
    per_seed = {}  # (label, mixer, metric) -> [score per seed]
    for t in suite["tasks"]:
        n_settings = len(t["settings"])
        for mixer in suite["mixers"]:
            for metric in METRICS[t["kind"]]:
                scores = []
                for seed in suite["seeds"]:
                    vals = [best[(t["label"], i, mixer, seed)]["final"].get(metric, float("nan"))
                            for i in range(n_settings) if (t["label"], i, mixer, seed) in best]
                    if len(vals) == n_settings:
                        scores.append(statistics.fmean(vals))
                per_seed[(t["label"], mixer, metric)] = scores
                table.setdefault((t["label"], mixer), {})[metric] = _mean_std(scores)
    # MAD overall: mean over MAD tasks, per seed, then over seeds
    mad_labels = [t["label"] for t in suite["tasks"] if t["kind"] == "mad"]
    overall = {}
    if len(mad_labels) > 1:
        for mixer in suite["mixers"]:
            for metric in ("acc", "macro_acc"):
                cols = [per_seed[(lab, mixer, metric)] for lab in mad_labels]
                n = min(len(c) for c in cols)
                overall.setdefault(mixer, {})[metric] = _mean_std(
                    [statistics.fmean(c[i] for c in cols) for i in range(n)])
    return {"best": best, "table": table, "overall": overall}


# ----------------------------------------------------------------------------- report
def machine_info() -> dict:
    import numpy

    import hypermlp

    dev = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "hypermlp": hypermlp.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": dev,
    }


def _summary_table(suite: dict, agg: dict) -> str:
    mixers = suite["mixers"]
    lines = ["| task | metric | " + " | ".join(mixers) + " |", "|---|---|" + "---:|" * len(mixers)]
    for t in suite["tasks"]:
        for metric in METRICS[t["kind"]]:
            label = {"acc": "acc % (plain)", "macro_acc": "acc % (macro, MAD)", "val_loss": "val loss (nats/token)",
                     "val_bpb": "val bits/byte"}[metric]
            cells = [_fmt(agg["table"][(t["label"], m)][metric], metric) for m in mixers]
            lines.append(f"| {t['label']} | {label} | " + " | ".join(cells) + " |")
    for metric, label in (("acc", "acc % (plain)"), ("macro_acc", "acc % (macro, MAD)")):
        if agg["overall"]:
            cells = [_fmt(agg["overall"][m][metric], metric) for m in mixers]
            lines.append(f"| **MAD mean** | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plots(out_dir: str, suite: dict, agg: dict) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    panels = [(t, 0) for t in suite["tasks"]]  # first setting of every task
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (t, setting) in zip(axes.flat, panels):
        for mixer in suite["mixers"]:
            curves = [agg["best"][k]["train_loss"] for k in agg["best"]
                      if k[0] == t["label"] and k[1] == setting and k[2] == mixer]
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
        ax.set_title(f"{t['label']} ({t['settings_labels'][setting]})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (EMA)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = os.path.join(out_dir, "loss_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)

    groups = [("acc", [t for t in suite["tasks"] if t["kind"] != "lm"], "accuracy (plain, scored positions)"),
              ("val_bpb", [t for t in suite["tasks"] if t["kind"] == "lm"], "validation bits per byte")]
    groups = [g for g in groups if g[1]]
    widths = [1.4 * len(g[1]) + 1.5 for g in groups]  # panel width follows its number of tasks
    fig, axes = plt.subplots(1, len(groups), figsize=(sum(widths) + 1, 4), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (metric, tasks, ylabel) in zip(axes.flat, groups):
        width = 0.8 / len(suite["mixers"])
        for j, mixer in enumerate(suite["mixers"]):
            ms = [agg["table"][(t["label"], mixer)][metric] for t in tasks]
            xs = [i + (j - (len(suite["mixers"]) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, [m for m, _ in ms], width, yerr=[s for _, s in ms], label=mixer, capsize=2)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([t["label"] for t in tasks], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        if metric in LOWER_IS_BETTER:  # losses: zoom in on the differences
            lows = [agg["table"][(t["label"], m)][metric][0] for t in tasks for m in suite["mixers"]]
            lows = [v for v in lows if not math.isnan(v)]
            if lows:
                ax.set_ylim(bottom=0.9 * min(lows))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "scores.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path)
    return files


def _write_report(out_dir: str, suite: dict, agg: dict, budgets: dict, info: dict, wall_s: float,
                  config_text: str, command: str) -> str:
    mixers = suite["mixers"]
    lines = [
        "# hypermlp compare report",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall_s / 60:.1f} min ({wall_s:.0f} s), {suite['workers']} worker(s) x "
        f"{suite['threads_per_worker']} thread(s)  ",
        f"Seeds: {suite['seeds']} (model init and batch order; the task data are fixed)  ",
        f"Mixers: {', '.join(mixers)}",
        "",
        "## Results (mean ± std over seeds)",
        "",
        "Per setting the best grid point (lr × weight decay) is kept, per task the settings are "
        "averaged. MAD accuracy is given both plain (fraction of scored positions) and macro "
        "(averaged over target token classes, as the MAD authors report it).",
        "",
        _summary_table(suite, agg),
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
    ]
    for key, b in budgets.items():
        lines += [f"**{key}**", "", format_budget_table(b["rows"]), ""]
    lines += ["## Grid choices", "", "| task | setting | mixer | seed | lr | weight decay | steps | early stop |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for (label, setting, mixer, seed), r in sorted(agg["best"].items(), key=lambda kv: (kv[0][0], kv[0][1], mixers.index(kv[0][2]), kv[0][3])):
        t = next(t for t in suite["tasks"] if t["label"] == label)
        lines.append(f"| {label} | {t['settings_labels'][setting]} | {mixer} | {seed} | {r['lr']:g} | "
                     f"{r['weight_decay']:g} | {r['steps']} | {'yes' if r['stopped_early'] else 'no'} |")
    lines += ["", "## Machine and software", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += ["", "## Config", "", "```yaml", config_text.rstrip(), "```", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


# ----------------------------------------------------------------------------- main entry
def run_compare(suite: dict, out_dir: str, config_text: str = "", command: str = "hypermlp compare",
                log=print) -> dict:
    """Run a suite (from ``load_suite``) and write report.md, results.json and the plots."""
    start = time.perf_counter()
    from .data.mad import mad_setting_label

    # 1. every task setting, its data (built once here: errors surface before any training)
    jobs, budgets = [], {}
    for t in suite["tasks"]:
        t["settings"] = _settings_of(t)
        t["settings_labels"] = []
        for i, data in enumerate(t["settings"]):
            task, resolved = build_task(t["task"], data, suite["cache_dir"])
            t["settings_labels"].append(
                mad_setting_label(t["task"][4:], resolved) if t["kind"] == "mad" else
                ("baseline" if len(t["settings"]) == 1 else f"setting {i}"))
            # 2. matched budgets for this vocabulary and length
            base = {}
            for mixer in suite["mixers"]:
                m = {"vocab_size": task.vocab_size, "max_len": task.seq_len, **suite["model"], **t["model"], "mixer": mixer}
                if mixer in suite["variants"]:
                    variant = suite["variants"][mixer]
                    m["mixer"] = variant["mixer"]
                    m["mixer_args"] = {**m.get("mixer_args", {}), **variant["mixer_args"]}
                base[mixer] = ModelConfig.from_dict(m)
            matched, rows = match_budgets(base, **_budget_args(suite["budget"], base))
            key = f"{t['label']} / {t['settings_labels'][-1]} (vocab {task.vocab_size}, length {task.seq_len})"
            budgets[key] = {"rows": rows}
            log(f"\n[budget] {key}\n{format_budget_table(rows)}")
            steps_hint = t["train"].get("steps") or 0
            if t["train"].get("epochs") and task.steps_per_epoch(t["train"]["batch_size"]):
                steps_hint = t["train"]["epochs"] * task.steps_per_epoch(t["train"]["batch_size"])
            # 3. one job per mixer x seed x grid point
            for mixer in suite["mixers"]:
                for seed in suite["seeds"]:
                    for lr in t["grid"]["lr"]:
                        for wd in t["grid"]["weight_decay"]:
                            train = {**t["train"], "lr": lr, "weight_decay": wd, "seed": seed,
                                     "progress": False, "save_checkpoints": False, "device": suite["device"]}
                            job = {"label": t["label"], "task": t["task"], "data": data, "setting": i,
                                   "mixer": mixer, "seed": seed, "model": matched[mixer].to_dict(),
                                   "train": train, "cache_dir": suite["cache_dir"], "seq_len": task.seq_len,
                                   "threads": suite["threads_per_worker"]}
                            job["cost"] = _job_cost(job, steps_hint)
                            jobs.append(job)
    for i, job in enumerate(jobs):
        job["id"] = i
    log(f"\n[compare] {len(jobs)} training runs on {suite['workers']} worker(s)")

    # 4. run them, longest first
    os.makedirs(out_dir, exist_ok=True)
    results = []
    order = sorted(jobs, key=lambda j: -j["cost"])
    log_path = os.path.join(out_dir, "jobs.jsonl")
    with open(log_path, "w") as jl:
        def done(r):
            results.append(r)
            jl.write(json.dumps({k: v for k, v in r.items() if k not in ("train_loss", "evals")}) + "\n")
            jl.flush()
            fin = r["final"]
            score = ", ".join(f"{k}={fin[k]:.4f}" for k in ("acc", "macro_acc", "val_loss", "val_bpb") if k in fin)
            if r.get("error"):
                score = f"FAILED: {r['error']}"
            log(f"[{len(results)}/{len(jobs)}] {r['label']} #{r['setting']} {r['mixer']} seed={r['seed']} "
                f"lr={r['lr']:g} wd={r['weight_decay']:g}: {score} ({r['steps']} steps, {r['wall_s']:.0f}s)")

        if suite["workers"] <= 1:
            for job in order:
                done(run_job(job))
        else:
            ctx = mp.get_context("spawn")  # fork after torch has started threads can hang
            pool = ctx.Pool(suite["workers"], initializer=_init_worker, initargs=(suite["threads_per_worker"],))
            try:
                for r in pool.imap_unordered(run_job, order, chunksize=1):
                    done(r)
                pool.close()  # orderly shutdown: workers exit on their own
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()

    # 5. aggregate and report
    agg = aggregate(suite, results)
    wall = time.perf_counter() - start
    info = machine_info()
    info["torch_threads"] = suite["threads_per_worker"]
    plots = _plots(out_dir, suite, agg)
    report = _write_report(out_dir, suite, agg, budgets, info, wall, config_text, command)
    summary = _summary_table(suite, agg)
    payload = {
        "suite": {k: v for k, v in suite.items()},
        "budgets": budgets,
        "runs": sorted(results, key=lambda r: r["id"]),
        "summary": [
            {"task": lab, "mixer": mixer, **{m: {"mean": ms[0], "std": ms[1]} for m, ms in metrics.items()}}
            for (lab, mixer), metrics in agg["table"].items()
        ],
        "mad_overall": {mixer: {m: {"mean": v[0], "std": v[1]} for m, v in d.items()} for mixer, d in agg["overall"].items()},
        "machine": info,
        "wall_s": wall,
    }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    log(f"\n{summary}\n\nwrote {report}, {os.path.join(out_dir, 'results.json')}, "
        + ", ".join(plots) + f" in {wall / 60:.1f} min")
    return payload


def _budget_args(budget: dict, base: Dict[str, ModelConfig]) -> dict:
    from .budget import count_params

    bad = sorted(set(budget) - {"target", "tol", "qk_max_factor"})
    if bad:
        raise ConfigError(f"unknown budget setting(s) {bad}; known: target, tol, qk_max_factor")
    args = dict(budget)
    target = args.get("target")
    if isinstance(target, str):  # a mixer name: match everyone to that model
        if target not in base:
            raise ConfigError(f"budget target {target!r} is not one of the mixers {sorted(base)}")
        args["target"] = count_params(base[target])
    return args
