"""`gptj serve`: an OpenAI-compatible HTTP server with continuous batching (the `.[serve]` extra).

    from gptj_ref.serve import create_app
    app = create_app(gptj_ref.load("gpt-j-6B.gptj"), max_batch=8)      # any ASGI server runs it

Parts: `app` (endpoints, errors, streaming), `scheduler` (the batching loop), `rows` (a KV cache of
independent rows over either backend), `protocol` (OpenAI's parameters), `chat` (the chat template),
`metrics` (Prometheus text), `cli` (the command, uvicorn, draining on SIGTERM).
"""

from .app import create_app

__all__ = ["create_app"]
