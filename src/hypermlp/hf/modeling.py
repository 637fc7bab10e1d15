"""HyperMLP models as ``transformers`` models: ``HyperMLPModel`` (hidden states) and
``HyperMLPForCausalLM`` (logits, loss, ``generate``).

They own the library's modules, built by ``hypermlp.models.LanguageModel`` itself: the token
embedding, the ``Block`` s (RMSNorm -> mixer -> residual, RMSNorm -> SwiGLU -> residual; any mixer
of the registry, one per layer for a hybrid), the final RMSNorm and the output head. So the same
seed gives the same weights, and the state-dict names are ``LanguageModel``'s with ``model.`` in
front of everything but the head: ``embed.weight`` -> ``model.embed.weight``, ``blocks.0...`` ->
``model.blocks.0...``, ``norm.weight`` -> ``model.norm.weight``, ``head.weight`` stays
(``from_language_model`` / ``to_language_model`` convert).

Inputs follow transformers' conventions: ``attention_mask`` (B, past + T), 1 at real tokens and 0
at (left) padding, covering the cached tokens too; positions come from the mask (the mixers count
real tokens, docs/math.md §10), so ``position_ids`` is not needed and is ignored. The decoding
state is a ``HyperMLPCache``; ``generate`` hands the model an empty ``DynamicCache`` on its first
step, which is replaced by one.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Union

import torch
import torch.nn as nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..checkpoint import first_line
from ..layers.common import Rotary
from ..models.lm import LanguageModel, token_cross_entropy
from .cache import HyperMLPCache
from .configuration import HFCheckpointError, HyperMLPConfig

__all__ = ["HyperMLPPreTrainedModel", "HyperMLPModel", "HyperMLPForCausalLM", "to_hf_state_dict",
           "to_library_state_dict"]

_IGNORED = ("position_ids",)  # positions come from attention_mask


def to_hf_state_dict(state_dict: dict) -> dict:
    """``LanguageModel`` state-dict names -> ``HyperMLPForCausalLM``'s."""
    return {(k if k.startswith("head.") else f"model.{k}"): v for k, v in state_dict.items()}


def to_library_state_dict(state_dict: dict) -> dict:
    """``HyperMLPForCausalLM`` state-dict names -> ``LanguageModel``'s."""
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()}


class HyperMLPPreTrainedModel(PreTrainedModel):
    config_class = HyperMLPConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]  # accelerate / FSDP wrap and place whole blocks
    supports_gradient_checkpointing = True
    _unexpected_ok: tuple = ()  # prefixes of state-dict names a folder may hold that this class does not use
    _supports_sdpa = True  # softmax layers call SDPA themselves; nothing to switch

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing: every module is initialised by the library's constructors, as in
        ``LanguageModel`` (embedding N(0, 0.02), DPLR tables N(0, 0.02), the rest torch's
        defaults), so the same seed gives the same model."""
        return None

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """A no-op, as ``HyperMLPConfig.register_for_auto_class`` (the checkpoint's ``auto_map``
        is written by the config)."""
        return None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' ``from_pretrained``, with clear errors: a folder that is not a hypermlp
        Hugging Face checkpoint (a ``hypermlp train`` run, another model type, no config.json)
        and weights that are missing, unexpected or of the wrong shape raise an
        ``HFCheckpointError`` naming them, instead of a warning and freshly initialised weights."""
        want_info = kwargs.pop("output_loading_info", False)
        if kwargs.pop("ignore_mismatched_sizes", False):
            raise ValueError("ignore_mismatched_sizes is not supported: every weight must fit")
        try:  # mismatched sizes are let through here, to be named below
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, **kwargs)
        except (RuntimeError, ValueError) as e:
            if isinstance(e, HFCheckpointError):
                raise
            raise HFCheckpointError(f"cannot load {pretrained_model_name_or_path}: {first_line(e)}") from None
        problems = []
        for what in ("missing_keys", "unexpected_keys"):
            keys = sorted(str(k) for k in info.get(what) or () if not str(k).startswith(cls._unexpected_ok))
            if keys:
                problems.append(f"{what.replace('_', ' ')} {keys}")
        mismatched = sorted(info.get("mismatched_keys") or (), key=str)
        if mismatched:
            shapes = [f"{m[0]} (file {tuple(m[1])}, model {tuple(m[2])})" if isinstance(m, tuple) and len(m) == 3
                      else str(m) for m in mismatched]
            problems.append(f"wrong shapes: {', '.join(shapes)}")
        if info.get("error_msgs"):
            problems.append(first_line(Exception(info["error_msgs"][0])))
        if problems:
            raise HFCheckpointError(f"the weights in {pretrained_model_name_or_path} do not fit a "
                                    f"{cls.__name__} of its config: {'; '.join(problems)}")
        return (model, info) if want_info else model


