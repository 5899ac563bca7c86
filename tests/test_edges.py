"""The edges a user touches: command-line habits, settings people bring from transformers and OpenAI,
prompt types, threads, memory honesty, Hub names, packaging and the documented commands.

CLI behaviour runs the command as a subprocess, as a user runs it (`run` from test_cli).
"""

from __future__ import annotations

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gptj_ref
from gptj_ref import cli
from gptj_ref.config import GPTJ_6B
from gptj_ref.errors import CheckpointError, InputError, MemoryLimitError, SettingsError
from gptj_ref.generate import UNSUPPORTED_SETTINGS, GenerationSettings, make_settings
from gptj_ref.memory import estimate_memory, parse_bytes
from gptj_ref.threads import check_threads, default_threads, max_threads, physical_cores
from test_cli import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo():
    return gptj_ref.load(backend="reference")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny Hugging Face checkpoint with the real vocabulary, its q8 file, and two truncated copies."""
    from gptj_ref.convert import convert
    from helpers import make_hf_model

    base = tmp_path_factory.mktemp("edges")
    hf = base / "tiny-hf"
    make_hf_model(
        seed=5, vocab_size=50400, n_positions=128, n_embd=64, n_layer=2, n_head=2, rotary_dim=16
    ).save_pretrained(hf)
    q8 = base / "m.gptj"
    convert(hf, q8, dtype="q8", progress=False)
    data = q8.read_bytes()
    (base / "cut-data.gptj").write_bytes(data[: len(data) // 2])  # header intact, tensors cut
    (base / "cut-header.gptj").write_bytes(data[:200])  # header itself cut
    return {"hf": hf, "q8": q8, "cut-data": base / "cut-data.gptj", "cut-header": base / "cut-header.gptj"}


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------


def test_stop_and_prompt_escapes_are_interpreted(demo):
    # --stop "\x20" is a space: the continuation ends before its first space, as the API's stop=[" "] does.
    expected = demo.generate("Q: 2+2?\nA:", stop=[" "], max_new_tokens=8)
    out = run("generate", "-e", "Q: 2+2?\\nA:", "--stop", "\\x20", "-n", "8", "--backend", "reference").stdout
    assert out == "Q: 2+2?\nA:" + expected + "\n"
    # Without -e the prompt is taken literally (a backslash and an n).
    literal = run("generate", "a\\nb", "-n", "2", "--backend", "reference").stdout
    assert literal.startswith("a\\nb")


def test_unescape_rules():
    assert cli.unescape(r"a\nb\t\\c\x41\u00e9\U0001F600\q") == "a\nb\t\\cAé\U0001f600\\q"
    assert cli.unescape("héllo\\n") == "héllo\n"  # non-ASCII passes through unchanged


def test_stdin_loses_only_its_final_newline(demo):
    expected = "Once upon a time" + demo.generate("Once upon a time", max_new_tokens=4) + "\n"
    assert run("generate", "-n", "4", "--backend", "reference", stdin="Once upon a time\n").stdout == expected
    # Inner and earlier newlines are content.
    two = run("generate", "-n", "2", "--backend", "reference", stdin="a\n\n").stdout
    assert two.startswith("a\n") and not two.startswith("a\n\n")


def test_version():
    assert run("--version").stdout.strip() == f"gptj {gptj_ref.__version__}"


def test_one_way_to_name_the_model(tiny_files, monkeypatch):
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "64G")  # the same "available" line in every `gptj info` below
    q8 = str(tiny_files["q8"])
    info = run("info", "--model", q8)
    assert "dtype: q8" in info.stdout and "note:" not in info.stderr
    older = run("info", q8)  # the older positional form
    assert older.stdout == info.stdout and "is named with --model" in older.stderr
    # parity with one positional is the prompt, on --model (or the demo model)
    parity = run("parity", "--model", q8, "The dog", "--new-tokens", "2")
    assert parity.stdout.startswith("prompt: 'The dog'")
    assert run("parity", "The dog", "--new-tokens", "2").stdout.startswith("prompt: 'The dog'")
    older = run("parity", q8, "The dog", "--new-tokens", "2")
    assert older.stdout == parity.stdout and "is named with --model" in older.stderr
    twice = run("info", q8, "--model", q8, check_ok=False)
    assert twice.returncode == 2 and "given twice" in twice.stderr
    bench = run("bench", q8, "--prompt-tokens", "4", "--new-tokens", "2", "--repeats", "1")
    assert "decode: 2 tokens" in bench.stdout


def test_help_examples_parse_and_the_stop_example_runs(tiny_files):
    parser = cli.build_parser()
    for command in cli.commands():
        for line in command.examples.splitlines():
            text = line.split("  #")[0].strip()
            if not text.startswith("gptj "):
                continue
            words = shlex.split(text.split("|")[-1].strip())[1:]
            parser.parse_args(words)  # every example is a valid command line
    out = run("generate", "--model", str(tiny_files["q8"]), "-e", "Q: What is 2+2?\\nA:", "--stop", "\\n").stdout
    assert out.startswith("Q: What is 2+2?\nA:") and "\n" not in out[len("Q: What is 2+2?\nA:") : -1]


def test_a_command_is_one_registration():
    seen = []
    extra = cli.Command(
        "hello",
        "say hello",
        lambda p: p.add_argument("--name", default="you"),
        lambda args: seen.append(args.name) or 0,
        examples="  gptj hello --name me\n",
    )
    assert cli.main(["hello", "--name", "me"], extra=[extra]) == 0 and seen == ["me"]


def test_cli_imports_its_lists_and_defaults():
    source = inspect.getsource(cli)
    assert "_core" not in source.replace("runtime._core", "")  # nothing reaches into the extension
    assert "runtime._core" not in source
    parser = cli.build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    defaults = {a.dest: a.default for a in generate._actions}
    assert defaults["max_new_tokens"] == GenerationSettings().max_new_tokens
    assert defaults["repetition_penalty"] == GenerationSettings().repetition_penalty
    choices = {a.dest: a.choices for a in generate._actions}
    from gptj_ref.api import BACKENDS
    from gptj_ref.backend import KV_DTYPES
    from gptj_ref.native import NATIVE_DTYPES

    assert tuple(choices["backend"]) == BACKENDS and tuple(choices["kv_dtype"]) == KV_DTYPES
    convert = parser._subparsers._group_actions[0].choices["convert"]
    assert tuple(next(a.choices for a in convert._actions if a.dest == "dtype")) == NATIVE_DTYPES


def test_temperature_zero_is_greedy_on_the_command_line():
    greedy = run("generate", "The dog", "-n", "5", "--backend", "reference").stdout
    assert run("generate", "The dog", "-n", "5", "--backend", "reference", "--temperature", "0").stdout == greedy


def test_truncated_files_get_one_message_everywhere(tiny_files):
    for kind in ("cut-data", "cut-header"):
        path = str(tiny_files[kind])
        info = run("info", "--model", path, check_ok=False)
        generate = run("generate", "--model", path, "x", check_ok=False)
        assert info.returncode == generate.returncode == 2
        message = info.stderr.strip().split("error: ", 1)[1]
        assert "truncated" in message and generate.stderr.strip().split("error: ", 1)[1] == message


def test_threads_respect_omp_num_threads_and_are_shown():
    out = subprocess.run(
        [sys.executable, "-m", "gptj_ref.cli", "info"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    ).stdout
    assert "threads: 1 (OMP_NUM_THREADS)" in out
    stats = run("generate", "x", "-n", "2", "-t", "1").stderr.strip().splitlines()[-1]
    assert "1 threads" in stats
    bad = run("generate", "x", "-t", "1000", check_ok=False)
    assert bad.returncode == 2 and f"at most {max_threads()}" in bad.stderr and "Traceback" not in bad.stderr
    huge = run("generate", "x", "--threads", str(2**40), check_ok=False)
    assert huge.returncode == 2 and "more than" in huge.stderr and "Traceback" not in huge.stderr


def test_memory_guard_refuses_with_the_estimate(tiny_files):
    q8 = str(tiny_files["q8"])
    refused = subprocess.run(
        [sys.executable, "-m", "gptj_ref.cli", "generate", "--model", q8, "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "GPTJ_MEMORY_LIMIT": "1M"},
        timeout=120,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert re.search(
        r"needs about [0-9.]+ GB: weights .* but 0.00 GB is available \(GPTJ_MEMORY_LIMIT\)", refused.stderr
    ), refused.stderr
    info = run("info", "--model", q8, "-c", "64").stdout
    for dtype in ("q8", "f16", "f32"):
        assert re.search(rf"^  {dtype}: [0-9.]+ GB: weights", info, re.M)
    assert "context of 64 tokens" in info


# ---------------------------------------------------------------------------------------------------
# Settings and prompts in Python
# ---------------------------------------------------------------------------------------------------


def test_temperature_zero_is_greedy(demo):
    assert demo.generate("The dog", max_new_tokens=6, do_sample=True, temperature=0, seed=1) == demo.generate(
        "The dog", max_new_tokens=6
    )


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_SETTINGS))
def test_settings_that_do_not_apply_say_what_to_use(demo, name):
    with pytest.raises(SettingsError, match=f"^{name} is not supported by gptj_ref: "):
        demo.generate("x", **{name: 2})


def test_unknown_setting_suggests_the_closest(demo):
    with pytest.raises(SettingsError, match="unknown setting 'max_new_token'; did you mean 'max_new_tokens'"):
        demo.generate("x", max_new_token=3)


def test_synonyms_from_transformers(demo):
    prompt_tokens = len(demo.encode("The dog"))
    assert demo.generate("The dog", max_length=prompt_tokens + 5) == demo.generate("The dog", max_new_tokens=5)
    assert demo.generate_ids(demo.encode("The dog"), max_length=prompt_tokens + 3) == demo.generate_ids(
        demo.encode("The dog"), max_new_tokens=3
    )
    assert demo.generate("The dog", stop_strings=[" "], max_new_tokens=8) == demo.generate(
        "The dog", stop=[" "], max_new_tokens=8
    )
    first = demo.generate_ids(demo.encode("The dog"), max_new_tokens=1)[0]
    # the first greedy token declared end-of-text: nothing is generated; a list of ids works too
    assert demo.generate_ids(demo.encode("The dog"), eos_token_id=first) == []
    assert demo.generate_ids(demo.encode("The dog"), eos_token_id=[50256, first]) == []
    assert demo.generate("The dog", pad_token_id=50256, max_new_tokens=3) == demo.generate("The dog", max_new_tokens=3)
    with pytest.raises(SettingsError, match="not both"):
        demo.generate("x", max_length=5, max_new_tokens=2)
    with pytest.raises(SettingsError, match="leaves no room"):
        demo.generate("The dog", max_length=1)
    with pytest.raises(SettingsError, match="max_length counts the prompt"):
        make_settings({"max_length": 5})
    with pytest.raises(SettingsError, match="outside the vocabulary"):
        demo.generate("x", eos_token_id=10**6)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "1"])
def test_bad_seeds(demo, seed):
    with pytest.raises(SettingsError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        demo.generate("x", do_sample=True, seed=seed)


def test_largest_seed_works(demo):
    assert isinstance(demo.generate("x", do_sample=True, seed=2**64 - 1, max_new_tokens=2), str)


@pytest.mark.parametrize(
    "call, prompt, message",
    [
        ("generate", [464, 3290], "for token ids use generate_ids"),
        ("generate", np.array([464, 3290]), "for token ids use generate_ids"),
        ("generate", 5, "got int"),
        ("generate", None, "got NoneType"),
        ("generate", b"The dog", "got bytes"),
        ("generate", ["a", 1], "every prompt must be a str"),
        ("generate", [], "no prompts given"),
        ("stream", [464, 3290], "for token ids use generate_ids"),
        ("stream", ["a", "b"], "for several prompts use generate"),
        ("stream", 3.5, "got float"),
    ],
)
def test_malformed_prompt_types_are_input_errors(demo, call, prompt, message):
    with pytest.raises(InputError, match=re.escape(message)):
        result = getattr(demo, call)(prompt, max_new_tokens=2)
        list(result) if call == "stream" else result


def test_repr_decode_tokenizer_and_documented_settings(demo):
    text = repr(demo)
    assert text.startswith("Model(") and "backend='reference'" in text and "dtype='q8'" in text
    cpp = gptj_ref.load(threads=1)
    assert "threads=1" in repr(cpp) and "backend='cpp-q8'" in repr(cpp)
    ids = demo.encode("The dog")
    assert demo.decode(ids) == "The dog" == demo.tokenizer.decode(ids)
    names = [f for f in GenerationSettings.__dataclass_fields__]
    for doc in (gptj_ref.Model.generate.__doc__ + gptj_ref.Model.__doc__, GenerationSettings.__doc__):
        for name in names + ["max_length", "stop_strings"]:
            assert name in doc, name
    assert "tokenizer" in gptj_ref.Model.__doc__ and "decode" in gptj_ref.Model.__doc__
    assert (Path(gptj_ref.__file__).parent / "py.typed").is_file()


# ---------------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------------


def test_one_thread_default_and_bound(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == physical_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    assert gptj_ref.load().backend.threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")  # OpenMP's nested list: the first level counts
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(SettingsError, match="OMP_NUM_THREADS='many' is not a positive integer"):
        default_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert check_threads(max_threads()) == max_threads()
    for bad in (0, -1, max_threads() + 1, 2**40, 1.5, True, "2"):
        with pytest.raises(SettingsError):
            check_threads(bad)
    model = gptj_ref.load(threads=2)
    with pytest.raises(SettingsError):
        model.backend.threads = 10**6


# ---------------------------------------------------------------------------------------------------
# Memory honesty
# ---------------------------------------------------------------------------------------------------


def test_memory_limit_refuses_a_load_and_says_the_estimate(tiny_files, monkeypatch):
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "10M")
    with pytest.raises(MemoryLimitError, match=r"needs about [0-9.]+ GB: weights .*0.01 GB is available") as e:
        gptj_ref.load(tiny_files["q8"])
    assert isinstance(e.value, MemoryError)
    with pytest.raises(MemoryLimitError, match=r"dtype='q8'"):  # an f32 directory is told about q8
        gptj_ref.load(tiny_files["hf"], backend="cpp")
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "1G")
    gptj_ref.load(tiny_files["q8"])
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "off")
    gptj_ref.load(tiny_files["q8"])
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "lots")
    with pytest.raises(SettingsError, match="not an amount of memory"):
        gptj_ref.load(tiny_files["q8"])


def test_parse_bytes():
    assert parse_bytes("8G") == 8 * 10**9 and parse_bytes("7.5GiB") == int(7.5 * 2**30)
    assert parse_bytes("512M") == 512 * 10**6 and parse_bytes("1000") == 1000


def test_estimate_of_the_6b_q8_model_matches_the_measured_peak():
    # Peak RSS measured by `python benchmarks/memory_context.py --tokens 68` on the full-size random q8 file
    # (68-token prompt + 4 tokens: context 72; Sapphire Rapids VM, Linux): 6.47 GB. The estimate must be
    # within 10% of it. The KV cache and weights parts are exact sizes: checked to the byte.
    estimate = estimate_memory(GPTJ_6B, "q8", "cpp", context=72, threads=2)
    assert abs(estimate.total / 6.47e9 - 1) < 0.10, estimate.describe()
    assert estimate.kv_cache == 28 * 2 * 72 * 4096 * 2
    f32 = estimate_memory(GPTJ_6B, "f32", "cpp", context=2048)
    assert f32.total > 24e9 and estimate_memory(GPTJ_6B, "f16", "cpp").weights > 24e9  # f16 is widened
    assert estimate_memory(GPTJ_6B, "q8", "reference").weights == GPTJ_6B.n_params() * 4


def test_quantize_on_load_equals_convert_then_load(tiny_files, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    on_load = gptj_ref.load(tiny_files["hf"], dtype="q8", backend="cpp")
    converted = gptj_ref.load(tiny_files["q8"], backend="cpp")
    ids = on_load.encode("The dog barked at the")
    assert np.array_equal(on_load.logits(ids), converted.logits(ids))  # bitwise: the same file contents
    assert on_load.dtype == "q8" and on_load.backend.name == "cpp-q8"
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    with pytest.raises(SettingsError, match="unknown dtype 'int4'"):
        gptj_ref.load(tiny_files["hf"], dtype="int4")


# ---------------------------------------------------------------------------------------------------
# Hub names, offline
# ---------------------------------------------------------------------------------------------------


def test_hub_names_resolve_in_the_local_cache(tiny_files, tmp_path, monkeypatch):
    import shutil

    snapshot = tmp_path / "hub" / "models--EleutherAI--gpt-j-6B" / "snapshots" / "abc123"
    shutil.copytree(tiny_files["hf"], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    model = gptj_ref.load("EleutherAI/gpt-j-6B", backend="reference")
    assert model.config.n_embd == 64 and str(snapshot) in model.description
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="huggingface-cli download EleutherAI/gpt-j-6B"):
        gptj_ref.load("EleutherAI/gpt-j-6B")


# ---------------------------------------------------------------------------------------------------
# Packaging and documented commands
# ---------------------------------------------------------------------------------------------------


def test_license_matches_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject or 'license = "Apache-2.0"' in pyproject
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert "License :: OSI Approved :: Apache Software License" in pyproject or 'license = "Apache-2.0"' in pyproject


DOCUMENTED = re.compile(r"^\s*(?:`)?(python benchmarks/[a-z0-9_]+\.py)", re.M)


def documented_benchmark_commands():
    """Every `python benchmarks/X.py` the README and the benchmark scripts' own docstrings show."""
    texts = [(ROOT / "README.md").read_text()] + [p.read_text() for p in (ROOT / "benchmarks").glob("*.py")]
    found = set()
    for text in texts:
        found.update(m.group(1) for m in re.finditer(r"(?<![A-Za-z=])python (benchmarks/[a-z0-9_]+\.py)", text))
    return sorted(found)


