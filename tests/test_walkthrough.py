"""docs/walkthrough.md is what its template gives when run now: the functions it shows are reference.py's
current source, and every number it prints is what the code prints. A change in reference.py (or the demo
model) that moves a line, a shape or a number shown in the page fails here; rebuild the page with
`PYTHONPATH=. python docs/build_walkthrough.py` and read the diff."""

from __future__ import annotations

import difflib
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_walkthrough", os.path.join(ROOT, "docs", "build_walkthrough.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_walkthrough_is_what_its_code_prints():
    builder = load_builder()
    built = builder.build(figures=False)
    with open(builder.PAGE, encoding="utf-8") as f:
        committed = f.read()
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(True), built.splitlines(True), "docs/walkthrough.md", "built now", n=1
        )
    )
    assert committed == built, "the walkthrough no longer matches its code:\n" + diff


def test_the_page_shows_reference_functions_and_their_output():
    """The page pulls functions by name and has output under its code (a builder that silently dropped
    either would still pass the test above)."""
    builder = load_builder()
    with open(builder.PAGE, encoding="utf-8") as f:
        page = f.read()
    for name in ("layer_norm", "rotary_tables", "rotary", "attention", "block", "gelu_new", "softmax"):
        assert f"def {name}(" in page, name
    assert page.count("```text") >= 10
    for picture in ("attention_block0_head1.png", "int8_logit_error.png"):
        assert f"(img/{picture})" in page and os.path.exists(os.path.join(ROOT, "docs", "img", picture))
