"""Hugging Face integration: HyperMLP models as ``transformers`` models.

``import hypermlp.hf`` (``import hypermlp`` alone never imports transformers) registers
``HyperMLPConfig`` (model type ``"hypermlp"``), ``HyperMLPModel`` and ``HyperMLPForCausalLM`` with
``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM``. Saved folders carry an ``auto_map``, so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` also works without it.

* ``HyperMLPForCausalLM``: ``forward(input_ids, attention_mask, past_key_values, use_cache, labels,
  cache_position, logits_to_keep)`` -> ``CausalLMOutputWithPast``; ``generate()`` (greedy, sampling,
  beam search; left-padded batches) on ``HyperMLPCache``; ``save_pretrained`` / ``from_pretrained``
  in safetensors; ``from_language_model`` / ``to_language_model`` convert ``LanguageModel``.
* ``export_run``: a ``hypermlp train`` run -> a Hugging Face folder with its tokenizer
  (``hypermlp export-hf``); ``hf_tokenizer``: the byte or BPE tokenizer as a
  ``PreTrainedTokenizerFast``.
* ``evaluate``: lm-evaluation-harness on a model of ours (``hypermlp eval``).

Needs the ``hf`` extra: ``pip install 'hypermlp[hf]'`` (transformers 5, lm-eval, accelerate).
"""

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - the extra is installed in the test environment
    raise ImportError("hypermlp.hf needs transformers (5.x): pip install 'hypermlp[hf]'") from e

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import HyperMLPCache, HyperMLPCacheLayer
from .configuration import MODEL_TYPE, HFCheckpointError, HyperMLPConfig
from .export import export_run
from .modeling import HyperMLPForCausalLM, HyperMLPModel, HyperMLPPreTrainedModel
from .tokenizer import hf_tokenizer

AutoConfig.register(MODEL_TYPE, HyperMLPConfig, exist_ok=True)
AutoModel.register(HyperMLPConfig, HyperMLPModel, exist_ok=True)
AutoModelForCausalLM.register(HyperMLPConfig, HyperMLPForCausalLM, exist_ok=True)

__all__ = [
    "HyperMLPConfig",
    "HyperMLPModel",
    "HyperMLPForCausalLM",
    "HyperMLPPreTrainedModel",
    "HyperMLPCache",
    "HyperMLPCacheLayer",
    "HFCheckpointError",
    "MODEL_TYPE",
    "export_run",
    "hf_tokenizer",
]
