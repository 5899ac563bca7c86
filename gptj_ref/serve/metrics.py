"""The server's counters, gauges and histograms, written in Prometheus' text exposition format.

One `Metrics` object per app (no process-global registry), safe to update from the scheduler thread
and the event loop at once.
"""

from __future__ import annotations

import bisect
import threading
from typing import Dict, Sequence, Tuple

# Latency buckets in seconds: from a few milliseconds (tiny models) to a minute (6B under load).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """name -> (type, help) is declared once in SPECS; values are keyed by (name, labels)."""

    SPECS = {
        "gptj_requests_total": ("counter", "HTTP requests answered, by endpoint and status code"),
        "gptj_prompt_tokens_total": ("counter", "Prompt tokens admitted to the model"),
        "gptj_completion_tokens_total": ("counter", "Tokens generated"),
        "gptj_sequences_finished_total": (
            "counter",
            "Sequences (choices) ended, by reason: stop, length, cancelled (client gone) or error",
        ),
        "gptj_steps_total": ("counter", "Scheduler steps (one batched forward each)"),
        "gptj_step_rows_total": ("counter", "Rows in the steps' forwards, summed (divide by steps: mean occupancy)"),
        "gptj_queue_depth": ("gauge", "Sequences waiting for a batch slot"),
        "gptj_batch_rows_active": ("gauge", "Batch slots in use"),
        "gptj_batch_rows_max": ("gauge", "Batch slots in all (--max-batch)"),
        "gptj_ready": ("gauge", "1 when the model is loaded and the scheduler runs"),
        "gptj_time_to_first_token_seconds": ("histogram", "From a sequence's arrival to its first token"),
        "gptj_inter_token_latency_seconds": ("histogram", "Between consecutive tokens of one sequence"),
    }

    LABELLED = ("gptj_requests_total", "gptj_sequences_finished_total")  # shown once a label set occurs

    def __init__(self):
        self._lock = threading.Lock()
        self._values: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {}
        self._histograms = {
            name: Histogram(LATENCY_BUCKETS) for name, (kind, _) in self.SPECS.items() if kind == "histogram"
        }

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            self._histograms[name].observe(value)

    def get(self, name: str, **labels) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help_text) in self.SPECS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    h = self._histograms[name]
                    running = 0
                    for bound, count in zip(list(h.buckets) + [float("inf")], h.counts):
                        running += count
                        le = "+Inf" if bound == float("inf") else repr(bound)
                        lines.append(f'{name}_bucket{{le="{le}"}} {running}')
                    lines += [f"{name}_sum {h.sum!r}", f"{name}_count {h.count}"]
                    continue
                samples = [(labels, v) for (n, labels), v in self._values.items() if n == name]
                if not samples and name not in self.LABELLED:
                    samples = [((), 0.0)]
                for labels, value in sorted(samples):
                    label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                    lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"
