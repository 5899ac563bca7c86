"""gptj_ref: GPT-J 6B as a NumPy reference, a C++ fp32 core and an int8 CPU runtime that agree.

import gptj_ref
model = gptj_ref.load()                  # the built-in demo model; pass a path for real weights
print(model.generate("The dog", max_new_tokens=16))
"""

from .api import Model, load, pipeline
from .config import GPTJConfig
from .errors import CheckpointError, ConfigError, GPTJError, InputError, MemoryLimitError, SettingsError

__version__ = "0.1.0"

__all__ = [
    "GPTJConfig",
    "Model",
    "load",
    "pipeline",
    "GPTJError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "MemoryLimitError",
    "SettingsError",
]
