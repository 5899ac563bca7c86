"""Sampling and the generation loop, shared by every backend.

The logits processors follow transformers' `generate()` exactly, in its order:

    repetition penalty -> min length / min new tokens (end-of-text suppressed) ->
    temperature -> top-k -> top-p -> sample (or argmax when not sampling)

so the same settings give the same next-token distribution. Randomness comes from one
`numpy.random.Generator` seeded by `seed`, so a seeded run is reproducible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import SettingsError, is_int

NEG_INF = -np.inf


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50               # transformers' default; 0 disables
    top_p: float = 1.0            # 1.0 disables
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0       # end-of-text is suppressed until this many tokens are generated
    min_length: int = 0           # the same, counted in total tokens (prompt + generated) as transformers does
    stop: Tuple[str, ...] = ()    # generation of a sequence ends when its text contains one of these
    stop_at_eos: bool = True
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        need(is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
             f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        need(_is_number(self.temperature) and self.temperature > 0,
             f"temperature must be > 0, got {self.temperature!r} (use do_sample=False for greedy decoding)")
        need(is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        need(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(_is_number(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty!r}")
        need(is_int(self.min_new_tokens) and self.min_new_tokens >= 0,
             f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}")
        need(is_int(self.min_length) and self.min_length >= 0, f"min_length must be an integer >= 0, got {self.min_length!r}")
        need(self.seed is None or is_int(self.seed), f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and np.isfinite(x)


# ---------------------------------------------------------------------------------------------------
# Logits processors: each takes scores [V] (float32) and returns new scores
# ---------------------------------------------------------------------------------------------------

def apply_repetition_penalty(scores, previous_ids, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor: tokens seen before get score/penalty if
    positive, score*penalty if negative (both make them less likely for penalty > 1)."""
    if penalty == 1.0 or len(previous_ids) == 0:
        return scores
    ids = np.unique(np.asarray(previous_ids))
    seen = scores[ids]
    scores = scores.copy()
    scores[ids] = np.where(seen < 0, seen * np.float32(penalty), seen / np.float32(penalty))
    return scores


def suppress_eos(scores, eos_id):
    scores = scores.copy()
    scores[eos_id] = NEG_INF
    return scores


def apply_top_k(scores, k):
    """Keep the k highest scores (ties with the k-th are kept, as in transformers)."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = np.partition(scores, -k)[-k]
    return np.where(scores < kth, NEG_INF, scores).astype(np.float32)


def apply_top_p(scores, p):
    """Nucleus filtering as transformers' TopPLogitsWarper: sort ascending, drop the tokens whose
    cumulative probability is <= 1 - p, always keep the most likely token."""
    if p >= 1.0:
        return scores
    order = np.argsort(scores, kind="stable")                     # ascending
    probs = softmax(scores[order])
    cumulative = np.cumsum(probs)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[-1] = False
    remove = np.zeros_like(remove_sorted)
    remove[order] = remove_sorted
    return np.where(remove, NEG_INF, scores).astype(np.float32)


def softmax(scores):
    scores = np.asarray(scores, dtype=np.float64)
    e = np.exp(scores - scores.max())
    return e / e.sum()


def process_logits(scores, previous_ids, n_new: int, settings: GenerationSettings, eos_id: int):
    """The processed next-token scores [V] for one sequence: what is sampled from (or argmaxed)."""
    scores = np.asarray(scores, dtype=np.float32)
    scores = apply_repetition_penalty(scores, previous_ids, settings.repetition_penalty)
    if len(previous_ids) < settings.min_length or n_new < settings.min_new_tokens:
        scores = suppress_eos(scores, eos_id)
    if settings.do_sample:
        scores = (scores / np.float32(settings.temperature)).astype(np.float32)
        scores = apply_top_k(scores, settings.top_k)
        scores = apply_top_p(scores, settings.top_p)
    return scores


def choose(scores, settings: GenerationSettings, rng: np.random.Generator) -> int:
    if not settings.do_sample:
        return int(np.argmax(scores))
    probs = softmax(scores)
    return int(rng.choice(len(probs), p=probs))


# ---------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One row being generated."""

    prompt: List[int]
    new: List[int] = field(default_factory=list)
    text: str = ""           # decoded text of `new`, for stop strings
    done: bool = False
    reason: str = ""         # "length" | "eos" | "stop"


class BatchGeneration:
    """Generation for a batch of token-id prompts, advanced one step at a time by `steps()`.

    The prompts are left-padded into one batch and all rows advance together: one forward call per
    step for the whole batch. A row stops at end-of-text, at a stop string (needs `decode`) or at
    max_new_tokens; stopped rows are fed end-of-text until all are done and that output is ignored.
    """

    def __init__(self, backend, prompts: Sequence[Sequence[int]], settings: GenerationSettings, eos_id: int,
                 decode=None):
        n_ctx = backend.config.n_positions
        longest = max(len(p) for p in prompts)
        if longest + settings.max_new_tokens > n_ctx:
            raise SettingsError(f"the prompt ({longest} tokens) plus max_new_tokens ({settings.max_new_tokens}) "
                                f"exceed the model's context of {n_ctx} tokens; shorten the prompt or lower "
                                "max_new_tokens")
        self.backend, self.settings, self.eos_id, self.decode = backend, settings, eos_id, decode
        self.rows = [Row(list(p)) for p in prompts]
        self.prompt_seconds = 0.0   # time of the forward pass over the prompts
        self.decode_seconds = 0.0   # time of the forward passes over generated tokens

    def steps(self) -> Iterator[List[Tuple[int, int]]]:
        """Yields, after every step, the (row index, token id) pairs produced in that step."""
        settings, eos_id, rows = self.settings, self.eos_id, self.rows
        rng = np.random.default_rng(settings.seed)
        B, longest = len(rows), max(len(r.prompt) for r in rows)
        ids = np.full((B, longest), eos_id, dtype=np.int64)
        mask = np.zeros((B, longest), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, longest - len(row.prompt):] = row.prompt
            mask[b, longest - len(row.prompt):] = 1

        cache = self.backend.new_cache(longest + settings.max_new_tokens, batch=B)
        started = time.perf_counter()
        logits = self.backend.forward(ids, cache, attention_mask=mask, last_only=True)  # [B, V]
        self.prompt_seconds = time.perf_counter() - started
        while True:
            produced = []
            next_ids = np.full((B, 1), eos_id, dtype=np.int64)
            for b, row in enumerate(rows):
                if row.done:
                    continue
                scores = process_logits(logits[b], row.prompt + row.new, len(row.new), settings, eos_id)
                token = choose(scores, settings, rng)
                next_ids[b, 0] = token
                if token == eos_id and settings.stop_at_eos:
                    row.done, row.reason = True, "eos"
                    continue
                row.new.append(token)
                produced.append((b, token))
                if settings.stop and self.decode is not None:
                    row.text = self.decode(row.new)
                    if any(s in row.text for s in settings.stop):
                        row.done, row.reason = True, "stop"
                if len(row.new) >= settings.max_new_tokens and not row.done:
                    row.done, row.reason = True, "length"
            yield produced
            if all(row.done for row in rows):
                return
            started = time.perf_counter()
            logits = self.backend.forward(next_ids, cache, attention_mask=np.ones((B, 1), np.int64), last_only=True)
            self.decode_seconds += time.perf_counter() - started


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text up to (not including) the earliest stop string."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def stop_prefix_len(text: str, stop: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string: the part a
    stream must hold back because the next tokens might complete a stop string."""
    best = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best

