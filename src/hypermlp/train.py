"""Training loop: AdamW, warmup + cosine, clipping, checkpoints, exact resume, DDP and FSDP.

One ``Trainer`` trains one model on one task; it knows the task only through the contract in
``hypermlp.tasks.base`` (build the model, sample batches, forward, loss, evaluate, checkpoint
files), so it never asks what kind of task or model it has.

* Determinism: the model is initialised right after ``torch.manual_seed(seed)`` and batches
  come from the sampler's private ``torch.Generator``; on CPU a run resumed from a checkpoint
  reproduces the uninterrupted loss curve bit for bit.
* Precision (``precision``): ``auto`` (the default) is bf16 autocast on CUDA and plain fp32 on
  CPU; ``fp32``; ``bf16`` (autocast, on CPU too); ``fp16`` (CUDA only, with a GradScaler). The
  weights, gradients and AdamW states stay fp32 and the loss is always reduced in fp32.
* Gradient accumulation (``grad_accum`` N): each step's global batch (``batch_size`` rows) is
  cut into N micro-batches run one after the other; every micro-batch's summed token loss is
  divided by the *whole* batch's target count, so the summed gradients are those of the one big
  batch (to float rounding), whatever the number of targets in each micro-batch.
* ``activation_checkpointing``: every block's activations are recomputed in the backward pass
  (``torch.utils.checkpoint``, non-reentrant); ``compile``: ``torch.compile`` of the module the
  training step calls (evaluation runs the plain model).
* Checkpoints: ``hypermlp.checkpoint`` (atomic and durable; the newest ``keep_checkpoints``).
* Data parallel: launched with ``torchrun``, each rank draws the same *global* batch and keeps
  its own rows. A rank's loss is its summed token loss divided by the global token count (times
  the world size, which DDP's gradient averaging divides out again), so N processes compute the
  gradient of exactly the same global mean as one process. With ``fsdp`` the blocks and the
  model are sharded with ``torch.distributed.fsdp.fully_shard`` (FSDP2: parameters, gradients
  and AdamW states split over the ranks); its gradients are averaged like DDP's, and a
  checkpoint holds the full state dicts, gathered on rank 0 (``torch.distributed.checkpoint``).
* Metrics: one JSON line per training step (and per evaluation) in ``out_dir/metrics.jsonl``.
  Every evaluation record also says what the training has cost so far, across resumes:
  ``train_tokens`` (input tokens of the training batches), ``train_wall_s`` (wall time of
  ``fit``, evaluations and checkpoints included), ``train_step_s`` (time in training steps),
  ``train_tokens_per_s`` (tokens / step time) and ``train_flops`` (``hypermlp.flops``).
* Selection: early stopping reads a validation metric (``val_*``); a test metric is refused.
* What the run shows (bar, plain lines, TensorBoard, curves.png): ``hypermlp.runlog``.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import (CheckpointError, clean_debris, latest_checkpoint, load_checkpoint, save_checkpoint,
                         write_atomic, write_run_marker)
from .config import ConfigError
from .data.common import IGNORE_INDEX
from .defaults import PRECISIONS, TRAIN
from .flops import dense_params, forward_flops_per_token
from .models import ModelConfig
from .runlog import RunLog, check_tensorboard

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "CheckpointError",
    "CosineSchedule",
    "init_distributed",
    "resolve_precision",
    "enable_activation_checkpointing",
    "latest_checkpoint",
    "read_metrics",
]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or inf)."""


