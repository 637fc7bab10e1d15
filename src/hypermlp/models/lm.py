"""A small decoder-only language model around any mixer of the library (nanoGPT-sized).

token embedding -> N x [RMSNorm -> mixer -> residual, RMSNorm -> SwiGLU MLP -> residual]
-> RMSNorm -> output head (optionally tied to the embedding). No absolute position embedding:
the Hyper layers are position-aware through the lag layout and softmax attention through RoPE.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import (CheckpointError, first_line, load_weights, verify_checksums, write_atomic,
                          write_checksums, write_json_atomic)
from ..config import ConfigError
from ..data.common import IGNORE_INDEX
from ..registry import get_mixer

@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    mixer: Union[str, List[str]] = "hyperglu"  # one name for all layers, or one per layer (hybrids)
    mixer_args: Dict = field(default_factory=dict)  # e.g. {"n_heads": 2, "qk_rank": 32}; each layer takes what applies
    max_len: int = 1024
    mlp_hidden: Optional[int] = None  # SwiGLU hidden width; default 8/3 * d_model rounded up to 32
    tie_embeddings: bool = True
    rmsnorm_eps: float = 1e-6  # epsilon of every RMSNorm (older config.json files call it norm_eps)

    def __post_init__(self):
        if self.mlp_hidden is None and isinstance(self.d_model, int):
            self.mlp_hidden = -(-(8 * self.d_model // 3) // 32) * 32

    def mixers(self) -> List[str]:
        names = [self.mixer] * self.n_layers if isinstance(self.mixer, str) else list(self.mixer)
        return names

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "d_model", "n_layers", "max_len", "mlp_hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        names = self.mixers()
        if len(names) != self.n_layers:
            raise ConfigError(f"mixer lists {len(names)} layers but n_layers={self.n_layers}")
        specs = {n: get_mixer(n) for n in names}  # unknown names -> ConfigError
        for reserved in ("d_model", "max_len"):
            if reserved in self.mixer_args:
                raise ConfigError(f"set {reserved} on the model, not in mixer_args")
        used = set().union(*(spec.accepted_args() for spec in specs.values()))
        stray = sorted(set(self.mixer_args) - used)
        if stray:
            raise ConfigError(f"mixer_args {stray} are not accepted by any mixer of this model ({sorted(set(names))})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if "norm_eps" in d:  # the old name, still in config.json files written before the rename
            if "rmsnorm_eps" in d:
                raise ConfigError("give rmsnorm_eps or its old name norm_eps, not both")
            d["rmsnorm_eps"] = d.pop("norm_eps")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown model config field(s) {unknown}")
        return cls(**d)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mixer: str):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.rmsnorm_eps)
        self.mixer = get_mixer(mixer).build(cfg.d_model, cfg.max_len, cfg.mixer_args)
        self.norm2 = RMSNorm(cfg.d_model, cfg.rmsnorm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_hidden)

    def forward(self, x, cache=None, mask=None):
        x = x + self.mixer(self.norm1(x), cache=cache, mask=mask)
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, m) for m in config.mixers())
        self.norm = RMSNorm(config.d_model, config.rmsnorm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights counted once

    def new_caches(self, batch_size: int):
        return [b.mixer.new_cache(batch_size) for b in self.blocks]

    def hidden_states(self, idx, caches=None, mask=None):
        if idx.dim() != 2:
            raise ValueError(f"token ids must have shape (batch, seq_len), got {tuple(idx.shape)}")
        check_token_ids(idx, self.config.vocab_size)
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[i], mask=mask)
        return self.norm(x)

    def forward(self, idx, targets=None, caches=None, mask=None):
        """idx: (B, T) token ids. Returns logits (B, T, V), and the mean cross-entropy over the
        targets that are not -100 when targets are given."""
        logits = self.head(self.hidden_states(idx, caches, mask))
        if targets is None:
            return logits
        loss = token_cross_entropy(logits, targets)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
    ) -> torch.Tensor:
        """Continue ``prompt_ids`` ((T,) or (B, T)) by ``max_new_tokens`` tokens using the layer
        caches (O(t) per token). temperature=0 is greedy. Returns prompt + continuation."""
        squeeze = prompt_ids.dim() == 1
        ids = prompt_ids[None] if squeeze else prompt_ids
        if ids.shape[1] < 1:
            raise ValueError("the prompt must hold at least one token")
        if ids.shape[1] + max_new_tokens > self.config.max_len:
            raise ValueError(
                f"prompt ({ids.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds max_len={self.config.max_len}"
            )
        gen = torch.Generator(device=ids.device)
        gen.manual_seed(0 if seed is None else seed)
        caches = self.new_caches(ids.shape[0])
        logits = self(ids, caches=caches)[:, -1]
        out = [ids]
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, gen)
            out.append(nxt)
            if step + 1 < max_new_tokens:
                logits = self(nxt, caches=caches)[:, -1]
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result

    # -- persistence: safetensors weights + JSON config beside them --------------------------
    def save(self, directory: str) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``, each atomically,
        and the weights' sha256 in ``checksums.json`` (``load`` verifies it)."""
        from safetensors.torch import save_model

        os.makedirs(directory, exist_ok=True)
        write_atomic(os.path.join(directory, "model.safetensors"), lambda tmp: save_model(self, tmp))
        write_json_atomic(os.path.join(directory, "config.json"), self.config.to_dict())
        write_checksums(directory, ["model.safetensors"])

    @classmethod
    def load(cls, directory: str, map_location: str = "cpu") -> "LanguageModel":
        """The model saved in ``directory``. A damaged file (checksum), a config that does not
        describe the weights (the tensors are named) or weights that are not finite raise a
        ``CheckpointError`` (a ValueError)."""
        cfg_path = os.path.join(directory, "config.json")
        weights = os.path.join(directory, "model.safetensors")
        for p in (cfg_path, weights):
            if not os.path.exists(p):
                raise FileNotFoundError(f"checkpoint is missing {p}")
        verify_checksums(directory, ["model.safetensors"])
        try:
            with open(cfg_path) as f:
                cfg = ModelConfig.from_dict(json.load(f))
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"cannot read {cfg_path}: {first_line(e)}") from None
        model = cls(cfg)
        load_weights(model, weights, map_location, misfit="does not match its config")
        return model


def check_token_ids(idx: torch.Tensor, vocab_size: int) -> None:
    """Token ids outside [0, vocab_size) raise a ValueError naming the range they span. Under
    torch.compile the check is a device-side assert instead (no host sync, no graph break)."""
    if torch.compiler.is_compiling():
        torch._assert_async(((idx >= 0) & (idx < vocab_size)).all(), f"token ids must lie in [0, {vocab_size})")
    elif idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"token ids must lie in [0, {vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int], gen: torch.Generator) -> torch.Tensor:
    """(B, V) logits -> (B, 1) next ids. temperature 0 = argmax."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) target ids, skipping targets == -100.
    Reduced in float32 whatever the logits' dtype (bf16 under autocast would lose the sum)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)
