"""The installed `gptj` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

GPTJ = shutil.which("gptj")


def run(*args, stdin=None, check_ok=True):
    command = [GPTJ] if GPTJ else [sys.executable, "-m", "gptj_ref.cli"]
    result = subprocess.run(command + list(args), input=stdin, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if check_ok:
        assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def test_help_everywhere_with_examples():
    assert "generate" in run("--help").stdout
    for command in ("generate", "convert", "info", "bench", "parity"):
        out = run(command, "--help").stdout
        assert "examples:" in out and f"gptj {command}" in out


def test_generate_on_the_builtin_model_says_so_and_reports_speed():
    result = run("generate", "The dog", "-n", "6", "--backend", "reference")
    assert result.stdout.startswith("The dog") and len(result.stdout) > len("The dog\n")
    assert "built-in demo GPT-J" in result.stderr
    assert "tokens/s" in result.stderr.strip().splitlines()[-1]


def test_generate_reads_the_prompt_from_stdin_and_is_reproducible():
    a = run("generate", "-n", "8", "--backend", "reference", "--sample", "--seed", "3", stdin="Once upon a time")
    b = run("generate", "-n", "8", "--backend", "reference", "--sample", "--seed", "3", "--no-stream",
            stdin="Once upon a time")
    assert a.stdout.startswith("Once upon a time") and a.stdout == b.stdout


def test_greedy_cli_matches_the_python_api():
    import gptj_ref

    expected = gptj_ref.load(backend="reference").generate("The dog", max_new_tokens=6)
    assert run("generate", "The dog", "-n", "6", "--backend", "reference").stdout == "The dog" + expected + "\n"


def test_info_describes_the_builtin_model():
    out = run("info").stdout
    assert "parameters:" in out and "tokenizer:" in out and "vocab 50400" in out


@pytest.mark.parametrize("args, message", [
    (["generate", "x", "--temperature", "-1"], "temperature must be > 0"),
    (["generate", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
    (["generate", "x", "-n", "100000"], "exceed the model's context"),
    (["generate", ""], "the prompt is empty"),
    (["generate", "x", "--model", "/nonexistent/model.gptj"], "no model at '/nonexistent/model.gptj'"),
    (["generate", "x", "--threads", "0"], "threads must be a positive integer"),
])
def test_errors_are_one_clear_line(args, message):
    result = run(*args, "--backend", "reference", check_ok=False) if args[0] == "generate" else run(*args, check_ok=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def test_unknown_backend_is_refused_by_the_parser():
    result = run("generate", "x", "--backend", "gpu", check_ok=False)
    assert result.returncode == 2 and "invalid choice: 'gpu'" in result.stderr and "Traceback" not in result.stderr
