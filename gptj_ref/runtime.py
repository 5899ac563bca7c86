"""The C++ model behind the same backend interface as the reference.

`CppModel(config, weights, threads)` holds views of the given arrays (keep them C-contiguous: float32, or a
block format's values and scales from a native file). Nothing is copied, except where the kernel level in
use reads a layout of its own: q4 on AVX-512 packs each linear's weight once, when the model is built, and
the pages of a memory-mapped file's stored copy are handed back to the page cache. It answers
`forward(token_ids, cache, attention_mask)` exactly as `Reference.forward` does. In a batch every row is its
own sequence with its own cache length: padding is never computed (pad positions' logits are 0), and the
linear layers run over the real tokens of all rows at once, so a batched decode step reads each weight once
for every row.

Kernel level: `set_kernel_isa("auto" | "scalar" | "avx2" | "avxvnni" | "avx512" | "amx")`, `kernel_isa()`,
`available_kernel_isas()`; the environment variable GPTJ_FORCE_SCALAR=1 selects the scalar kernels at import.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Mapping, Optional, Tuple

import numpy as np

from . import _core, formats
from .backend import check_cache_room, check_cache_size, check_inputs, check_kv_dtype
from .config import GPTJConfig
from .errors import CheckpointError, InputError, SettingsError, is_int
from .layout import weight_shapes
from .memory import PREFILL_CHUNK
from .reference import rotary_tables
from .safetensors_file import release_mapped_pages
from .threads import check_threads

ISAS = ("auto", "scalar", "avx2", "avxvnni", "avx512", "amx")


def set_kernel_isa(isa: str = "auto") -> None:
    """Choose the kernels: "scalar" (portable reference), "avx2" (needs AVX2+FMA), "avxvnni" (AVX2 plus
    AVX-VNNI int8 kernels), "avx512" (int8 decode kernels on AVX-512 with VNNI), "amx" (the AMX tile unit
    for int8 prompts), "auto" (the best this CPU, OS and build have). All compute the same results within
    the tolerances the tests state; every level above scalar agrees with the others bitwise."""
    if isa not in ISAS:
        raise SettingsError(f"unknown kernel ISA {isa!r}; choose one of {', '.join(ISAS)}")
    available = available_kernel_isas()
    if isa == "auto":
        isa = available[-1]
    if isa not in available:
        needs = {
            "avx2": "AVX2/FMA",
            "avxvnni": "AVX-VNNI",
            "avx512": "AVX-512 (F, BW, VL, VNNI)",
            "amx": "AMX-INT8 (or the OS's grant of it)",
        }[isa]
        raise SettingsError(
            f"the {isa} kernels are unavailable: this CPU lacks {needs} or the build left them out; "
            f"available: {', '.join(available)}"
        )
    _core.set_isa(isa)


def kernel_isa() -> str:
    """The kernel level in use: "scalar", "avx2", "avxvnni", "avx512" or "amx"."""
    return _core.isa()


def available_kernel_isas() -> list:
    """The kernel levels this CPU, OS and build can run, best last (e.g. ["scalar", "avx2", "avxvnni", "amx"])."""
    return list(_core.available_isas())


if os.environ.get("GPTJ_FORCE_SCALAR", "") not in ("", "0"):
    set_kernel_isa("scalar")


def _physical_memory() -> int:
    """Bytes of RAM, or a very large number when the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


class CppCache:
    """A C++ KV cache for `batch` rows plus the bookkeeping of the backend contract (gptj_ref.backend.Cache):
    `length` is the number of token slots used (real or padding, equal for all rows)."""

    def __init__(self, core_cache, max_tokens: int, batch: int, geometry: Tuple = ()):
        self.core = core_cache
        self.max_tokens = max_tokens
        self.batch = batch
        self.length = 0
        # (n_layer, n_head, head_dim, kv dtype) of the model that made it: only a model of the same
        # geometry may use it (see CppModel._check_cache).
        self.geometry = geometry
        self._in_use = threading.Lock()  # held by the forward pass writing to it

    @property
    def row_lengths(self) -> list:
        """Real tokens held by each row (padding is never stored)."""
        return list(self.core.lengths)


