"""Continuous batching: one thread owns the model and a KV cache of `max_batch` row slots.

Every step:
  1. rows whose client went away (cancelled) give up their slot;
  2. waiting sequences are admitted, first come first served, into free slots (the row is emptied);
  3. one forward runs over every active row: one token for each decoding row, and for rows still
     reading their prompt the next piece of it, at most `prefill_chunk` prompt tokens in all per step;
  4. each row that has next-token logits advances its `RowState` (sample -> text -> stop strings); a
     finished row frees its slot at once, so the next step can admit a waiting sequence into it.

The bound on how long a long prompt delays the others: a step runs at most `prefill_chunk` prompt tokens
(default 64) besides one token per decoding row, so a decoding row gets its next token at most one
forward over max_batch + prefill_chunk tokens after its last one, however long the prompts arriving.

Each sequence owns its RowState and so its random generator: a seeded sequence gives the same tokens
alone or beside others. With the C++ runtime every row's logits are bitwise those of the sequence run
alone (the kernels compute each token's row independently of the others and chunking is exact), so
the server's text equals `Model.generate` with the same settings.

Results go back through each sequence's `sink(kind, value)`, called on the scheduler thread:
  ("prompt_logprobs", [(logprob, top) or None per prompt token])   when asked, once the prompt is read
  ("token", TokenStep)                                              after every generated token
  ("done", finish_reason)                                           "length" | "eos" | "stop"
  ("error", exception)                                              the sequence failed; nothing follows
A cancelled sequence gets no further events.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Callable, List, Optional

from ..generate import GenerationSettings, RowState, log_softmax, top_logprobs
from .metrics import Metrics
from .rows import RowCache

DEFAULT_PREFILL_CHUNK = 64


class QueueFull(Exception):
    """The waiting queue has no room for the request's sequences."""


class NotAccepting(Exception):
    """The scheduler is draining (shutting down) or stopped."""


class ShuttingDown(Exception):
    """The grace period ended before this sequence finished."""


class Sequence:
    """One sequence to generate (one choice of one prompt)."""

    _order = itertools.count()

    def __init__(
        self,
        state: RowState,
        sink: Callable[[str, object], None],
        generate: bool = True,
        prompt_logprobs: Optional[int] = None,
    ):
        self.state = state
        self.sink = sink
        self.generate = generate  # False: read the prompt only (echo with max_tokens=0)
        self.prompt_logprobs = prompt_logprobs  # None, or k: log-probs of the prompt's tokens, k alternatives
        self.cancelled = False
        self.order = next(self._order)
        self.fed = 0  # prompt tokens in the cache
        self.submitted = self.last_token_at = 0.0
        self._prompt_lp: List = []

    @property
    def prompt(self) -> List[int]:
        return self.state.prompt


