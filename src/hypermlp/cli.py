"""Command line: ``hypermlp train | prepare | compare | generate | inspect | export-hf | eval | bench``.

Every user mistake (unknown task or mixer, a value of the wrong type or out of range, a config
section of the wrong shape, unreadable or empty data, a damaged checkpoint or one that does not
match, bad YAML, an output folder that would be overwritten) ends as one line on stderr,
``hypermlp: error: ...``, and exit code 2, before anything is written.

``train --resume`` continues the run in ``--out``: task, data and model must be the run's (an
error names what differs); training options follow ``hypermlp.train.RESUME_REFUSED`` (an
error) or are applied, and ``run.yaml`` then lists them under ``history`` with the step they
took effect at. ``train --force`` starts over only in a folder hypermlp made (its
``.hypermlp-run`` marker), removing the run's own files and nothing else.

``train --dry-run`` builds the model(s) on the meta device and prints what a run would take
(``hypermlp.dryrun``); it reads no corpus when the config names the vocabulary, and writes
nothing. A config may hold several models under ``models:`` (a recipe and its baselines);
``--model NAME`` picks the one to train, in ``OUT/NAME``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List, Optional

from .defaults import PRECISIONS, TRAIN, TRAIN_OUT_DIR
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
        with open(path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"cannot read config {path}: not UTF-8 text (byte {e.start})") from None
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


def _section(cfg: dict, name: str, where: Optional[str]) -> dict:
    """A mapping section of a config (``model:``, ``data:``, ``train:``), copied; {} if absent."""
    value = cfg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"'{name}:' in {where} must be a mapping of settings, got {value!r}")
    return dict(value)


def _text(cfg: dict, name: str, where: Optional[str]) -> Optional[str]:
    """A string entry of a config (``task:``, ``out:``, ``cache_dir:``) or None."""
    value = cfg.get(name)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"'{name}:' in {where} must be a string, got {value!r}")
    return value


def _key_values(items: Optional[List[str]], flag: str) -> dict:
    """['a=1', 'b=true'] -> {'a': 1, 'b': True} (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r} (no key)")
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise UsageError(f"{flag} {item!r}: the value is not YAML ({getattr(e, 'problem', None) or 'unreadable'})") from None
    return out


def _set(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def _has_run(out: str) -> bool:
    return any(os.path.exists(os.path.join(out, n)) for n in ("metrics.jsonl", "checkpoints", "run.yaml"))


def _check_model_section(model: dict, where: Optional[str]) -> None:
    """What ModelConfig.validate leaves to its users: the shapes and ranges of the remaining keys."""
    mixer = model.get("mixer")
    if mixer is not None and not (isinstance(mixer, str) or (isinstance(mixer, list) and all(isinstance(m, str) for m in mixer))):
        raise UsageError(f"model mixer must be a mixer name or a list of them (one per layer), got {mixer!r}")
    if not isinstance(model.get("mixer_args"), dict):
        raise UsageError(f"'model: mixer_args:' in {where} must be a mapping, got {model.get('mixer_args')!r}")
    if "tie_embeddings" in model and not isinstance(model["tie_embeddings"], bool):
        raise UsageError(f"model tie_embeddings must be true or false, got {model['tie_embeddings']!r}")
    eps = model.get("rmsnorm_eps", model.get("norm_eps"))
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < math.inf)):
        raise UsageError(f"model rmsnorm_eps must be a positive number, got {eps!r}")