@dataclass
class TrainConfig:
    """Every training option; what each one means and its default: ``hypermlp.defaults.TRAIN``."""

    steps: Optional[int] = TRAIN["steps"]
    epochs: Optional[int] = TRAIN["epochs"]
    batch_size: int = TRAIN["batch_size"]
    lr: float = TRAIN["lr"]
    min_lr: float = TRAIN["min_lr"]
    warmup_steps: int = TRAIN["warmup_steps"]
    lr_per_epoch: bool = TRAIN["lr_per_epoch"]
    weight_decay: float = TRAIN["weight_decay"]
    beta1: float = TRAIN["beta1"]
    beta2: float = TRAIN["beta2"]
    grad_clip: float = TRAIN["grad_clip"]
    eval_every: int = TRAIN["eval_every"]
    eval_each_epoch: bool = TRAIN["eval_each_epoch"]
    ckpt_every: int = TRAIN["ckpt_every"]
    save_checkpoints: bool = TRAIN["save_checkpoints"]
    early_stop_metric: str = TRAIN["early_stop_metric"]
    early_stop_at: Optional[float] = TRAIN["early_stop_at"]
    seed: int = TRAIN["seed"]
    device: str = TRAIN["device"]
    progress: bool = TRAIN["progress"]
    grad_accum: int = TRAIN["grad_accum"]
    precision: str = TRAIN["precision"]
    compile: bool = TRAIN["compile"]
    activation_checkpointing: bool = TRAIN["activation_checkpointing"]
    keep_checkpoints: int = TRAIN["keep_checkpoints"]
    log_every: int = TRAIN["log_every"]
    tensorboard: bool = TRAIN["tensorboard"]
    fsdp: bool = TRAIN["fsdp"]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        if d.get("early_stop_metric") in _OLD_METRIC_NAMES:  # run.yaml files written before val_*
            d["early_stop_metric"] = _OLD_METRIC_NAMES[d["early_stop_metric"]]
        for name in _FLOAT_FIELDS:  # YAML 1.1 reads "1e-3" as a string
            if isinstance(d.get(name), str):
                try:
                    d[name] = float(d[name])
                except ValueError:
                    raise ConfigError(f"{name} must be a number, got {d[name]!r}") from None
        return cls(**d)

    def validate(self) -> "TrainConfig":
        """Every value's type and range; a ConfigError naming the option otherwise."""
        if self.steps is None and self.epochs is None:
            raise ConfigError("give steps or epochs")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            if v is not None and not _is_int(v, 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not _is_int(self.batch_size, 1):
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _is_int(self.grad_accum, 1):
            raise ConfigError(f"grad_accum must be a positive integer (micro-batches per step), got {self.grad_accum!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum} "
                              f"(each step's batch is cut into grad_accum equal micro-batches)")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if v is None and name == "early_stop_at":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr must lie in [0, lr={self.lr}] (the cosine decays to it), got {self.min_lr}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "seed", "keep_checkpoints", "log_every"):
            v = getattr(self, name)
            if not _is_int(v, 0):
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("lr_per_epoch", "eval_each_epoch", "save_checkpoints", "progress", "compile",
                     "activation_checkpointing", "tensorboard", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.early_stop_metric, str) or not self.early_stop_metric.startswith("val_"):
            raise ConfigError(f"early_stop_metric must be a validation metric (val_acc, val_loss, ...), "
                              f"got {self.early_stop_metric!r}: early stopping never reads the test split")
        return self


