"""``HyperMLPConfig``: the library's ``ModelConfig`` as a ``transformers`` configuration.

The fields are ``ModelConfig``'s, under the same names (``d_model``, ``n_layers``, ``mixer``,
``mixer_args``, ``max_len``, ``mlp_hidden``, ``rmsnorm_eps``), except ``tie_embeddings``, which
takes the Hugging Face name ``tie_word_embeddings``. The usual Hugging Face names read the same
values (``hidden_size`` = ``d_model``, ``num_hidden_layers`` = ``n_layers``,
``max_position_embeddings`` = ``max_len``), so tools that look for them (lm-evaluation-harness
reads ``max_position_embeddings`` for its context length) find them.

A saved configuration carries an ``auto_map`` and, beside ``config.json``, a three-line
``modeling_hypermlp.py`` that imports these classes from the installed package: so
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works in a process that
never imported ``hypermlp``. No model code is copied into the folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import field
from typing import Any, Dict, List, Optional, Union

from transformers import PretrainedConfig

from ..checkpoint import CheckpointError, write_atomic
from ..models.lm import ModelConfig

__all__ = ["HyperMLPConfig", "MODEL_TYPE", "SHIM_FILE", "AUTO_MAP", "HFCheckpointError"]

MODEL_TYPE = "hypermlp"
SHIM_FILE = "modeling_hypermlp.py"  # what the auto_map points at
AUTO_MAP = {
    "AutoConfig": "modeling_hypermlp.HyperMLPConfig",
    "AutoModel": "modeling_hypermlp.HyperMLPModel",
    "AutoModelForCausalLM": "modeling_hypermlp.HyperMLPForCausalLM",
}
SHIM = '''"""Points transformers at the installed ``hypermlp`` package (pip install 'hypermlp[hf]').

Written by hypermlp.hf with this checkpoint, so that
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` finds the model classes
without importing anything by hand. The model code is the package's, not a copy.
"""

from hypermlp.hf import HyperMLPConfig, HyperMLPForCausalLM, HyperMLPModel

__all__ = ["HyperMLPConfig", "HyperMLPModel", "HyperMLPForCausalLM"]
'''


class HFCheckpointError(CheckpointError):
    """A folder that is not a hypermlp Hugging Face checkpoint, or whose weights do not fit it (a
    ``CheckpointError``, so a ValueError)."""


class HyperMLPConfig(PretrainedConfig):
    """The configuration of ``HyperMLPModel`` / ``HyperMLPForCausalLM``: a ``ModelConfig`` (any
    mixer name, a variant name, or one name per layer for a hybrid), validated when built (a bad
    value raises ``hypermlp.ConfigError``, a ValueError, naming the field)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_len",
    }

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    mixer: Union[str, List[str]] = "hyperglu"
    mixer_args: Dict[str, Any] = field(default_factory=dict)
    max_len: int = 1024
    mlp_hidden: Optional[int] = None
    tie_word_embeddings: bool = True
    rmsnorm_eps: float = 1e-6
    use_cache: bool = True
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    auto_map: Optional[Dict[str, str]] = None

    def __post_init__(self, **kwargs):
        if self.mixer_args is None:
            self.mixer_args = {}
        if isinstance(self.mixer, tuple):
            self.mixer = list(self.mixer)
        model_config = self.to_model_config()  # fills mlp_hidden's default as ModelConfig does
        model_config.validate()
        self.mlp_hidden = model_config.mlp_hidden
        if self.auto_map is None:
            self.auto_map = dict(AUTO_MAP)
        super().__post_init__(**kwargs)

    # -- the library's config and back ---------------------------------------------------------
    def to_model_config(self) -> ModelConfig:
        """The ``ModelConfig`` of the same model (``LanguageModel(config.to_model_config())``)."""
        return ModelConfig(
            vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
            mixer=list(self.mixer) if isinstance(self.mixer, (list, tuple)) else self.mixer,
            mixer_args=dict(self.mixer_args), max_len=self.max_len, mlp_hidden=self.mlp_hidden,
            tie_embeddings=self.tie_word_embeddings, rmsnorm_eps=self.rmsnorm_eps,
        )

    @classmethod
    def from_model_config(cls, model_config: ModelConfig, **kwargs) -> "HyperMLPConfig":
        """The Hugging Face configuration of a ``ModelConfig`` (kwargs: e.g. ``eos_token_id``)."""
        d = model_config.to_dict()
        d["tie_word_embeddings"] = d.pop("tie_embeddings")
        return cls(**d, **kwargs)

    # -- saving: config.json, the auto_map and the file it points at ----------------------------
    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

        def dump(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(SHIM)

        write_atomic(os.path.join(str(save_directory), SHIM_FILE), dump)

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """A no-op: the class lives in the installed package, and ``save_pretrained`` writes the
        ``auto_map`` and the file it names itself. (transformers calls this after loading through
        ``trust_remote_code``; the default would copy the package's source into every folder
        saved afterwards.)"""
        return None

    # -- loading: say clearly what a wrong folder is ---------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isdir(path):
            check_folder(path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


def check_folder(path: str) -> dict:
    """The ``config.json`` of ``path`` if it describes a hypermlp Hugging Face model; an
    ``HFCheckpointError`` saying what the folder is otherwise."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise HFCheckpointError(f"{path} holds no config.json: not a saved model folder")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise HFCheckpointError(f"cannot read {cfg_path}: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise HFCheckpointError(f"{cfg_path} is not a JSON object")
    model_type = cfg.get("model_type")
    if model_type == MODEL_TYPE:
        return cfg
    if model_type is None and "mixer" in cfg and "d_model" in cfg:
        raise HFCheckpointError(
            f"{path} is a `hypermlp train` checkpoint, not a Hugging Face one: convert it with "
            f"`hypermlp export-hf --checkpoint {path} --out DIR`")
    raise HFCheckpointError(
        f"{path} holds a model of type {model_type!r}, not {MODEL_TYPE!r}: load it with its own class "
        f"(AutoModelForCausalLM picks it from config.json)")
