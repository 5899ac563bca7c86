"""Log-probabilities of given text: the scores behind perplexity, LAMBADA and multiple choice.

A model's logits at position t are its prediction of token t + 1. Scoring a continuation after a context
is one forward pass over context + continuation (minus the last token, whose prediction nobody needs):

    log p(token) = logit[token] - log(sum(exp(logits)))        (log-softmax, in float64)

summed over the continuation's tokens, plus whether greedy decoding would have produced exactly those
tokens (every token is its position's argmax). The framing follows lm-evaluation-harness, so numbers
here equal its numbers for the same model:

- Text pairs are tokenized as lm-eval does (`encode_pair`): spaces at the end of the context move to the
  continuation, the pair is tokenized as one string and split where the context's own tokens end, and
  an empty context becomes <|endoftext|>.
- A pair longer than the model's context keeps its last n_positions + 1 tokens (the context is cut from
  the left), as lm-eval's `hf` model does.
- Pairs that share a context (multiple choice) run the context once: its keys and values are copied
  into one cache row per continuation, and the continuations then run together as one batch.
- Texts longer than the context are scored in strided windows (`strided_windows`), each token once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

TokenIds = Sequence[int]
# Rows of logits converted to float64 at a time: 256 x 50400 x 8 bytes = 100 MB of scratch at most.
SOFTMAX_ROWS = 256
# Continuations of one shared context run in batches of at most this many rows.
MAX_BATCH_ROWS = 16


@dataclass
class TokenScores:
    """Per-token scores of a text: token_ids[i] had log-probability logprobs[i] given the tokens before it,
    and greedy[i] says whether it was the model's most likely next token there."""

    token_ids: List[int]
    logprobs: np.ndarray  # float64 [n]
    greedy: np.ndarray  # bool [n]

    @property
    def total(self) -> float:
        """Sum of the log-probabilities (float64): the log-likelihood of the scored tokens."""
        return float(np.sum(self.logprobs, dtype=np.float64))

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-probability per scored token."""
        return float(np.exp(-self.total / len(self.logprobs)))


def token_logprobs(logits: np.ndarray, targets: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """log-softmax(logits[i])[targets[i]] for each row i, and whether targets[i] is the row's argmax.

    logits [m, V] (fp32 from the model) -> (float64 [m], bool [m]). The row maximum is subtracted
    before exp, so nothing overflows; the sum of exp runs in float64.
    """
    targets = np.asarray(targets, np.int64)
    out = np.empty(len(targets), np.float64)
    greedy = np.empty(len(targets), bool)
    for r0 in range(0, len(targets), SOFTMAX_ROWS):
        rows = np.asarray(logits[r0 : r0 + SOFTMAX_ROWS], np.float64)  # [r, V]
        top = rows.max(axis=1)  # [r]
        log_sum = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))  # [r] logsumexp
        t = targets[r0 : r0 + SOFTMAX_ROWS]
        out[r0 : r0 + len(t)] = rows[np.arange(len(t)), t] - log_sum
        greedy[r0 : r0 + len(t)] = rows.argmax(axis=1) == t
    return out, greedy


# ---------------------------------------------------------------------------------------------------
# Tokenizing text pairs as lm-eval does
# ---------------------------------------------------------------------------------------------------


def encode_pair(tokenizer, context: str, continuation: str) -> Tuple[List[int], List[int]]:
    """(context ids, continuation ids) for a text pair, split as lm-eval's causal models split it."""
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise InputError("context and continuation must both be str (or both be token id lists)")
    if continuation == "":
        raise InputError("the continuation is empty; there is nothing to score")
    if context == "":
        # Nothing to condition on: <|endoftext|> stands in for the context, as in lm-eval.
        cont = tokenizer.encode(continuation)
        eos = tokenizer.eos_token_id
        return ([eos], cont) if cont[0] != eos else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


def pair_ids(tokenizer, context, continuation) -> Tuple[List[int], List[int]]:
    """Token ids of a (context, continuation) pair given as two str (see encode_pair) or two id lists."""
    if isinstance(context, str) or isinstance(continuation, str):
        return encode_pair(tokenizer, context, continuation)
    return [int(i) for i in context], [int(i) for i in continuation]


