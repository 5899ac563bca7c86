"""Sampling and the generation loop, shared by every backend.

The logits processors follow transformers' `generate()` exactly, in its order:

    repetition penalty -> presence/frequency penalty -> min length / min new tokens (end-of-text
    suppressed) -> temperature -> top-k -> top-p -> sample (or argmax when not sampling)

so the same settings give the same next-token distribution (presence and frequency penalties are
OpenAI's, which transformers lacks; both 0 by default).

One sequence being generated is a `RowState`: its prompt ids, the tokens sampled so far, its own
`numpy.random.Generator` seeded by `seed`, the text released so far (characters split across tokens and
text that may start a stop string are held back), stop strings and the finish reason. `Model.generate`,
`Model.stream` (through `BatchGeneration`, a left-padded batch) and the server's continuous-batching
scheduler (`gptj_ref.serve`) all advance rows with `RowState.step(logits)`. Each row owns its generator,
so a seeded row gives the same tokens alone or beside any other rows; in a batch every row uses the
same `seed`, so `generate([a, b], seed=s)` equals `[generate(a, seed=s), generate(b, seed=s)]`.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, fields
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import NumericalError, SettingsError, is_int

NEG_INF = -np.inf


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate. Every setting, with transformers' meaning:

    max_new_tokens      tokens to generate at most (default 32)
    do_sample           False: greedy (argmax); True: sample with temperature, top_k and top_p
    temperature         > 0 divides the logits when sampling; 0 means greedy, as in OpenAI's API (default 1.0)
    top_k               keep the k most likely tokens when sampling; 0 disables (default 50)
    top_p               keep the smallest set of tokens whose probability reaches top_p; 1.0 disables
    repetition_penalty  > 1 makes tokens already in the sequence less likely; 1.0 disables
    min_new_tokens      end-of-text is suppressed until this many tokens are generated
    min_length          the same, counted in total tokens (prompt + generated)
    stop                strings: a sequence ends when its text contains one (the text stops before it)
    stop_at_eos         end a sequence at the end-of-text token (default True)
    seed                an integer in [0, 2**64) that makes sampling reproducible (None: fresh randomness)
    presence_penalty    OpenAI's: subtracted once from every token already generated, in [-2, 2]; 0 disables
    frequency_penalty   OpenAI's: subtracted once per time a token was generated, in [-2, 2]; 0 disables
    eos_token_id        the end-of-text token id, or several (default: the model's)

    `make_settings` also takes transformers' names `max_length` and `stop_strings`, and explains the
    names that do not apply here (num_beams, typical_p, device, ...).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50  # transformers' default; 0 disables
    top_p: float = 1.0  # 1.0 disables
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0  # end-of-text is suppressed until this many tokens are generated
    min_length: int = 0  # the same, counted in total tokens (prompt + generated) as transformers does
    stop: Tuple[str, ...] = ()  # generation of a sequence ends when its text contains one of these
    stop_at_eos: bool = True
    seed: Optional[int] = None
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time a token was generated
    eos_token_id: Optional[Tuple[int, ...]] = None  # None: the model's end-of-text token

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SettingsError(message)

        need(
            is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
            f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}",
        )
        need(
            _is_number(self.temperature) and self.temperature >= 0,
            f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}",
        )
        if self.temperature == 0:  # OpenAI's and llama.cpp's meaning: always the most likely token
            object.__setattr__(self, "do_sample", False)
        need(
            is_int(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}"
        )
        need(_is_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(
            _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty!r}",
        )
        need(
            is_int(self.min_new_tokens) and self.min_new_tokens >= 0,
            f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}",
        )
        need(
            is_int(self.min_length) and self.min_length >= 0,
            f"min_length must be an integer >= 0, got {self.min_length!r}",
        )
        need(
            self.seed is None or (is_int(self.seed) and 0 <= self.seed < MAX_SEED),
            f"seed must be an integer in [0, 2**64), got {self.seed!r}",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            need(
                _is_number(value) and -2 <= value <= 2,
                f"{name} must be a number in [-2, 2] (0 disables it), got {value!r}",
            )
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        need(isinstance(self.stop, (tuple, list)), f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        if self.eos_token_id is not None:
            ids = (self.eos_token_id,) if is_int(self.eos_token_id) else self.eos_token_id
            need(
                isinstance(ids, (tuple, list)) and len(ids) > 0 and all(is_int(i) and i >= 0 for i in ids),
                f"eos_token_id must be a token id or a non-empty list of them, got {self.eos_token_id!r}",
            )
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in ids))


MAX_SEED = 2**64  # seeds are what a uint64 holds, as torch.manual_seed and numpy's generators take them

# transformers' and OpenAI's names that gptj_ref does not implement, with what to use instead.
_BEAM = "beam search is not implemented; use greedy decoding (the default) or sampling (do_sample=True)"
UNSUPPORTED_SETTINGS = {
    "num_beams": _BEAM,
    "num_beam_groups": _BEAM,
    "diversity_penalty": _BEAM,
    "length_penalty": _BEAM,
    "early_stopping": _BEAM,
    "constraints": _BEAM,
    "force_words_ids": _BEAM,
    "typical_p": "typical sampling is not implemented; use top_p or top_k",
    "epsilon_cutoff": "epsilon sampling is not implemented; use top_p or top_k",
    "eta_cutoff": "eta sampling is not implemented; use top_p or top_k",
    "min_p": "min-p sampling is not implemented; use top_p or top_k",
    "penalty_alpha": "contrastive search is not implemented; use greedy decoding or sampling",
    "no_repeat_ngram_size": "n-gram blocking is not implemented; use repetition_penalty",
    "encoder_repetition_penalty": "use repetition_penalty",
    "bad_words_ids": "token suppression is not implemented",
    "suppress_tokens": "token suppression is not implemented",
    "sequence_bias": "logit biases are not implemented",
    "logit_bias": "logit biases are not implemented",
    "guidance_scale": "classifier-free guidance is not implemented",
    "num_return_sequences": "pass the prompt several times: model.generate([prompt] * n, do_sample=True)",
    "n": "pass the prompt several times: model.generate([prompt] * n, do_sample=True)",
    "max_tokens": "use max_new_tokens",
    "max_time": "not implemented; bound the work with max_new_tokens",
    "device": "gptj_ref runs on the CPU; choose the implementation with load(path, backend='cpp' or 'reference')",
    "device_map": "gptj_ref runs on the CPU; choose the implementation with load(path, backend=...)",
    "torch_dtype": "the weight precision is chosen when loading: load(path, dtype='q8') or `gptj convert --dtype`",
    "dtype": "the weight precision is chosen when loading: load(path, dtype='q8') or `gptj convert --dtype`",
    "output_scores": "use model.logits(prompt) for scores",
    "output_logits": "use model.logits(prompt) for scores",
    "return_dict_in_generate": "generate returns text; use generate_ids for token ids",
    "streamer": "use model.stream(prompt, ...), which yields the text as it is generated",
    "attention_mask": "prompts are padded and masked internally; pass a list of prompts to generate",
    "use_cache": "the KV cache is always used",
    "generation_config": "pass the settings as keyword arguments",
    "assistant_model": "assisted generation is not implemented",
    "prompt_lookup_num_tokens": "assisted generation is not implemented",
}
# Accepted for compatibility; they change nothing here.
IGNORED_SETTINGS = ("pad_token_id", "bos_token_id")  # padding is masked out and never computed


def make_settings(settings: dict, prompt_tokens: Optional[int] = None) -> GenerationSettings:
    """GenerationSettings from keyword arguments as users bring them.

    Besides GenerationSettings' own names: `max_length` (transformers: prompt + new tokens; needs
    prompt_tokens, the longest prompt's length) and `stop_strings` (transformers' name for stop).
    `pad_token_id` and `bos_token_id` are accepted and change nothing. Any other name raises
    SettingsError saying what to use instead, never TypeError.
    """
    settings = dict(settings)
    for name in IGNORED_SETTINGS:
        settings.pop(name, None)
    known = {f.name for f in fields(GenerationSettings)}
    for name in settings:
        if name in UNSUPPORTED_SETTINGS:
            raise SettingsError(f"{name} is not supported by gptj_ref: {UNSUPPORTED_SETTINGS[name]}")
        if name not in known and name not in ("max_length", "stop_strings"):
            close = difflib.get_close_matches(name, sorted(known | {"max_length", "stop_strings"}), n=1)
            raise SettingsError(
                f"unknown setting {name!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" The settings are: {', '.join(sorted(known))} (see help(GenerationSettings))"
            )
    if "stop_strings" in settings:
        if "stop" in settings:
            raise SettingsError("give stop or stop_strings (its transformers name), not both")
        settings["stop"] = settings.pop("stop_strings")
    if "eos_token_id" in settings and settings["eos_token_id"] is None:
        del settings["eos_token_id"]
    max_length = settings.pop("max_length", None)
    if max_length is not None:
        if "max_new_tokens" in settings:
            raise SettingsError("give max_new_tokens or max_length, not both")
        if prompt_tokens is None:
            raise SettingsError("max_length counts the prompt as well, which is not known here; use max_new_tokens")
        if not is_int(max_length) or max_length - prompt_tokens < 1:
            raise SettingsError(
                f"max_length={max_length!r} leaves no room for new tokens after the "
                f"{prompt_tokens}-token prompt; raise it or use max_new_tokens"
            )
        settings["max_new_tokens"] = int(max_length) - prompt_tokens
    return GenerationSettings(**settings)


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


def apply_presence_frequency_penalty(scores, generated_ids, presence, frequency):
    """OpenAI's penalties: score[j] -= count[j] * frequency + (count[j] > 0) * presence, where count[j]
    is how many times token j was generated so far (the prompt does not count)."""
    if (presence == 0 and frequency == 0) or len(generated_ids) == 0:
        return scores
    ids, counts = np.unique(np.asarray(generated_ids), return_counts=True)
    scores = scores.copy()
    scores[ids] -= (counts * np.float32(frequency) + np.float32(presence)).astype(np.float32)
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
    order = np.argsort(scores, kind="stable")  # ascending
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
    generated = previous_ids[len(previous_ids) - n_new :] if n_new else ()
    scores = apply_presence_frequency_penalty(scores, generated, settings.presence_penalty, settings.frequency_penalty)
    if len(previous_ids) < settings.min_length or n_new < settings.min_new_tokens:
        for eos in settings.eos_token_id or (eos_id,):
            scores = suppress_eos(scores, eos)
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


def log_softmax(logits) -> np.ndarray:
    """log p over the vocabulary, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_logprobs(logprobs: np.ndarray, k: int) -> List[Tuple[int, float]]:
    """The k most likely (token id, log-probability) pairs, most likely first (ties: lower id first)."""
    if k <= 0:
        return []
    top = np.argpartition(-logprobs, k - 1)[:k] if k < logprobs.size else np.arange(logprobs.size)
    top = sorted(top.tolist(), key=lambda i: (-logprobs[i], i))
    return [(int(i), float(logprobs[i])) for i in top]


