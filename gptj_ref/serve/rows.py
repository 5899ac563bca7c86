"""A KV cache of independent rows for continuous batching, over either backend.

`RowCache.for_backend(backend, rows)` gives an object with

    reset(row, max_tokens)     empty a row for a new sequence of at most max_tokens tokens
    forward(row_tokens, logit_tokens) -> logits [m, vocab]
                               append row_tokens[r] (possibly none) to each row, every row at its own
                               length; logits of the (row, index) pairs asked, in that order

The C++ runtime does this in one forward over all rows (`CppModel.forward_rows`): each weight is read
once per step for every row. Any other backend with the plain contract (`new_cache`, `forward`), such as
the NumPy reference, runs one forward per row with a cache per row: correct, slower.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


class RowCache:
    @staticmethod
    def for_backend(backend, rows: int) -> "RowCache":
        if hasattr(backend, "forward_rows"):
            return BatchedRows(backend, rows)
        return SequentialRows(backend, rows)


class BatchedRows(RowCache):
    """All rows in one cache, one forward per step (the C++ runtime)."""

    def __init__(self, backend, rows: int):
        self.backend = backend
        self.cache = backend.new_cache(backend.config.n_positions, batch=rows)

    def reset(self, row: int, max_tokens: int) -> None:
        self.backend.reset_row(self.cache, row)

    def forward(self, row_tokens: Sequence[Sequence[int]], logit_tokens: List[Tuple[int, int]]) -> np.ndarray:
        return self.backend.forward_rows(row_tokens, self.cache, logit_tokens)


class SequentialRows(RowCache):
    """One cache and one forward per row (any backend with new_cache/forward, e.g. the reference)."""

    def __init__(self, backend, rows: int):
        self.backend = backend
        self.caches = [None] * rows

    def reset(self, row: int, max_tokens: int) -> None:
        self.caches[row] = self.backend.new_cache(max_tokens, batch=1)

    def forward(self, row_tokens: Sequence[Sequence[int]], logit_tokens: List[Tuple[int, int]]) -> np.ndarray:
        per_row = {}
        for r, tokens in enumerate(row_tokens):
            if len(tokens):
                wanted = sorted({i for rr, i in logit_tokens if rr == r})
                if wanted == [len(tokens) - 1]:
                    per_row[r] = {
                        wanted[0]: self.backend.forward(np.asarray(tokens, np.int64), self.caches[r], last_only=True)
                    }
                else:
                    logits = self.backend.forward(np.asarray(tokens, np.int64), self.caches[r])
                    per_row[r] = {i: logits[i] for i in wanted}
        V = self.backend.config.vocab_size
        return np.stack([per_row[r][i] for r, i in logit_tokens]) if logit_tokens else np.zeros((0, V), np.float32)