def _same_path(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return os.path.abspath(a) == os.path.abspath(b)
    return a == b


def _check_same_run(previous: dict, where: str, task: str, data: dict, model: dict) -> None:
    """``--resume`` continues the run ``previous`` (its run.yaml) describes: the task, its data and
    the model must be the same; an error names what differs."""
    from .models import ModelConfig

    if previous.get("task") != task:
        raise UsageError(f"--resume cannot change the task (the run in {where} is {previous.get('task')!r}, now {task!r})")
    old_data = previous.get("data") if isinstance(previous.get("data"), dict) else {}
    diff = [k for k in sorted(set(old_data) | set(data)) if not _same_path(old_data.get(k), data.get(k))]
    if diff:
        detail = ", ".join(f"{k}: the run used {old_data.get(k)!r}, now {data.get(k)!r}" for k in diff)
        raise UsageError(f"--resume cannot change the data settings ({detail}); start a new run instead")
    try:
        old_model = ModelConfig.from_dict(previous.get("model") or {}).to_dict()  # old key names as today's
    except (TypeError, ValueError):
        old_model = previous.get("model") or {}
    diff = [k for k in sorted(set(old_model) | set(model)) if old_model.get(k) != model.get(k)]
    if diff:
        detail = ", ".join(f"{k}: the run used {old_model.get(k)!r}, now {model.get(k)!r}" for k in diff)
        raise UsageError(f"--resume: the run in {where} was made for another model ({detail}); "
                         f"start a new run instead")


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
    g = p.add_argument_group("training at scale (override the config file; README 'Training at scale')")
    g.add_argument("--grad-accum", type=int, metavar="N",
                   help="cut each step's batch into N micro-batches (same gradient, less memory)")
    g.add_argument("--precision", choices=list(PRECISIONS),
                   help="auto (default: bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 (autocast, CPU too), "
                        "fp16 (CUDA, loss scaling)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the training step's module")
    g.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each block's activations in the backward pass (less memory, ~1/3 more compute)")
    g.add_argument("--keep-checkpoints", type=int, metavar="N",
                   help=f"keep the N newest checkpoints (default {TRAIN['keep_checkpoints']}; 0 = all)")
    g.add_argument("--log-every", type=int, metavar="N",
                   help=f"steps between plain progress lines when stdout is not a terminal "
                        f"(default {TRAIN['log_every']}; 0 = none)")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorBoard scalars in OUT/tensorboard (pip install 'hypermlp[tensorboard]')")
    g.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="shard weights, gradients and optimizer states over the torchrun processes (FSDP2)")
    g.add_argument("--dry-run", action="store_true",
                   help="build the model on the meta device and print its parameter count, tokens per step, "
                        "FLOPs per token and memory per GPU (one block per mixer runs once on CPU to measure "
                        "its activations); trains nothing, writes nothing")
    g.add_argument("--world-size", type=int, metavar="N",
                   help="--dry-run: the number of GPUs to estimate for (default: $WORLD_SIZE or 1)")


# training options with a flag of their own in "training at scale"
_SCALE_KEYS = ("grad_accum", "precision", "compile", "activation_checkpointing", "keep_checkpoints", "log_every",
               "tensorboard", "fsdp")


def _model_sections(cfg: dict, args, where: Optional[str]) -> dict:
    """name -> model section: the config's ``model:`` (named by its mixer), or its ``models:``
    mapping (several models of one recipe, e.g. HyperGLU and its matched baseline), all of them
    or the one ``--model NAME`` picks."""
    if cfg.get("models") is None:
        if args.model is not None:
            raise UsageError(f"--model picks one of a config's 'models:', and {where or 'the command line'} has none")
        section = _section(cfg, "model", where)
        mixer = section.get("mixer")
        return {mixer if isinstance(mixer, str) else "model": section}
    if cfg.get("model") is not None:
        raise UsageError(f"{where} has both 'model:' and 'models:'; keep one")
    models = _section(cfg, "models", where)
    if not models:
        raise UsageError(f"'models:' in {where} is empty")
    for name in models:
        _section(models, name, f"{where} (models: {name})")  # each a mapping
    if args.model is not None:
        if args.model not in models:
            raise UsageError(f"--model {args.model!r} is not one of the models in {where}: {', '.join(models)}")
        return {args.model: dict(models[args.model])}
    return {name: dict(section) for name, section in models.items()}


def _assemble_model(model: dict, args, where: Optional[str]) -> dict:
    """A model section with the command line's model flags applied."""
    model = dict(model)
    model["mixer_args"] = {} if model.get("mixer_args") is None else model["mixer_args"]
    _check_model_section(model, where)
    model["mixer_args"] = dict(model["mixer_args"])
    if args.mixer is not None:
        model["mixer"] = args.mixer.split(",") if "," in args.mixer else args.mixer
    for flag, key in (("d_model", "d_model"), ("n_layers", "n_layers"), ("mlp_hidden", "mlp_hidden"), ("max_len", "max_len")):
        _set(model, key, getattr(args, flag))
    _set(model["mixer_args"], "n_heads", args.n_heads)
    _set(model["mixer_args"], "qk_rank", args.qk_rank)
    model["mixer_args"].update(_key_values(args.mixer_arg, "--mixer-arg"))
    return model


