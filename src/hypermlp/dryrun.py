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
  - activations: per layer and token, the fp32 residual stream kept twice (``8 d`` bytes) and
    ``a x (4 d + 3 qk + 3 vo + 3 h + 4 r (Hq + H))``: the two normed inputs and the convolutions'
    outputs, Q/K/V and the readout (``qk = qk_rank``, ``vo = vo_rank``), the SwiGLU's
    ``3 h``, and the Hyper core's saved ``s`` gates and ``z A`` products (``r = seq_rank``,
    ``Hq`` score and ``H`` readout heads; 0 for softmax attention, whose fused kernel keeps no
    ``T x T`` scores); with activation checkpointing only each block's fp32 input (``4 d``) plus
    one block's activations; times ``b T`` tokens and the layers;
  - the logits: ``b T V (a + 8)`` (the logits, their fp32 copy for the loss and its gradient).

  It ignores the CUDA context and the allocator's fragmentation (often 1-3 GiB), temporary
  workspaces, communication buffers, ``torch.compile``'s own buffers and the evaluation batch:
  a planning figure, not a measurement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .flops import dense_params, forward_flops_per_token

__all__ = ["Estimate", "estimate", "format_estimate"]

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


def _activations_per_token_layer(block, act_bytes: int) -> float:
    """Bytes one block keeps per token for its backward (module docstring)."""
    mixer, d = block.mixer, block.norm1.weight.shape[0]
    cfg = mixer.config
    h = block.mlp.down.in_features
    r = getattr(cfg, "seq_rank", 0)
    hyper = (getattr(mixer, "qk_heads", 0) if getattr(mixer, "seq_mix1", None) is not None else 0) + \
            (getattr(mixer, "n_heads", 0) if getattr(mixer, "seq_mix2", None) is not None else 0)
    return 8 * d + act_bytes * (4 * d + 3 * cfg.qk_rank + 3 * cfg.vo_rank + 3 * h + 4 * r * hyper)


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

    states = 16.0 * params
    if train_cfg.fsdp and world_size > 1:
        biggest_block = max(sum(p.numel() for p in b.parameters()) for b in model.blocks)
        states = states / world_size + 12.0 * biggest_block
    per_layer = [_activations_per_token_layer(b, act_bytes) for b in model.blocks]
    if train_cfg.activation_checkpointing:
        acts = tokens * (4.0 * model_cfg.d_model * len(per_layer) + max(per_layer))
    else:
        acts = tokens * sum(per_layer)
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