class Scheduler:
    def __init__(
        self,
        model,
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        metrics: Optional[Metrics] = None,
    ):
        self.model = model
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.metrics = metrics or Metrics()
        self.rows = RowCache.for_backend(model.backend, max_batch)
        self.slots: List[Optional[Sequence]] = [None] * max_batch
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False  # finish what is there, then exit
        self._abort = False  # fail what is there, then exit
        self._thread: Optional[threading.Thread] = None
        self.metrics.set("gptj_batch_rows_max", max_batch)

    # The caller's side ---------------------------------------------------------------------------------
    def new_sequence(
        self,
        prompt: List[int],
        settings: GenerationSettings,
        sink,
        logprobs: Optional[int] = None,
        generate: bool = True,
        prompt_logprobs: Optional[int] = None,
    ) -> Sequence:
        state = RowState(prompt, settings, self.model.config.eos_token_id, self.model.tokenizer, logprobs)
        return Sequence(state, sink, generate, prompt_logprobs)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gptj-scheduler", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._accepting

    def submit(self, sequences: List[Sequence]) -> None:
        """Queue all of a request's sequences, or none (QueueFull, NotAccepting)."""
        with self._cond:
            if not self._accepting or not self.running:
                raise NotAccepting()
            if len(self._queue) + len(sequences) > self.max_queue:
                raise QueueFull()
            now = time.perf_counter()
            for s in sequences:
                s.submitted = now
                self._queue.append(s)
            self.metrics.set("gptj_queue_depth", len(self._queue))
            self._cond.notify()

    def cancel(self, sequences: List[Sequence]) -> None:
        """The client is gone: waiting sequences leave the queue now, running ones free their slot at the
        start of the next step."""
        with self._cond:
            for s in sequences:
                s.cancelled = True
            waiting = len(self._queue)
            self._queue = deque(s for s in self._queue if not s.cancelled)
            if waiting > len(self._queue):
                self.metrics.inc("gptj_sequences_finished_total", waiting - len(self._queue), reason="cancelled")
            self.metrics.set("gptj_queue_depth", len(self._queue))
            self._cond.notify()

    def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; let running and queued sequences finish for up to `grace` seconds; then end
        the rest with an error event and stop the thread."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            return
        self._thread.join(grace)
        if self._thread.is_alive():
            with self._cond:
                self._abort = True
                self._cond.notify()
            self._thread.join()
        self.metrics.set("gptj_ready", 0)

    # The scheduler thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._queue or any(self.slots) or self._stopping):
                        self._cond.wait()
                    if self._abort:
                        break
                    if self._stopping and not self._queue and not any(self.slots):
                        return
                    admitted = self._admit()
                self._step(admitted)
            error = ShuttingDown("the server shut down before this request finished (its grace period ended)")
        except BaseException as e:  # noqa: BLE001 - a failure here must not leave clients waiting forever
            error = e
            self._accepting = False
        with self._cond:
            waiting, self._queue = list(self._queue), deque()
            self.metrics.set("gptj_queue_depth", 0)
        for s in waiting:
            self._emit(s, "error", error)
        for slot, s in enumerate(self.slots):
            if s is not None:
                self._end(slot, "error", error)

    def _admit(self) -> List[Sequence]:
        """Pop as many waiting sequences as there are free slots (under the lock)."""
        free = sum(1 for s in self.slots if s is None)
        admitted = []
        while self._queue and len(admitted) < free:
            admitted.append(self._queue.popleft())
        self.metrics.set("gptj_queue_depth", len(self._queue))
        return admitted

    def _step(self, admitted: List[Sequence]) -> None:
        for slot, s in enumerate(self.slots):
            if s is not None and s.cancelled:
                self._end(slot, "cancelled")
        for s in admitted:
            if s.cancelled:  # between admission and now
                self.metrics.inc("gptj_sequences_finished_total", reason="cancelled")
                continue
            slot = self.slots.index(None)
            self.slots[slot] = s
            self.rows.reset(slot, len(s.prompt) + s.state.settings.max_new_tokens)
            self.metrics.inc("gptj_prompt_tokens_total", len(s.prompt))
        self.metrics.set("gptj_batch_rows_active", sum(1 for s in self.slots if s is not None))

        # What each row feeds this step, and which of its tokens' logits it needs.
        tokens: List[List[int]] = [[] for _ in self.slots]
        wanted = []
        budget = self.prefill_chunk
        for slot, s in sorted(((i, s) for i, s in enumerate(self.slots) if s is not None), key=lambda x: x[1].order):
            if s.fed < len(s.prompt):
                take = min(budget, len(s.prompt) - s.fed)
                if take == 0:
                    continue
                budget -= take
                tokens[slot] = s.prompt[s.fed : s.fed + take]
                if s.prompt_logprobs is not None:
                    wanted += [(slot, i) for i in range(take)]
                elif s.fed + take == len(s.prompt):
                    wanted.append((slot, take - 1))
            else:
                tokens[slot] = [s.state.new[-1]]
                wanted.append((slot, 0))
        active = [slot for slot, t in enumerate(tokens) if t]
        if not active:
            return
        try:
            logits = self.rows.forward(tokens, wanted)
        except Exception as e:  # noqa: BLE001 - the rows of this step cannot continue; the others can
            for slot in active:
                self._end(slot, "error", e)
            return
        self.metrics.inc("gptj_steps_total")
        self.metrics.inc("gptj_step_rows_total", len(active))

        position = {key: i for i, key in enumerate(wanted)}
        for slot in active:
            s, chunk = self.slots[slot], tokens[slot]
            try:
                if s.fed < len(s.prompt):
                    if s.prompt_logprobs is not None:
                        self._record_prompt_logprobs(s, [logits[position[(slot, i)]] for i in range(len(chunk))])
                    s.fed += len(chunk)
                    if s.fed < len(s.prompt):
                        continue
                    if s.prompt_logprobs is not None:
                        self._emit(s, "prompt_logprobs", [None] + s._prompt_lp)
                    if not s.generate:
                        self._end(slot, "length")
                        continue
                step = s.state.step(logits[position[(slot, len(chunk) - 1)]])
            except Exception as e:  # noqa: BLE001 - e.g. non-finite logits: this row fails, the others go on
                self._end(slot, "error", e)
                continue
            now = time.perf_counter()
            if len(s.state.new) <= 1 and s.last_token_at == 0.0:
                self.metrics.observe("gptj_time_to_first_token_seconds", now - s.submitted)
            else:
                self.metrics.observe("gptj_inter_token_latency_seconds", now - s.last_token_at)
            s.last_token_at = now
            if s.state.finish_reason != "eos":
                self.metrics.inc("gptj_completion_tokens_total")
            self._emit(s, "token", step)
            if s.state.done:
                self._end(slot, s.state.finish_reason)
        self.metrics.set("gptj_batch_rows_active", sum(1 for s in self.slots if s is not None))

    def _record_prompt_logprobs(self, s: Sequence, chunk_logits) -> None:
        """Logits at prompt position g give the distribution of prompt token g + 1."""
        for i, logits in enumerate(chunk_logits):
            g = s.fed + i
            if g + 1 < len(s.prompt):
                logp = log_softmax(logits)
                token = s.prompt[g + 1]
                s._prompt_lp.append((float(logp[token]), top_logprobs(logp, s.prompt_logprobs)))

    def _end(self, slot: int, reason: str, error: Optional[BaseException] = None) -> None:
        s = self.slots[slot]
        self.slots[slot] = None
        self.metrics.inc("gptj_sequences_finished_total", reason="eos" if reason == "eos" else reason)
        if reason == "cancelled":
            return
        if error is not None:
            self._emit(s, "error", error)
        else:
            self._emit(s, "done", reason)

    @staticmethod
    def _emit(s: Sequence, kind: str, value) -> None:
        try:
            s.sink(kind, value)
        except RuntimeError:  # the client's event loop is closed: nobody is listening any more
            pass
