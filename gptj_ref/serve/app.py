"""The HTTP server: OpenAI's endpoints on Starlette, requests handed to the continuous-batching scheduler.

    POST /v1/completions        prompt (string, list of strings, token ids or lists of them) -> text
    POST /v1/chat/completions   messages -> the assistant's reply, through the chat template
    GET  /v1/models             the one model served
    GET  /health                200 once the model is loaded and the scheduler runs, else 503
    GET  /metrics               Prometheus text: requests, tokens, queue depth, batch occupancy, latencies

Streaming answers are server-sent events ("data: {json}" blocks) ending with "data: [DONE]". Every error
is OpenAI's error object with its status: 400 naming the parameter (or code context_length_exceeded),
401 for a wrong or missing key when the server has one, 404, 413 for a body over the limit, 429 with
Retry-After when the queue is full, 503 while loading or shutting down, 500 when generation fails (an
error in the middle of a stream is sent as a last "data: {"error": ...}" event before [DONE]).
/health and /metrics need no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional

from ..errors import GPTJError
from .chat import ROLES, ChatTemplate
from .metrics import Metrics
from .protocol import (
    MAX_LOGPROBS,
    SAMPLING_FIELDS,
    ApiError,
    bad,
    finish_reason,
    get_bool,
    get_int,
    parse_sampling,
    refuse_unsupported,
)
from .scheduler import DEFAULT_PREFILL_CHUNK, NotAccepting, QueueFull, Scheduler, Sequence, ShuttingDown

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: a full 2048-token prompt is ~10 KB of text
RETRY_AFTER_SECONDS = 1


class Server:
    """Everything one app holds: the model, its scheduler, metrics and settings."""

    def __init__(
        self,
        model,
        model_name: Optional[str],
        max_batch: int,
        max_queue: int,
        api_key: Optional[str],
        chat_template: Optional[str],
        prefill_chunk: int,
        max_body_bytes: int,
        grace_seconds: float,
    ):
        for name, value, lo in (
            ("max_batch", max_batch, 1),
            ("max_queue", max_queue, 1),
            ("prefill_chunk", prefill_chunk, 1),
            ("max_body_bytes", max_body_bytes, 1024),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                from ..errors import SettingsError

                raise SettingsError(f"{name} must be an integer >= {lo}, got {value!r}")
        self._model_or_loader = model
        self.model = None
        self.model_name = model_name or "gptj"
        self.max_batch, self.max_queue, self.prefill_chunk = max_batch, max_queue, prefill_chunk
        self.api_key, self.max_body_bytes, self.grace_seconds = api_key, max_body_bytes, grace_seconds
        self.template = ChatTemplate(chat_template)
        self.metrics = Metrics()
        self.scheduler: Optional[Scheduler] = None
        self.state = "loading"  # loading | ready | draining | stopped | failed
        self.load_error: Optional[BaseException] = None
        self.created = int(time.time())

    # Life cycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start serving: with a Model at once; with a loader (a callable), load in a thread first."""
        if callable(self._model_or_loader) and not hasattr(self._model_or_loader, "backend"):
            threading.Thread(target=self._load, name="gptj-load", daemon=True).start()
        else:
            self._begin(self._model_or_loader)

    def _load(self) -> None:
        try:
            self._begin(self._model_or_loader())
        except BaseException as e:  # noqa: BLE001 - reported by /health and every request
            self.load_error, self.state = e, "failed"

    def _begin(self, model) -> None:
        self.model = model
        self.scheduler = Scheduler(model, self.max_batch, self.max_queue, self.prefill_chunk, self.metrics)
        self.scheduler.start()
        if self.state == "loading":
            self.state = "ready"
            self.metrics.set("gptj_ready", 1)

    def drain(self) -> None:
        """Stop accepting requests; finish those in flight for up to grace_seconds; stop the scheduler."""
        if self.state in ("ready", "loading"):
            self.state = "draining"
        self.metrics.set("gptj_ready", 0)
        if self.scheduler is not None:
            self.scheduler.stop(self.grace_seconds)
        self.state = "stopped"

    def check_ready(self) -> None:
        if self.state == "ready":
            return
        if self.state == "failed":
            raise ApiError(
                503, f"the model failed to load: {self.load_error}", code="model_load_failed", type="server_error"
            )
        if self.state == "loading":
            raise ApiError(
                503,
                "the model is still loading; retry shortly",
                code="model_loading",
                type="server_error",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        raise ApiError(
            503, "the server is shutting down and accepts no new requests", code="shutting_down", type="server_error"
        )

    def check_key(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    # Requests ---------------------------------------------------------------------------------------------
    async def read_json(self, request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than the server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    def check_model_name(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.model_name:
            raise ApiError(
                404,
                f"model {name!r} is not served here; this server serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    def prompt_ids(self, prompt, param: str) -> List[int]:
        ids = self.model.encode(prompt) if isinstance(prompt, str) else prompt
        if not ids:
            raise bad(param, "the prompt is empty")
        V = self.model.config.vocab_size
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < V for i in ids):
            raise bad(param, f"token ids must be integers in [0, {V})", "invalid_type")
        return list(ids)

    def check_context(self, prompt: List[int], max_tokens: int, param: str) -> None:
        n_ctx = self.model.config.n_positions
        if len(prompt) + max_tokens > n_ctx:
            raise ApiError(
                400,
                f"this model's context is {n_ctx} tokens; the prompt has {len(prompt)} and max_tokens "
                f"asks for {max_tokens} more ({len(prompt) + max_tokens} in all): shorten the prompt "
                "or lower max_tokens",
                param=param,
                code="context_length_exceeded",
            )


class Job:
    """The sequences of one request and the events coming back from the scheduler thread."""

    def __init__(self, server: Server):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.sequences: List[Sequence] = []
        self.finished = 0

    def sink(self, index: int) -> Callable[[str, object], None]:
        def deliver(kind: str, value) -> None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (index, kind, value))

        return deliver

    def add(self, prompt: List[int], settings, *, logprobs=None, generate=True, prompt_logprobs=None) -> None:
        index = len(self.sequences)
        self.sequences.append(
            self.server.scheduler.new_sequence(
                prompt,
                settings,
                self.sink(index),
                logprobs=logprobs,
                generate=generate,
                prompt_logprobs=prompt_logprobs,
            )
        )

    def submit(self) -> None:
        try:
            self.server.scheduler.submit(self.sequences)
        except QueueFull:
            raise ApiError(
                429,
                f"the server's queue is full ({self.server.max_queue} sequences waiting); retry shortly",
                code="queue_full",
                type="rate_limit_error",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except NotAccepting:
            self.server.check_ready()
            raise ApiError(503, "the scheduler is not running", code="shutting_down", type="server_error") from None

    async def next_event(self):
        index, kind, value = await self.events.get()
        if kind in ("done", "error"):
            self.finished += 1
        return index, kind, value

    @property
    def done(self) -> bool:
        return self.finished == len(self.sequences)

    def cancel(self) -> None:
        if not self.done:
            self.server.scheduler.cancel(self.sequences)


def generation_error(e: BaseException) -> ApiError:
    if isinstance(e, ShuttingDown):
        return ApiError(503, str(e), code="shutting_down", type="server_error")
    if isinstance(e, GPTJError):
        return ApiError(500, f"generation failed: {e}", code=type(e).__name__, type="server_error")
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", code="internal_error", type="server_error")


class Choice:
    """What has come back for one sequence."""

    def __init__(self):
        self.steps = []  # TokenStep of every step (the last may be the end-of-text that ended it)
        self.prompt_logprobs = None
        self.finish: Optional[str] = None
        self.error: Optional[BaseException] = None

    def take(self, kind: str, value) -> None:
        if kind == "token":
            self.steps.append(value)
        elif kind == "prompt_logprobs":
            self.prompt_logprobs = value
        elif kind == "done":
            self.finish = value
        elif kind == "error":
            self.error = value


# The app ----------------------------------------------------------------------------------------------------
def create_app(
    model,
    *,
    model_name: Optional[str] = None,
    max_batch: int = 8,
    max_queue: int = 64,
    api_key: Optional[str] = None,
    chat_template: Optional[str] = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    grace_seconds: float = 30.0,
):
    """An ASGI app serving `model` with OpenAI's API.

    model          a gptj_ref.Model, or a callable returning one (then loaded in a thread at startup,
                   /health answering 503 until it is ready)
    model_name     the id /v1/models lists and requests may name (default "gptj")
    max_batch      KV cache row slots: sequences generated at once
    max_queue      sequences that may wait for a slot; beyond it requests get 429
    api_key        when set, /v1/* need "Authorization: Bearer <api_key>"
    chat_template  Jinja source of the chat template (default: the plain one in gptj_ref.serve.chat)
    prefill_chunk  prompt tokens run per scheduler step, over all prompts (bounds others' extra latency)
    max_body_bytes request bodies over this are refused (413)
    grace_seconds  at shutdown, how long sequences in flight may run before they end with an error

    The scheduler starts with the app's lifespan startup and is stopped (drained) at its shutdown;
    `app.state.gptj` is the `Server` (its `drain()` stops accepting and finishes what is in flight).
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    server = Server(
        model, model_name, max_batch, max_queue, api_key, chat_template, prefill_chunk, max_body_bytes, grace_seconds
    )

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def endpoint(name: str, needs_model: bool = True):
        """Error handling, key check and request counting around an endpoint."""

        def wrap(handler):
            async def run(request: Request) -> Response:
                try:
                    if needs_model:
                        server.check_key(request)
                        server.check_ready()
                    response = await handler(request)
                except ApiError as e:
                    response = error_response(e)
                except GPTJError as e:
                    response = error_response(ApiError(400, str(e), code="invalid_value"))
                server.metrics.inc("gptj_requests_total", endpoint=name, status=str(response.status_code))
                return response

            return run

        return wrap

    # Completions --------------------------------------------------------------------------------------------
    @endpoint("completions")
    async def completions(request: Request) -> Response:
        body = await server.read_json(request)
        refuse_unsupported(
            body,
            SAMPLING_FIELDS + ("model", "prompt", "echo", "logprobs"),
            {"best_of": 1, "suffix": None, "logit_bias": None},
        )
        server.check_model_name(body)
        raw = body.get("prompt")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(i, int) for i in raw)):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise bad(
                "prompt",
                "must be a string, a list of strings, a list of token ids or a list of such lists",
                "invalid_type",
            )
        prompts = [server.prompt_ids(p, "prompt") for p in raw]
        sampling = parse_sampling(body, server.max_queue)
        echo = get_bool(body, "echo", False)
        logprobs = get_int(body, "logprobs", None, 0, MAX_LOGPROBS)
        max_tokens = get_int(body, "max_tokens", 16, 0)
        if max_tokens == 0 and not echo:
            raise bad("max_tokens", "must be >= 1 (0 is allowed only with echo, to score the prompt)")
        if len(prompts) * sampling.n > server.max_queue:
            raise bad(
                "n",
                f"{len(prompts)} prompts x n={sampling.n} sequences exceed the server's queue of {server.max_queue}",
            )
        for p in prompts:
            server.check_context(p, max_tokens, "prompt")
        job = Job(server)
        for p in prompts:
            for j in range(sampling.n):
                job.add(
                    p,
                    sampling.for_choice(j, max(max_tokens, 1)),
                    logprobs=logprobs,
                    generate=max_tokens > 0,
                    prompt_logprobs=logprobs if echo and logprobs is not None else None,
                )
        job.submit()
        prefixes = [
            (r if isinstance(r, str) else server.model.tokenizer.decode(p)) if echo else ""
            for r, p in zip(raw, prompts)
            for _ in range(sampling.n)
        ]
        meta = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": server.model_name,
        }
        usage_prompt = sum(len(p) for p in prompts)
        if sampling.stream:
            events = stream_completions(job, meta, prefixes, echo, logprobs, sampling.include_usage, usage_prompt)
            return sse(job, events)
        choices = await collect(job, request)
        out = []
        for i, c in enumerate(choices):
            text = "".join(step.text for step in c.steps)
            out.append(
                {
                    "index": i,
                    "text": prefixes[i] + text,
                    "logprobs": completion_logprobs(c, job.sequences[i], echo) if logprobs is not None else None,
                    "finish_reason": finish_reason(c.finish),
                }
            )
        return JSONResponse({**meta, "choices": out, "usage": usage(usage_prompt, job)})

    def token_text(token: int) -> str:
        return server.model.tokenizer.decode([token])

    def completion_logprobs(c: Choice, seq: Sequence, echo: bool, offset: int = 0) -> dict:
        """OpenAI's completion log-probs; text_offset counts the characters of the tokens' own texts."""
        tokens, token_logprobs, tops, offsets = [], [], [], []

        def add(token, logprob, top):
            nonlocal offset
            tokens.append(token_text(token))
            token_logprobs.append(logprob)
            tops.append(None if top is None else {token_text(t): lp for t, lp in top})
            offsets.append(offset)
            offset += len(tokens[-1])

        if echo and c.prompt_logprobs is not None:
            for token, entry in zip(seq.prompt, c.prompt_logprobs):
                add(token, None, None) if entry is None else add(token, entry[0], entry[1])
        for step in text_steps(c):
            add(step.token, step.logprob, step.top_logprobs)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}

    def text_steps(c: Choice) -> list:
        """The steps whose tokens are part of the continuation (not an end-of-text that ended it)."""
        if c.finish == "eos" and c.steps and c.steps[-1].token == server.model.config.eos_token_id:
            return c.steps[:-1]
        return c.steps

    async def stream_completions(job: Job, meta, prefixes, echo, logprobs, include_usage, usage_prompt):
        def chunk(i, text, lp=None, finish=None):
            return {**meta, "choices": [{"index": i, "text": text, "logprobs": lp, "finish_reason": finish}]}

        eos = server.model.config.eos_token_id
        if echo and logprobs is None:
            for i, prefix in enumerate(prefixes):
                yield chunk(i, prefix)
        offsets = [len(p) for p in prefixes]
        while not job.done:
            i, kind, value = await job.next_event()
            seq = job.sequences[i]
            if kind == "prompt_logprobs":
                c = Choice()
                c.prompt_logprobs = value
                lp = completion_logprobs(c, seq, True)
                yield chunk(i, prefixes[i], lp)
            elif kind == "token":
                ends_at_eos = value.token == eos and seq.state.finish_reason == "eos" and not value.text
                if logprobs is not None and not ends_at_eos:
                    c = Choice()
                    c.steps = [value]
                    lp = completion_logprobs(c, seq, False, offsets[i])
                    offsets[i] += len(lp["tokens"][0])
                    yield chunk(i, value.text, lp)
                elif value.text:
                    yield chunk(i, value.text)
            elif kind == "done":
                yield chunk(i, "", None, finish_reason(value))
            elif kind == "error":
                yield generation_error(value).body()
                return
        if include_usage:
            yield {**meta, "choices": [], "usage": usage(usage_prompt, job)}

    # Chat --------------------------------------------------------------------------------------------------
    @endpoint("chat")
    async def chat(request: Request) -> Response:
        body = await server.read_json(request)
        refuse_unsupported(
            body,
            SAMPLING_FIELDS + ("model", "messages", "logprobs", "top_logprobs", "max_completion_tokens"),
            {
                "response_format": {"type": "text"},
                "tools": None,
                "tool_choice": "none",
                "functions": None,
                "function_call": "none",
                "logit_bias": None,
                "parallel_tool_calls": None,
            },
        )
        server.check_model_name(body)
        messages = parse_messages(body.get("messages"))
        try:
            text = server.template.render(messages)
        except Exception as e:  # noqa: BLE001 - a Jinja error from the template, reported to the client
            raise ApiError(
                400, f"the chat template failed on these messages: {e}", param="messages", code="template_error"
            ) from None
        prompt = server.prompt_ids(text, "messages")
        sampling = parse_sampling(body, server.max_queue)
        want_logprobs = get_bool(body, "logprobs", False)
        top = get_int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
        if top is not None and not want_logprobs:
            raise bad("top_logprobs", "needs logprobs: true")
        n_ctx = server.model.config.n_positions
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = get_int(body, key, None, 1)
        if max_tokens is None:
            max_tokens = max(n_ctx - len(prompt), 1)
        server.check_context(prompt, max_tokens, "messages")
        if sampling.n > server.max_queue:
            raise bad("n", f"n={sampling.n} sequences exceed the server's queue of {server.max_queue}")
        job = Job(server)
        for j in range(sampling.n):
            job.add(
                prompt,
                sampling.for_choice(j, max_tokens, server.template.stop),
                logprobs=(top or 0) if want_logprobs else None,
            )
        job.submit()
        meta = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": server.model_name,
        }
        if sampling.stream:
            return sse(
                job,
                stream_chat(
                    job, {**meta, "object": "chat.completion.chunk"}, want_logprobs, sampling.include_usage, len(prompt)
                ),
            )
        choices = await collect(job, request)
        out = [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(s.text for s in c.steps)},
                "logprobs": {"content": chat_logprobs(text_steps(c))} if want_logprobs else None,
                "finish_reason": finish_reason(c.finish),
            }
            for i, c in enumerate(choices)
        ]
        return JSONResponse({**meta, "choices": out, "usage": usage(len(prompt), job)})

    def chat_logprobs(steps) -> list:
        def entry(token, logprob):
            return {
                "token": token_text(token),
                "logprob": logprob,
                "bytes": list(server.model.tokenizer.token_bytes(token)),
            }

        return [
            {**entry(s.token, s.logprob), "top_logprobs": [entry(t, lp) for t, lp in s.top_logprobs]} for s in steps
        ]

    async def stream_chat(job: Job, meta, want_logprobs, include_usage, usage_prompt):
        def chunk(i, delta, finish=None, lp=None):
            return {**meta, "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        eos = server.model.config.eos_token_id
        for i in range(len(job.sequences)):
            yield chunk(i, {"role": "assistant", "content": ""})
        while not job.done:
            i, kind, value = await job.next_event()
            if kind == "token":
                ends_at_eos = value.token == eos and job.sequences[i].state.finish_reason == "eos" and not value.text
                if want_logprobs and not ends_at_eos:
                    yield chunk(i, {"content": value.text}, lp={"content": chat_logprobs([value])})
                elif value.text:
                    yield chunk(i, {"content": value.text})
            elif kind == "done":
                yield chunk(i, {}, finish_reason(value))
            elif kind == "error":
                yield generation_error(value).body()
                return
        if include_usage:
            yield {**meta, "choices": [], "usage": usage(usage_prompt, job)}

    # Shared pieces -------------------------------------------------------------------------------------------
    def usage(prompt_tokens: int, job: Job) -> dict:
        completion = sum(len(s.state.new) for s in job.sequences if s.generate)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    async def collect(job: Job, request: Request) -> List[Choice]:
        """Wait for every sequence of a non-streaming request; cancel them if the client goes away."""
        choices = [Choice() for _ in job.sequences]

        async def client_gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(client_gone())
        try:
            while not job.done:
                getter = asyncio.ensure_future(job.next_event())
                await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    job.cancel()
                    raise ApiError(499, "the client closed the connection", code="client_closed")
                i, kind, value = getter.result()
                choices[i].take(kind, value)
        finally:
            watcher.cancel()
            job.cancel()
        for c in choices:
            if c.error is not None:
                raise generation_error(c.error)
        return choices

    def sse(job: Job, events) -> StreamingResponse:
        """Server-sent events: one "data: {json}" block per chunk, then "data: [DONE]". When the client
        goes away Starlette stops this generator, and the job's sequences are cancelled."""

        async def body():
            try:
                try:
                    async for event in events:
                        yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
                except Exception as e:  # noqa: BLE001 - a fault here still ends the stream with an error object
                    yield f"data: {json.dumps(generation_error(e).body())}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                job.cancel()
                await events.aclose()

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    def parse_messages(messages) -> List[Dict[str, str]]:
        if not isinstance(messages, list) or not messages:
            raise bad("messages", 'must be a non-empty list of {"role", "content"} objects', "invalid_type")
        out = []
        for k, m in enumerate(messages):
            where = f"messages[{k}]"
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise bad(f"{where}.role", f"must be one of {', '.join(ROLES)}")
            content = m.get("content")
            if isinstance(content, list):
                if not all(
                    isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
                ):
                    raise bad(f"{where}.content", 'only text parts ({"type": "text", "text": ...}) are supported')
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise bad(f"{where}.content", "must be a string or a list of text parts", "invalid_type")
            out.append({"role": m["role"], "content": content})
        return out

    # Other endpoints ----------------------------------------------------------------------------------------
    @endpoint("models")
    async def models(request: Request) -> Response:
        card = {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "gptj_ref"}
        if "model_id" in request.path_params:
            if request.path_params["model_id"] != server.model_name:
                raise ApiError(
                    404,
                    f"model {request.path_params['model_id']!r} is not served here",
                    param="model",
                    code="model_not_found",
                )
            return JSONResponse(card)
        return JSONResponse({"object": "list", "data": [card]})

    @endpoint("health", needs_model=False)
    async def health(request: Request) -> Response:
        ready = server.state == "ready" and server.scheduler is not None and server.scheduler.running
        body = {"status": "ok" if ready else server.state}
        if server.state == "failed":
            body["error"] = str(server.load_error)
        return JSONResponse(body, status_code=200 if ready else 503)

    @endpoint("metrics", needs_model=False)
    async def metrics(request: Request) -> Response:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error", type="server_error")
        )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, server.drain)

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )
    app.state.gptj = server
    return app
