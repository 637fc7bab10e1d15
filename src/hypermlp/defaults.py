"""Training defaults, in one place: the base options, what each kind of task changes, the MAD
protocol (quick / full), the data the ``lm`` and ``mqar`` tasks train on, and where runs and
caches go.

Precedence, lowest first: ``TRAIN`` -> the task kind's defaults (``train_defaults``)
-> the YAML file -> command-line flags. ``TrainConfig`` reads ``TRAIN``; the tasks package and
the CLI read the rest. Layer settings keep their defaults in ``hypermlp.config``; the MAD data
generators keep theirs (the MAD baseline) in their signatures.
"""

from __future__ import annotations

import os

from .config import ConfigError

__all__ = [
    "TRAIN",
    "PRECISIONS",
    "LM_TRAIN",
    "MQAR_TRAIN",
    "MAD_PROTOCOL",
    "MAD_QUICK",
    "MAD_SCHEDULE",
    "LM_DATA",
    "MQAR_DATA",
    "TRAIN_OUT_DIR",
    "mad_protocol",
    "train_defaults",
    "default_cache_dir",
]

# ----------------------------------------------------------------------------- base options
# Every training option and its fallback (the fields of hypermlp.train.TrainConfig).
TRAIN = dict(
    steps=None,  # total optimizer steps; or give epochs
    epochs=None,  # passes over a fixed training set (MAD / MQAR); overrides steps
    batch_size=32,  # global batch, split over DDP ranks
    lr=1e-3,
    min_lr=1e-5,  # the cosine decays to this
    warmup_steps=0,
    lr_per_epoch=False,  # MAD protocol: the cosine moves once per epoch
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,  # 0 = off
    eval_every=0,  # steps between evaluations; 0 = only at the end
    eval_each_epoch=False,  # evaluate after every pass over the training set (MAD)
    ckpt_every=0,  # steps between checkpoints; 0 = only at the end
    save_checkpoints=True,
    early_stop_metric="val_acc",  # a validation metric: early stopping never reads the test split
    early_stop_at=None,  # stop once the eval metric reaches this
    seed=0,
    device="auto",  # auto | cpu | cuda
    progress=True,  # a progress bar on a terminal, plain lines (log_every) when stdout is not one
    # -- at scale (README "Training at scale")
    grad_accum=1,  # micro-batches per optimizer step: each step's batch is cut into this many
    precision="auto",  # auto = bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16 (autocast, CPU too) | fp16 (CUDA)
    compile=False,  # torch.compile the training module
    activation_checkpointing=False,  # recompute every block's activations in the backward pass
    keep_checkpoints=1,  # newest step checkpoints kept; 0 = keep them all
    log_every=50,  # steps between plain progress lines when stdout is not a terminal; 0 = none
    tensorboard=False,  # TensorBoard scalars in out_dir/tensorboard (the tensorboard extra)
    fsdp=False,  # shard parameters, gradients and AdamW states over the torchrun processes (FSDP2)
)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# ----------------------------------------------------------------------------- per task kind
# What a kind of task sets on top of TRAIN (written in full into run.yaml).
LM_TRAIN = dict(steps=1000, batch_size=32, lr=1e-3, weight_decay=0.1, min_lr=1e-4, warmup_steps=100, eval_every=200)
MQAR_TRAIN = dict(epochs=16, batch_size=64, lr=1e-3, weight_decay=0.1, min_lr=1e-6, warmup_steps=0,
                  lr_per_epoch=True, eval_each_epoch=True, early_stop_at=0.999)

# The MAD training protocol (Poli et al. 2024): per task and setting, sweep lrs x weight decays
# and keep the best grid point; stop early once accuracy reaches early_stop_acc. Both read the
# validation split (the MAD paper used the test split; we keep it for reporting only).
MAD_PROTOCOL = dict(batch_size=128, epochs=200, lrs=(1e-4, 5e-4, 1e-3), weight_decays=(0.0, 0.1), early_stop_acc=0.999)
# A cheap variant for smoke runs and CPU-only machines.
MAD_QUICK = dict(batch_size=64, epochs=20, lrs=(1e-3,), weight_decays=(0.0,), early_stop_acc=0.999)
# Both presets: the cosine moves once per epoch down to 1e-6, no warmup, evaluation every epoch.
MAD_SCHEDULE = dict(min_lr=1e-6, warmup_steps=0, lr_per_epoch=True, eval_each_epoch=True)


def mad_protocol(preset: str = "quick") -> dict:
    """A MAD preset as training defaults (its largest lr, first weight decay) + its lr x wd grid."""
    if preset not in ("quick", "full"):
        raise ConfigError(f"preset must be quick or full, got {preset!r}")
    p = MAD_QUICK if preset == "quick" else MAD_PROTOCOL
    train = dict(MAD_SCHEDULE, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lrs"][-1],
                 weight_decay=p["weight_decays"][0], early_stop_at=p["early_stop_acc"])
    return {"train": train, "grid": {"lr": list(p["lrs"]), "weight_decay": list(p["weight_decays"])}}


def train_defaults(kind: str, preset: str = "quick") -> dict:
    """The training defaults of a task kind: ``"mad"`` (``preset`` quick or full), ``"mqar"`` or ``"lm"``."""
    if kind == "mad":
        return mad_protocol(preset)["train"]
    if kind == "mqar":
        return dict(MQAR_TRAIN)
    if kind == "lm":
        return dict(LM_TRAIN)
    raise ConfigError(f"unknown task kind {kind!r}; choose mad, mqar or lm")


# ----------------------------------------------------------------------------- data
# What `--task lm` trains on: the default corpus is the Python standard library, as bytes.
# eval_windows: None = every evaluation scores the whole validation split; N = evaluations during
# training score N windows spread evenly over it, the final one the whole split.
LM_DATA = dict(path=None, tokenizer="byte", seq_len=256, eval_windows=None, max_bytes=None,
               bpe_vocab_size=4096, val_fraction=0.05, seed=0)
# What `--task mqar` trains on: the first point of the Zoology sweep (configs/mqar_sweep.yaml).
# num_val: the validation split early stopping and selection read; None = as many as num_test.
MQAR_DATA = dict(seq_len=64, num_pairs=4, vocab_size=8192, num_train=20_000, num_test=1_000, num_val=None,
                 power_a=0.01, seed=0)

# ----------------------------------------------------------------------------- folders
TRAIN_OUT_DIR = "runs/train"  # `hypermlp train` without --out


def default_cache_dir() -> str:
    """Where generated data and tokenizers are cached: $HYPERMLP_CACHE or ~/.cache/hypermlp."""
    return os.environ.get("HYPERMLP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hypermlp")