def _is_int(v, minimum: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


_FLOAT_FIELDS = ("lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip", "early_stop_at")
# early_stop_metric names of run.yaml files written when the test metrics were called acc and
# macro_acc (and early stopping read them): today the same metric on the validation split
_OLD_METRIC_NAMES = {"acc": "val_acc", "macro_acc": "val_macro_acc"}
# metrics where lower is better: early stopping waits for them to fall to early_stop_at
_LOWER_IS_BETTER = ("loss", "bpb")

# What `resume` does with a training option that differs from the checkpoint's (docs: Trainer).
# Refused: the run's past would not match what run.yaml then says.
RESUME_REFUSED = {
    "batch_size": "the sampler's position and every step so far count batches of the old size",
    "seed": "the model, sampler and RNG states come from the checkpoint, so a new seed would change nothing",
    "early_stop_metric": "the run's evaluations were judged by the old rule",
    "early_stop_at": "the run's evaluations were judged by the old rule",
    "fsdp": "the checkpoint's optimizer state is in the other layout (FSDP keys it by parameter name)",
}
# Applied from the resume step on: the learning-rate schedule is rebuilt from the new values
# (its cosine then runs to the new last step), the optimizer takes the new betas and decay.
RESUME_SCHEDULE = ("steps", "epochs", "lr", "min_lr", "warmup_steps", "lr_per_epoch")
RESUME_OPTIMIZER = ("weight_decay", "beta1", "beta2")
# Applied too, and recorded: how a step is computed (same math, other rounding or memory):
# grad_accum, precision, compile, activation_checkpointing. Not recorded: how the run is
# displayed and how many old checkpoints it keeps.
RESUME_IGNORED = ("progress", "log_every", "tensorboard", "keep_checkpoints")


class CosineSchedule:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``total`` steps. With
    ``unit`` > 1 the cosine moves in whole units (epochs), as in the MAD protocol."""

    def __init__(self, lr: float, min_lr: float, warmup: int, total: int, unit: int = 1):
        self.lr, self.min_lr, self.warmup, self.total, self.unit = lr, min_lr, warmup, total, max(1, unit)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        done = (step - self.warmup) // self.unit
        span = max(1, -(-(self.total - self.warmup) // self.unit))  # ceil: number of units
        frac = min(1.0, done / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * frac))

    def state_dict(self) -> dict:
        return dict(lr=self.lr, min_lr=self.min_lr, warmup=self.warmup, total=self.total, unit=self.unit)

    def load_state_dict(self, state: dict) -> None:
        self.__init__(**state)


# ----------------------------------------------------------------------------- processes, device
def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, NCCL on
    GPU. Returns whether this process is part of a multi-process run."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but no GPU is available")
    return torch.device("cuda", torch.cuda.current_device())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 on CPU (what the trainer always did); a ConfigError for a
    precision the device cannot run."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a GPU (its loss scaling is CUDA's GradScaler); on CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision bf16: this GPU does not support bfloat16; use fp16 or fp32")
    return precision


_AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- activation checkpointing
def enable_activation_checkpointing(lm: nn.Module) -> None:
    """Make every block of the LanguageModel ``lm`` recompute its activations in the backward
    pass (``torch.utils.checkpoint``, non-reentrant) whenever it runs with gradients and no
    decoding cache. Only the blocks' inputs are kept; the parameter names do not change."""
    from torch.utils.checkpoint import checkpoint

    for block in lm.blocks:
        def forward(x, cache=None, mask=None, _plain=block.forward):
            if cache is None and torch.is_grad_enabled():
                return checkpoint(_plain, x, mask=mask, use_reentrant=False)
            return _plain(x, cache=cache, mask=mask)

        block.forward = forward


def read_metrics(path: str) -> list:
    """All records of a metrics.jsonl file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Train ``task`` with a model built from ``model_cfg``.

    out_dir: where metrics.jsonl and checkpoints go (None: nothing is written).
    resume: continue from the newest checkpoint in out_dir (error if there is none, if it is
        damaged, or if it was made for another model config, task or sequence length). Training
        options that differ from the checkpoint's: ``RESUME_REFUSED`` ones are an error; the
        others apply from the resume step on (a changed length or learning rate rebuilds the
        schedule, whose cosine then ends at the new last step; new betas or weight decay go to
        the optimizer) and are listed in ``resume_changes`` and in a ``resume`` record of
        metrics.jsonl.
    """

    def __init__(self, model_cfg: ModelConfig, task, cfg: TrainConfig, out_dir: Optional[str] = None,
                 resume: bool = False):
        # -- setup: processes, device, and a task the model can take
        self.cfg, self.task, self.model_cfg, self.out_dir = cfg.validate(), task, model_cfg, out_dir
        self.rank, self.world = _rank_world()
        if out_dir is not None and self.rank == 0:
            clean_debris(out_dir)  # what a killed checkpoint write left
        if cfg.batch_size % (self.world * cfg.grad_accum):
            raise ConfigError(f"batch_size={cfg.batch_size} is not divisible by the {self.world} process(es) x "
                              f"grad_accum={cfg.grad_accum} (each process runs grad_accum equal micro-batches)")
        if cfg.fsdp and self.world == 1:
            raise ConfigError("fsdp shards the model over torchrun processes: launch with "
                              "torchrun --nproc_per_node N (N > 1), or leave fsdp off")
        self.device = _pick_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)  # auto resolved: what runs
        if self.precision == "fp16" and cfg.fsdp:
            raise ConfigError("precision fp16 is not supported with fsdp (its GradScaler is untested on sharded "
                              "gradients); use bf16")
        if cfg.tensorboard and out_dir is not None and self.rank == 0:
            check_tensorboard()
        self._check_task_fits_model()
        # -- model
        self.model, self.train_model = self._build_model()
        # -- data: the sampler, and how long to train
        self.steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
        self.total_steps = self._count_steps()
        self.sampler = task.make_sampler(cfg.batch_size, cfg.seed)
        # -- optimiser, its schedule and (fp16) the loss scaler
        self.optimizer = self._build_optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        unit = self.steps_per_epoch if (cfg.lr_per_epoch and self.steps_per_epoch) else 1
        self.schedule = CosineSchedule(cfg.lr, cfg.min_lr, cfg.warmup_steps, self.total_steps, unit)
        # -- progress so far: nothing, unless resuming
        self.step = 0
        self.evals = []  # eval records so far
        self.stopped_early = False
        self.last_checkpoint = None
        self.resume_changes = {}  # option -> [checkpoint's value, this run's]: what a resume changed
        self._fresh_log = not resume  # a fresh run starts a fresh log at its first record
        # what training has cost so far (carried across resumes)
        self.tokens_seen, self.wall_s, self.step_s = 0, 0.0, 0.0
        self._fit_start, self._wall_before = None, 0.0  # set while fit() runs
        self._runlog = None  # hypermlp.runlog.RunLog, while fit() runs
        self._twin = None  # FSDP: a plain copy of the model that checkpoints go through
        # estimated training FLOPs per token: 3 x forward (hypermlp.flops.training_flops)
        self._flops_per_token = 3.0 * forward_flops_per_token(model_cfg, task.seq_len, dense_params(self.model))
        if resume:
            self._resume()

    # -- setup -----------------------------------------------------------------------------------
    def _check_task_fits_model(self) -> None:
        cfg, task = self.model_cfg, self.task
        if cfg.vocab_size != task.vocab_size:
            raise ConfigError(f"model vocab_size={cfg.vocab_size} but task {task.name} needs {task.vocab_size}")
        if cfg.max_len < task.seq_len:
            raise ConfigError(f"model max_len={cfg.max_len} is shorter than the task's sequences ({task.seq_len})")

    # -- model -----------------------------------------------------------------------------------
    def _build_model(self):
        """The model (FSDP: sharded), and the module the training step calls (the model, or its
        DDP wrapper; compiled with ``compile``)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the model init is a function of the seed alone
        model = self.task.build_model(self.model_cfg).to(self.device)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.task.language_model(model))
        self._ddp = None
        if cfg.fsdp:  # every rank built the same model (same seed); each keeps its shard of it
            from torch.distributed.fsdp import fully_shard

            for block in self.task.language_model(model).blocks:
                fully_shard(block)  # one all-gather per block in forward and backward
            fully_shard(model)  # the rest: embedding, final norm, head (and a task's extra head)
            step_module = model
        elif self.world > 1:
            ddp_kwargs = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            unused = self.task.has_unused_parameters(self.model_cfg)
            step_module = self._ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused,
                                                                          **ddp_kwargs)
        else:
            step_module = model
        return model, (torch.compile(step_module) if cfg.compile else step_module)

    def _plain_twin(self) -> nn.Module:
        """FSDP: an unsharded CPU copy of the model (built once, the global RNG untouched) that
        full state dicts are loaded into, to save or load them as a plain run does."""
        if self._twin is None:
            with torch.random.fork_rng(devices=[]):
                self._twin = self.task.build_model(self.model_cfg)
        return self._twin

    # -- data ------------------------------------------------------------------------------------
    def _count_steps(self) -> int:
        if self.cfg.epochs is not None and self.steps_per_epoch is None:
            raise ConfigError(f"task {self.task.name} has no epochs (no fixed training set): give steps, not epochs")
        if self.cfg.epochs is not None:
            return self.cfg.epochs * self.steps_per_epoch
        if self.cfg.steps is not None:
            return self.cfg.steps
        raise ConfigError(f"task {self.task.name} has no epochs: give steps")

    # -- optimiser -------------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.AdamW:
        cfg = self.cfg
        # nanoGPT rule: decay matrices and embeddings, not norms, biases or other vectors
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            **({"fused": True} if self.device.type == "cuda" and not cfg.fsdp else {}),
        )

    # -- resume ----------------------------------------------------------------------------------
    def _resume(self) -> None:
        """Load the newest checkpoint; options that differ from the checkpoint's are refused or
        applied (``RESUME_*``), and what changed is logged and kept in ``resume_changes``."""
        if self.out_dir is None:
            raise CheckpointError("resume needs an output directory")
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.out_dir}")
        if self.cfg.fsdp:  # the full weights into a plain twin, then each rank takes its shards
            state = load_checkpoint(ckpt, self.task, self._plain_twin(), self.model_cfg, "cpu")
        else:
            state = load_checkpoint(ckpt, self.task, self.model, self.model_cfg, self.device)
        step = int(state["step"])
        changes = self._check_resume(state, step)
        if self.cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                                 set_optimizer_state_dict)

            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, self._plain_twin().state_dict(), options=full)
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=full)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        for name in RESUME_OPTIMIZER:
            if name in changes:  # load_state_dict brought the checkpoint's values back
                self._set_optimizer_options()
                break
        if not any(name in changes for name in RESUME_SCHEDULE):
            self.schedule.load_state_dict(state["schedule"])  # else: the new settings' schedule
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = step
        self.evals = list(state["evals"])
        self.stopped_early = bool(state["stopped_early"])
        cost = state.get("cost") or {}  # absent in checkpoints written before it was recorded
        self.tokens_seen = int(cost.get("tokens", self.step * self.cfg.batch_size * self.task.seq_len))
        self.wall_s, self.step_s = float(cost.get("wall_s", 0.0)), float(cost.get("step_s", 0.0))
        self.last_checkpoint = ckpt
        self.resume_changes = changes
        if self.rank == 0:
            write_run_marker(self.out_dir)  # the checkpoint loaded: this run folder is hypermlp's
            # drop what the interrupted run logged after its last checkpoint
            kept = []
            if os.path.exists(self._metrics_path):
                kept = [r for r in read_metrics(self._metrics_path) if r.get("step", 0) <= self.step]
            kept.append({"type": "resume", "step": self.step, "checkpoint": ckpt, "changed": changes})

            def rewrite(tmp):
                with open(tmp, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)

            write_atomic(self._metrics_path, rewrite)

    def _check_resume(self, state: dict, step: int) -> dict:
        """The options that differ from the checkpoint's, as {name: [old, new]}; a ConfigError
        for one that cannot change (``RESUME_REFUSED``) or a run that would end before ``step``."""
        if "seq_len" in state and state["seq_len"] != self.task.seq_len:
            raise ConfigError(f"--resume cannot change the task's seq_len (the run used {state['seq_len']}, "
                              f"now {self.task.seq_len})")
        old = dict(state.get("train_config") or {})
        if old.get("early_stop_metric") in _OLD_METRIC_NAMES:
            old["early_stop_metric"] = _OLD_METRIC_NAMES[old["early_stop_metric"]]
        old.setdefault("fsdp", False)  # checkpoints written before the option: never sharded
        new = asdict(self.cfg)
        changes = {k: [old[k], new[k]] for k in new if k in old and old[k] != new[k] and k not in RESUME_IGNORED}
        for name, why in RESUME_REFUSED.items():
            if name in changes:
                raise ConfigError(f"--resume cannot change {name} (the run used {changes[name][0]!r}, now "
                                  f"{changes[name][1]!r}): {why}; start a new run instead")
        if self.total_steps < step:
            raise ConfigError(f"--resume with steps={self.total_steps} would end before the run's position: "
                              f"it is already at step {step}")
        if bool(state.get("stopped_early")) and ("steps" in changes or "epochs" in changes):
            raise ConfigError(f"the run stopped early at step {step} ({self.cfg.early_stop_metric} reached "
                              f"{self.cfg.early_stop_at}); resuming it would not train further")
        return changes

    def _set_optimizer_options(self) -> None:
        decay, no_decay = self.optimizer.param_groups
        decay["weight_decay"] = self.cfg.weight_decay
        no_decay["weight_decay"] = 0.0
        for group in self.optimizer.param_groups:
            group["betas"] = (self.cfg.beta1, self.cfg.beta2)

    # -- metrics log -----------------------------------------------------------------------------
    @property
    def _metrics_path(self) -> str:
        return os.path.join(self.out_dir, "metrics.jsonl")

    def _begin_run_folder(self) -> None:
        """At a fresh run's first write: the folder, its marker, an empty log."""
        if self._fresh_log and self.out_dir is not None and self.rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
            write_run_marker(self.out_dir)
            open(self._metrics_path, "w").close()
        self._fresh_log = False

    def _log(self, record: dict) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        self._begin_run_folder()
        with open(self._metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- loop ------------------------------------------------------------------------------------
    def _autocast(self):
        dtype = _AUTOCAST_DTYPE.get(self.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def _grad_sync(self, sync: bool):
        """Whether this micro-batch's backward reduces gradients over the ranks (only the last
        one of a step needs to: the others just add into ``.grad``)."""
        if self.cfg.fsdp:
            self.model.set_requires_gradient_sync(sync)
            return nullcontext()
        if self._ddp is not None and not sync:
            return self._ddp.no_sync()
        return nullcontext()

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Add the gradient of the mean token loss of the global batch ``(x, y)`` ((B, T) each,
        identical on every rank) into ``.grad``: this rank's rows, in ``grad_accum``
        micro-batches, each one's summed loss divided by the whole batch's target count.
        Returns that mean loss (the same on every rank)."""
        n_targets = int((y != IGNORE_INDEX).sum())
        if n_targets == 0:
            raise TrainingError(f"step {self.step + 1}: the batch has no training targets")
        rows = x.shape[0] // self.world
        x = x[self.rank * rows : (self.rank + 1) * rows].to(self.device, non_blocking=True)  # (B/world, T)
        y = y[self.rank * rows : (self.rank + 1) * rows].to(self.device, non_blocking=True)
        micro = rows // self.cfg.grad_accum
        total = torch.zeros((), device=self.device)
        for i in range(self.cfg.grad_accum):
            xs, ys = x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro]  # (B/world/N, T)
            with self._grad_sync(i == self.cfg.grad_accum - 1):
                with self._autocast():
                    logits = self.task.forward(self.train_model, xs)  # (B/world/N, T, V)
                loss_sum = self.task.loss(logits, ys)  # fp32
                # x world: DDP / FSDP average the ranks' gradients, which divides it out again
                scaled = loss_sum * (self.world / n_targets)
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss_sum.detach()
        if self.world > 1:
            dist.all_reduce(total)
        return float(total) / n_targets

    def train_step(self) -> dict:
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.sampler.next_batch()  # (B, T) each: the global batch, identical on every rank
        loss = self.backward(x, y)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            where = self.last_checkpoint or "none written"
            raise TrainingError(
                f"loss became {loss} at step {self.step + 1}; training stopped "
                f"(try a lower learning rate). Last good checkpoint: {where}"
            )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        grad_norm = None
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": int(x.numel())}

    def fit(self) -> dict:
        cfg = self.cfg
        self._runlog = RunLog(self.task.name, self.total_steps, self.step, self.out_dir, progress=cfg.progress,
                              log_every=cfg.log_every, tensorboard=cfg.tensorboard, rank=self.rank)
        start, tokens_done = time.perf_counter(), 0
        self._fit_start, self._wall_before = start, self.wall_s
        losses = []
        try:
            while self.step < self.total_steps and not self.stopped_early:
                t0 = time.perf_counter()
                rec = self.train_step()
                self.step_s += time.perf_counter() - t0
                tokens_done += rec["tokens"]
                self.tokens_seen += rec["tokens"]
                elapsed = time.perf_counter() - start
                rec.update(type="train", elapsed_s=round(elapsed, 3), tokens_per_s=round(tokens_done / max(elapsed, 1e-9), 1))
                self._log(rec)
                self._runlog.train(rec)
                losses.append((rec["step"], rec["loss"]))

                last = self.step == self.total_steps
                if self._eval_due() or last:
                    ev = self.evaluate(final=last)
                    if self._reached_early_stop(ev):
                        self.stopped_early = not last
                        if self.stopped_early and self.task.final_eval_differs:
                            self.evaluate(final=True)  # the run ends here: its final evaluation
                        last = True
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last or self.stopped_early:
                    self.save_checkpoint()
            if not self.evals or self.evals[-1]["step"] != self.step:
                self.evaluate(final=True)  # e.g. resumed a finished run
        finally:
            self._runlog.close()
            self._runlog = None
        self._update_wall()
        final = self.evals[-1]
        return {
            "step": self.step,
            "final": final,
            "evals": self.evals,
            "train_loss": losses,
            "stopped_early": self.stopped_early,
            "checkpoint": self.last_checkpoint,
            "wall_s": time.perf_counter() - start,  # of this call
            "cost": self.cost(),  # of the whole run, across resumes
        }

    def _update_wall(self) -> None:
        if self._fit_start is not None:
            self.wall_s = self._wall_before + (time.perf_counter() - self._fit_start)

    def cost(self) -> dict:
        """What training has cost so far, across resumes: tokens, seconds, estimated FLOPs."""
        self._update_wall()
        return {
            "train_tokens": self.tokens_seen,
            "train_wall_s": round(self.wall_s, 3),
            "train_step_s": round(self.step_s, 3),
            "train_tokens_per_s": round(self.tokens_seen / self.step_s, 1) if self.step_s > 0 else None,
            "train_flops": self._flops_per_token * self.tokens_seen,
        }

    def _reached_early_stop(self, record: dict) -> bool:
        cfg = self.cfg
        if cfg.early_stop_at is None:
            return False
        if cfg.early_stop_metric not in record:
            have = sorted(k for k in record if k.startswith("val_"))
            raise ConfigError(f"early_stop_metric={cfg.early_stop_metric!r} is not a metric of task "
                              f"{self.task.name} (its validation metrics: {have})")
        value = record[cfg.early_stop_metric]
        if cfg.early_stop_metric.endswith(_LOWER_IS_BETTER):
            return value <= cfg.early_stop_at
        return value >= cfg.early_stop_at

    # -- evaluate --------------------------------------------------------------------------------
    def _eval_due(self) -> bool:
        if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            return True
        return bool(self.cfg.eval_each_epoch and self.steps_per_epoch and self.step % self.steps_per_epoch == 0)

    @torch.no_grad()
    def evaluate(self, final: bool = False) -> dict:
        """Evaluate the model (``final``: the run's last evaluation, which may score more; see
        ``Task.evaluate``), log the record and return it."""
        with self._autocast():
            metrics = self.task.evaluate(self.model, final=final)
        record = {"type": "eval", "step": self.step, **metrics, **self.cost()}
        if self.steps_per_epoch:
            record["epoch"] = self.step / self.steps_per_epoch
        self.evals.append(record)
        self._log(record)
        if self._runlog is not None:
            self._runlog.eval(record, self._metrics_path if self.out_dir is not None else None)
        return record

    # -- checkpoint ------------------------------------------------------------------------------
    def _state(self, optimizer_state: Optional[dict] = None) -> dict:
        """The trainer state a checkpoint holds (``optimizer_state``: FSDP's gathered one)."""
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "precision": self.precision,
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "evals": self.evals,
            "stopped_early": self.stopped_early,
            "cost": {"tokens": self.tokens_seen, "wall_s": self.cost()["train_wall_s"], "step_s": self.step_s},
            "train_config": asdict(self.cfg),
            "task": self.task.name,
            "seq_len": self.task.seq_len,
        }

    def _full_state(self):
        """(the module whose weights a checkpoint stores, the optimizer's state dict). FSDP: the
        full state dicts, gathered on rank 0 (every rank must call this; the others get None)."""
        if not self.cfg.fsdp:
            return self.model, self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        gather = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it all, on CPU
        weights = get_model_state_dict(self.model, options=gather)
        optimizer = get_optimizer_state_dict(self.model, self.optimizer, options=gather)
        if self.rank != 0:
            return None, None
        twin = self._plain_twin()
        twin.load_state_dict(weights)
        return twin, optimizer

    def save_checkpoint(self) -> Optional[str]:
        if self.out_dir is None or not self.cfg.save_checkpoints:
            return None
        module, optimizer_state = self._full_state()
        if self.rank == 0:
            self._begin_run_folder()
            self.last_checkpoint = save_checkpoint(self.out_dir, self.step, self.task, module,
                                                   self._state(optimizer_state), keep=self.cfg.keep_checkpoints)
        if self.world > 1:
            dist.barrier()  # nobody runs ahead of a checkpoint that may be needed to resume
        return self.last_checkpoint