def text_ids(tokenizer, text_or_ids) -> List[int]:
    return tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else [int(i) for i in text_or_ids]


# ---------------------------------------------------------------------------------------------------
# Scoring token pairs
# ---------------------------------------------------------------------------------------------------


def check_pair(context: TokenIds, continuation: TokenIds, n_positions: int, vocab_size: int) -> None:
    if len(context) == 0:
        raise InputError("the context has no tokens; give at least one (lm-eval uses <|endoftext|> for none)")
    if len(continuation) == 0:
        raise InputError("the continuation has no tokens; there is nothing to score")
    if len(continuation) > n_positions:
        raise InputError(
            f"the continuation has {len(continuation)} tokens, more than the model's context of "
            f"{n_positions}; score it in windows (Model.score) instead"
        )
    for i in list(context) + list(continuation):
        if not 0 <= int(i) < vocab_size:
            raise InputError(f"token id {i} is outside the vocabulary [0, {vocab_size})")


def score_pairs(
    backend, pairs: Sequence[Tuple[TokenIds, TokenIds]], progress: Optional[Callable[[int], None]] = None
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """For each (context ids, continuation ids): the continuation's per-token (logprobs, greedy).

    Pairs with the same context are scored together (the context runs once); the results come back in
    the order of `pairs`. progress(k) is called as k more pairs are done.
    """
    n_ctx, vocab = backend.config.n_positions, backend.config.vocab_size
    pairs = [(list(map(int, c)), list(map(int, t))) for c, t in pairs]
    for c, t in pairs:
        check_pair(c, t, n_ctx, vocab)
    groups: dict = {}
    for i, (c, _) in enumerate(pairs):
        groups.setdefault(tuple(c), []).append(i)
    results: List[Optional[Tuple[np.ndarray, np.ndarray]]] = [None] * len(pairs)
    for context, members in groups.items():
        # A continuation whose pair overflows the window is cut differently from the others: run alone.
        shared = [i for i in members if len(context) + len(pairs[i][1]) - 1 <= n_ctx]
        if len(shared) < 2:
            shared = []
        for i in sorted(set(members) - set(shared)):
            results[i] = _score_one(backend, *pairs[i])
            if progress:
                progress(1)
        for b0 in range(0, len(shared), MAX_BATCH_ROWS):
            rows = shared[b0 : b0 + MAX_BATCH_ROWS]
            for i, r in zip(rows, _score_shared_context(backend, list(context), [pairs[i][1] for i in rows])):
                results[i] = r
            if progress:
                progress(len(rows))
    return results  # type: ignore[return-value]


def _score_one(backend, context: List[int], continuation: List[int]) -> Tuple[np.ndarray, np.ndarray]:
    """One forward pass over (context + continuation)[:-1], the context cut from the left to fit."""
    n_ctx = backend.config.n_positions
    seq = (context + continuation)[-(n_ctx + 1) :]
    inputs = np.asarray(seq[:-1], np.int64)
    logits = backend.forward(inputs, backend.new_cache(len(inputs), 1))  # [T, V]
    return token_logprobs(logits[-len(continuation) :], continuation)


def _score_shared_context(backend, context: List[int], continuations: List[List[int]]):
    """Run the context once, give each continuation its own cache row holding it, then run all
    continuations as one left-padded batch."""
    B = len(continuations)
    fed = [c[:-1] for c in continuations]  # the last token of each is predicted, never fed
    T = max(len(f) for f in fed)
    cache, last = _shared_context_cache(backend, context, B, len(context) + T)
    first = [token_logprobs(last[None], c[:1]) for c in continuations]  # each continuation's first token
    if T == 0:
        return first
    ids = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    for b, f in enumerate(fed):
        if f:
            ids[b, T - len(f) :] = f
            mask[b, T - len(f) :] = 1
    logits = backend.forward(ids, cache, attention_mask=mask)  # [B, T, V]
    out = []
    for b, c in enumerate(continuations):
        n = len(fed[b])
        lp, greedy = token_logprobs(logits[b, T - n :], c[1:]) if n else (np.empty(0), np.empty(0, bool))
        out.append((np.concatenate([first[b][0], lp]), np.concatenate([first[b][1], greedy])))
    return out


def _shared_context_cache(backend, context: List[int], batch: int, max_tokens: int):
    """A cache of `batch` rows that each hold the context, and the logits [V] of its last token.

    The context is computed once: the C++ cache copies row 0's keys and values into the other rows, the
    reference's NumPy cache is repeated along its batch axis. Any other backend gets the context
    replicated into every row of one batched pass (the same numbers, more work).
    """
    ids = np.asarray(context, np.int64)
    cache = backend.new_cache(max_tokens, batch)
    if hasattr(backend, "copy_row"):  # cpp: padding rows cost nothing
        mask = np.zeros((batch, len(ids)), np.int64)
        mask[0] = 1
        last = backend.forward(np.tile(ids, (batch, 1)), cache, attention_mask=mask, last_only=True)[0]
        for r in range(1, batch):
            backend.copy_row(cache, 0, r, len(ids))
        return cache, last
    from .reference import KVCache

    if isinstance(cache, KVCache):  # reference: repeat one row's arrays
        one = backend.new_cache(max_tokens, 1)
        last = backend.forward(ids, one, last_only=True)
        cache = KVCache(
            np.repeat(one.keys, batch, axis=1),
            np.repeat(one.values, batch, axis=1),
            np.repeat(one.real, batch, axis=0),
            one.length,
        )
        return cache, last
    last = backend.forward(np.tile(ids, (batch, 1)), cache, last_only=True)[0]
    return cache, last


# ---------------------------------------------------------------------------------------------------
# Long texts: strided windows
# ---------------------------------------------------------------------------------------------------


def default_stride(window: int) -> int:
    return max(1, window // 2)


def strided_windows(n_tokens: int, window: int, stride: int) -> List[Tuple[int, int, int]]:
    """(begin, first, end) for each window: the model reads tokens [begin, end) and scores [first, end).

    The strided method of transformers' perplexity guide: windows of `window` tokens start every
    `stride` tokens; each scores the tokens no earlier window scored, so every token but the first is
    scored once, with at least window - stride tokens of context (all of them in the first window). A
    window's first token has no prediction, so with stride == window it goes unscored too.
    """
    if not 1 <= stride <= window:
        raise InputError(f"the stride must be between 1 and the window of {window} tokens, got {stride}")
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, first, end))
        prev_end = end
        if end == n_tokens:
            break
    return out