# ---------------------------------------------------------------------------------------------------
# One row: token ids -> sampled token -> text -> stop strings -> finish reason
# ---------------------------------------------------------------------------------------------------


@dataclass
class TokenStep:
    """What one step of one row produced."""

    token: int
    text: str = ""  # text released by this step ("" while characters or a stop string are pending)
    logprob: Optional[float] = None  # log p(token) under the model (raw logits)
    top_logprobs: Optional[List[Tuple[int, float]]] = None  # the most likely alternatives, when asked


class RowState:
    """One sequence being generated, advanced by `step(logits)` with the next-token logits of its last token.

    prompt       the prompt's token ids
    new          the tokens generated so far (end-of-text that stopped the row is not included)
    text         the text released so far; when the row is done, the whole continuation (cut at a stop string)
    finish_reason  None while running, then "length" (max_new_tokens), "eos" (end-of-text) or "stop"
    tokenizer    turns tokens into text (None: ids only, no text and no stop strings)
    logprobs     None, or k >= 0: every step also reports log p of the chosen token and of the k most
                 likely tokens, from the model's raw logits (before penalties, temperature and filtering)
    """

    def __init__(
        self,
        prompt: Sequence[int],
        settings: GenerationSettings,
        eos_id: int,
        tokenizer=None,
        logprobs: Optional[int] = None,
    ):
        self.prompt = list(prompt)
        self.settings, self.eos_id, self.logprobs = settings, eos_id, logprobs
        self.rng = np.random.default_rng(settings.seed)
        self.new: List[int] = []
        self.text = ""
        self.finish_reason: Optional[str] = None
        self._decoder = tokenizer.stream_decoder() if tokenizer is not None else None
        self._pending = ""  # decoded but not yet released: may be the start of a stop string

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def step(self, logits) -> TokenStep:
        """Choose the next token from `logits` [vocab] and advance the text."""
        if self.done:
            raise RuntimeError("step() on a finished row")
        logits = np.asarray(logits, dtype=np.float32)
        if not np.isfinite(logits).all():
            bad = np.flatnonzero(~np.isfinite(logits))
            raise NumericalError(
                f"the model produced non-finite logits ({logits[bad[0]]} for token {bad[0]}, {bad.size} in all) at "
                f"generation step {len(self.new) + 1}, after {len(self.prompt) + len(self.new)} tokens; the weights "
                "or the computation overflowed: check the model file (NaN/Inf weights) and the backend"
            )
        s = self.settings
        scores = process_logits(logits, self.prompt + self.new, len(self.new), s, self.eos_id)
        token = choose(scores, s, self.rng)
        result = TokenStep(token)
        if self.logprobs is not None:
            logp = log_softmax(logits)
            result.logprob = float(logp[token])
            result.top_logprobs = top_logprobs(logp, self.logprobs)
        if token in (s.eos_token_id or (self.eos_id,)) and s.stop_at_eos:
            result.text = self._finish("eos")
            return result
        self.new.append(token)
        if self._decoder is not None:
            result.text = self._push(token)
        if not self.done and len(self.new) >= s.max_new_tokens:
            result.text += self._finish("length")
        return result

    def _push(self, token: int) -> str:
        """Decode one token; release the text that can no longer be part of a stop string."""
        stop = self.settings.stop
        self._pending += self._decoder.push(token)
        if stop and any(x in self._pending for x in stop):
            return self._finish("stop")
        keep = stop_prefix_len(self._pending, stop) if stop else 0
        ready, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        self.text += ready
        return ready

    def _finish(self, reason: str) -> str:
        """End the row; release what is pending (up to the earliest stop string)."""
        self.finish_reason = reason
        if self._decoder is None:
            return ""
        tail = cut_at_stop(self._pending + self._decoder.flush(), self.settings.stop)
        self._pending = ""
        self.text += tail
        return tail


