"""Misuse and faults: KV caches, prompts, text, the converter's output, the CLI's output, memory limits.
One test per defect of the adversarial review, grouped by class (SECURITY.md)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import gptj_ref
from gptj_ref.config import GPTJConfig
from gptj_ref.convert import convert
from gptj_ref.errors import CheckpointError, GPTJError, InputError, OutputError
from gptj_ref.layout import random_weights
from gptj_ref.runtime import CppModel
from gptj_ref.safetensors_file import save_tensors

# Child processes import the installed package, from a directory outside the source tree: the tree's
# gptj_ref has no compiled extension.
ENV = dict(os.environ)
OUTSIDE = tempfile.gettempdir()
BASE = dict(
    vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=8, bos_token_id=99, eos_token_id=99
)


def cpp_model(**changes) -> CppModel:
    config = GPTJConfig(**{**BASE, **changes})
    return CppModel(config, random_weights(config), threads=1)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    config = GPTJConfig(**{**BASE, "vocab_size": 50400, "bos_token_id": 50256, "eos_token_id": 50256})
    path = tmp_path_factory.mktemp("ck")
    config.to_json_file(path / "config.json")
    save_tensors(path / "model.safetensors", random_weights(config, seed=1))
    return path


# ---------------------------------------------------------------------------------------------------
# KV caches (defects 1, 14): a cache fits only the geometry that made it, is used by one call at a time
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("other", [dict(n_embd=128, n_layer=4), dict(n_layer=1), dict(n_head=2)])
def test_a_cache_of_another_geometry_is_refused(other):
    model, stranger = cpp_model(), cpp_model(**other)
    with pytest.raises(InputError, match="this cache was made for a model with n_layer, n_head, head_dim"):
        model.forward(np.arange(5), stranger.new_cache(32))
    with pytest.raises(InputError, match="this cache was made for a model"):
        stranger.forward(np.arange(5), model.new_cache(32))


def test_a_cache_longer_than_the_rotary_table_is_refused():
    short, long = cpp_model(n_positions=16), cpp_model(n_positions=64)
    with pytest.raises(InputError, match="this cache has 64 slots but the model's context is 16"):
        short.forward(np.arange(10), long.new_cache(64))


def test_a_float16_cache_is_refused_by_a_float32_model():
    model = cpp_model()
    half = CppModel(model.config, model.weight_views(), threads=1, kv_dtype="float16")
    with pytest.raises(InputError, match="'float16'"):
        model.forward(np.arange(5), half.new_cache(32))


@pytest.mark.parametrize("batch", [10**7, 10**18])
def test_a_cache_bigger_than_memory_is_refused_before_allocating(batch):
    with pytest.raises(InputError, match="GiB, more than this machine's"):
        cpp_model().new_cache(64, batch=batch)


@pytest.mark.parametrize("batch, tokens", [(2.5, 8), (True, 8), (1, 8.0), (0, 8)])
def test_cache_sizes_must_be_integers(batch, tokens):
    with pytest.raises(InputError):
        cpp_model().new_cache(tokens, batch=batch)


def test_a_cache_in_use_by_another_thread_is_refused_not_corrupted():
    model = cpp_model(n_embd=256, n_layer=4, n_positions=1024)
    cache = model.new_cache(1024)
    outcomes = []

    def run():
        for _ in range(60):
            try:
                model.forward(np.array([1, 2, 3]), cache)
                outcomes.append("done")
            except InputError as e:
                assert "in use by another forward pass" in str(e)
                outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every accepted call added its 3 tokens once: Python's count and the C++ rows agree exactly.
    assert cache.length == 3 * outcomes.count("done") == cache.row_lengths[0]
    assert outcomes.count("done") + outcomes.count("refused") == 240


def test_under_a_memory_limit_allocations_are_readable_errors():
    """In a process limited to 1 GiB of address space, a cache that cannot be allocated is an InputError
    and the process carries on (no abort)."""
    code = """
import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import numpy as np, gptj_ref
from gptj_ref.errors import InputError
m = gptj_ref.load(None, backend="cpp", threads=1)
try:
    m.backend.new_cache(256, batch=16000)   # the demo model: 0.5 MiB a row, 7.81 GiB in all
except InputError as e:
    print("refused:", e)
