"""``run_compare``: a checked suite -> settings and matched budgets -> jobs -> results ->
scores -> report.md, results.json, jobs.jsonl and the plots in ``out_dir``."""

from __future__ import annotations

import json
import os
import time

from ..machine import machine_info
from .aggregate import REPORT_METRICS, SELECT_METRIC, aggregate
from .jobs import JobResult, expand_jobs, run_jobs
from .report import summary_table, write_plots, write_report, write_results
from .settings import plan_tasks
from .suite import Suite

# what each finished run prints: the selection metric, then the reported ones
PROGRESS_METRICS = tuple(dict.fromkeys([*SELECT_METRIC.values(), *(m for ms in REPORT_METRICS.values() for m in ms)]))


def run_compare(suite: Suite, out_dir: str, config_text: str = "", command: str = "hypermlp compare",
                log=print) -> dict:
    """Run a suite (from ``load_suite``), write its outputs, return the results.json payload."""
    start = time.perf_counter()
    info = machine_info(None if suite.device == "auto" else suite.device)
    info["torch_threads"] = suite.threads_per_worker  # what each training process ran with

    plans = plan_tasks(suite, log)  # data built and budgets matched: errors surface before training
    jobs = expand_jobs(suite, plans)
    log(f"\n[compare] {len(jobs)} training runs on {suite.workers} worker(s)")

    os.makedirs(out_dir, exist_ok=True)
    results = []
    with open(os.path.join(out_dir, "jobs.jsonl"), "w") as jobs_log:
        def done(r: JobResult) -> None:
            results.append(r)
            jobs_log.write(json.dumps({k: v for k, v in r.to_dict().items() if k not in ("train_loss", "evals")}) + "\n")
            jobs_log.flush()
            score = ", ".join(f"{k}={r.final[k]:.4f}" for k in PROGRESS_METRICS if k in r.final)
            if r.error:
                score = f"FAILED: {r.error}"
            log(f"[{len(results)}/{len(jobs)}] {r.label} #{r.setting} {r.mixer} seed={r.seed} "
                f"lr={r.lr:g} wd={r.weight_decay:g}: {score} ({r.steps} steps, {r.wall_s:.0f}s)")

        run_jobs(jobs, suite.workers, suite.threads_per_worker, done)

    agg = aggregate(suite, plans, results)
    wall = time.perf_counter() - start
    plots = write_plots(out_dir, suite, plans, agg)
    report = write_report(out_dir, suite, plans, agg, info, wall, config_text, command)
    payload = write_results(out_dir, suite, plans, results, agg, info, wall)
    log(f"\n{summary_table(suite, plans, agg)}\n\nwrote {report}, {os.path.join(out_dir, 'results.json')}, "
        + ", ".join(plots) + f" in {wall / 60:.1f} min")
    return payload
