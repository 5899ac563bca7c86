"""`gptj parity`: run two backends on the same prompt and show where they differ.

Prints the max and mean |difference| of the residual stream after every block, after ln_f and of the
logits, then where the greedy continuations diverge. Backends expose `hidden_states(ids)` returning
[embeddings, block 0 .. block n-1, ln_f, logits] (gptj_ref.backend.Backend); transformers' model is
wrapped to do the same, with None where it does not expose a state.
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, TextIO, Tuple

import numpy as np

from .backend import Backend
from .errors import SettingsError


def _labels(n_layer: int) -> List[str]:
    return ["embeddings"] + [f"block {i}" for i in range(n_layer)] + ["ln_f", "logits"]


def state_differences(states_a, states_b, n_layer: int) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """(label, max |A-B|, mean |A-B|) after the embeddings, every block, ln_f and the logits, from two
    `hidden_states` lists; None where a backend does not expose that state."""
    rows = []
    for label, a, b in zip(_labels(n_layer), states_a, states_b):
        if a is None or b is None:
            rows.append((label, None, None))
            continue
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        rows.append((label, float(d.max()), float(d.mean())))
    return rows


def compare(backend_a, backend_b, ids) -> List[Tuple[str, Optional[float], Optional[float]]]:
    """`state_differences` of two backends (anything with `hidden_states(ids)` and `config`) on token ids."""
    return state_differences(backend_a.hidden_states(ids), backend_b.hidden_states(ids), backend_a.config.n_layer)


def first_departure(rows, atol: float = 0.0) -> Optional[Tuple[str, float]]:
    """The first (label, max |A-B|) of `compare`'s rows whose difference exceeds atol, or None."""
    return next(((label, mx) for label, mx, _ in rows if mx is not None and mx > atol), None)


class TransformersBackend:
    """transformers' GPTJForCausalLM in fp32, for parity runs only (needs torch + transformers)."""

    name = "transformers"

    def __init__(self, path: str, config):
        try:
            import torch
            from transformers import GPTJForCausalLM
        except ImportError:
            raise SettingsError(
                "--b transformers needs torch and transformers installed (pip install 'gptj-ref[test]')"
            ) from None
        self._torch = torch
        self.config = config
        self.model = GPTJForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def hidden_states(self, ids) -> List[Optional[np.ndarray]]:
        torch = self._torch
        with torch.no_grad():
            out = self.model(torch.tensor(np.asarray(ids))[None], output_hidden_states=True)
        hs = [h[0].numpy() for h in out.hidden_states]
        # transformers returns embeddings, the outputs of blocks 0..n-2 and ln_f(output of the last block):
        # the raw output of the last block is not among them.
        return hs[:-1] + [None, hs[-1], out.logits[0].numpy()]

    def greedy(self, ids, n: int) -> List[int]:
        torch = self._torch
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor(np.asarray(ids))[None],
                max_new_tokens=n,
                do_sample=False,
                min_new_tokens=n,
                pad_token_id=self.config.eos_token_id,
            )
        return out[0, len(ids) :].tolist()


def run_parity(
    model: Optional[str],
    prompt: str,
    a: str = "reference",
    b: str = "cpp",
    new_tokens: int = 16,
    threads: Optional[int] = None,
    out: Optional[TextIO] = None,
) -> int:
    """Compare backends `a` and `b` ("reference", "cpp"; b also "transformers") on `prompt`, loading
    `model` (a path, or None for the built-in demo model) for each; write the report to `out` (stdout)."""
    from .api import load

    out = sys.stdout if out is None else out
    if new_tokens < 1:
        raise SettingsError("--new-tokens must be >= 1")
    model_a = load(model, backend=a, threads=threads)
    ids = model_a.encode(prompt)
    if not ids:
        raise SettingsError("the prompt is empty")
    backend_a: Backend = model_a.backend
    if b == "transformers":
        if model is None or not os.path.isdir(model):
            raise SettingsError("--b transformers needs a Hugging Face checkpoint directory as MODEL")
        backend_b = TransformersBackend(model, model_a.config)
        greedy_b = backend_b.greedy(ids, new_tokens)
    else:
        model_b = load(model, backend=b, threads=threads)
        backend_b = model_b.backend
        greedy_b = model_b.generate_ids(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    greedy_a = model_a.generate_ids(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    out.write(f"prompt: {prompt!r} ({len(ids)} tokens); A = {backend_a.name}, B = {backend_b.name}\n")
    out.write(f"{'after':<12} {'max |A-B|':>12} {'mean |A-B|':>12} {'max |A|':>12}\n")
    states = zip(_labels(model_a.config.n_layer), backend_a.hidden_states(ids), backend_b.hidden_states(ids))
    for label, state_a, state_b in states:
        if state_a is None or state_b is None:
            out.write(f"{label:<12} {'-':>12} {'-':>12} {'-':>12}\n")
            continue
        d = np.abs(state_a.astype(np.float64) - state_b)
        out.write(f"{label:<12} {d.max():12.3e} {d.mean():12.3e} {np.abs(state_a).max():12.3e}\n")
    diverge = next((i for i, (x, y) in enumerate(zip(greedy_a, greedy_b)) if x != y), None)
    if diverge is None:
        out.write(f"greedy: the {len(greedy_a)} generated tokens agree\n")
    else:
        out.write(
            f"greedy: diverge at new token {diverge}: A {greedy_a[diverge]} "
            f"{model_a.tokenizer.decode([greedy_a[diverge]])!r}, B {greedy_b[diverge]} "
            f"{model_a.tokenizer.decode([greedy_b[diverge]])!r}\n"
        )
    return 0
