"""`gptj serve` end to end: a real uvicorn server on a free loopback port, the real `openai` client, and
raw HTTP (httpx) for the error cases. The model is an explicitly built small GPT-J with random weights
on the C++ backend (fast). Its text is nonsense but fully determined, so every answer is compared with
`Model.generate` under the settings the request maps to: exactly equal, because the C++ kernels compute
each row bitwise the same alone or batched and chunked prefill is exact (see gptj_ref.serve.scheduler).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx  # the serve extra and httpx/openai are part of the test extra: these tests always run
import numpy as np
import openai
import pytest
import uvicorn

from gptj_ref.api import Model, load
from gptj_ref.config import GPTJConfig
from gptj_ref.errors import SettingsError
from gptj_ref.generate import log_softmax, make_settings
from gptj_ref.layout import random_weights
from gptj_ref.reference import Reference
from gptj_ref.runtime import CppModel
from gptj_ref.serve import create_app
from gptj_ref.serve.chat import ChatTemplate
from gptj_ref.tokenizer import default_tokenizer

CONFIG = GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=2048)
NAME = "tiny-test"


@pytest.fixture(scope="module")
def weights():
    return random_weights(CONFIG, seed=11)


@pytest.fixture(scope="module")
def model(weights):
    return Model(CppModel(CONFIG, weights, threads=1), default_tokenizer(), "tiny test model")


@contextlib.contextmanager
def running(app):
    """Serve `app` on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(base)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def wait_healthy(base: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{base}/health did not become ready in {seconds} s")


@pytest.fixture(scope="module")
def base(model):
    with running(create_app(model, model_name=NAME, max_batch=4, max_queue=64)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)


def settings_for(temperature, max_tokens, seed=None, **extra):
    """The Model.generate settings an OpenAI request maps to (see gptj_ref.serve.protocol)."""
    s = dict(max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature or 1.0, top_k=0, seed=seed)
    s.update(extra)
    return s


def metric(base: str, name: str) -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------------------------------------------
# Completions and chat equal Model.generate
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("temperature, seed", [(0, None), (0.9, 7)])
def test_completions_equal_generate(client, model, stream, temperature, seed):
    prompts = ["The dog", "Zürich ’🤗 is"]
    kwargs = dict(model=NAME, prompt=prompts, max_tokens=12, temperature=temperature, n=2, stream=stream)
    if seed is not None:
        kwargs["seed"] = seed
    texts, reasons = {}, {}
    if stream:
        chunks = list(client.completions.create(**kwargs, stream_options={"include_usage": True}))
        for chunk in chunks:
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + c.text
                reasons[c.index] = c.finish_reason or reasons.get(c.index)
        assert chunks[-1].choices == []
        usage = chunks[-1].usage
    else:
        response = client.completions.create(**kwargs)
        texts = {c.index: c.text for c in response.choices}
        reasons = {c.index: c.finish_reason for c in response.choices}
        usage = response.usage
    assert sorted(texts) == [0, 1, 2, 3]
    new_tokens = 0
    for i, prompt in enumerate(prompts):
        for j in range(2):  # choice j of a prompt is seeded with seed + j
            settings = settings_for(temperature, 12, None if seed is None else seed + j)
            assert texts[2 * i + j] == model.generate(prompt, **settings)
            new_tokens += len(model.generate_ids(model.encode(prompt), **settings))
            assert reasons[2 * i + j] in ("length", "stop")
    assert usage.prompt_tokens == sum(len(model.encode(p)) for p in prompts)
    assert usage.completion_tokens == new_tokens
    if temperature == 0:
        assert texts[0] == texts[1]  # greedy: both choices alike
    else:
        assert texts[0] != texts[1]  # different seeds per choice


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_generate_on_the_rendered_prompt(client, model, stream):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a dog."}]
    template = ChatTemplate()
    prompt = template.render(messages)
    assert prompt == "You are terse.\n\nUser: Name a dog.\nAssistant:"
    kwargs = dict(model=NAME, messages=messages, max_tokens=16, temperature=0.8, seed=3, stream=stream)
    if stream:
        chunks = list(client.chat.completions.create(**kwargs))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        response = client.chat.completions.create(**kwargs)
        text, finish = response.choices[0].message.content, response.choices[0].finish_reason
        assert response.choices[0].message.role == "assistant"
    assert text == model.generate(prompt, **settings_for(0.8, 16, 3, stop=template.stop))
    assert finish in ("length", "stop")


def test_stop_strings(client, model):
    full = model.generate("The dog", **settings_for(0, 20))
    stop = full[6:9]
    expected = model.generate("The dog", **settings_for(0, 20, stop=(stop,)))
    assert expected == full[: full.find(stop)]
    response = client.completions.create(model=NAME, prompt="The dog", max_tokens=20, temperature=0, stop=[stop])
    assert response.choices[0].text == expected and response.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=NAME, prompt="The dog", max_tokens=20, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected


def test_logprobs_and_echo(client, model):
    prompt = "The dog and the cat"
    ids = model.encode(prompt)
    response = client.completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=0, logprobs=3, echo=True)
    choice = response.choices[0]
    continuation = model.generate(prompt, **settings_for(0, 6))
    assert choice.text == prompt + continuation
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text  # byte-level tokens of plain ASCII text join exactly
    assert len(lp.tokens) == len(ids) + 6 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    # The log-probabilities are the model's: log_softmax of the logits of the whole sequence at once.
    # The server computed them chunk by chunk and batched; the C++ rows are bitwise the same, so the
    # float64 log-softmax agrees to rounding of the last digits (1e-9).
    full_ids = ids + [model.encode(t)[0] for t in lp.tokens[len(ids) :]]
    logp = np.array([log_softmax(row) for row in model.logits(full_ids)])
    for t in range(1, len(full_ids)):
        assert lp.token_logprobs[t] == pytest.approx(logp[t - 1, full_ids[t]], abs=1e-9)
        top = lp.top_logprobs[t]
        assert len(top) == 3 and max(top.values()) == pytest.approx(logp[t - 1].max(), abs=1e-9)
    # Greedy: the chosen token is the most likely one.
    for t in range(len(ids), len(full_ids)):
        assert lp.token_logprobs[t] == pytest.approx(max(lp.top_logprobs[t].values()), abs=1e-12)
    assert lp.text_offset[:3] == [0, 3, 7]

    # Streamed, the same text and log-probs arrive chunk by chunk (the prompt's in the first chunk).
    chunks = [
        c.choices[0]
        for c in client.completions.create(
            model=NAME, prompt=prompt, max_tokens=6, temperature=0, logprobs=3, echo=True, stream=True
        )
    ]
    assert "".join(c.text for c in chunks) == choice.text
    streamed = [x for c in chunks if c.logprobs for x in c.logprobs.token_logprobs]
    assert streamed == lp.token_logprobs
    assert [x for c in chunks if c.logprobs for x in c.logprobs.text_offset] == lp.text_offset

    # max_tokens=0 with echo scores the prompt alone (what evaluation harnesses ask).
    scored = client.completions.create(model=NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == prompt and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(lp.token_logprobs[1 : len(ids)], abs=0)

    chat = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert "".join(c.token for c in content) == chat.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content)


