from .lm import LanguageModel, ModelConfig

__all__ = ["LanguageModel", "ModelConfig"]