print(m.generate("The dog", max_new_tokens=2) is not None)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV, cwd=OUTSIDE
    )
    assert out.returncode == 0, out.stderr
    assert "refused: cannot allocate a KV cache of 7.81 GiB" in out.stdout and out.stdout.endswith("True\n")


# ---------------------------------------------------------------------------------------------------
# Prompts (defects 5, 12): only integers are token ids; text must be valid Unicode, one rule for all
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return gptj_ref.load(None, backend="reference")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.generate_ids(["abc"]), "token id 0 is a str"),
        (lambda m: m.generate_ids([None]), "token id 0 is a NoneType"),
        (lambda m: m.generate_ids([float("nan")]), "token id 0 is a float"),
        (lambda m: m.generate_ids([1.7]), "token id 0 is a float"),
        (lambda m: m.generate_ids([5, True]), "token id 1 is a bool"),
        (lambda m: m.generate_ids(np.array([1.0, 2.0])), "1-D array of integers"),
        (lambda m: m.generate_ids(b"hi"), "not bytes"),
        (lambda m: m.logits(b"The dog"), "not bytes"),
        (lambda m: m.generate(b"The dog"), "got bytes"),
        (lambda m: m.generate([None]), "got NoneType"),
        (lambda m: m.generate_ids(5), "got int"),
    ],
)
def test_only_integers_are_token_ids(demo, call, message):
    with pytest.raises(InputError, match=message):
        call(demo)


def test_numpy_integer_ids_are_ids(demo):
    ids = np.array([464, 3290], dtype=np.int32)
    assert demo.generate_ids(ids, max_new_tokens=2) == demo.generate_ids([464, 3290], max_new_tokens=2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\ud800", "lone surrogate U\\+D800 at character 1"),
        ("ok \udcff", "byte 0xff, which is not UTF-8, at character 3"),
    ],
)
def test_invalid_unicode_text_is_refused_with_its_position(demo, text, message):
    with pytest.raises(InputError, match=message):
        demo.generate(text, max_new_tokens=2)


def run_cli(*args, stdin=None, stdout=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "gptj_ref.cli", *args],
        input=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=120,
        env=ENV,
        cwd=OUTSIDE,
    )


@pytest.mark.parametrize("how", ["argument", "stdin"])
def test_the_cli_refuses_bytes_that_are_not_utf8_the_same_way(how):
    args = ["generate", "-n", "2", "--backend", "reference"]
    result = run_cli(*args, os.fsdecode(b"\xff\xfe")) if how == "argument" else run_cli(*args, stdin=b"\xff\xfe")
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines()[-1] == (
        "gptj generate: error: the text holds byte 0xff, which is not UTF-8, at character 0; give valid UTF-8 text"
    )


def test_output_to_a_full_device_is_one_line_error():
    with open("/dev/full", "wb") as full:
        result = run_cli("generate", "-n", "2", "--backend", "reference", "hi", stdout=full)
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        "gptj: no --model given, using " + gptj_ref.api.BUILTIN_DESCRIPTION,
        "gptj generate: error: cannot write the output: No space left on device",
    ]


# ---------------------------------------------------------------------------------------------------
# The converter's output (defects 6, 7)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_convert_refuses_to_overwrite_its_input(tmp_path, checkpoint_dir, name):
    shutil.copytree(checkpoint_dir, tmp_path / "ck")
    before = (tmp_path / "ck" / name).read_bytes()
    with pytest.raises(OutputError, match="is one of the input's files"):
        convert(tmp_path / "ck", tmp_path / "ck" / name, progress=False)
    assert (tmp_path / "ck" / name).read_bytes() == before


@pytest.mark.parametrize("dst", ["", "newdir/"])
def test_convert_needs_a_file_name(tmp_path, checkpoint_dir, dst):
    with pytest.raises(OutputError, match="is not a file name"):
        convert(checkpoint_dir, dst, progress=False)


def test_a_failing_write_is_one_line_and_leaves_nothing(tmp_path, checkpoint_dir):
    """A file-size limit makes the write fail with EFBIG, as a full disk fails it with ENOSPC."""
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); from gptj_ref.cli import main; "
        f"sys.exit(main(['convert', {str(checkpoint_dir)!r}, {str(tmp_path / 'out.gptj')!r}, '--dtype', 'f32', "
        "'--no-progress']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV, cwd=OUTSIDE
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"gptj convert: error: cannot write {tmp_path / 'out.gptj'}: File too large; "
        "nothing was written"
    )
    assert os.listdir(tmp_path) == []