class CppModel:
    """GPT-J on the C++ core as a backend (gptj_ref.backend.Backend): each linear, and the embedding, on
    the kernels of its weight format (formats.py).

    weights: stored name -> array, as a native file of `weight_format` holds them (formats.py): for a
    block format (q8, q4) a quantized linear `name` is its values plus `name + "_scale"` (float16). The
    C++ model is told each linear's format by name; it never guesses it from names or dtypes.

    kv_dtype: the precision of the KV caches new_cache() makes. Default: "float16" for quantized models (half
    the memory and the attention reads; 2048 tokens of GPT-J 6B take 0.94 GB instead of 1.9 GB, and the
    rounding is far below int8's), "float32" otherwise (exact parity with the reference).
    Reference(kv_dtype="float16") emulates the half-precision cache.
    """

    name = "cpp"
    # Long inputs run through the C++ model this many positions at a time: its scratch (about 100 KB per
    # token for 6B) stays bounded, and nothing else changes: every token sees the same cache and the
    # same kernels either way, so the logits are bitwise those of one pass (tested).
    prefill_chunk = PREFILL_CHUNK  # memory.py sizes the scratch by it

    def __init__(
        self,
        config: GPTJConfig,
        weights: Mapping[str, np.ndarray],
        threads: Optional[int] = None,
        kv_dtype: Optional[str] = None,
        weight_format: str = "f32",
        file_version: int = formats.CURRENT_FILE_VERSION,
    ):
        self.config = config
        self._weights = dict(weights)  # the C++ model holds views into these arrays
        self.native = None  # the NativeFile the weights are mapped from (set by from_native)
        fmt = formats.weight_format(weight_format)
        core_weights, core_formats = dict(self._weights), {}
        if fmt.is_block:
            self.name = f"cpp-{fmt.name}"
            for name, shape in weight_shapes(config).items():
                scales = formats.scale_name(name)
                if scales in self._weights:
                    core_weights[name] = (self._weights[name], np.asarray(self._weights[scales]).view(np.uint16))
                    core_formats[name] = fmt.tensor_format(name, shape, file_version).name
        self.weight_format = fmt.name
        self.kv_dtype = check_kv_dtype(("float16" if fmt.is_block else "float32") if kv_dtype is None else kv_dtype)
        self._sin, self._cos = rotary_tables(config.n_ctx, config.n_rot)  # [n_ctx, n_rot/2]
        threads = check_threads(threads)
        c = config
        try:
            sizes = _core.Config(
                n_vocab=c.vocab_size,
                n_ctx=c.n_positions,
                n_embd=c.n_embd,
                n_layer=c.n_layer,
                n_head=c.n_head,
                n_rot=c.rotary_dim,
                d_ff=c.d_ff,
                eps=float(c.layer_norm_epsilon),
            )
            self._core = _core.Model(
                core_weights, core_formats, self._sin, self._cos, sizes, threads, release=release_mapped_pages
            )
        except (ValueError, TypeError) as e:
            raise CheckpointError(
                f"cannot run these weights on the C++ core: {e}. The C++ backend uses the "
                "arrays in place, so each must be C-contiguous float32 with the shape the config "
                "implies (see gptj_ref.layout.weight_shapes)"
            ) from None

    @classmethod
    def from_native(cls, native, threads: Optional[int] = None, kv_dtype: Optional[str] = None) -> "CppModel":
        """The C++ model over an open native file (gptj_ref.native.NativeFile), without copying weights.

        q8   the quantized weights and their float16 scales are used in place, as views of the memory map,
             on the kernels of the file's format; the embedding (q8 rows from file version 2 on,
             formats.py), LayerNorms and biases are used in place too. Loading touches no weight page: the
             first forward pass reads them.
        q4   as q8, except that the SIMD levels' kernels read each linear weight as 16-row panels: the
             model makes them once, here (about 1 s for GPT-J 6B), and hands the file's pages of the
             stored copy back, so the resident bytes are the same.
        f32  every tensor is used in place on the fp32 kernels.
        f16  there are no fp16 kernels: the matrices are converted to float32 once at load (a copy of
             4 bytes per parameter, 24 GB for GPT-J 6B: use a q8 file for the 6B model on CPU).
        """
        arrays = native.weights_for_runtime()
        fmt = native.format
        if not fmt.is_block and fmt.values_dtype != "F32":  # f16: no fp16 kernels
            arrays = {name: a.astype(np.float32) if a.dtype == np.float16 else a for name, a in arrays.items()}
        model = cls(
            native.config,
            arrays,
            threads,
            kv_dtype,
            weight_format=fmt.name if fmt.is_block else "f32",
            file_version=native.format_version,
        )
        model.native = native  # the file the weights are mapped from; keeps the map alive with the model
        return model

    def weight_views(self) -> dict:
        """The arrays the C++ model points into, by stored name (values and float16 scales for q8 and q4)."""
        return dict(self._weights)

    @property
    def threads(self) -> int:
        return self._core.threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._core.threads = check_threads(value)

    def new_cache(self, max_tokens: Optional[int] = None, batch: int = 1) -> CppCache:
        c = self.config
        max_tokens, batch = check_cache_size(c, max_tokens, batch)
        nbytes = 2 * c.n_layer * batch * max_tokens * c.n_embd * np.dtype(self.kv_dtype).itemsize  # Python ints
        if nbytes > _physical_memory():
            raise InputError(
                f"a KV cache of {batch} rows x {max_tokens} tokens needs {nbytes / 2**30:.1f} GiB, more "
                f"than this machine's {_physical_memory() / 2**30:.1f} GiB of memory; use fewer rows "
                "or tokens"
            )
        try:
            core_cache = _core.KVCache(self._core, batch, max_tokens, self.kv_dtype)
        except MemoryError:
            raise InputError(
                f"cannot allocate a KV cache of {nbytes / 2**30:.2f} GiB ({batch} rows x {max_tokens} "
                "tokens): out of memory or over this process's memory limit"
            ) from None
        return CppCache(core_cache, max_tokens, batch, self._cache_geometry())

    def _cache_geometry(self) -> Tuple:
        c = self.config
        return (c.n_layer, c.n_head, c.head_dim, self.kv_dtype)

    def _check_cache(self, cache) -> None:
        """A cache made by a model of another geometry would be read and written out of bounds by the C++
        core: refuse it, and any cache with more slots than this model's rotary table."""
        if not isinstance(cache, CppCache):
            raise InputError(f"the cpp backend needs a cache from its own new_cache(), got {type(cache).__name__}")
        core = cache.core
        actual = (core.n_layer, core.n_head, core.head_dim, core.dtype)
        if cache.geometry != self._cache_geometry() or actual != self._cache_geometry():
            raise InputError(
                f"this cache was made for a model with n_layer, n_head, head_dim, kv dtype = {actual}; "
                f"this model needs {self._cache_geometry()}: make the cache with this model's new_cache()"
            )
        if core.max_tokens > self.config.n_positions or cache.max_tokens != core.max_tokens:
            raise InputError(
                f"this cache has {core.max_tokens} slots but the model's context is "
                f"{self.config.n_positions}: make the cache with this model's new_cache()"
            )

    @contextmanager
    def _claim(self, cache: CppCache):
        """Hold the cache for one forward pass; a cache already in use by another call is refused."""
        if not cache._in_use.acquire(blocking=False):
            raise InputError(
                "this cache is in use by another forward pass (another thread); a cache holds one "
                "sequence per row, so give each concurrent call its own new_cache()"
            )
        try:
            yield
        finally:
            cache._in_use.release()

    def forward(
        self, token_ids, cache: Optional[CppCache] = None, attention_mask=None, last_only: bool = False
    ) -> np.ndarray:
        """Logits for T new tokens: ids [T] -> [T, n_vocab], or [B, T] -> [B, T, n_vocab].

        Same contract as `Reference.forward`: `attention_mask` [B, T] marks real tokens with 1 and padding
        with 0; a real token's position is the number of real tokens before it in its row. Padding is
        skipped entirely, and its logits are 0. last_only=True computes lm_head for each row's last
        position alone and returns [n_vocab] or [B, n_vocab], equal to `forward(...)[..., -1, :]`.
        """
        ids, mask, squeeze = check_inputs(self.config, token_ids, attention_mask)
        B, T = ids.shape
        if cache is None:
            cache = self.new_cache(T, B)
        self._check_cache(cache)
        with self._claim(cache):
            return self._forward(ids, mask, squeeze, cache, last_only)

    def _forward(self, ids, mask, squeeze, cache: CppCache, last_only: bool) -> np.ndarray:
        B, T = ids.shape
        start = check_cache_room(cache, B, T)

        V = self.config.n_vocab
        logits = np.zeros((B, V) if last_only else (B, T, V), np.float32)
        for c0 in range(0, T, self.prefill_chunk):
            c1 = min(T, c0 + self.prefill_chunk)
            chunk_mask = mask[:, c0:c1]
            counts = chunk_mask.sum(axis=1).astype(np.int64)  # [B] real tokens per row
            real_ids = np.ascontiguousarray(ids[:, c0:c1][chunk_mask])  # [n]: row 0's tokens, then row 1's, ...
            if last_only:
                # Only the last chunk asks for logits: row b's last position, when it is real, is then
                # token cumsum(counts)[b] - 1 of real_ids.
                last_real = chunk_mask[:, -1] if c1 == T else np.zeros(B, bool)
                rows = (np.cumsum(counts) - 1)[last_real].astype(np.int64)
                if real_ids.size:
                    out = self._core.forward(real_ids, counts, cache.core, rows)
                    logits[last_real] = out
            elif real_ids.size:
                flat = self._core.forward(real_ids, counts, cache.core)  # [n, n_vocab]
                if chunk_mask.all():
                    logits[:, c0:c1] = flat.reshape(B, c1 - c0, V)  # no padding: already row-major
                else:
                    logits[:, c0:c1][chunk_mask] = flat
            cache.length = start + c1
        return logits[0] if squeeze else logits

    def forward_rows(self, row_tokens, cache: CppCache, logit_tokens=None) -> np.ndarray:
        """Continuous batching: append row_tokens[r] (a possibly empty sequence of ids) to row r of the
        cache, each row at its own length, in one forward; rows are independent sequences that start and
        end at different times (`reset_row` empties one). Returns float32 logits [m, n_vocab] for the
        tokens in `logit_tokens`, (row, index into row_tokens[row]) pairs in that order; default: the last
        new token of every row that has one, in row order. `cache.length` is not used: use a cache either
        with forward() or with forward_rows(), not both. Each token's values are bitwise those of the same
        sequence run alone (the kernels compute every row independently of the others)."""
        self._check_cache(cache)
        if len(row_tokens) != cache.batch:
            raise InputError(f"the cache holds {cache.batch} rows but tokens for {len(row_tokens)} were given")
        counts = np.array([len(t) for t in row_tokens], np.int64)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if logit_tokens is None:
            logit_tokens = [(r, int(counts[r]) - 1) for r in range(cache.batch) if counts[r] > 0]
        for r, i in logit_tokens:
            if not (0 <= r < cache.batch and 0 <= i < counts[r]):
                have = f"{counts[r]} new tokens" if 0 <= r < cache.batch else "no such row"
                raise InputError(f"logits asked for token {i} of row {r} ({have})")
        ids = np.concatenate([np.asarray(t, np.int64).reshape(-1) for t in row_tokens])
        check_inputs(self.config, ids[None] if ids.size else np.zeros((1, 1), np.int64))
        if ids.size == 0:
            return np.zeros((0, self.config.vocab_size), np.float32)
        rows = np.array([first[r] + i for r, i in logit_tokens], np.int64)
        with self._claim(cache):
            return self._core.forward(np.ascontiguousarray(ids), counts, cache.core, rows)

    def _check_row(self, cache: CppCache, row, what: str = "row") -> int:
        if not is_int(row) or not 0 <= row < cache.batch:
            raise InputError(f"{what} must be an integer in [0, {cache.batch}) (the cache's rows), got {row!r}")
        return int(row)

    def reset_row(self, cache: CppCache, row: int) -> None:
        """Empty one row of a cache used with forward_rows, for a new sequence."""
        self._check_cache(cache)
        row = self._check_row(cache, row)
        with self._claim(cache):
            cache.core.reset_row(row)

    def copy_row(self, cache: CppCache, src: int, dst: int, n: int) -> None:
        """Row dst of the cache becomes the first n tokens of row src (a shared prefix computed once)."""
        self._check_cache(cache)
        src, dst = self._check_row(cache, src, "src"), self._check_row(cache, dst, "dst")
        held = cache.core.lengths[src]
        if not is_int(n) or not 0 <= n <= held:
            raise InputError(f"row {src} holds {held} tokens; cannot copy {n!r} of them")
        with self._claim(cache):
            cache.core.copy_row(src, dst, int(n))

    def hidden_states(self, token_ids) -> list:
        """For one sequence ids [T]: the embeddings [T, n_embd], the output of each block, the output of
        ln_f, and the logits [T, n_vocab] (n_layer + 3 arrays), as `Reference.hidden_states`."""
        ids, _, _ = check_inputs(self.config, np.asarray(token_ids)[None])
        cache = self.new_cache(ids.shape[1], 1)
        logits, hidden = self._core.forward_hidden(ids[0], np.array([ids.shape[1]], np.int64), cache.core)
        return list(hidden) + [logits]
