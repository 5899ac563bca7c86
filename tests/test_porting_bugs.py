"""Each classic GPT-J porting bug, switched on in one block of a copy of the reference, is found by the
parity tool at exactly that block; before it the copy agrees with the reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

import gptj_ref
from gptj_ref import reference
from gptj_ref.native import open_native
from gptj_ref.parity import compare, first_departure
from gptj_ref.porting_bugs import BUGS, buggy_reference, gelu_erf, rotary_rotate_half

PROMPT = "In the beginning God created the heaven and the earth."


@pytest.fixture(scope="module")
def demo():
    native = open_native(gptj_ref.demo.DEMO_PATH)
    weights = native.dequantized_weights()
    ids = gptj_ref.load(backend="reference").encode(PROMPT)
    return native.config, weights, reference.Reference(native.config, weights), ids


def test_the_unswitched_copy_agrees_exactly(demo):
    config, weights, ref, ids = demo
    rows = compare(ref, buggy_reference("rotate_half", config, weights, blocks=[]), ids)
    assert [label for label, _, _ in rows][:2] == ["embeddings", "block 0"] and len(rows) == config.n_layer + 3
    assert first_departure(rows) is None and all(mx == 0.0 for _, mx, _ in rows)


@pytest.mark.parametrize("bug", BUGS)
@pytest.mark.parametrize("where", ["first", "last"])
def test_parity_names_the_block_where_the_bug_is(demo, bug, where):
    config, weights, ref, ids = demo
    block = 0 if where == "first" else config.n_layer - 1
    rows = compare(ref, buggy_reference(bug, config, weights, blocks=[block]), ids)
    label, size = first_departure(rows)
    assert label == f"block {block}"
    # The copy runs the same float32 operations as the reference up to the buggy block: the states before
    # it are bit-identical (tolerance 0), and the bug moves the block's output by more than float32 noise
    # (the smallest, the erf GELU, moves it by ~1e-5 on activations of size ~1; float32 rounding of
    # identical operations is 0 here, so any nonzero difference is the bug).
    assert size > 1e-6
    assert rows[-1][1] > 0  # and it reaches the logits


def test_the_wrong_pieces_are_what_they_claim(demo):
    """rotate_half turns dims (i, i + n/2) together; the erf GELU is x * Phi(x)."""
    x = np.arange(8, dtype=np.float32).reshape(1, 1, 1, 8)
    sin = np.ones((1, 1, 4), np.float32)
    cos = np.zeros((1, 1, 4), np.float32)
    np.testing.assert_array_equal(rotary_rotate_half(x, sin, cos).ravel(), [-4, -5, -6, -7, 0, 1, 2, 3])
    np.testing.assert_array_equal(reference.rotary(x, sin, cos).ravel(), [-1, 0, -3, 2, -5, 4, -7, 6])
    # Phi(1) = 0.8413447460685429 (normal CDF); gelu_new(1) = 0.8411920 differs in the 4th digit
    assert abs(float(gelu_erf(np.float32(1.0))) - 0.8413447) < 1e-6
    assert abs(float(reference.gelu_new(np.float32(1.0))) - 0.8411920) < 1e-6
