"""The GPT and its named sizes."""

from model.configs import NAMED_CONFIGS, GPTConfig, UnknownConfigError, load_config, with_overrides

__all__ = ["GPT", "GPTConfig", "NAMED_CONFIGS", "UnknownConfigError", "load_config", "with_overrides"]


def __getattr__(name: str):
    # GPT imports torch (seconds): only code that builds a model pays for it, not a command checking options
    if name == "GPT":
        from model.gpt import GPT

        return GPT
    raise AttributeError(f"module 'model' has no attribute '{name}'")
