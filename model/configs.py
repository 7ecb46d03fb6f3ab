"""The shape of a GPT, the named sizes, and loading a size from a YAML file (no torch here: options are checked
without loading it)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

GPT2_VOCAB_SIZE = 50257  # tiktoken's "gpt2" encoding, <|endoftext|> included


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Round the vocabulary up so the output matmul lands on fast, aligned shapes (50257 -> 50304)."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    """The shape of a GPT."""

    n_layer: int = 6
    n_head: int = 5
    n_embd: int = 160
    context_length: int = 256
    vocab_size: int = padded_vocab_size(GPT2_VOCAB_SIZE)
    dropout: float = 0.0
    bias: bool = True
    gelu: str = "none"  # "tanh": the MLP's GELU approximated as GPT-2's own weights were trained with


NAMED_CONFIGS: dict[str, GPTConfig] = {
    # ~10M parameters, 8M of them the token embedding: trains in minutes on a laptop CPU
    "nano": GPTConfig(n_layer=6, n_head=5, n_embd=160, context_length=256),
    # ~51M
    "small": GPTConfig(n_layer=8, n_head=8, n_embd=512, context_length=512),
    # ~124M: the shape of GPT-2 small
    "medium": GPTConfig(n_layer=12, n_head=12, n_embd=768, context_length=1024),
}


class UnknownConfigError(ValueError):
    """A config name or file that does not describe a GPTConfig."""


def load_config(name_or_path: str) -> GPTConfig:
    """A named size (nano, small, medium) or a YAML file of GPTConfig fields (at least one; missing ones keep
    defaults)."""
    if name_or_path in NAMED_CONFIGS:
        return NAMED_CONFIGS[name_or_path]
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        known = ", ".join(NAMED_CONFIGS)
        raise UnknownConfigError(f"unknown config '{name_or_path}' (known: {known}, or a .yaml file)")
    if not path.is_file():
        raise UnknownConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UnknownConfigError(f"config file {path} is not valid YAML: {error}".splitlines()[0]) from None
    if values is None or values == {}:  # an empty file would train the default shape: almost always a mistake
        raise UnknownConfigError(f"config file {path} sets no GPTConfig field (known: "
                                 f"{', '.join(f.name for f in fields(GPTConfig))})")
    if not isinstance(values, dict):
        raise UnknownConfigError(f"config file {path} must hold a mapping of GPTConfig fields")
    return with_overrides(GPTConfig(), values, source=str(path))


def with_overrides(config: GPTConfig, overrides: dict, source: str = "override") -> GPTConfig:
    """A copy of config with fields replaced; unknown fields and wrong types are refused."""
    known = {f.name: f for f in fields(GPTConfig)}
    checked = {}
    for key, value in overrides.items():
        if key not in known:
            raise UnknownConfigError(f"unknown model field '{key}' in {source} (known: {', '.join(known)})")
        expected = type(getattr(GPTConfig(), key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise UnknownConfigError(
                f"model field '{key}' in {source} must be {expected.__name__}, got {value!r}"
            )
        checked[key] = value
    return replace(config, **checked)


# OpenAI's GPT-2 as Hugging Face keeps it (GPT2LMHeadModel): the same modules under the same names, but its
# Conv1D layers store their weights as (in, out), the transpose of nn.Linear's; the causal-mask buffers
# (attn.bias, attn.masked_bias) are not weights; and lm_head.weight is the token embedding (tied).
HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")
HF_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def config_from_hf(hf_config: dict) -> GPTConfig:
    """The GPTConfig of a Hugging Face GPT-2 config.json (UnknownConfigError for another model)."""
    if hf_config.get("model_type") != "gpt2":
        raise UnknownConfigError(f"not a GPT-2 config.json (model_type {hf_config.get('model_type')!r})")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in HF_GELU:
        raise UnknownConfigError(f"GPT-2 config.json with activation {activation!r}: known {', '.join(HF_GELU)}")
    if hf_config.get("n_inner") not in (None, 4 * hf_config["n_embd"]):
        raise UnknownConfigError(f"GPT-2 config.json with n_inner {hf_config['n_inner']}: this GPT's MLP is 4 x n_embd")
    return GPTConfig(n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
                     context_length=hf_config["n_positions"], vocab_size=hf_config["vocab_size"], dropout=0.0,
                     bias=True, gelu=HF_GELU[activation])


def state_from_hf(hf_state: dict) -> dict:
    """A Hugging Face GPT-2 state dict (tensors; keys with or without "transformer.", as OpenAI's
    model.safetensors and save_pretrained write them) in this lab's layout."""
    state = {}
    for key, tensor in hf_state.items():
        if key.endswith(HF_BUFFERS) or key == "lm_head.weight":
            continue
        name = key if key.startswith("transformer.") else f"transformer.{key}"
        state[name] = tensor.t().contiguous() if name.endswith(HF_TRANSPOSED) else tensor
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state