def test_sixteen_concurrent_clients_each_equal_their_solo_run(base, model):
    # max_batch is 4: sixteen clients at once exercise admission from the queue, rows of different
    # lengths side by side, and slots reused as soon as a sequence ends.
    jobs = [
        dict(
            prompt=f"Client {k} says",
            max_tokens=8 + (k % 5) * 3,
            temperature=0 if k % 3 == 0 else 1.0,
            seed=100 + k,
            stream=k % 2 == 1,
        )
        for k in range(16)
    ]
    results = [None] * 16

    def run(k):
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        job = jobs[k]
        if job["stream"]:
            results[k] = "".join(ch.choices[0].text for ch in c.completions.create(model=NAME, **job) if ch.choices)
        else:
            results[k] = c.completions.create(model=NAME, **job).choices[0].text

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    steps_before = metric(base, "gptj_steps_total")
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for k, job in enumerate(jobs):
        assert results[k] == model.generate(
            job["prompt"], **settings_for(job["temperature"], job["max_tokens"], job["seed"])
        ), k
    # Batching happened: fewer steps than tokens (each step decodes up to 4 rows).
    tokens = sum(len(model.encode(r)) for r in results)
    assert metric(base, "gptj_steps_total") - steps_before < 0.8 * tokens


# ---------------------------------------------------------------------------------------------------
# Failure behaviour
# ---------------------------------------------------------------------------------------------------