# ---------------------------------------------------------------------------------------------------
# A left-padded batch
# ---------------------------------------------------------------------------------------------------


@dataclass
class GenerationStats:
    """Tokens and seconds of one generation run (`Model.last_stats`)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # The first new token comes from the prompt pass; the others each cost one decode step.
        steps = max(self.new_tokens - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else float("nan")


class BatchGeneration:
    """Generation for a batch of token-id prompts, advanced one step at a time by `steps()`.

    The prompts are left-padded into one batch and all rows advance together: one forward call per
    step for the whole batch. Each row is a `RowState`; stopped rows are fed end-of-text until all are
    done and that output is ignored. `tokenizer` (optional) gives the rows text and stop strings.
    """

    def __init__(
        self, backend, prompts: Sequence[Sequence[int]], settings: GenerationSettings, eos_id: int, tokenizer=None
    ):
        n_ctx = backend.config.n_positions
        longest = max(len(p) for p in prompts)
        if longest + settings.max_new_tokens > n_ctx:
            raise SettingsError(
                f"the prompt ({longest} tokens) plus max_new_tokens ({settings.max_new_tokens}) "
                f"exceed the model's context of {n_ctx} tokens; shorten the prompt or lower "
                "max_new_tokens"
            )
        vocab = backend.config.vocab_size
        bad = [i for i in settings.eos_token_id or () if i >= vocab]
        if bad:
            raise SettingsError(f"eos_token_id {bad[0]} is outside the vocabulary [0, {vocab})")
        self.backend, self.settings, self.eos_id = backend, settings, eos_id
        self.rows = [RowState(p, settings, eos_id, tokenizer) for p in prompts]
        self.prompt_seconds = 0.0  # time of the forward pass over the prompts
        self.decode_seconds = 0.0  # time of the forward passes over generated tokens

    def steps(self) -> Iterator[List[Tuple[int, TokenStep]]]:
        """Yields, after every step, the (row index, TokenStep) pairs of the rows that advanced."""
        eos_id, rows = self.eos_id, self.rows
        B, longest = len(rows), max(len(r.prompt) for r in rows)
        ids = np.full((B, longest), eos_id, dtype=np.int64)
        mask = np.zeros((B, longest), dtype=np.int64)
        for b, row in enumerate(rows):
            ids[b, longest - len(row.prompt) :] = row.prompt
            mask[b, longest - len(row.prompt) :] = 1

        cache = self.backend.new_cache(longest + self.settings.max_new_tokens, batch=B)
        started = time.perf_counter()
        logits = self.backend.forward(ids, cache, attention_mask=mask, last_only=True)  # [B, V]
        self.prompt_seconds = time.perf_counter() - started
        while True:
            produced = []
            next_ids = np.full((B, 1), eos_id, dtype=np.int64)
            for b, row in enumerate(rows):
                if row.done:
                    continue
                step = row.step(logits[b])
                next_ids[b, 0] = step.token
                produced.append((b, step))
            yield produced
            if all(row.done for row in rows):
                return
            started = time.perf_counter()
            logits = self.backend.forward(next_ids, cache, attention_mask=np.ones((B, 1), np.int64), last_only=True)
            self.decode_seconds += time.perf_counter() - started

    def stats(self) -> GenerationStats:
        return GenerationStats(
            prompt_tokens=sum(len(r.prompt) for r in self.rows),
            new_tokens=sum(len(r.new) for r in self.rows),
            prompt_seconds=self.prompt_seconds,
            decode_seconds=self.decode_seconds,
        )


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
