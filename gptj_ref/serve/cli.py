"""The `gptj serve` command: load the model, run the app on uvicorn, drain on SIGTERM/SIGINT.

On the first SIGTERM (or Ctrl-C) the server stops accepting connections and requests (503), lets the
sequences in flight finish for up to --grace seconds (then ends them with an error object), and exits.
A second signal exits at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading

from ..cli import Command, add_model_arguments
from ..ray_serve import add_ray_options

EXAMPLES = """\
  gptj serve                                        # the built-in model on http://127.0.0.1:8000
  gptj serve --model gpt-j-6B.gptj --max-batch 8 --threads 2
  gptj serve --model gpt-j-6B.gptj --api-key secret --chat-template my_format.jinja

  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The dog", "max_tokens": 16, "temperature": 0}'
"""


def _arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences generated at once (default 8)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait; beyond, 429 (default 64)")
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=64,
        help="prompt tokens per scheduler step: bounds the delay a long prompt adds for others (default 64)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: the GPTJ_API_KEY environment variable, else none)",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="FILE",
        help="Jinja chat template (default: a plain 'User: ... / Assistant: ...' dialogue)",
    )
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the file's name)")
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight requests may run after SIGTERM (default 30)"
    )
    add_ray_options(p)  # --ray: the same options on Ray Serve replicas


def run(args) -> int:
    import uvicorn

    from ..api import BUILTIN_DESCRIPTION, load
    from ..errors import SettingsError
    from .app import create_app

    if not 0 <= args.port <= 65535:
        raise SettingsError(f"--port must be in [0, 65535], got {args.port}")
    template = None
    if args.chat_template is not None:
        try:
            with open(args.chat_template, encoding="utf-8") as f:
                template = f.read()
        except OSError as e:
            raise SettingsError(f"cannot read the chat template {args.chat_template}: {e}") from None
    name = args.model_name or (os.path.basename(os.path.normpath(args.model)) if args.model else "gptj-builtin")
    if args.model is None:
        print(f"gptj serve: no --model given, using {BUILTIN_DESCRIPTION}", file=sys.stderr)
    model = load(args.model, backend=args.backend, threads=args.threads, kv_dtype=args.kv_dtype)
    app = create_app(
        model,
        model_name=name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        api_key=args.api_key or os.environ.get("GPTJ_API_KEY") or None,
        chat_template=template,
        prefill_chunk=args.prefill_chunk,
        grace_seconds=args.grace,
    )

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise SettingsError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"gptj serve: {name} ({model.backend.name} backend, max batch {args.max_batch}) on "
        f"http://{url_host}:{port}/v1  (Ctrl-C or SIGTERM to stop)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(args.grace) + 10, lifespan="on")
    # uvicorn re-raises the signal that stopped it once it has shut down, under the handler found before
    # it started; for SIGTERM that is this no-op, so a drained shutdown exits 0 (Ctrl-C still exits 130).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    draining_server(config, app.state.gptj).run(sockets=[sock])
    print("gptj serve: stopped", file=sys.stderr, flush=True)
    return 0


def draining_server(config, gptj_server):
    """uvicorn's server that, on the first SIGTERM/SIGINT, also starts draining the app: new requests get
    503 while those in flight finish (uvicorn itself stops accepting connections and waits for the open
    ones, up to its graceful-shutdown timeout, which is longer than the grace period)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                threading.Thread(target=gptj_server.drain, name="gptj-drain", daemon=True).start()
            super().handle_exit(sig, frame)

    return DrainingServer(config)


COMMAND = Command("serve", "serve the model over HTTP with OpenAI's API", _arguments, run, examples=EXAMPLES)
