"""Command line: ``hypermlp train | compare | generate | bench``.

Every user mistake (unknown task or mixer, unreadable or empty data, a checkpoint that does not
match, bad YAML, an output folder that would be overwritten) ends as one line on stderr,
``hypermlp: error: ...``, and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import List, Optional

from .defaults import TRAIN_OUT_DIR
from .variants import help_text as variant_help_text

__all__ = ["main"]


class UsageError(Exception):
    """A user mistake: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- helpers
def _read_yaml(path: Optional[str]) -> dict:
    import yaml

    if not path:
        return {}
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"bad YAML in {path}: {problem}{where}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise UsageError(f"bad config {path}: expected a YAML mapping at the top level")
    return cfg


def _key_values(items: Optional[List[str]], flag: str) -> dict:
    """['a=1', 'b=true'] -> {'a': 1, 'b': True} (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _set(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def _has_run(out: str) -> bool:
    return os.path.exists(os.path.join(out, "metrics.jsonl")) or os.path.isdir(os.path.join(out, "checkpoints"))


# ----------------------------------------------------------------------------- train
def _add_model_flags(p):
    g = p.add_argument_group("model (override the config file)")
    g.add_argument("--mixer", help="softmax, relu, hypermlp or hyperglu, " + variant_help_text()
                   + "; a comma list gives one per layer")
    g.add_argument("--d-model", type=int)
    g.add_argument("--n-layers", type=int)
    g.add_argument("--n-heads", type=int)
    g.add_argument("--qk-rank", type=int)
    g.add_argument("--mlp-hidden", type=int)
    g.add_argument("--max-len", type=int, help="longest sequence the model takes (default: the task's length)")
    g.add_argument("--mixer-arg", action="append", metavar="KEY=VALUE", help="any other mixer argument, e.g. seq_rank=8")


def _add_train_flags(p):
    g = p.add_argument_group("training (override the config file)")
    g.add_argument("--steps", type=int)
    g.add_argument("--epochs", type=int, help="passes over the training set (synthetic tasks)")
    g.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    g.add_argument("--lr", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--grad-clip", type=float)
    g.add_argument("--eval-every", type=int)
    g.add_argument("--ckpt-every", type=int)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])


def cmd_train(args) -> int:
    import torch.distributed as dist

    from .models import ModelConfig
    from .tasks import build_task, resolve_train
    from .train import TrainConfig, Trainer, init_distributed

    cfg = _read_yaml(args.config)
    if args.resume and not args.config and not args.task and args.out:
        # `train --out RUN --resume`: the run's own record says what it was
        run_file = os.path.join(args.out, "run.yaml")
        if not os.path.exists(run_file):
            raise UsageError(f"{args.out} holds no run to resume (no run.yaml)")
        cfg = _read_yaml(run_file)
        for derived in ("source", "vocab_size"):  # written for the reader, not settings
            (cfg.get("data") or {}).pop(derived, None)
    bad = sorted(set(cfg) - {"task", "data", "model", "train", "out", "cache_dir"})
    if bad:
        raise UsageError(f"unknown top-level key(s) {bad} in {args.config}; known: cache_dir, data, model, out, task, train")
    task_name = args.task or cfg.get("task")
    if not task_name:
        raise UsageError("no task: give --task (mad:<name>, mqar or lm) or 'task:' in --config")
    data = dict(cfg.get("data") or {})
    data.update(_key_values(args.data_arg, "--data-arg"))
    if args.data is not None:
        if task_name != "lm":
            raise UsageError("--data PATH is for --task lm (synthetic tasks are generated)")
        data["path"] = args.data
    _set(data, "tokenizer", args.tokenizer)
    _set(data, "seq_len", args.seq_len)

    model = dict(cfg.get("model") or {})
    model["mixer_args"] = dict(model.get("mixer_args") or {})
    if args.mixer:
        model["mixer"] = args.mixer.split(",") if "," in args.mixer else args.mixer
    for flag, key in (("d_model", "d_model"), ("n_layers", "n_layers"), ("mlp_hidden", "mlp_hidden"), ("max_len", "max_len")):
        _set(model, key, getattr(args, flag))
    _set(model["mixer_args"], "n_heads", args.n_heads)
    _set(model["mixer_args"], "qk_rank", args.qk_rank)
    model["mixer_args"].update(_key_values(args.mixer_arg, "--mixer-arg"))

    user_train = dict(cfg.get("train") or {})
    for key in ("steps", "epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_steps", "grad_clip",
                "eval_every", "ckpt_every", "seed", "device"):
        _set(user_train, key, getattr(args, key))
    if args.steps is not None and args.epochs is None:
        user_train.pop("epochs", None)  # an explicit --steps wins over epochs from the YAML
    train = resolve_train(task_name, user_train)
    if args.no_progress:
        train["progress"] = False
    out = args.out or cfg.get("out") or TRAIN_OUT_DIR

    # -- everything is checked before anything is written ------------------------------------
    distributed = init_distributed()
    rank = dist.get_rank() if distributed else 0
    tcfg = TrainConfig.from_dict(train).validate()
    task, resolved = build_task(task_name, data, args.cache_dir or cfg.get("cache_dir"))
    model.setdefault("max_len", task.seq_len)
    if "vocab_size" in model and model["vocab_size"] != task.vocab_size:
        raise UsageError(f"model vocab_size={model['vocab_size']} but the task has {task.vocab_size} tokens")
    model["vocab_size"] = task.vocab_size
    mcfg = ModelConfig.from_dict(model).validate()
    if not args.resume and _has_run(out) and not args.force:
        raise UsageError(f"{out} already holds a run; use --resume to continue it or --force to start over")
    if distributed:
        dist.barrier()  # every rank has checked the folder before rank 0 touches it
    if args.force and not args.resume and rank == 0:
        shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
    trainer = Trainer(mcfg, task, tcfg, out_dir=out, resume=args.resume)
    if rank == 0:
        import yaml

        run = {"task": task_name, "data": resolved, "model": mcfg.to_dict(), "train": train, "out": out}
        with open(os.path.join(out, "run.yaml"), "w") as f:
            yaml.safe_dump(run, f, sort_keys=False)
        n = sum(p.numel() for p in trainer.model.parameters())  # the whole trained module, tied weights once
        print(f"hypermlp train: {task_name} | {mcfg.mixer} d={mcfg.d_model} layers={mcfg.n_layers} | "
              f"{n:,} params | {trainer.total_steps} steps | {trainer.world} process(es) on {trainer.device} | out={out}")
    result = trainer.fit()
    if rank == 0:
        final = {k: round(v, 5) if isinstance(v, float) else v for k, v in result["final"].items() if k != "type"}
        print(f"done: {final}" + (" (early stop)" if result["stopped_early"] else ""))
        if result["checkpoint"]:
            print(f"checkpoint: {result['checkpoint']}")
    if distributed:
        dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    import yaml

    from .compare import DEFAULT_SUITE, load_suite, run_compare

    if args.config:
        cfg = _read_yaml(args.config)
        config_text = open(args.config).read()
    else:
        cfg = dict(DEFAULT_SUITE)
        config_text = yaml.safe_dump(cfg, sort_keys=False)
    if args.mixers:
        cfg["mixers"] = [m.strip() for m in args.mixers.split(",") if m.strip()]
    if args.seeds:
        try:
            cfg["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds expects comma-separated integers, got {args.seeds!r}") from None
    _set(cfg, "workers", args.workers)
    _set(cfg, "cache_dir", args.cache_dir)
    suite = load_suite(cfg)
    out = args.out
    if os.path.exists(os.path.join(out, "report.md")) and not args.force:
        raise UsageError(f"{out} already holds a report; use --force to overwrite it or pick another --out")
    command = "hypermlp compare " + " ".join(args.raw_argv)
    run_compare(suite, out, config_text=config_text, command=command)
    return 0


# ----------------------------------------------------------------------------- generate
def _resolve_checkpoint(path: str) -> str:
    from .checkpoint import latest_checkpoint

    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "model.safetensors")):
        return path
    if not os.path.isdir(path):
        raise UsageError(f"no such checkpoint folder: {path}")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise UsageError(f"{path} holds no checkpoint (expected config.json + model.safetensors, or a run folder)")
    return ckpt


def cmd_generate(args) -> int:
    import torch

    from .models import LanguageModel

    ckpt = _resolve_checkpoint(args.checkpoint)
    try:
        model = LanguageModel.load(ckpt)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot load {ckpt}: {str(e).splitlines()[0]}") from None
    vocab = model.config.vocab_size
    tok_file = os.path.join(ckpt, "tokenizer.json")
    if os.path.isfile(tok_file):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tok_file)
        ids = tok.encode(args.prompt).ids
        decode = lambda xs: tok.decode(xs, skip_special_tokens=False)  # noqa: E731
    else:
        if vocab < 256:
            raise UsageError(f"{ckpt} has a {vocab}-token vocabulary and no tokenizer.json: not a text model")
        ids = list(args.prompt.encode("utf-8"))
        decode = lambda xs: bytes(xs).decode("utf-8", errors="replace")  # noqa: E731
    if not ids:
        raise UsageError("the prompt is empty")
    if max(ids) >= vocab:
        raise UsageError(f"the prompt has token ids beyond the model's vocabulary ({vocab})")
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    model = model.to(device).eval()
    room = model.config.max_len - len(ids)
    if args.max_new_tokens > room:
        raise UsageError(f"prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the model's "
                         f"max_len={model.config.max_len}")
    out = model.generate(torch.tensor(ids, device=device), args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, seed=args.seed)
    print(decode(out.tolist()))
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench(argv: List[str]) -> int:
    """``hypermlp bench ...`` is ``python -m hypermlp.bench ...`` (its own parser and --help)."""
    from .bench import main as bench_main

    try:
        code = bench_main(argv)
    except SystemExit as e:  # its argparse: --help or a usage error
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return int(code or 0)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hypermlp", description="HyperMLP / HyperGLU: train, compare mixers, generate, benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,generate,bench}")
    sub.required = True

    p = sub.add_parser("train", help="train one model on one task",
                       description="Train one model on one task. Flags override the YAML config (--config).")
    p.add_argument("--config", help="YAML with task, data, model, train, out sections")
    p.add_argument("--task", help="mad:<name> (e.g. mad:in_context_recall), mqar or lm")
    p.add_argument("--data", help="lm: a UTF-8 text file or a folder of them (default: Python's stdlib sources)")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], help="lm: bytes (default) or a BPE trained on the train split")
    p.add_argument("--seq-len", type=int, help="lm: training window; synthetic tasks: sequence length")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="task data setting, e.g. num_train=2000")
    _add_model_flags(p)
    _add_train_flags(p)
    p.add_argument("--out", help=f"run folder (default {TRAIN_OUT_DIR})")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--force", action="store_true", help="start over even if --out already holds a run")
    p.add_argument("--cache-dir", help="where generated data and tokenizers are cached (default ~/.cache/hypermlp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="several mixers at matched budgets on a task suite",
                       description="Train every mixer at a matched parameter budget on a task suite over several "
                                   "seeds; write report.md, results.json and PNG plots.")
    p.add_argument("--config", help="suite YAML (see configs/demo.yaml); default: a small built-in suite")
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument("--mixers", help="comma list (default softmax,relu,hypermlp,hyperglu): registered mixers, names "
                                    "under the config's variants:, " + variant_help_text())
    p.add_argument("--seeds", help="comma list of seeds, e.g. 0,1")
    p.add_argument("--workers", type=int, help="parallel training processes")
    p.add_argument("--cache-dir", help="data cache folder")
    p.add_argument("--force", action="store_true", help="overwrite an existing report in --out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("generate", help="sample text from a trained LM checkpoint",
                       description="Continue a prompt with a trained language model (cached decoding).")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or a run folder (uses its newest checkpoint)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_generate)

    sub.add_parser("bench", help="speed/memory benchmarks (hypermlp bench --help)", add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    import yaml

    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.common import DataError
    from .train import TrainingError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        args.raw_argv = argv[1:]
        return args.func(args)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (UsageError, ConfigError, DataError, CheckpointError, yaml.YAMLError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"hypermlp: error: {msg}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"hypermlp: training failed: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hypermlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
