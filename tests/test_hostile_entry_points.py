"""The hostile-input rules on the entry points that serve, eval and batch added: the cache guards on
forward_rows / reset_row / copy_row, bad text through the server (an OpenAI error object with status 400),
`gptj batch` and `gptj eval` files, and the format-version field of a native file."""

from __future__ import annotations

import json

import httpx
import pytest

from gptj_ref.api import Model
from gptj_ref.cli import main
from gptj_ref.config import GPTJConfig
from gptj_ref.errors import CheckpointError, InputError
from gptj_ref.layout import random_weights
from gptj_ref.native import open_native
from gptj_ref.runtime import CppModel
from gptj_ref.serve import create_app
from gptj_ref.tokenizer import default_tokenizer
from test_serve import running

SMALL = GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64)
BIG = GPTJConfig(n_embd=128, n_layer=3, n_head=4, rotary_dim=8, n_positions=64)


@pytest.fixture(scope="module")
def small():
    return CppModel(SMALL, random_weights(SMALL, seed=1), threads=1)


@pytest.fixture(scope="module")
def big():
    return CppModel(BIG, random_weights(BIG, seed=2), threads=1)


def test_row_methods_refuse_a_cache_of_another_model(small, big):
    foreign = small.new_cache(16, batch=2)
    with pytest.raises(InputError, match="made for a model"):
        big.forward_rows([[1, 2], [3]], foreign)
    with pytest.raises(InputError, match="made for a model"):
        big.reset_row(foreign, 0)
    with pytest.raises(InputError, match="made for a model"):
        big.copy_row(foreign, 0, 1, 0)


def test_row_methods_check_rows_and_lengths(small):
    cache = small.new_cache(16, batch=2)
    small.forward_rows([[1, 2, 3], []], cache)
    with pytest.raises(InputError, match=r"row must be an integer in \[0, 2\)"):
        small.reset_row(cache, 2)
    with pytest.raises(InputError, match="dst must be"):
        small.copy_row(cache, 0, -1, 1)
    with pytest.raises(InputError, match="row 0 holds 3 tokens; cannot copy 4"):
        small.copy_row(cache, 0, 1, 4)
    small.copy_row(cache, 0, 1, 2)
    assert cache.row_lengths == [3, 2]


def test_row_methods_refuse_a_cache_in_use(small):
    """A cache another call is writing to is refused, not corrupted: the guard is held from outside here
    to stand for that other call."""
    cache = small.new_cache(16, batch=2)
    with small._claim(cache):
        for call in (
            lambda: small.forward_rows([[1], [2]], cache),
            lambda: small.reset_row(cache, 0),
            lambda: small.copy_row(cache, 0, 1, 0),
        ):
            with pytest.raises(InputError, match="in use by another"):
                call()
    small.forward_rows([[1], [2]], cache)  # released: usable again
    assert not cache._in_use.locked()


def test_server_answers_bad_text_with_a_400_error_object(small):
    model = Model(small, default_tokenizer(), "tiny")
    with running(create_app(model, model_name="tiny", max_batch=2, max_queue=8)) as base:
        lone = b'{"model": "tiny", "prompt": "The \\ud800 dog", "max_tokens": 2}'
        r = httpx.post(base + "/v1/completions", content=lone, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert "U+D800" in err["message"] and err["type"] == "invalid_request_error"
        chat = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi \ud800"}], "max_tokens": 2})
        r = httpx.post(
            base + "/v1/chat/completions",
            content=chat.encode(),
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "U+D800" in r.json()["error"]["message"], r.text
        r = httpx.post(
            base + "/v1/completions",
            content=b'{"prompt": "\xff\xfe"}',
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and "error" in r.json(), r.text
        ok = httpx.post(
            base + "/v1/completions", timeout=60, json={"model": "tiny", "prompt": "The dog", "max_tokens": 2}
        )
        assert ok.status_code == 200  # the server carries on


def test_batch_bad_text_lines_become_error_records(tmp_path):
    jobs = tmp_path / "in.jsonl"
    jobs.write_bytes(
        b'{"id": 1, "prompt": "The \\ud800 dog", "max_tokens": 2}\n'
        b'{"id": 2, "prompt": "\xff\xfe", "max_tokens": 2}\n'
        b'{"id": 3, "prompt": "The dog", "max_tokens": 2}\n'
    )
    out = tmp_path / "out.jsonl"
    main(["batch", str(jobs), str(out)])
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in done] == [3]
    errors = (tmp_path / "out.errors.jsonl").read_text()
    assert "U+D800" in errors and "not UTF-8" in errors


def test_eval_bad_text_files_are_input_errors(tmp_path, capsys):
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"The dog \xff ran")
    assert main(["eval", "perplexity", str(raw)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"text": "The \\ud800 dog"}\n')
    assert main(["eval", "lambada", str(lone)]) == 2
    assert "U+D800" in capsys.readouterr().err


@pytest.mark.parametrize("version", ["9" * 5000, "-1", "0", "3"], ids=["5000 digits", "-1", "0", "3"])
def test_native_format_version_field_is_checked(tmp_path, version):
    from gptj_ref.demo import DEMO_PATH

    with open(DEMO_PATH, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"]["format_version"] == "2"
    header["__metadata__"]["format_version"] = version
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp_path / "bad.gptj"
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    with pytest.raises(CheckpointError, match="version"):
        open_native(str(path))
