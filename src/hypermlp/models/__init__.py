from .lm import MIXERS, LanguageModel, ModelConfig, build_mixer

__all__ = ["LanguageModel", "ModelConfig", "MIXERS", "build_mixer"]
