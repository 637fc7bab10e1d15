"""``hypermlp train --dry-run``: what a training run would be, without training or writing.

The model is built on the ``meta`` device (no memory, no init), so its parameter count is
exact at any size. ``estimate`` adds what one optimizer step takes and a memory estimate per
GPU; ``format_estimate`` prints it.

* tokens per step = ``batch_size x seq_len`` (the global batch, over every process and every
  micro-batch).
* FLOPs per token = ``3 x forward`` (``hypermlp.flops``: ``6 N`` for the dense weights plus the
  mixers' sequence terms at the mean causal context; docs/math.md §6).
* Memory per GPU, in bytes, with ``P`` parameters, ``W`` processes, ``b`` sequences of ``T``
  tokens per micro-batch and process (``batch_size / (W x grad_accum)``), ``a`` bytes per
  activation (2 under bf16/fp16 autocast, 4 in fp32):

  - model states: ``16 P`` = fp32 weights (4) + fp32 gradients (4) + AdamW's two moments (8);
    under FSDP ``16 P / W`` plus ``12 P_block`` (the largest block's gathered fp32 weights, for
    the block running and the one prefetched, and its unsharded gradient);
  - activations: ``b T x sum over layers of s_tok + sum over layers of s_fix``, where ``s_tok``
    is what one block of that layer's mixer keeps for its backward per token and ``s_fix`` what
    it keeps once (under autocast, the low-precision copies of its weights). Both are
    *measured*, not guessed: the block is built on CPU and run once at 128 and once at 256
    tokens, batch 1, under the run's autocast, adding up the storages autograd saves
    (``torch.autograd.graph.saved_tensors_hooks``, the block's parameters aside); the
    difference per token is ``s_tok``. With activation checkpointing: each block's fp32 input
    (``4 d`` bytes per token and layer) plus one block's activations (the one recomputed);
  - the logits: ``b T V (a + 8)`` (the logits, their fp32 copy for the loss and its gradient).

  It ignores the CUDA context and the allocator's fragmentation (often 1-3 GiB), temporary
  workspaces and the transient tensors of the backward pass, communication buffers,
  ``torch.compile``'s own buffers and the evaluation batch, and it measures the CPU's kernels
  (a GPU's fused attention saves about what the CPU's does): a planning figure.
"""

from __future__ import annotations

import dataclasses
import weakref
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch

from .flops import dense_params, forward_flops_per_token

__all__ = ["Estimate", "estimate", "block_saved_bytes", "format_estimate"]

GIB = 1024 ** 3


@dataclass
class Estimate:
    params: int  # every parameter, tied ones once
    dense_params: int  # the ones each token is multiplied by (hypermlp.flops)
    tokens_per_step: int
    micro_batch: int  # sequences per micro-batch and process
    flops_per_token: float  # training: 3 x forward
    steps: Optional[int]
    total_flops: Optional[float]
    world_size: int
    state_bytes: float
    activation_bytes: float
    logits_bytes: float

    @property
    def memory_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes + self.logits_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "memory_bytes": self.memory_bytes}


