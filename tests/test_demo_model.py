"""The built-in demo model: the shipped file, the defaults that use it, and that it has learned English."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gptj_ref
from gptj_ref.config import TINY
from gptj_ref.demo import DEMO_DESCRIPTION, DEMO_PATH, TINY_RANDOM
from gptj_ref.native import open_native

PROMPT = "In the beginning God created the heaven and the"


def test_the_shipped_file_is_a_small_q8_gptj_with_an_int8_embedding():
    assert os.path.getsize(DEMO_PATH) <= 20 * 10**6  # the budget for the shipped file
    with open_native(DEMO_PATH) as native:
        assert native.dtype == "q8" and native.format_version == 2
        assert native.config.vocab_size == 50400 and native.config.n_layer == 4 and native.config.n_embd == 128
        assert native.tensor("transformer.wte.weight").dtype == np.int8
        native.check()  # int8 in [-127, 127], floats finite


def test_load_and_pipeline_default_to_the_demo_model():
    model = gptj_ref.load(backend="reference")
    assert model.description == DEMO_DESCRIPTION and model.config.n_embd == 128
    generator = gptj_ref.pipeline("text-generation", backend="reference")
    assert generator.model.description == DEMO_DESCRIPTION
    out = generator("The dog", max_new_tokens=4)
    assert out[0]["generated_text"].startswith("The dog")


def test_the_random_tiny_model_is_there_by_name():
    model = gptj_ref.load(TINY_RANDOM, backend="reference")
    assert model.config == TINY and "random" in model.description


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_the_demo_model_has_learned_its_corpus(backend):
    """A model with random weights puts ~1/50400 on every token; the trained one knows Genesis 1:1.
    ' earth' is its most likely next token (p = 0.067 on the reference, measured); the int8 runtime
    quantizes activations too, which moves logits by a few hundredths (docs/walkthrough.md), not the top token."""
    model = gptj_ref.load(backend=backend)
    logits = model.logits(PROMPT)[-1].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = int(np.argmax(p))
    assert model.tokenizer.decode([top]) == " earth" and p[top] > 0.03


def test_the_cli_names_the_demo_model(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "gptj_ref.cli", "generate", "The dog", "-n", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The dog") and f"using {DEMO_DESCRIPTION}" in result.stderr
    info = subprocess.run([sys.executable, "-m", "gptj_ref.cli", "info"], capture_output=True, text=True, timeout=300)
    assert "dtype: q8" in info.stdout and "format version 2" in info.stdout and DEMO_DESCRIPTION in info.stdout