def _dry_run(task_name: str, data: dict, models: dict, train: dict, cache_dir: str, world: int) -> int:
    """``train --dry-run``: every model's estimate (hypermlp.dryrun); nothing trained or written."""
    from .budget import count_params, paper_reference
    from .defaults import LM_DATA
    from .dryrun import estimate, format_estimate
    from .models import ModelConfig
    from .tasks import build_task
    from .train import TrainConfig

    tcfg = TrainConfig.from_dict(train).validate()
    if tcfg.batch_size % (world * tcfg.grad_accum):
        raise UsageError(f"batch_size={tcfg.batch_size} is not divisible by {world} GPU(s) x grad_accum={tcfg.grad_accum}")
    if tcfg.fsdp and world == 1:
        raise UsageError("fsdp shards over several GPUs: give --world-size N (N > 1) to estimate it")
    vocab, steps = None, tcfg.steps
    if task_name == "lm" and tcfg.epochs is None and all("vocab_size" in m for m in models.values()):
        seq_len = data.get("seq_len", LM_DATA["seq_len"])  # the corpus need not be here
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise UsageError(f"data seq_len must be a positive integer, got {seq_len!r}")
    else:  # the task says its vocabulary, length and epochs
        task, _ = build_task(task_name, data, cache_dir)
        seq_len, vocab = task.seq_len, task.vocab_size
        if tcfg.epochs is not None:
            steps = tcfg.epochs * task.steps_per_epoch(tcfg.batch_size)
    print(f"hypermlp train --dry-run: {task_name} | seq_len {seq_len} | {world} GPU(s) | nothing is trained or written")
    counts = {}
    for name, section in models.items():
        section.setdefault("max_len", seq_len)
        if vocab is not None:
            if section.get("vocab_size", vocab) != vocab:
                raise UsageError(f"model {name}: vocab_size={section['vocab_size']} but the task has {vocab} tokens")
            section["vocab_size"] = vocab
        mcfg = ModelConfig.from_dict(section).validate()
        if mcfg.max_len < seq_len:
            raise UsageError(f"model {name}: max_len={mcfg.max_len} is shorter than seq_len={seq_len}")
        est = estimate(mcfg, tcfg, seq_len, world, steps)
        counts[name] = count_params(mcfg)
        print(format_estimate(name, mcfg, tcfg, seq_len, est))
    if len(counts) > 1:  # against the all-softmax model if there is one (the paper's reference)
        ref = paper_reference({n: ModelConfig.from_dict(m).mixers() for n, m in models.items()}) or next(iter(counts))
        print("budget: " + ", ".join(f"{n} {c:,} params, {100 * (c / counts[ref] - 1):+.2f}% vs {ref}"
                                      for n, c in counts.items() if n != ref))
    return 0