def test_every_benchmark_is_documented_without_pythonpath():
    # PYTHONPATH=. would put the source tree, which has no compiled extension, ahead of the installed package.
    for path in [ROOT / "README.md"] + sorted((ROOT / "benchmarks").glob("*.py")):
        assert "PYTHONPATH=. python benchmarks" not in path.read_text(), path
    scripts = {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(documented_benchmark_commands())


@pytest.mark.parametrize("script", documented_benchmark_commands())
def test_documented_benchmark_commands_run_as_written(script):
    # From the repository root, as the README says, with the environment the tests run in: after
    # `pip install .` that is the installed package (with its extension), not the source tree. bench_core
    # imports gptj_ref._core before parsing its arguments, so its --help also shows the extension loads.
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr


# -------------------------------------------------------------------------------------------------
# The commands, memory estimate and loading of main's tree: eval, serve, batch; the demo file
# -------------------------------------------------------------------------------------------------

ALL_COMMANDS = ("generate", "convert", "info", "bench", "parity", "eval", "serve", "batch")


def test_help_lists_every_command_and_each_has_help_with_examples():
    listed = run("--help").stdout
    assert [c for c in ALL_COMMANDS if c not in listed] == []
    assert sorted(c.name for c in cli.commands()) == sorted(ALL_COMMANDS)
    for command in ALL_COMMANDS:
        assert "examples:" in run(command, "--help").stdout, command


@pytest.mark.parametrize("command", ["generate", "bench", "eval", "serve", "batch"])
def test_every_model_command_checks_threads_and_names_the_model_the_same_way(command, tmp_path):
    """--model/-m, --backend, --threads and --kv-dtype come from one function; a bad --threads is the same
    one-line error with exit status 2 in every command (it is refused before anything is loaded or served)."""
    help_text = run(command, *(["perplexity"] if command == "eval" else []), "--help").stdout
    for option in ("--model", "--backend", "--threads", "--kv-dtype"):
        assert option in help_text, (command, option)
    (tmp_path / "in.txt").write_text("In the beginning God created the heaven and the earth.\n")
    (tmp_path / "in.jsonl").write_text('{"id": 1, "prompt": "The dog"}\n')
    args = {
        "generate": ["The dog"],
        "bench": [],
        "eval": ["perplexity", str(tmp_path / "in.txt")],
        "serve": ["--port", "0"],
        "batch": [str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")],
    }[command]
    result = run(command, *args, "--threads", "0", check_ok=False)
    assert result.returncode == 2, result.stderr
    assert f"gptj {command}: error: threads must be a positive integer, got 0" in result.stderr


def test_the_estimate_counts_a_q8_files_embedding_as_int8_rows_from_format_version_2():
    """Format version 2 stores a q8 file's embedding as int8 rows (+ a float16 scale per 32): about 0.28x
    the float32 rows of version 1, whatever share of them the run touches."""
    from gptj_ref.native import native_size

    for context in (64, 2048):
        v1 = estimate_memory(GPTJ_6B, "q8", "cpp", context, format_version=1).weights
        v2 = estimate_memory(GPTJ_6B, "q8", "cpp", context, format_version=2).weights
        assert v2 < v1
        assert v2 == estimate_memory(GPTJ_6B, "q8", "cpp", context).weights  # version 2 is what convert writes
    # whole embedding touched (a context of all the vocabulary's rows): the file's tensor bytes, no more
    everything = estimate_memory(GPTJ_6B, "q8", "cpp", 2048, batch=10**4, format_version=2).weights
    assert native_size(GPTJ_6B, "q8") * 0.99 < everything <= native_size(GPTJ_6B, "q8")


def test_the_demo_file_estimate_is_bounded_by_its_tensors():
    from gptj_ref.demo import DEMO_PATH
    from gptj_ref.native import native_size, open_native

    native = open_native(DEMO_PATH)
    assert native.format_version == 2 and native.dtype == "q8"
    estimate = estimate_memory(native.config, "q8", "cpp", format_version=native.format_version)
    assert 0 < estimate.weights <= native_size(native.config, "q8") <= os.path.getsize(DEMO_PATH)


def test_load_with_dtype_and_context_on_the_demo_model(monkeypatch):
    """The demo default loads with a context bound and converts on load; f32 from its q8 file equals the
    reference on the same (dequantized) weights. Tolerance 1e-4 on logits of magnitude ~10: both are fp32
    of the same weights and differ only in summation order (measured 6e-6)."""
    small = gptj_ref.load(context=32)
    assert small.dtype == "q8" and small.description == gptj_ref.api.BUILTIN_DESCRIPTION
    f32 = gptj_ref.load(dtype="f32", context=32, backend="cpp")
    assert f32.dtype == "f32" and "converted on load" in f32.description
    reference = gptj_ref.load(backend="reference")
    assert np.abs(f32.logits("The dog barked") - reference.logits("The dog barked")).max() < 1e-4
    with pytest.raises(SettingsError, match="random tiny model is float32"):
        gptj_ref.load("tiny-random", dtype="q8")
    monkeypatch.setenv("GPTJ_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryLimitError, match="needs about"):
        gptj_ref.load()


def test_info_describes_the_demo_file_and_tiny_random():
    out = run("info").stdout
    assert "built-in demo GPT-J" in out and "(format version 2)" in out and "tokenizer: embedded in the file" in out
    assert re.search(r"memory needed at a context of 256 tokens", out) and re.search(r"\n  q8: [0-9.]+ GB", out)
    assert "threads: " in out and "kernels: " in out
    out = run("info", "--model", "tiny-random").stdout
    assert "random tiny GPT-J" in out and "dtype: f32 (in memory)" in out
