"""GPTJConfig: every size in gptj_ref comes from here.

The defaults are EleutherAI/gpt-j-6B's `config.json`. `from_hf` / `to_hf` read and write the Hugging Face
format; unknown keys in a Hugging Face config are ignored, the ones that change the computation are checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import ConfigError
from .limits import MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB, MAX_WIDTH, load_json_file


@dataclass(frozen=True)
class GPTJConfig:
    vocab_size: int = 50400  # rows of wte and lm_head: 50257 BPE tokens + 143 <|extratoken_N|>
    n_positions: int = 2048  # context length; the rotary table has this many rows
    n_embd: int = 4096  # d_model
    n_layer: int = 28
    n_head: int = 16
    rotary_dim: int = 64  # rotary embedding on the first rotary_dim dims of every head
    n_inner: Optional[int] = None  # MLP width; None means 4 * n_embd (16384 for 6B)
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "rotary_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config.{name} must be a positive integer, got {value!r}")
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ConfigError(f"config.n_inner must be a positive integer or None, got {self.n_inner!r}")
        self._check_limits()
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets n_embd/n_head dims"
            )
        if self.rotary_dim > self.d_head:
            raise ConfigError(
                f"rotary_dim ({self.rotary_dim}) must be <= n_embd/n_head ({self.d_head}, the width of a head); "
                "rotary acts on the first rotary_dim dims of each head"
            )
        if self.rotary_dim % 2 != 0:
            raise ConfigError(f"rotary_dim must be even (dims rotate in pairs), got {self.rotary_dim}")
        if not (isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0):
            raise ConfigError(f"layer_norm_epsilon must be a positive number, got {self.layer_norm_epsilon!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"config.{name} must be a token id in [0, {self.vocab_size}), got {value!r}")

    def _check_limits(self) -> None:
        """Sizes beyond any GPT-J are refused before anything is allocated from them (see limits.py)."""
        limits = {
            "vocab_size": MAX_VOCAB,
            "n_positions": MAX_POSITIONS,
            "n_embd": MAX_WIDTH,
            "n_layer": MAX_LAYERS,
            "d_ff": MAX_WIDTH,
        }
        for name, limit in limits.items():
            value = getattr(self, name)
            if value > limit:
                raise ConfigError(
                    f"config.{name} = {value} is beyond gptj_ref's limit of {limit}; "
                    "the config is damaged or not a GPT-J model"
                )

    # The short names used inside gptj_ref (docs/design.md, "Names"); the fields above keep the names of
    # Hugging Face's config.json, which is where users meet them -------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab_size

    @property
    def n_ctx(self) -> int:
        return self.n_positions

    @property
    def n_rot(self) -> int:
        return self.rotary_dim

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    head_dim = d_head  # transformers' name for it in other models

    @property
    def d_ff(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def n_params(self) -> int:
        """Parameter count of the Hugging Face model (6,050,882,784 for GPT-J 6B)."""
        d, f, v = self.n_embd, self.d_ff, self.n_vocab
        per_layer = 2 * d + 4 * d * d + (d * f + f) + (f * d + d)
        return v * d + self.n_layer * per_layer + 2 * d + (v * d + v)

    def replace(self, **changes: Any) -> "GPTJConfig":
        return dataclasses.replace(self, **changes)

    # Hugging Face config.json ----------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "GPTJConfig":
        """Build from a Hugging Face GPT-J `config.json` dictionary."""
        if not isinstance(hf, Mapping):
            raise ConfigError(f"a Hugging Face config must be a JSON object, got {type(hf).__name__}")
        model_type = hf.get("model_type", "gptj")
        if model_type != "gptj":
            raise ConfigError(f"config.json has model_type {model_type!r}; gptj_ref only runs GPT-J ('gptj')")
        activation = hf.get("activation_function", "gelu_new")
        if activation != "gelu_new":
            raise ConfigError(f"activation_function {activation!r} is not supported; GPT-J uses 'gelu_new'")
        if hf.get("rotary_dim", 64) is None:
            raise ConfigError("rotary_dim is null in config.json; gptj_ref needs an explicit rotary_dim")
        fields = {f.name for f in dataclasses.fields(cls)}
        aliases = {
            "hidden_size": "n_embd",
            "num_hidden_layers": "n_layer",
            "num_attention_heads": "n_head",
            "max_position_embeddings": "n_positions",
        }
        kwargs: dict[str, Any] = {}
        for key, value in hf.items():
            name = aliases.get(key, key)
            if name in fields and name not in kwargs:
                kwargs[name] = value
        eos = kwargs.get("eos_token_id")
        if isinstance(eos, list):  # some configs list several end ids; GPT-J has one
            if not eos:
                raise ConfigError("eos_token_id is an empty list in config.json; give the end-of-text token id")
            kwargs["eos_token_id"] = eos[0]
        for name in ("bos_token_id", "eos_token_id"):
            if kwargs.get(name, 0) is None:
                kwargs.pop(name)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dictionary (transformers' GPTJConfig reads it)."""
        hf = {
            "architectures": ["GPTJForCausalLM"],
            "model_type": "gptj",
            "activation_function": "gelu_new",
            "tie_word_embeddings": False,
            "attn_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
        }
        hf.update(dataclasses.asdict(self))
        return hf

    @classmethod
    def from_json_file(cls, path: "str | os.PathLike[str]") -> "GPTJConfig":
        if not os.path.lexists(path):
            raise ConfigError(f"no config.json at {path}; a Hugging Face GPT-J directory needs one")
        return cls.from_hf(load_json_file(path, ConfigError, "config.json"))

    def to_json_file(self, path: "str | os.PathLike[str]") -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_hf(), f, indent=2)
            f.write("\n")


# Presets ---------------------------------------------------------------------------------------------
GPTJ_6B = GPTJConfig()

# The built-in demo model that `gptj generate` runs when no model is given: the real vocabulary and
# context, with a toy width and depth. Its weights are random (seed 0), so its text is nonsense; it
# exists so that every command works on a fresh machine.
TINY = GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8)