def cmd_train(args) -> int:
    from dataclasses import asdict

    import torch.distributed as dist
    import yaml

    from .checkpoint import has_run_marker, remove_run, write_atomic
    from .defaults import default_cache_dir
    from .models import LanguageModel, ModelConfig
    from .runlog import summary_line
    from .tasks import build_task, resolve_train
    from .train import TrainConfig, Trainer, init_distributed

    where = args.config
    cfg = _read_yaml(args.config)
    if args.resume and not args.config and not args.task and args.out:
        # `train --out RUN --resume`: the run's own record says what it was
        where = os.path.join(args.out, "run.yaml")
        if not os.path.exists(where):
            raise UsageError(f"{args.out} holds no run to resume (no run.yaml)")
        cfg = _read_yaml(where)
        cfg["data"] = _section(cfg, "data", where)
        for derived in ("source", "vocab_size"):  # written for the reader, not settings
            cfg["data"].pop(derived, None)
    known = {"task", "data", "model", "models", "train", "out", "cache_dir", "history", "resolved"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise UsageError(f"unknown top-level key(s) {bad} in {where}; known: {', '.join(sorted(known))}")
    if not isinstance(cfg.get("history") or [], list):  # run.yaml: what earlier resumes changed
        raise UsageError(f"'history:' in {where} must be a list, got {cfg['history']!r}")
    cfg_task, cfg_out, cfg_cache = (_text(cfg, k, where) for k in ("task", "out", "cache_dir"))
    task_name = args.task or cfg_task
    if not task_name:
        raise UsageError("no task: give --task (mad:<name>, mqar or lm) or 'task:' in --config")
    data = _section(cfg, "data", where)
    data.update(_key_values(args.data_arg, "--data-arg"))
    if args.data is not None:
        if task_name != "lm":
            raise UsageError("--data PATH is for --task lm (synthetic tasks are generated)")
        data["path"] = args.data
    _set(data, "tokenizer", args.tokenizer)
    _set(data, "seq_len", args.seq_len)

    models = {name: _assemble_model(section, args, where) for name, section in _model_sections(cfg, args, where).items()}

    user_train = _section(cfg, "train", where)
    for key in ("steps", "epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_steps", "grad_clip",
                "eval_every", "ckpt_every", "seed", "device") + _SCALE_KEYS:
        _set(user_train, key, getattr(args, key))
    if args.steps is not None and args.epochs is None:
        user_train.pop("epochs", None)  # an explicit --steps wins over epochs from the YAML
    train = resolve_train(task_name, user_train)
    if args.no_progress:
        train["progress"] = False
    cache_dir = args.cache_dir or cfg_cache or default_cache_dir()
    if args.world_size is not None and not args.dry_run:
        raise UsageError("--world-size is for --dry-run (a real run's world is the torchrun processes)")
    if args.dry_run:
        if args.resume or args.force:
            raise UsageError("--dry-run trains nothing and writes nothing: leave out --resume and --force")
        world = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        if world < 1:
            raise UsageError(f"--world-size must be >= 1, got {world}")
        return _dry_run(task_name, data, models, train, cache_dir, world)
    if len(models) > 1:
        raise UsageError(f"{where} holds several models ({', '.join(models)}): pick one with --model NAME")
    (model_name, model), = models.items()
    out = args.out or cfg_out or TRAIN_OUT_DIR
    if cfg.get("models") is not None and not args.out:
        out = os.path.join(out, model_name)  # one recipe, several models: a run folder each

    # -- every value is checked, and the model built, before anything is written -------------
    distributed = init_distributed()
    rank = dist.get_rank() if distributed else 0
    tcfg = TrainConfig.from_dict(train).validate()
    task, resolved = build_task(task_name, data, cache_dir)
    model.setdefault("max_len", task.seq_len)
    if "vocab_size" in model and model["vocab_size"] != task.vocab_size:
        raise UsageError(f"model vocab_size={model['vocab_size']} but the task has {task.vocab_size} tokens")
    model["vocab_size"] = task.vocab_size
    mcfg = ModelConfig.from_dict(model).validate()
    import torch

    with torch.device("meta"):
        LanguageModel(mcfg)  # every layer's arguments are checked here
    run_file = os.path.join(out, "run.yaml")
    previous = None
    if args.resume:
        if os.path.exists(run_file):
            previous = _read_yaml(run_file)
            if not isinstance(previous.get("history") or [], list):
                raise UsageError(f"'history:' in {run_file} must be a list, got {previous['history']!r}")
            _check_same_run(previous, run_file, task_name, resolved, mcfg.to_dict())
    elif _has_run(out):
        if not args.force:
            raise UsageError(f"{out} already holds a run; use --resume to continue it or --force to start over")
        if not has_run_marker(out):
            raise UsageError(f"{out} holds files hypermlp did not create (no .hypermlp-run marker): --force "
                             f"removes only a run hypermlp made; remove them yourself or pick another --out")
    trainer = Trainer(mcfg, task, tcfg, out_dir=out, resume=args.resume)  # a fresh run writes nothing yet
    if distributed:
        dist.barrier()  # every rank has checked everything before rank 0 touches the folder
    if rank == 0:
        if args.force and not args.resume and _has_run(out):
            remove_run(out)  # the old run's own files, nothing else
        run = {"task": task_name, "data": resolved, "model": mcfg.to_dict(), "train": asdict(tcfg), "out": out,
               "cache_dir": cache_dir,
               # for the reader (ignored when read back): what "auto" and the launch resolved to
               "resolved": {"precision": trainer.precision, "device": str(trainer.device), "processes": trainer.world,
                            "tokens_per_step": tcfg.batch_size * task.seq_len}}
        history = list((previous or {}).get("history") or [])
        if trainer.resume_changes:
            history.append({"resumed_at_step": trainer.step, "changed": trainer.resume_changes})
        if history:
            run["history"] = history
        os.makedirs(out, exist_ok=True)

        def dump(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                yaml.safe_dump(run, f, sort_keys=False)

        write_atomic(run_file, dump)
        n = sum(p.numel() for p in trainer.model.parameters())  # the whole trained module, tied weights once
        scale = f" x grad_accum {tcfg.grad_accum}" if tcfg.grad_accum > 1 else ""
        print(f"hypermlp train: {task_name} | {mcfg.mixer} d={mcfg.d_model} layers={mcfg.n_layers} | "
              f"{n:,} params | {trainer.total_steps} steps of {tcfg.batch_size * task.seq_len:,} tokens{scale} | "
              f"{trainer.world} process(es){' (FSDP)' if tcfg.fsdp else ''} on {trainer.device} | "
              f"precision {trainer.precision} | out={out}")
        if trainer.resume_changes:
            changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in trainer.resume_changes.items())
            print(f"resumed at step {trainer.step} with {changed} (recorded in run.yaml)")
    result = trainer.fit()
    if rank == 0:
        print(summary_line(result))
        if result["checkpoint"]:
            print(f"checkpoint: {result['checkpoint']}")
    if distributed:
        dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------- prepare
def cmd_prepare(args) -> int:
    from .data.prepare import prepare_corpus

    try:
        m = prepare_corpus(args.data, args.out, tokenizer=args.tokenizer, bpe_vocab_size=args.bpe_vocab_size,
                           val_fraction=args.val_fraction, seed=args.seed, bpe_sample_bytes=args.bpe_sample_bytes,
                           dtype=args.dtype, progress=args.progress)
    except ValueError as e:  # a bad setting (DataError, a bad input, is one too)
        raise UsageError(str(e)) from None
    sp = m["splits"]
    print(f"hypermlp prepare: {args.out} {'reused (same input and settings)' if m['reused'] else 'written'} | "
          f"{m['tokenizer']} vocab {m['vocab_size']} ({m['dtype']}) | {m['documents']} documents from "
          f"{len(m['sources'])} file(s), {m['skipped']} skipped | train {sp['train']['tokens']:,} tokens "
          f"({sp['train']['bytes']:,} bytes), val {sp['val']['tokens']:,} tokens ({sp['val']['bytes']:,} bytes)")
    print(f"train on it with: hypermlp train --task lm --data {args.out}")
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
    from .checkpoint import CheckpointError, resolve_model_folder

    try:
        return resolve_model_folder(path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None


def cmd_generate(args) -> int:
    import torch

    from .checkpoint import first_line, verify_checksums
    from .models import LanguageModel

    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1 (or left out: the whole vocabulary), got {args.top_k}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no GPU is available")
    ckpt = _resolve_checkpoint(args.checkpoint)
    try:
        model = LanguageModel.load(ckpt)
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot load {ckpt}: {first_line(e)}") from None
    vocab = model.config.vocab_size
    tok_file = os.path.join(ckpt, "tokenizer.json")
    if os.path.isfile(tok_file):
        from tokenizers import Tokenizer

        verify_checksums(ckpt, ["tokenizer.json"])
        try:
            tok = Tokenizer.from_file(tok_file)
        except Exception as e:  # tokenizers raises its own exception type for a damaged file
            raise UsageError(f"cannot read {tok_file}: {first_line(e)}") from None
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


# ----------------------------------------------------------------------------- export-hf, eval
def _import_hf(command: str):
    """``hypermlp.hf``, or a UsageError saying how to install the ``hf`` extra."""
    try:
        import hypermlp.hf as hf
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise UsageError(f"hypermlp {command} needs the hf extra ({e.name or e}): pip install 'hypermlp[hf]'") from None
    hf_logging.disable_progress_bar()  # one summary line instead of per-file bars
    return hf


def cmd_export_hf(args) -> int:
    hf = _import_hf("export-hf")
    info = hf.export_run(args.checkpoint, args.out, force=args.force)
    tok = info["tokenizer"] or "none (not a text model)"
    print(f"hypermlp export-hf: {info['checkpoint']} -> {info['out']} | {info['mixer']} | {info['params']:,} params | "
          f"vocab {info['vocab_size']} | max_len {info['max_len']} | tokenizer: {tok}")
    print(f"load it with AutoModelForCausalLM.from_pretrained({info['out']!r}, trust_remote_code=True)")
    return 0


def cmd_eval(args) -> int:
    import json

    import torch

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks expects a comma-separated list of lm-eval task names")
    if args.limit is not None and not (math.isfinite(args.limit) and args.limit > 0):
        raise UsageError(f"--limit must be a positive number (examples per task, or a fraction < 1), got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be >= 0, got {args.num_fewshot}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no GPU is available")
    if not os.path.exists(args.checkpoint):
        raise UsageError(f"no such checkpoint folder: {args.checkpoint}")
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    _import_hf("eval")
    try:
        from hypermlp.hf.evaluate import evaluate, results_table
    except ImportError as e:
        raise UsageError(f"hypermlp eval needs lm-eval ({e.name or e}): pip install 'hypermlp[hf]'") from None
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = evaluate(args.checkpoint, tasks, include_path=args.include_path, limit=limit,
                       batch_size=args.batch_size, device=device, num_fewshot=args.num_fewshot, seed=args.seed)
    print(results_table(results))
    if args.output:
        keep = {k: results[k] for k in ("results", "groups", "configs", "versions", "n-shot", "n-samples")
                if k in results}
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(keep, f, indent=2, default=str)
        print(f"results: {args.output}")
    return 0


# ----------------------------------------------------------------------------- inspect
def _index_list(text: Optional[str], flag: str) -> Optional[List[int]]:
    """'0,2' -> [0, 2]; None -> None (all)."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated integers, got {text!r}") from None


def cmd_inspect(args) -> int:
    import torch

    from .inspect import InspectError, run_inspect

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no GPU is available")
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    try:
        written = run_inspect(args.checkpoint, args.out, prompt=args.prompt, task=args.task, example=args.example,
                              split=args.split, layers=_index_list(args.layers, "--layers"),
                              heads=_index_list(args.heads, "--heads"), batch_size=args.batch_size, device=device,
                              force=args.force)
    except InspectError as e:
        raise UsageError(str(e)) from None
    print(f"hypermlp inspect: {written[0]} and {len(written) - 1} PNG(s) in {args.out}")
    for path in written:
        print(path)
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench(argv: List[str]) -> int:
    """``hypermlp bench ...`` is ``python -m hypermlp.bench ...`` (its own parser and --help)."""
    from .bench import main as bench_main

    try:
        code = bench_main(argv)
    except SystemExit as e:  # its argparse: --help or a usage error (a message: not printed yet)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return int(code or 0)


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hypermlp", description="HyperMLP / HyperGLU: train, compare mixers, generate, benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="{train,prepare,compare,generate,inspect,export-hf,eval,bench}")
    sub.required = True

    p = sub.add_parser("train", help="train one model on one task",
                       description="Train one model on one task. Flags override the YAML config (--config).")
    p.add_argument("--config", help="YAML with task, data, model, train, out sections")
    p.add_argument("--task", help="mad:<name> (e.g. mad:in_context_recall), mqar or lm")
    p.add_argument("--data", help="lm: a UTF-8 text file or a folder of them (default: Python's stdlib sources)")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], help="lm: bytes (default) or a BPE trained on the train split")
    p.add_argument("--seq-len", type=int, help="lm: training window; synthetic tasks: sequence length")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="task data setting, e.g. num_train=2000")
    p.add_argument("--model", help="the model to train of a config with several under 'models:' (its run folder: "
                                   "OUT/NAME); --dry-run without it shows them all")
    _add_model_flags(p)
    _add_train_flags(p)
    p.add_argument("--out", help=f"run folder (default {TRAIN_OUT_DIR})")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--force", action="store_true", help="start over even if --out already holds a run")
    p.add_argument("--cache-dir", help="where generated data and tokenizers are cached (default ~/.cache/hypermlp)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    from .data.prepare import DEFAULT_BPE_SAMPLE_BYTES
    from .defaults import LM_DATA

    p = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped shards for train --data DIR",
                       description="Stream a text file, a JSONL file (a 'text' field per line), a Parquet file (a "
                                   "'text' column; needs pyarrow) or a folder of them through a tokenizer into "
                                   "train/val token shards with a manifest.json; `train --task lm --data DIR` "
                                   "samples from them without loading them. Memory stays flat; re-running with "
                                   "the same input and settings reuses the folder.")
    p.add_argument("--data", required=True, help="a text, JSONL or Parquet file, or a folder of them")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte", help="bytes (default) or a byte-level BPE")
    p.add_argument("--out", required=True, help="the folder to write (new or empty; or this same prepare: reused)")
    p.add_argument("--bpe-vocab-size", type=int, default=LM_DATA["bpe_vocab_size"],
                   help=f"BPE vocabulary (default {LM_DATA['bpe_vocab_size']})")
    p.add_argument("--bpe-sample-bytes", type=int, default=DEFAULT_BPE_SAMPLE_BYTES,
                   help=f"the BPE trains on the first training documents up to this many bytes "
                        f"(default {DEFAULT_BPE_SAMPLE_BYTES:,})")
    p.add_argument("--val-fraction", type=float, default=LM_DATA["val_fraction"],
                   help=f"share of documents for validation (default {LM_DATA['val_fraction']})")
    p.add_argument("--seed", type=int, default=LM_DATA["seed"], help="salts the split's document hash (default 0)")
    p.add_argument("--dtype", choices=["auto", "uint16", "uint32"], default="auto",
                   help="id type of the shards (default: uint16 while the vocabulary fits)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars of bytes and tokens (default: only on a terminal)")
    p.set_defaults(func=cmd_prepare)

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

    p = sub.add_parser("export-hf", help="convert a trained run into a Hugging Face model folder",
                       description="Convert a `hypermlp train` run (its newest checkpoint) or a checkpoint folder into "
                                   "a Hugging Face folder (safetensors, config with auto_map, tokenizer) that "
                                   "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) loads. Needs the "
                                   "hf extra.")
    p.add_argument("--checkpoint", required=True, help="a run folder (uses its newest checkpoint) or a checkpoint folder")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=cmd_export_hf)

    p = sub.add_parser("eval", help="lm-evaluation-harness tasks on a model",
                       description="Run lm-evaluation-harness tasks on a model of ours (an export-hf folder, or a "
                                   "train run, exported on the fly); prints the harness's table. Needs the hf extra.")
    p.add_argument("--checkpoint", required=True, help="an export-hf folder, a run folder or a checkpoint folder")
    p.add_argument("--tasks", required=True, help="comma list of lm-eval task names")
    p.add_argument("--include-path", help="a folder of task YAML files (local tasks)")
    p.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the results as JSON to this file")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", help="look inside a trained model: activated slots, sparsity, mixings",
                       description="Probe one input through a checkpoint's model with the readable reference core "
                                   "and write per layer and head PNGs (activated memory, sparsity, the R(1) / R(2) "
                                   "mixings, HyperGLU routing versus magnitude; softmax: attention weights) and "
                                   "one inspect.md that shows them.")
    p.add_argument("--checkpoint", required=True, help="a run folder (uses its newest checkpoint) or a checkpoint folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text to probe (a text model)")
    src.add_argument("--task", help="mad:<name>, mqar or lm: probe an example of the task's data, rebuilt from the "
                                    "run's run.yaml")
    p.add_argument("--example", type=int, help="with --task: the index of the example in --split")
    p.add_argument("--split", choices=["val", "test"], default="test", help="with --task: the split (default test)")
    p.add_argument("--out", required=True, help="folder for inspect.md and the PNGs")
    p.add_argument("--layers", help="comma list of layer indices (default all)")
    p.add_argument("--heads", help="comma list of readout head indices (default all)")
    p.add_argument("--batch-size", type=int, default=16, help="examples or validation windows behind the mean "
                                                              "sparsity (default 16)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite an earlier inspect.md in --out")
    p.set_defaults(func=cmd_inspect)

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
