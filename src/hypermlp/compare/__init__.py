"""``hypermlp compare``: several mixers at matched parameter budgets on a task suite, several seeds.

Flow (one module each): the YAML is checked into a ``Suite`` (suite.py) -> every task entry's data
settings, each with its models at matched budgets (settings.py; vocabulary and length change the
count) -> one training job per (setting, mixer, seed, grid point), run in a pool of worker
processes (jobs.py) -> per (setting, mixer, seed) the grid point with the best *validation*
score, the kept runs' test scores, the settings of a task averaged per seed, then over seeds
with a 95% t-interval and the per-seed values (aggregate.py, stats.py) -> the claims check of
the paper's design study (claims.py) -> report.md, results.json, loss_curves.png and scores.png
(report.py). ``run_compare`` (run.py) strings them together.

A mixer of the suite is a registered mixer (``hypermlp.registry``), a variant name of the paper's
design study (``R-cg-q-12o``, ``hypermlp.variants``), or a named mixer: one of those with
arguments of its own, listed under ``variants:``.

Suite config (YAML, see configs/demo.yaml)::

    mixers: [softmax, softmax_conv, relu, hypermlp, hyperglu]
    variants:                             # optional: named mixers with their own arguments
      softmax_conv: {mixer: softmax, mixer_args: {conv_size: 4}}
    seeds: [0, 1, 2]                      # default: three (a t-interval needs two; one says n=1)
    workers: 2
    threads_per_worker: 1
    model: {d_model: 64, n_layers: 2, mixer_args: {n_heads: 2}}
    budget: {target: null, tol: 0.01}     # rule grow (default): target null = largest model, an int,
                                          # or a mixer name; rule paper: {rule: paper, reference: S-pc}
                                          # (default reference: the first softmax mixer); ! mixers unmatched
    tasks:
      - task: mad:in_context_recall       # mad:<name> | mqar | lm
        preset: quick                     # MAD: quick = baseline setting + MAD_QUICK protocol,
                                          #      full = + every change, MAD_PROTOCOL (200 epochs, grid)
        data: {seq_len: 64, num_train: 2048}
        train: {epochs: 10, batch_size: 64}
        grid: {lr: [1e-3], weight_decay: [0.0]}
"""

from .aggregate import REPORT_METRICS, SELECT_METRIC, Aggregate, RunKey, aggregate
from .claims import CLAIMS, Claim, ClaimResult, check_claims
from .jobs import Job, JobResult, expand_jobs, run_job
from .run import run_compare
from .settings import Setting, TaskPlan, plan_tasks
from .stats import Estimate, estimate
from .suite import DEFAULT_SUITE, Grid, NamedMixer, Suite, TaskEntry, load_suite

__all__ = [
    "run_compare", "load_suite", "DEFAULT_SUITE",
    "Suite", "NamedMixer", "TaskEntry", "Grid", "Setting", "TaskPlan", "Job", "JobResult", "RunKey", "Aggregate",
    "plan_tasks", "expand_jobs", "run_job", "aggregate", "check_claims", "estimate", "Estimate",
    "SELECT_METRIC", "REPORT_METRICS", "CLAIMS", "Claim", "ClaimResult",
]