def _saved_bytes(block, tokens: int, precision: str) -> int:
    """Bytes of the storages autograd saves in one forward of ``block`` on ``tokens`` tokens
    (batch 1, on CPU), its parameters aside."""
    packed = []  # weak references: a tensor whose graph node was dropped is not held for backward

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    d = block.norm1.weight.shape[0]
    x = torch.randn(1, tokens, d, requires_grad=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        out = block(x)  # kept alive until counted: its graph holds the saved tensors
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    held = {}
    for ref in packed:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in params:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # each storage once
    del out
    return sum(held.values())


def block_saved_bytes(model_cfg, mixer: str, precision: str, lengths=(128, 256)) -> Tuple[float, float]:
    """(bytes per token, bytes once) that one block of ``mixer`` keeps for its backward, measured
    on CPU at two lengths (module docstring). ``precision`` fp32, or anything else: 2-byte autocast."""
    from .models.lm import Block

    cfg = dataclasses.replace(model_cfg, n_layers=1, mixer=mixer, max_len=max(lengths))
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
        block = Block(cfg, mixer)
    short, long = (_saved_bytes(block, t, precision) for t in lengths)
    per_token = (long - short) / (lengths[1] - lengths[0])
    return per_token, max(0.0, short - per_token * lengths[0])


def estimate(model_cfg, train_cfg, seq_len: int, world_size: int = 1, steps: Optional[int] = None) -> Estimate:
    """What one run of ``model_cfg`` under ``train_cfg`` (a TrainConfig) on ``world_size`` GPUs
    takes (module docstring). ``steps``: the run's length, for its total FLOPs."""
    from .models import LanguageModel

    with torch.device("meta"):
        model = LanguageModel(model_cfg)
    params = model.num_params()
    n_dense = dense_params(model)
    rows, accum = train_cfg.batch_size, train_cfg.grad_accum
    micro = max(1, rows // (world_size * accum))
    act_bytes = 4 if train_cfg.precision == "fp32" else 2  # auto is bf16 on a GPU
    tokens = micro * seq_len  # per micro-batch and process
    measured = {m: block_saved_bytes(model_cfg, m, train_cfg.precision) for m in set(model_cfg.mixers())}
    per_layer = [tokens * measured[m][0] + measured[m][1] for m in model_cfg.mixers()]

    states = 16.0 * params
    if train_cfg.fsdp and world_size > 1:
        biggest_block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
        states = states / world_size + 12.0 * biggest_block
    if train_cfg.activation_checkpointing:
        acts = tokens * 4.0 * model_cfg.d_model * len(per_layer) + max(per_layer)
    else:
        acts = sum(per_layer)
    logits = tokens * model_cfg.vocab_size * (act_bytes + 8.0)
    fpt = 3.0 * forward_flops_per_token(model_cfg, seq_len, n_dense)
    tps = rows * seq_len
    return Estimate(params=params, dense_params=n_dense, tokens_per_step=tps, micro_batch=micro, flops_per_token=fpt,
                    steps=steps, total_flops=None if steps is None else fpt * tps * steps, world_size=world_size,
                    state_bytes=states, activation_bytes=acts, logits_bytes=logits)


def _tokens(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def format_estimate(name: str, model_cfg, train_cfg, seq_len: int, est: Estimate) -> str:
    """The dry run's report of one model, a few aligned lines."""
    mixers = sorted(set(model_cfg.mixers()))
    shard = f"sharded over {est.world_size} (FSDP)" if train_cfg.fsdp and est.world_size > 1 else "not sharded"
    lines = [
        f"{name}: {'/'.join(mixers)} d_model={model_cfg.d_model} layers={model_cfg.n_layers} "
        f"mlp_hidden={model_cfg.mlp_hidden} vocab={model_cfg.vocab_size} max_len={model_cfg.max_len}",
        f"  parameters   {est.params:,} ({est.dense_params:,} dense)",
        f"  tokens/step  {est.tokens_per_step:,} = batch {train_cfg.batch_size} x seq_len {seq_len} "
        f"({est.world_size} GPU(s) x grad_accum {train_cfg.grad_accum} x micro-batch {est.micro_batch})",
        f"  FLOPs/token  {est.flops_per_token:.3e} (training, 3 x forward)"
        + (f"; {est.steps:,} steps = {_tokens(est.steps * est.tokens_per_step)} tokens, {est.total_flops:.2e} FLOPs"
           if est.steps else ""),
        f"  memory/GPU   ~{est.memory_bytes / GIB:.1f} GiB = states {est.state_bytes / GIB:.1f} ({shard}) + "
        f"activations {est.activation_bytes / GIB:.1f}"
        + (" (checkpointed)" if train_cfg.activation_checkpointing else "")
        + f" + logits {est.logits_bytes / GIB:.1f}; precision {train_cfg.precision}",
    ]
    return "\n".join(lines)