def _restore_rotary(blocks) -> None:
    """Rebuild each RoPE's angle table where it was made on the meta device: transformers builds
    a model there before loading its weights (so do accelerate's empty-weight inits), and the
    table, not being a weight, is never loaded."""
    for block in blocks:
        mixer = block.mixer
        rotary = getattr(mixer, "rotary", None)
        if rotary is not None and rotary.inv_freq.is_meta:
            with torch.device("cpu"):
                mixer.rotary = Rotary(mixer.config.qk_rank // mixer.qk_heads, mixer.config.rope_base)


class HyperMLPModel(HyperMLPPreTrainedModel):
    """Token embedding -> blocks -> final RMSNorm: ``last_hidden_state`` (B, T, d_model)."""

    _input_embed_layer = "embed"
    _unexpected_ok = ("head.",)  # a causal LM's folder: its head is not part of the base model
    _keys_to_ignore_on_load_unexpected = [r"^head\."]

    def __init__(self, config: HyperMLPConfig, language_model: Optional[LanguageModel] = None):
        super().__init__(config)
        lm = language_model if language_model is not None else LanguageModel(config.to_model_config())
        self.embed = lm.embed
        self.blocks = lm.blocks
        self.norm = lm.norm
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed = value

    # -- the pieces of forward -----------------------------------------------------------------
    def _cache(self, past_key_values, use_cache: bool, batch_size: int) -> Optional[HyperMLPCache]:
        if isinstance(past_key_values, HyperMLPCache):
            if past_key_values.batch_size != batch_size:
                raise ValueError(f"past_key_values was made for batch size {past_key_values.batch_size}, "
                                 f"the input has batch size {batch_size}")
            return past_key_values
        if isinstance(past_key_values, (tuple, list)):
            raise ValueError("past_key_values must be the HyperMLPCache the model returned (or None), not a "
                             f"{type(past_key_values).__name__}: tuples of keys and values are not a cache here")
        if isinstance(past_key_values, Cache):
            if past_key_values.get_seq_length() > 0:
                raise ValueError(f"past_key_values is a {type(past_key_values).__name__} holding "
                                 f"{past_key_values.get_seq_length()} tokens; a HyperMLP model keeps its decoding "
                                 "state in a HyperMLPCache (pass the one it returned)")
            return HyperMLPCache.for_blocks(self.blocks, batch_size)  # the empty cache generate() starts with
        if past_key_values is not None:
            raise TypeError(f"past_key_values must be a HyperMLPCache or None, got {type(past_key_values).__name__}")
        return HyperMLPCache.for_blocks(self.blocks, batch_size) if use_cache else None

    @staticmethod
    def _mask(attention_mask, past: int, t: int, batch_size: int) -> Optional[torch.Tensor]:
        """The (B, T) bool mask of the new tokens, or None when all of them are real."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
            raise ValueError("attention_mask must be a (batch, past + new tokens) tensor of 1 (token) and 0 "
                             "(padding); 4-D masks are not supported")
        if tuple(attention_mask.shape) != (batch_size, past + t):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected ({batch_size}, "
                             f"{past + t}) for {past} cached and {t} new tokens")
        mask = attention_mask[:, -t:].bool()
        return None if bool(mask.all()) else mask

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[HyperMLPCache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        use_cache: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[BaseModelOutputWithPast, tuple]:
        output_attentions = kwargs.pop("output_attentions", None)
        if output_attentions:
            raise ValueError("HyperMLP models have no attention probabilities to return (output_attentions)")
        for name in _IGNORED:
            kwargs.pop(name, None)
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward got unexpected argument(s) {sorted(kwargs)}")
        _restore_rotary(self.blocks)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.config.vocab_size):
                raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}), got "
                                 f"[{int(input_ids.min())}, {int(input_ids.max())}]")
            x = self.embed(input_ids)
        else:
            x = inputs_embeds
        b, t = x.shape[:2]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        cache = self._cache(past_key_values, use_cache, b)
        past = cache.get_seq_length() if cache is not None else 0
        if cache_position is not None and cache_position.numel() and int(cache_position.reshape(-1)[0]) != past:
            raise ValueError(f"cache_position starts at {int(cache_position.reshape(-1)[0])} but {past} tokens are "
                             "cached: a HyperMLP cache only appends the tokens that follow")
        mask = self._mask(attention_mask, past, t, b)
        layer_caches = cache.layer_caches if cache is not None else [None] * len(self.blocks)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        hidden = []
        for block, layer_cache in zip(self.blocks, layer_caches):
            if want_hidden:
                hidden.append(x)
            if checkpointing:
                x = self._gradient_checkpointing_func(partial(block, cache=None, mask=mask), x)
            else:
                x = block(x, cache=layer_cache, mask=mask)
        x = self.norm(x)
        if want_hidden:
            hidden.append(x)
        out = BaseModelOutputWithPast(last_hidden_state=x, past_key_values=cache,
                                      hidden_states=tuple(hidden) if want_hidden else None)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if use_dict else out.to_tuple()


class HyperMLPForCausalLM(HyperMLPPreTrainedModel, GenerationMixin):
    """``HyperMLPModel`` + the output head (tied to the embedding unless
    ``tie_word_embeddings=False``): logits, the shifted next-token loss for ``labels``, and
    ``generate`` on the layers' caches (O(t) per token)."""

    _tied_weights_keys = {"head.weight": "model.embed.weight"}

    def __init__(self, config: HyperMLPConfig):
        super().__init__(config)
        lm = LanguageModel(config.to_model_config())  # the library builds (and initialises) every module
        self.model = HyperMLPModel(config, language_model=lm)
        self.head = lm.head
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.head = value

    # -- the library's model and back ----------------------------------------------------------
    @classmethod
    def from_language_model(cls, lm: LanguageModel, **config_kwargs) -> "HyperMLPForCausalLM":
        """The Hugging Face model with ``lm``'s weights (copied; config_kwargs: e.g. ``eos_token_id``)."""
        config = HyperMLPConfig.from_model_config(lm.config, **config_kwargs)
        model = cls(config)
        model.load_state_dict(to_hf_state_dict(lm.state_dict()), strict=True)
        return model.to(next(lm.parameters()).device)

    def to_language_model(self) -> LanguageModel:
        """A ``LanguageModel`` with this model's weights (copied)."""
        lm = LanguageModel(self.config.to_model_config())
        lm.load_state_dict(to_library_state_dict(self.state_dict()), strict=True)
        return lm.to(self.device)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        past_key_values: Optional[HyperMLPCache] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        logits_to_keep: Union[int, torch.Tensor] = 0,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ) -> Union[CausalLMOutputWithPast, tuple]:
        """``labels`` (B, T): the loss is the mean cross-entropy of position t's logits against
        ``labels[:, t + 1]`` over the labels that are not -100 (transformers' convention: pass
        ``labels=input_ids``); with ``num_items_in_batch`` (the Trainer's gradient accumulation)
        the sum divided by it. ``logits_to_keep``: an int k > 0 computes logits for the last k
        positions only (``generate`` asks for 1), a 1-D tensor for those positions."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, cache_position=cache_position,
                         output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int):
            logits = self.head(h[:, -logits_to_keep:] if logits_to_keep > 0 else h)
        else:
            logits = self.head(h[:, logits_to_keep])
        loss = None
        if labels is not None:
            if logits.shape[1] != h.shape[1]:
                raise ValueError("labels need the logits of every position: leave logits_to_keep at 0")
            if tuple(labels.shape) != tuple(h.shape[:2]):
                raise ValueError(f"labels must have shape {tuple(h.shape[:2])} like the input, got {tuple(labels.shape)}")
            labels = labels.to(logits.device)
            shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
            if num_items_in_batch is None:
                loss = token_cross_entropy(shifted_logits, shifted_labels)
            else:
                total = token_cross_entropy(shifted_logits, shifted_labels, reduction="sum")
                loss = total / torch.as_tensor(num_items_in_batch, device=total.device, dtype=total.dtype)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                        hidden_states=out.hidden_states)
        use_dict = return_dict if return_dict is not None else self.config.return_dict
        return result if use_dict else result.to_tuple()