def test_disconnect_mid_stream_frees_the_slot(base):
    cancelled = metric(base, 'gptj_sequences_finished_total{reason="cancelled"}')
    body = {"model": NAME, "prompt": "The dog", "max_tokens": 2000, "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", base + "/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in got)
            assert metric(base, "gptj_batch_rows_active") == 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and metric(base, "gptj_batch_rows_active") != 0:
        time.sleep(0.02)
    assert metric(base, "gptj_batch_rows_active") == 0
    assert metric(base, 'gptj_sequences_finished_total{reason="cancelled"}') == cancelled + 1


def test_full_queue_answers_429(model):
    with running(create_app(model, model_name=NAME, max_batch=1, max_queue=1)) as url:
        long = {"model": NAME, "prompt": "The dog", "max_tokens": 2000, "temperature": 0, "stream": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", url + "/v1/completions", json=long) as first:  # takes the slot
                assert first.status_code == 200
                first_lines = first.iter_lines()  # keep the iterator: dropping it closes the connection
                next(first_lines)
                with http.stream("POST", url + "/v1/completions", json=long) as second:  # waits in the queue
                    assert second.status_code == 200
                    assert metric(url, "gptj_queue_depth") == 1
                    third = httpx.post(url + "/v1/completions", json={**long, "stream": False})
                    assert third.status_code == 429 and third.headers["retry-after"] == "1"
                    assert third.json()["error"]["code"] == "queue_full"
        # Both streams were abandoned: the slot and the queue empty again, and requests succeed.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            metric(url, "gptj_batch_rows_active") or metric(url, "gptj_queue_depth")
        ):
            time.sleep(0.02)
        ok = httpx.post(url + "/v1/completions", json={"prompt": "A", "max_tokens": 2, "temperature": 0}, timeout=30)
        assert ok.status_code == 200


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        ({"prompt": "x", "temperature": 3}, 400, "temperature", "invalid_value"),
        ({"prompt": "x", "temperature": "hot"}, 400, "temperature", "invalid_type"),
        ({"prompt": "x", "n": 0}, 400, "n", "invalid_value"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p", "invalid_value"),
        ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
        ({"prompt": "x", "seed": -1}, 400, "seed", "invalid_value"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
        ({"prompt": "x", "presence_penalty": 2.5}, 400, "presence_penalty", "invalid_value"),
        ({"prompt": "x", "logprobs": 50}, 400, "logprobs", "invalid_value"),
        ({"prompt": "x", "temprature": 0.5}, 400, "temprature", "unrecognized_argument"),
        ({"prompt": "x", "suffix": "y"}, 400, "suffix", "unsupported_parameter"),
        ({"prompt": 5}, 400, "prompt", "invalid_type"),
        ({"prompt": ""}, 400, "prompt", "invalid_value"),
        ({"prompt": [1, 2, 10**9]}, 400, "prompt", "invalid_type"),
        ({"prompt": "x", "model": "gpt-4"}, 404, "model", "model_not_found"),
        ({"prompt": "The dog " * 1100, "max_tokens": 16}, 400, "prompt", "context_length_exceeded"),
        ({"prompt": "x", "max_tokens": 2048}, 400, "prompt", "context_length_exceeded"),
    ],
)
def test_bad_completion_requests(base, body, status, param, code):
    response = httpx.post(base + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code and error["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ],
)
def test_bad_chat_requests(base, body, param):
    response = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_bad_json_oversized_bodies_unknown_routes(base):
    response = httpx.post(base + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(base + "/v1/completions", content=b"[1, 2]")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    big = json.dumps({"prompt": "x" * (1 << 20)})
    response = httpx.post(base + "/v1/completions", content=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    response = httpx.get(base + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.get(base + "/v1/completions")
    assert response.status_code == 405 and "error" in response.json()


def test_models_health_metrics(base):
    models = httpx.get(base + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [NAME]
    assert httpx.get(base + f"/v1/models/{NAME}").json()["id"] == NAME
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    text = httpx.get(base + "/metrics").text
    for name in (
        "gptj_requests_total",
        "gptj_prompt_tokens_total",
        "gptj_completion_tokens_total",
        "gptj_queue_depth",
        "gptj_batch_rows_active",
        "gptj_time_to_first_token_seconds_bucket",
        "gptj_inter_token_latency_seconds_count",
    ):
        assert name in text
    assert metric(base, "gptj_batch_rows_max") == 4


def test_api_key(model):
    with running(create_app(model, model_name=NAME, api_key="sesame")) as url:
        body = {"prompt": "The dog", "max_tokens": 2}
        assert httpx.post(url + "/v1/completions", json=body).status_code == 401
        wrong = httpx.post(url + "/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").status_code == 200  # health and metrics need no key
        c = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert c.completions.create(model=NAME, prompt="The dog", max_tokens=2).choices[0].text


def test_health_waits_for_a_model_loaded_at_startup(weights):
    release = threading.Event()

    def loader():
        release.wait(30)
        return Model(CppModel(CONFIG, weights, threads=1), default_tokenizer())

    app = create_app(loader, model_name=NAME)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(url + "/health")
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health.status_code == 503 and health.json() == {"status": "loading"}
        early = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert early.status_code == 503 and early.json()["error"]["code"] == "model_loading"
        release.set()
        wait_healthy(url)
    finally:
        release.set()
        server.should_exit = True
        thread.join(30)


def test_reference_backend_serves_the_same_text(weights):
    # One forward per row on the NumPy reference; a prompt within one prefill chunk and one-token decode
    # steps are the very calls Model.generate makes, so the text is equal.
    reference = Model(Reference(CONFIG, weights), default_tokenizer())
    with running(create_app(reference, model_name=NAME, max_batch=2)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        response = c.completions.create(model=NAME, prompt=["The dog", "A"], max_tokens=6, temperature=0.7, seed=2)
        for choice, prompt in zip(response.choices, ["The dog", "A"]):
            assert choice.text == reference.generate(prompt, **settings_for(0.7, 6, 2))


def test_non_finite_logits_end_the_request_with_an_error(weights):
    broken = dict(weights)
    broken["lm_head.bias"] = weights["lm_head.bias"].copy()
    broken["lm_head.bias"][123] = np.nan
    bad_model = Model(CppModel(CONFIG, broken, threads=1), default_tokenizer())
    with running(create_app(bad_model, model_name=NAME)) as url:
        response = httpx.post(url + "/v1/completions", json={"prompt": "The dog", "max_tokens": 4}, timeout=30)
        assert response.status_code == 500
        assert "non-finite logits" in response.json()["error"]["message"]
        assert "generation step 1" in response.json()["error"]["message"]
        stream = httpx.post(
            url + "/v1/completions", json={"prompt": "The dog", "max_tokens": 4, "stream": True}, timeout=30
        )
        events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-2])["error"]["type"] == "server_error" and events[-1] == "[DONE]"


# ---------------------------------------------------------------------------------------------------
# SIGTERM drains (the real command, as a subprocess)
# ---------------------------------------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_exits(tmp_path, weights):
    from gptj_ref.native import write_native

    path = tmp_path / "tiny.gptj"
    write_native(path, CONFIG, weights.__getitem__, dtype="f32")
    model = load(path, backend="cpp", threads=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd()] + sys.path)}
    command = [sys.executable, "-m", "gptj_ref.cli", "serve", "--model", str(path), "--model-name", NAME]
    command += ["--port", str(port), "--threads", "1", "--grace", "60"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 60)
        body = {"model": NAME, "prompt": "The dog", "max_tokens": 1500, "temperature": 0, "stream": True}
        pieces, after_signal, finish = [], 0, None
        with httpx.Client(timeout=60) as http:
            with http.stream("POST", url + "/v1/completions", json=body) as response:
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    pieces.append(chunk["choices"][0]["text"])
                    finish = chunk["choices"][0]["finish_reason"] or finish
                    if len(pieces) == 1:
                        proc.send_signal(signal.SIGTERM)
                    else:
                        after_signal += 1
                    if len(pieces) == 2:  # a new request is refused: no connection, or 503
                        time.sleep(0.5)
                        try:
                            late = httpx.post(
                                url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=10
                            )
                            assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
                        except httpx.ConnectError:
                            pass
        assert after_signal > 0, "the request was still running when SIGTERM came"
        assert finish == "length"
        assert "".join(pieces) == model.generate("The dog", **settings_for(0, 1500))
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log = proc.stderr.read()
        proc.stderr.close()
    assert f"on http://127.0.0.1:{port}/v1" in log and "gptj serve: stopped" in log


def test_token_id_prompts(client, model):
    ids = model.encode("The dog")
    response = client.completions.create(model=NAME, prompt=[ids, ids[:1]], max_tokens=5, temperature=0)
    for choice, prompt in zip(response.choices, [ids, ids[:1]]):
        assert choice.text == model.tokenizer.decode(model.generate_ids(prompt, **settings_for(0, 5)))


def test_custom_chat_template(model):
    from gptj_ref.errors import SettingsError

    source = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    template = ChatTemplate(source)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert template.render(messages) == "<system>Be brief.<user>Hi<assistant>" and template.stop == ()
    with pytest.raises(SettingsError, match="not valid Jinja"):
        ChatTemplate("{% for %}")
    with running(create_app(model, model_name=NAME, chat_template=source)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        reply = c.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content == model.generate(template.render(messages), **settings_for(0, 8))


@pytest.mark.parametrize(
    "body, param, code, words",
    [
        ({"prompt": "x", "seed": 2**64}, "seed", "invalid_value", "seed must be an integer in [0, 2**64)"),
        ({"prompt": "x", "seed": 1.5}, "seed", "invalid_type", "must be an integer"),
        ({"prompt": "x", "num_beams": 4}, "num_beams", "unsupported_parameter", "beam search is not implemented"),
        ({"prompt": "x", "typical_p": 0.9}, "typical_p", "unsupported_parameter", "use top_p or top_k"),
        ({"prompt": "x", "temperature": -0.5}, "temperature", "invalid_value", "temperature must be >= 0 (0 = greedy)"),
        (
            {"prompt": "x", "repetition_penalty": 0},
            "repetition_penalty",
            "invalid_value",
            "repetition_penalty must be > 0",
        ),
    ],
)
def test_settings_are_checked_by_make_settings_over_http(base, body, param, code, words):
    """The server turns a request into settings with generate.make_settings, the check of the Python API
    and gptj batch: its SettingsError is a 400 error object naming the parameter, with the same words."""
    response = httpx.post(base + "/v1/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code, error
    assert words in error["message"], error
    if code != "invalid_type":  # the Python API says the same
        with pytest.raises(SettingsError, match=re.escape(words)):
            make_settings({k: v for k, v in body.items() if k != "prompt"})


def test_temperature_zero_over_http_is_greedy_whatever_the_seed(base, model):
    """temperature 0 is greedy (OpenAI's meaning), the same over HTTP as in Model.generate."""
    texts = [
        httpx.post(
            base + "/v1/completions",
            timeout=60,
            json={"prompt": "The dog", "max_tokens": 10, "temperature": 0, "seed": s},
        ).json()["choices"][0]["text"]
        for s in (1, 2)
    ]
    assert texts[0] == texts[1] == model.generate("The dog", max_new_tokens=10, temperature=0, top_k=0)
    assert texts[0] == model.generate("The dog", max_new_tokens=10)  # greedy
