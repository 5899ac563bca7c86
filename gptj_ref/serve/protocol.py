"""OpenAI's request and response shapes: parsing with errors that name the parameter, and the JSON built.

Sampling parameters map onto `GenerationSettings` as follows:

    temperature 0                    greedy (do_sample=False); otherwise sampling at that temperature
    top_p, seed                      the same names; choice j (of n) of a prompt uses seed + j
    stop                             stop strings (up to 4, as OpenAI allows)
    presence_/frequency_penalty      OpenAI's definitions, in [-2, 2]
    top_k, repetition_penalty        extensions, transformers' semantics (top_k 0 or -1: off, the default)
    min_tokens                       extension: end-of-text is suppressed before this many tokens
    max_tokens                       max_new_tokens (completions default 16; chat: the rest of the context)

so a choice's text equals `Model.generate(prompt, **settings)` with the settings the request maps to.
This module checks only JSON types and OpenAI's own bounds (temperature <= 2, at most 4 stop strings);
the settings themselves are checked by `generate.make_settings`, the check of the Python API and
`gptj batch`, whose SettingsError becomes a 400 error object naming the parameter. A transformers name
that does not apply (num_beams, typical_p, ...) is answered with make_settings' explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from ..errors import SettingsError, is_int
from ..generate import UNSUPPORTED_SETTINGS, GenerationSettings, make_settings

MAX_STOP = 4
MAX_LOGPROBS = 20


class ApiError(Exception):
    """An error answered as OpenAI's error object {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: str = "invalid_request_error",
        headers: Optional[Dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


# Field readers --------------------------------------------------------------------------------------
def get_int(body: dict, name: str, default, lo=None, hi=None):
    x = body.get(name)
    if x is None:
        return default
    if not is_int(x):
        raise bad(name, f"must be an integer, got {x!r}", "invalid_type")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise bad(name, f"must be in [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}], got {x}")
    return x


def get_number(body: dict, name: str, default, lo=None, hi=None, lo_open=False):
    x = body.get(name)
    if x is None:
        return default
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise bad(name, f"must be a finite number, got {x!r}", "invalid_type")
    if (lo is not None and (x < lo or (lo_open and x == lo))) or (hi is not None and x > hi):
        raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {'inf)' if hi is None else f'{hi}]'}, got {x}")
    return float(x)


def get_bool(body: dict, name: str, default: bool) -> bool:
    x = body.get(name)
    if x is None:
        return default
    if not isinstance(x, bool):
        raise bad(name, f"must be true or false, got {x!r}", "invalid_type")
    return x


def get_stop(body: dict) -> tuple:
    x = body.get("stop")
    if x is None:
        return ()
    stops = [x] if isinstance(x, str) else x
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", "must be a non-empty string or a list of them", "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad("stop", f"at most {MAX_STOP} stop strings, got {len(stops)}")
    return tuple(stops)


def refuse_unsupported(body: dict, known: Sequence[str], ignored_when_default: Dict[str, Any]) -> None:
    """Unknown fields are an error (a typo should not be silently ignored); a few OpenAI fields this
    server does not implement are accepted only with their neutral value."""
    for name, value in body.items():
        if name in ignored_when_default:
            if value is not None and value != ignored_when_default[name] and value not in ({}, []):
                raise bad(
                    name,
                    f"is not supported by this server (only {ignored_when_default[name]!r} or null)",
                    "unsupported_parameter",
                )
        elif name in UNSUPPORTED_SETTINGS and name not in known:
            try:
                make_settings({name: value})  # raises, saying what to use instead
            except SettingsError as e:
                raise ApiError(400, str(e), param=name, code="unsupported_parameter") from None
        elif name not in known:
            raise bad(name, "unrecognized request argument", "unrecognized_argument")


@dataclass
class Sampling:
    """The parameters shared by completions and chat, before max_tokens is known."""

    n: int
    stream: bool
    include_usage: bool
    settings: Dict[str, Any]  # GenerationSettings keywords except max_new_tokens and seed
    seed: Optional[int]

    def for_choice(self, j: int, max_tokens: int, extra_stop: Sequence[str] = ()) -> GenerationSettings:
        kwargs = dict(self.settings)
        kwargs["stop"] = tuple(kwargs["stop"]) + tuple(s for s in extra_stop if s not in kwargs["stop"])
        return checked_settings(
            dict(max_new_tokens=max_tokens, seed=None if self.seed is None else self.seed + j, **kwargs)
        )


# GenerationSettings' names that a request spells differently
_REQUEST_NAMES = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}


def checked_settings(settings: Dict[str, Any]) -> GenerationSettings:
    """make_settings(settings), its SettingsError as a 400 error object naming the request's parameter."""
    try:
        return make_settings(settings)
    except SettingsError as e:
        name = str(e).split(" ", 1)[0]
        param = _REQUEST_NAMES.get(name, name) if name in settings else None
        raise ApiError(400, f"{param}: {e}" if param else str(e), param=param, code="invalid_value") from None


SAMPLING_FIELDS = (
    "n",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "repetition_penalty",
    "min_tokens",
    "user",
    "max_tokens",
)


def parse_sampling(body: dict, max_n: int) -> Sampling:
    n = get_int(body, "n", 1, 1, max_n)
    stream = get_bool(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise bad("stream_options", 'must be an object like {"include_usage": true}', "invalid_type")
    include_usage = get_bool(options or {}, "include_usage", False)
    seed = get_int(body, "seed", None)
    top_k = get_int(body, "top_k", 0, -1)
    settings = dict(
        do_sample=True,  # temperature 0 makes it greedy (make_settings)
        temperature=get_number(body, "temperature", 1.0, hi=2.0),  # OpenAI's upper bound
        top_p=get_number(body, "top_p", 1.0),
        top_k=max(top_k, 0),  # -1 (vLLM's "off") is 0 here
        stop=get_stop(body),
        presence_penalty=get_number(body, "presence_penalty", 0.0),
        frequency_penalty=get_number(body, "frequency_penalty", 0.0),
        repetition_penalty=get_number(body, "repetition_penalty", 1.0),
        min_new_tokens=get_int(body, "min_tokens", 0),
    )
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user", "must be a string", "invalid_type")
    sampling = Sampling(n, stream, include_usage, settings, seed)
    for j in (0, n - 1):  # every choice's settings are checked now, before any work (seed + j included)
        sampling.for_choice(j, 1)
    return sampling


def finish_reason(reason: str) -> str:
    """RowState's reasons in OpenAI's words: end-of-text and stop strings are both "stop"."""
    return "length" if reason == "length" else "stop"
