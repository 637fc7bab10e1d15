"""``HyperMLPCache``: the layers' decoding caches (``hypermlp.layers.LayerCache``, docs/math.md
§4) behind the ``transformers`` ``Cache`` interface.

Each model layer has one ``HyperMLPCacheLayer`` that owns the ``LayerCache`` its mixer reads and
writes: keys and values of every past token, which of them are real tokens (left padding,
docs/math.md §10), the real-token count per row (RoPE positions) and the causal convs' last
inputs. The mixer appends to it during ``forward``; ``transformers`` only asks it questions
(``get_seq_length``: every position seen, padding included, which ``generate`` turns into the next
positions; ``get_mask_sizes``; ``get_max_length``: the model's ``max_len``) and reorders or
selects its batch rows (beam search, contrastive search). Rolling back (``crop``) is not
possible: the conv state of a dropped token is gone.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..layers.cache import LayerCache

__all__ = ["HyperMLPCache", "HyperMLPCacheLayer"]

_BATCH_TENSORS = ("k", "v", "key_valid", "real_count", "conv_k", "conv_v")  # LayerCache fields, batch first


class HyperMLPCacheLayer(CacheLayerMixin):
    """One model layer's decoding state: a ``LayerCache`` (``.state``)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False  # buffers are sized by the mixer on its first call

    def __init__(self, state: LayerCache):
        self.state = state
        super().__init__()  # sets keys / values to None (ignored) and is_initialized
        self.is_initialized = True

    # keys / values: views of what the mixer stored, for inspection (None before the first token)
    @property
    def keys(self) -> Optional[torch.Tensor]:
        s = self.state
        return None if s.k is None else s.k[:, :, : s.length]

    @keys.setter
    def keys(self, value) -> None:
        if value is not None:
            raise AttributeError("the keys are written by the mixer, through forward")

    @property
    def values(self) -> Optional[torch.Tensor]:
        s = self.state
        return None if s.v is None else s.v[:, :, : s.length]

    @values.setter
    def values(self, value) -> None:
        if value is not None:
            raise AttributeError("the values are written by the mixer, through forward")

    @property
    def batch_size(self) -> int:
        return self.state.batch_size

    # -- what transformers asks --------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: ``LayerCache`` allocates its buffers (at ``max_len``) on the first append."""
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append keys and values (B, heads, T, dim) of T real tokens; return every one so far.
        (The model's mixers write through ``LayerCache`` directly; this is the generic entry.)"""
        keys, values, _ = self.state.append(key_states, value_states, None)
        return keys, values

    def get_seq_length(self) -> int:
        return self.state.length

    def get_max_length(self) -> int:
        return self.state.max_len

    def get_mask_sizes(self, query_length: int) -> tuple:
        return self.state.length + query_length, 0

    def reset(self) -> None:
        self.state = LayerCache(self.state.batch_size, self.state.max_len)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "a HyperMLP cache cannot be cropped: the causal convs keep only the last inputs, so dropped "
            "tokens cannot be undone (assisted generation and rollbacks need a croppable cache)")

    def offload(self):  # the state stays where the mixer put it
        return None

    def prefetch(self):
        return None

    # -- batch rows ----------------------------------------------------------------------------
    def _map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int) -> None:
        s = self.state
        for name in _BATCH_TENSORS:
            t = getattr(s, name)
            if t is not None:
                setattr(s, name, fn(t))
        s.batch_size = batch_size

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)), int(beam_idx.numel()))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        indices = torch.as_tensor(indices)
        if indices.dtype == torch.bool:
            indices = indices.nonzero().flatten()
        self._map_rows(lambda t: t[indices.to(t.device)], int(indices.numel()))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0), self.state.batch_size * repeats)


class HyperMLPCache(Cache):
    """The decoding caches of every layer of a HyperMLP model (any mixer, hybrids included)."""

    def __init__(self, layer_caches: List[LayerCache]):
        if not layer_caches:
            raise ValueError("a HyperMLPCache needs one LayerCache per model layer")
        super().__init__(layers=[HyperMLPCacheLayer(c) for c in layer_caches])

    @classmethod
    def for_blocks(cls, blocks, batch_size: int) -> "HyperMLPCache":
        """An empty cache for ``batch_size`` sequences through ``blocks`` (the model's layers)."""
        return cls([block.mixer.new_cache(batch_size) for block in blocks])

    @property
    def layer_caches(self) -> List[LayerCache]:
        """The ``LayerCache`` of each layer, in order: what the mixers take as ``cache=``."""
        return [layer.state for layer in self.layers]

    @property
    def has_padding(self) -> bool:
        return any(layer.state.has_padding for layer in self.layers)

    def crop(self, tokens_to_remove: int) -> None:
        self.layers[0].crop(tokens_to_remove)
