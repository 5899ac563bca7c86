"""The backend contract: what every GPT-J backend provides, and the input checks they all share.

A backend answers one question: given new token ids and a KV cache, what are the next-token logits?
The NumPy reference (`reference.Reference`) and the C++ runtime (`runtime.CppModel`) both satisfy
`Backend`; the generation loop, the API, `gptj parity` and the server are written against it alone.

Batches and cache rows. Token ids come as [T] (one sequence) or [B, T] (B sequences). Row b of a batch
is its own sequence and lives in row b of the cache: a row holds the keys and values of that sequence's
tokens and nothing of the other rows'. `attention_mask` [B, T] marks real tokens with 1 and left padding
with 0; a real token's position is the number of real tokens before it in its row, so padding never
shifts positions, and the logits at padded positions mean nothing. `cache.length` counts the token
slots used (real or padding), the same for every row; `cache.max_tokens` is its capacity.
"""

from __future__ import annotations

from typing import Optional, Protocol, Tuple, runtime_checkable

import numpy as np

from .config import GPTJConfig
from .errors import InputError, SettingsError, is_int

KV_DTYPES = ("float32", "float16")  # precisions a KV cache can store
DEFAULT_KV_DTYPE = "float32"  # GPT-J's own precision; the int8 runtime defaults to "float16"


@runtime_checkable
class Cache(Protocol):
    """A KV cache for `batch` rows of at most `max_tokens` token slots, `length` of them used."""

    batch: int
    max_tokens: int
    length: int


@runtime_checkable
class Backend(Protocol):
    """A GPT-J forward pass with a KV cache."""

    name: str  # "reference", "cpp", "cpp-q8"
    config: GPTJConfig  # the model's sizes
    kv_dtype: str  # one of KV_DTYPES: the precision new_cache() stores keys and values in

    def new_cache(self, max_tokens: Optional[int] = None, batch: int = 1) -> Cache:
        """An empty cache for `batch` rows of `max_tokens` slots (default: the context, config.n_ctx)."""
        ...

    def forward(
        self, token_ids, cache: Optional[Cache] = None, attention_mask=None, last_only: bool = False
    ) -> np.ndarray:
        """Logits for T new tokens appended to the cache: ids [T] -> [T, n_vocab], [B, T] -> [B, T, n_vocab].

        With no cache, a fresh one just large enough is used. last_only=True returns only the last
        position's logits, [n_vocab] or [B, n_vocab], equal to `forward(...)[..., -1, :]`.
        """
        ...

    def hidden_states(self, token_ids) -> list:
        """For one sequence ids [T]: the embeddings [T, n_embd], the residual stream after each block,
        after ln_f, and the logits [T, n_vocab] (n_layer + 3 arrays)."""
        ...


# ---------------------------------------------------------------------------------------------------
# Checks every backend makes on its inputs
# ---------------------------------------------------------------------------------------------------


def check_kv_dtype(kv_dtype) -> str:
    """kv_dtype itself when it is a precision a KV cache can store, else SettingsError."""
    if kv_dtype not in KV_DTYPES:
        raise SettingsError(f"kv_dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
    return kv_dtype


def check_cache_size(config: GPTJConfig, max_tokens: Optional[int], batch) -> Tuple[int, int]:
    """The (max_tokens, batch) of a new cache, max_tokens defaulting to the context length."""
    max_tokens = config.n_ctx if max_tokens is None else max_tokens
    if not is_int(max_tokens) or not 0 < max_tokens <= config.n_ctx:
        raise InputError(f"cache size must be in [1, {config.n_ctx}] (the context length), got {max_tokens}")
    if not is_int(batch) or batch < 1:
        raise InputError(f"cache batch must be a positive integer, got {batch!r}")
    return int(max_tokens), int(batch)


def check_inputs(config: GPTJConfig, token_ids, attention_mask=None):
    """Validate ids (and mask); return ids [B, T] int64, mask [B, T] bool, and whether input was 1-D."""
    ids = np.asarray(token_ids)
    if ids.dtype == object or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
        raise InputError(f"token ids must be integers, got an array of {ids.dtype}")
    squeeze = ids.ndim == 1
    if squeeze:
        ids = ids[None]
    if ids.ndim != 2:
        raise InputError(f"token ids must have shape [T] or [B, T], got shape {ids.shape}")
    if ids.shape[1] == 0:
        raise InputError("no tokens given: token ids must contain at least one token")
    bad = (ids < 0) | (ids >= config.n_vocab)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"token id {int(ids[where])} at index {where if not squeeze else where[1]} is outside "
            f"the vocabulary [0, {config.n_vocab})"
        )
    if attention_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(attention_mask)
        if squeeze and mask.ndim == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask has shape {mask.shape}; it must match the token ids' shape {ids.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise InputError("attention_mask must contain only 0 (padding) and 1 (real token)")
        mask = mask.astype(bool)
    return ids.astype(np.int64), mask, squeeze


def check_cache_room(cache: Cache, batch: int, T: int) -> int:
    """Check the cache fits T more tokens for `batch` rows; return the first free slot."""
    if cache.batch != batch:
        raise InputError(f"the cache holds {cache.batch} rows but {batch} were given")
    if cache.length + T > cache.max_tokens:
        raise InputError(
            f"{cache.length} cached + {T} new tokens exceed the cache size of {cache.max_tokens} "
            "(the model's context is at most n_positions tokens); start a new cache or shorten the prompt"
        )
    return cache.length


def check_cache_arrays(cache, cache_type: type, config: GPTJConfig, kv_dtype: str) -> None:
    """A cache of the backend's own type (`cache_type`) whose keys and values [n_layer, batch, n_head, slots,
    d_head] fit `config` and `kv_dtype`, at most n_positions long: the reference's caches are plain arrays a
    caller could swap."""
    c = config
    if not isinstance(cache, cache_type):
        raise InputError(f"the reference backend needs a cache from its own new_cache(), got {type(cache).__name__}")
    n_layer, _, n_head, slots, d_head = cache.keys.shape
    if (
        (n_layer, n_head, d_head) != (c.n_layer, c.n_head, c.head_dim)
        or slots > c.n_positions
        or cache.keys.dtype != np.dtype(kv_dtype)
        or cache.values.shape != cache.keys.shape
    ):
        raise InputError(
            f"this cache (keys {cache.keys.shape} {cache.keys.dtype}) was made for another model; "
            f"this one needs [{c.n_layer}, batch, {c.n_head}, <= {c.n_positions}, {c.head_dim}] "
            f"{kv_dtype}: make the cache with this model's new_cache()"
        )
