"""training/train_demo.py: the same seed gives the same loss curve, and a run stopped and resumed gives
the same curve and weights as one that ran straight through (on a small text and a toy width, in
seconds; the real run is in gptj_ref/demo/README.md)."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = (
    "And God said, Let there be light: and there was light. And God saw the light, that it was good. "
    "The dog ran to the house of his master, and the master opened the door unto him. "
)


def load_script():
    spec = importlib.util.spec_from_file_location("train_demo", os.path.join(ROOT, "training", "train_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(out, *extra):
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "train.txt").write_text("\n\n".join([TEXT * 4] * 6) + "\n")
    (corpus / "heldout.txt").write_text(TEXT * 3 + "\n")
    args = [
        "--out",
        str(out),
        "--steps",
        "8",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--n-embd",
        "32",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--rotary-dim",
        "8",
        "--warmup",
        "2",
        "--eval-every",
        "4",
        "--eval-windows",
        "2",
        "--checkpoint-every",
        "2",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]
    assert load_script().main(args) == 0
    with open(out / "loss.tsv") as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    return [(r[0], r[2], r[3]) for r in rows]  # step, train loss, held-out loss (not the wall time)


@pytest.mark.slow
def test_same_seed_same_curve_and_resume_is_seamless(tmp_path):
    from safetensors.numpy import load_file

    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    assert len(a) == 8 and a == b  # same seed, same machine: the same curve, digit for digit
    assert float(a[-1][1]) < float(a[0][1])  # and it learns
    run(tmp_path / "c", "--stop-at", "5")  # stopped after 5 steps (state saved at the stop)
    c = run(tmp_path / "c")  # resumed from state.pt to the end
    assert c == a
    wa, wc = (load_file(str(tmp_path / d / "hf" / "model.safetensors")) for d in ("a", "c"))
    for name in wa:
        np.testing.assert_array_equal(wa[name], wc[name], err_msg=name)
    other = run(tmp_path / "d", "--seed", "7")
    assert other != a
