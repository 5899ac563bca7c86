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
    result = subprocess.run(
        command + list(args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
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
    b = run(
        "generate",
        "-n",
        "8",
        "--backend",
        "reference",
        "--sample",
        "--seed",
        "3",
        "--no-stream",
        stdin="Once upon a time",
    )
    assert a.stdout.startswith("Once upon a time") and a.stdout == b.stdout


def test_greedy_cli_matches_the_python_api():
    import gptj_ref

    expected = gptj_ref.load(backend="reference").generate("The dog", max_new_tokens=6)
    assert run("generate", "The dog", "-n", "6", "--backend", "reference").stdout == "The dog" + expected + "\n"


def test_info_describes_the_builtin_model():
    out = run("info").stdout
    assert "parameters:" in out and "tokenizer:" in out and "vocab 50400" in out
    from gptj_ref import _core

    forced_scalar = os.environ.get("GPTJ_FORCE_SCALAR", "") not in ("", "0")
    chosen = "scalar" if forced_scalar else _core.available_isas()[-1]  # the best level, unless forced
    assert f"kernels: {chosen} (this CPU and build can run: {', '.join(_core.available_isas())})" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--temperature", "-1"], "temperature must be >= 0 (0 = greedy)"),
        (["generate", "x", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["generate", "x", "-n", "100000"], "exceed the model's context"),
        (["generate", ""], "the prompt is empty"),
        (["generate", "x", "--model", "/nonexistent/model.gptj"], "no model at '/nonexistent/model.gptj'"),
        (["generate", "x", "--threads", "0"], "threads must be a positive integer"),
    ],
)
def test_errors_are_one_clear_line(args, message):
    result = (
        run(*args, "--backend", "reference", check_ok=False) if args[0] == "generate" else run(*args, check_ok=False)
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def test_unknown_backend_is_refused_by_the_parser():
    result = run("generate", "x", "--backend", "gpu", check_ok=False)
    assert result.returncode == 2 and "invalid choice: 'gpu'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """A tiny random GPT-J with the real 50400-token vocabulary, saved by transformers."""
    from helpers import make_hf_model

    model = make_hf_model(seed=11, vocab_size=50400, n_positions=256, n_embd=64, n_layer=2, n_head=2, rotary_dim=16)
    path = tmp_path_factory.mktemp("cli") / "tiny-gptj"
    model.save_pretrained(path)
    return path


def test_convert_info_generate_workflow(text_checkpoint, tmp_path):
    native = tmp_path / "tiny.gptj"
    result = run("convert", str(text_checkpoint), str(native), "--dtype", "q8", "--no-progress")
    assert native.exists() and "wrote" in result.stderr
    info = run("info", str(native)).stdout
    assert "dtype: q8" in info and "embedded in the file" in info and "layers 2, n_embd 64" in info
    info_hf = run("info", str(text_checkpoint)).stdout
    assert "Hugging Face checkpoint" in info_hf and "dtype: F32" in info_hf
    for backend in ("reference", "auto"):
        out = run("generate", "--model", str(native), "--backend", backend, "The dog", "-n", "5").stdout
        assert out.startswith("The dog")
    for kv_dtype in ("float16", "float32"):  # greedy text from an int8 model with either cache precision
        out = run("generate", "--model", str(native), "--kv-dtype", kv_dtype, "The dog", "-n", "5").stdout
        assert out.startswith("The dog")
    bad = run("generate", "--model", str(native), "--kv-dtype", "int8", "x", check_ok=False)
    assert bad.returncode != 0 and "invalid choice: 'int8'" in bad.stderr
    direct = run("generate", "--model", str(text_checkpoint), "--backend", "reference", "The dog", "-n", "5").stdout
    assert direct.startswith("The dog")


def test_parity_reports_every_block_and_the_greedy_tokens(text_checkpoint):
    out = run(
        "parity", str(text_checkpoint), "The dog", "--a", "reference", "--b", "transformers", "--new-tokens", "8"
    ).stdout
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[2:7]] == ["embeddings", "block", "block", "ln_f", "logits"]
    logits_max_diff = float(lines[6].split()[1])
    assert logits_max_diff < 1e-4  # reference vs transformers in fp32 (see test_reference.py for the bound)
    assert "greedy: the 8 generated tokens agree" in out


def test_bench_prints_prompt_and_decode_speed():
    out = run("bench", "--backend", "reference", "--prompt-tokens", "16", "--new-tokens", "4", "--repeats", "1").stdout
    assert "prompt: 16 tokens" in out and "decode: 4 tokens" in out and "tokens/s" in out


def test_convert_refuses_a_missing_source(tmp_path):
    result = run("convert", str(tmp_path / "nothing"), str(tmp_path / "out.gptj"), check_ok=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.gptj").exists()


def test_parity_between_the_reference_and_the_cpp_runtime(text_checkpoint):
    out = run("parity", str(text_checkpoint), "The dog", "--a", "reference", "--b", "cpp", "--new-tokens", "8").stdout
    rows = {
        line.split()[0] + (line.split()[1] if line.startswith("block") else ""): line.split()
        for line in out.splitlines()[2:7]
    }
    assert set(rows) == {"embeddings", "block0", "block1", "ln_f", "logits"}
    logits = rows["logits"]
    assert float(logits[1]) <= 1e-4 * float(logits[3])  # the runtime tests' bound, relative to max |logit|
    assert "greedy: the 8 generated tokens agree" in out
