"""The OpenAI-compatible server of `gptj serve` as Ray Serve replicas.

Each replica is one Ray actor that memory-maps the model file and runs the app of `gptj_ref.serve.create_app`
(its continuous-batching scheduler starts with the replica and drains when Ray Serve stops it). Ray Serve's
proxy on every node takes HTTP on one port and routes each request to a replica, so the endpoints, request
and response shapes are exactly those of `gptj serve`. Start it either way:

    gptj serve --ray --model /shared/gpt-j-6B.gptj --replicas 2 --threads 8 --port 8000
    serve run gptj-serve.yaml          # the config file in the README section "More than one machine"

    # or from Python
    from ray import serve
    from gptj_ref.ray_serve import deployment
    serve.run(deployment(model="/shared/gpt-j-6B.gptj", num_replicas=2, threads=8))

Each replica reserves `threads` CPUs (the model runs that many threads), so Ray places replicas where cores
are free. Ray Serve lets `max_batch + max_queue` requests into a replica at once, so the replica's own
scheduler batches and queues them (and answers 429 when its queue is full) as `gptj serve` does; with
autoscaling, Ray adds a replica when the replicas average more than `max_batch` requests in flight.

Ray is imported only when a deployment is built; importing this module costs nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional

from .errors import CheckpointError, SettingsError

DEPLOYMENT_NAME = "gptj"


class GPTJServer:
    """One replica: the model, loaded once, and the OpenAI-compatible app around it."""

    def __init__(
        self,
        model: Optional[str] = None,
        backend: str = "auto",
        threads: Optional[int] = None,
        kv_dtype: Optional[str] = None,
        **app_options: Any,
    ):
        from .api import load

        self._model = load(model, backend=backend, threads=threads, kv_dtype=kv_dtype)
        self._app_options = app_options

    def __serve_build_asgi_app__(self):
        """Called by Ray Serve after __init__ on the replica: the app it serves (and runs the startup and
        shutdown events of)."""
        from .serve import create_app

        return create_app(self._model, **self._app_options)


def deployment(
    model: Optional[str] = None,
    *,
    num_replicas: int = 1,
    max_replicas: Optional[int] = None,
    threads: int = 1,
    backend: str = "auto",
    kv_dtype: Optional[str] = None,
    max_batch: int = 8,
    max_queue: int = 64,
    **app_options: Any,
):
    """A bound Ray Serve application serving `model` (a path every node can read; None = the demo model).

    num_replicas  replicas to run; with max_replicas, the autoscaling floor (Ray adds replicas up to
                  max_replicas while replicas average more than max_batch requests in flight)
    threads       threads per replica, and the CPUs each replica reserves
    app_options   passed to gptj_ref.serve.create_app (model_name, api_key, chat_template, ...)
    """
    from ray import serve

    for name, value in (
        ("num_replicas", num_replicas),
        ("threads", threads),
        ("max_batch", max_batch),
        ("max_queue", max_queue),
    ):
        if not isinstance(value, int) or value < 1:
            raise SettingsError(f"{name} must be an integer >= 1, got {value!r}")
    if max_replicas is not None and (not isinstance(max_replicas, int) or max_replicas < num_replicas):
        raise SettingsError(f"max_replicas must be an integer >= num_replicas ({num_replicas}), got {max_replicas!r}")
    if model is not None:
        model = os.path.abspath(model)  # resolved again on each replica's node
    if max_replicas is None:
        scaling: Dict[str, Any] = {"num_replicas": num_replicas}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": num_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": max_batch,
            }
        }
    ingress = serve.deployment(
        serve.ingress()(GPTJServer),
        name=DEPLOYMENT_NAME,
        ray_actor_options={"num_cpus": threads},
        max_ongoing_requests=max_batch + max_queue,
        graceful_shutdown_timeout_s=float(app_options.get("grace_seconds", 30.0)) + 30,
        **scaling,
    )
    return ingress.bind(
        model=model,
        backend=backend,
        threads=threads,
        kv_dtype=kv_dtype,
        max_batch=max_batch,
        max_queue=max_queue,
        **app_options,
    )


def app_builder(args: Dict[str, Any]):
    """For `serve run gptj_ref.ray_serve:app_builder model=PATH num_replicas=2 threads=8` and config files:
    the same keywords as `deployment`, given as strings on the command line or typed in the file."""
    ints = ("num_replicas", "max_replicas", "threads", "max_batch", "max_queue")
    kwargs = {k: int(v) if k in ints and isinstance(v, str) else v for k, v in args.items()}
    return deployment(**kwargs)


# ---------------------------------------------------------------------------------------------------
# `gptj serve --ray`
# ---------------------------------------------------------------------------------------------------


def add_ray_options(serve_parser) -> None:
    """Give the `gptj serve` subcommand its --ray options; with --ray it deploys on Ray Serve, without it
    runs as before. (Called from cli.build_parser when the serve subcommand exists.)"""
    g = serve_parser.add_argument_group("on Ray Serve (pip install '.[ray]')")
    g.add_argument("--ray", action="store_true", help="serve with Ray Serve replicas instead of one process")
    g.add_argument("--address", default=None, help="Ray cluster to join (default: auto-detect, else start one)")
    g.add_argument("--replicas", type=int, default=1, help="replicas (with --max-replicas: the minimum)")
    g.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    single_process = serve_parser.get_default("run")
    serve_parser.set_defaults(run=lambda args: cmd_serve_ray(args) if args.ray else single_process(args))


def cmd_serve_ray(args) -> int:
    """`gptj serve --ray ...`: the options of `gptj serve` mean the same per replica."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SettingsError("--ray needs Ray: pip install 'gptj-ref[ray]' (ray[data,serve])") from None
    from .api import default_threads

    model = getattr(args, "model", None)
    if model is not None and not os.path.exists(model):  # else every replica would fail to start, far from here
        raise CheckpointError(
            f"no model at {os.path.abspath(model)} on this machine; with --ray the path must hold "
            "the model here and on every node (a shared file system, or a copy at that path)"
        )
    app_options: Dict[str, Any] = {
        "model_name": getattr(args, "model_name", None)
        or (os.path.basename(os.path.normpath(model)) if model else "gptj-builtin"),
        "api_key": getattr(args, "api_key", None) or os.environ.get("GPTJ_API_KEY") or None,
    }
    if getattr(args, "chat_template", None) is not None:  # a file on this machine, sent to the replicas
        try:
            with open(args.chat_template, encoding="utf-8") as f:
                app_options["chat_template"] = f.read()
        except OSError as e:
            raise SettingsError(f"cannot read the chat template {args.chat_template}: {e}") from None
    for name, option in (("prefill_chunk", "prefill_chunk"), ("grace", "grace_seconds")):
        if getattr(args, name, None) is not None:
            app_options[option] = getattr(args, name)
    app = deployment(
        model,
        num_replicas=args.replicas,
        max_replicas=args.max_replicas,
        threads=getattr(args, "threads", None) or default_threads(),
        backend=getattr(args, "backend", "auto"),
        kv_dtype=getattr(args, "kv_dtype", None),
        max_batch=getattr(args, "max_batch", 8),
        max_queue=getattr(args, "max_queue", 64),
        **app_options,
    )
    host, port = getattr(args, "host", "127.0.0.1"), getattr(args, "port", 8000)
    ray.init(address=args.address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    print(
        f"gptj serve: Ray Serve is starting {args.replicas} replica(s) of {model or 'the built-in model'} "
        f"({app_options['model_name']}); OpenAI-compatible API at http://{host}:{port}/v1 once they are up "
        "(Ctrl-C stops)",
        file=sys.stderr,
    )
    try:
        serve.run(app, name=DEPLOYMENT_NAME, route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
    return 0
