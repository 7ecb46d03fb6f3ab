"""The GPT and its named sizes."""

from model.configs import NAMED_CONFIGS, UnknownConfigError, load_config, with_overrides
from model.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "NAMED_CONFIGS", "UnknownConfigError", "load_config", "with_overrides"]
