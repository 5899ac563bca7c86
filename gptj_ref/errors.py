"""The one exception family for everything a user can cause.

Every message says what was found, what was expected and, where it helps, what to do.
Catch `GPTJError` to handle all of them; the subclasses say which part of the input was wrong.
"""

import numpy as np


class GPTJError(Exception):
    """Base class for every error gptj_ref raises on bad input."""


class ConfigError(GPTJError, ValueError):
    """A model configuration is inconsistent or unsupported."""


class CheckpointError(GPTJError):
    """A checkpoint or model file is malformed, truncated, unsafe or disagrees with its config."""


class InputError(GPTJError, ValueError):
    """Token ids, prompts or array arguments are out of range or have the wrong shape."""


class SettingsError(GPTJError, ValueError):
    """A generation or runtime setting is out of its valid range."""


def is_int(x) -> bool:
    """True for a Python or NumPy integer, False for bool (a common slip: True is an int in Python)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class NumericalError(GPTJError, ArithmeticError):
    """A computation produced NaN or infinity where a finite number is needed (e.g. next-token logits)."""


class OutputError(SettingsError):
    """An output cannot be written: the destination is not writable, the disk is full, or it would
    overwrite an input."""


class MemoryLimitError(GPTJError, MemoryError):
    """A model would need more memory than is available; the message gives the estimate and the limit."""