def test_the_free_space_check_counts_the_header(checkpoint_dir):
    from gptj_ref.native import native_file_size, native_size

    config = GPTJConfig.from_json_file(checkpoint_dir / "config.json")
    tokenizer = "x" * 100_000
    assert native_file_size(config, "q8", tokenizer) > native_size(config, "q8") + 100_000


SLOW_CONVERT = """
import sys, time
import gptj_ref.convert as c
write = c.write_native
def slow(*args, **kwargs):
    progress = kwargs["progress"]
    def each(name, nbytes):
        time.sleep(0.2)
        progress(name, nbytes)
    kwargs["progress"] = each
    return write(*args, **kwargs)
c.write_native = slow
print("started", flush=True)
c.convert(sys.argv[1], sys.argv[2], dtype="f32", progress=False)
"""


def start_slow_convert(src, dst):
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_CONVERT, str(src), str(dst)], stdout=subprocess.PIPE, env=ENV, cwd=OUTSIDE
    )
    assert p.stdout.readline() == b"started\n"
    p.stdout.close()
    deadline = time.monotonic() + 60
    while not glob.glob(str(dst.parent / ".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    return p


def test_sigterm_mid_convert_leaves_nothing(tmp_path, checkpoint_dir):
    out = tmp_path / "out"
    out.mkdir()
    p = start_slow_convert(checkpoint_dir, out / "m.gptj")
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 128 + signal.SIGTERM
    assert os.listdir(out) == []


def test_a_temp_left_by_kill_9_is_removed_by_the_next_convert(tmp_path, checkpoint_dir):
    out = tmp_path / "out"
    out.mkdir()
    p = start_slow_convert(checkpoint_dir, out / "m.gptj")
    p.kill()
    p.wait(60)
    assert len(glob.glob(str(out / ".tmp-m.gptj-*"))) == 1
    convert(checkpoint_dir, out / "m.gptj", dtype="q8", progress=False)
    assert os.listdir(out) == ["m.gptj"]


def test_a_running_converts_temp_is_not_removed(tmp_path, checkpoint_dir):
    """The stale-temp cleanup removes only temporaries no writer holds."""
    out = tmp_path / "out"
    out.mkdir()
    p = start_slow_convert(checkpoint_dir, out / "m.gptj")
    try:
        (temp,) = glob.glob(str(out / ".tmp-m.gptj-*"))
        from gptj_ref.safetensors_file import _remove_stale_temps

        _remove_stale_temps(str(out), "m.gptj")
        assert os.path.exists(temp)
    finally:
        p.kill()
        p.wait(60)


def test_a_source_truncated_mid_convert_is_an_error_not_sigbus(tmp_path, checkpoint_dir, monkeypatch):
    import gptj_ref.convert as c

    shutil.copytree(checkpoint_dir, tmp_path / "ck")
    weights = tmp_path / "ck" / "model.safetensors"
    write = c.write_native

    def truncating(*args, **kwargs):
        progress = kwargs["progress"]

        def each(name, nbytes):
            os.truncate(weights, 4096)
            progress(name, nbytes)

        kwargs["progress"] = each
        return write(*args, **kwargs)

    monkeypatch.setattr(c, "write_native", truncating)
    with pytest.raises(CheckpointError, match="truncated or changed while being read"):
        convert(tmp_path / "ck", tmp_path / "m.gptj", dtype="f32", progress=False)
    assert not (tmp_path / "m.gptj").exists()


def test_every_refusal_is_a_gptj_error():
    """The classes callers catch: all of the above derive from GPTJError."""
    assert issubclass(OutputError, GPTJError) and issubclass(InputError, GPTJError)


def test_the_reference_refuses_a_cache_of_another_geometry():
    from gptj_ref.reference import Reference

    def reference(**changes):
        config = GPTJConfig(**{**BASE, **changes})
        return Reference(config, random_weights(config))

    model, stranger = reference(), reference(n_layer=3, n_embd=64)
    with pytest.raises(InputError, match="was made for another model"):
        model.forward(np.arange(5), stranger.new_cache(32))
    with pytest.raises(InputError, match="needs a cache from its own new_cache"):
        model.forward(np.arange(5), cpp_model().new_cache(32))