def score_tokens(
    backend, ids: Sequence[int], stride: Optional[int] = None, progress: Optional[Callable[[int], None]] = None
) -> TokenScores:
    """Scores of tokens 1..n-1 of `ids`, in strided windows of the model's context. stride defaults to
    half the context (every token after the first window sees at least half a context of text; each
    is computed about twice); n_positions - 1 computes each token about once. progress(k) counts
    scored tokens."""
    ids = [int(i) for i in ids]
    window = backend.config.n_positions
    bad = [i for i in ids if not 0 <= i < backend.config.vocab_size]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary [0, {backend.config.vocab_size})")
    if len(ids) < 2:
        raise InputError(f"the text has {len(ids)} token(s); scoring needs at least 2 (the first has no prediction)")
    windows = strided_windows(len(ids), window, default_stride(window) if stride is None else int(stride))
    scored, logprobs, greedy = [], [], []
    for begin, first, end in windows:
        ((lp, g),) = score_pairs(backend, [(ids[begin:first], ids[first:end])])
        scored += ids[first:end]
        logprobs.append(lp)
        greedy.append(g)
        if progress:
            progress(end - first)
    return TokenScores(scored, np.concatenate(logprobs), np.concatenate(greedy))


def sum_scores(scored: Iterable[Tuple[np.ndarray, np.ndarray]]) -> List[Tuple[float, bool]]:
    """(sum of log-probabilities, all greedy) for each scored continuation."""
    return [(float(np.sum(lp, dtype=np.float64)), bool(np.all(g))) for lp, g in scored]
