"""Ray: `gptj batch --ray` against the local command, an actor killed mid-job, and the Ray Serve deployment
against the single-process server. One local Ray instance (2 CPUs, a small object store) for the module."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import ray

import gptj_ref
from gptj_ref.batch import BatchJob, run_local
from gptj_ref.ray_batch import run_ray

# Ray's own modules warn about Ray's own deprecated settings; they are not this project's to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*", "ignore::FutureWarning:ray.*")


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    # Ray puts the driver's working directory on its workers' path: start from outside the source tree,
    # which has no compiled extension, so workers import the installed package as the driver does.
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    os.chdir(previous)


@pytest.fixture(scope="module")
def demo():
    return gptj_ref.load(threads=1)  # one thread: a loaded 2-core machine makes OpenMP threads wait on each other


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


ROWS = (
    [{"id": f"greedy{i}", "prompt": f"Story {i}: once", "max_new_tokens": 10 + i % 3} for i in range(6)]
    + [
        {"id": f"seeded{i}", "prompt": f"Poem {i}:", "max_tokens": 10, "do_sample": True, "seed": i, "top_k": 20}
        for i in range(4)
    ]
    + [
        {"id": "stop", "prompt": "The", "max_new_tokens": 20, "stop": ["e"]},
        "not json",
        {"id": "too-long", "prompt": "x", "max_new_tokens": 4000},
    ]
)


def test_ray_output_equals_local_output_record_for_record(ray_instance, demo, tmp_path):
    inp = tmp_path / "in.jsonl"
    write_jsonl(inp, [r for r in ROWS if isinstance(r, dict)])
    with open(inp, "a") as f:
        f.write("not json\n")

    local = BatchJob(str(inp), str(tmp_path / "local.jsonl"), max_batch=4, progress=False)
    run_local(local, demo)
    local_summary = local.close()
    on_ray = BatchJob(str(inp), str(tmp_path / "ray.jsonl"), max_batch=4, progress=False)
    run_ray(on_ray, None, actors=2, threads_per_actor=1)
    ray_summary = on_ray.close()

    by_id = lambda rows: {json.dumps(r["id"]): r for r in rows}  # noqa: E731  (Ray writes in completion order)
    local_rows, ray_rows = read_jsonl(tmp_path / "local.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert len(local_rows) == len(ray_rows) == 11
    assert by_id(ray_rows) == by_id(local_rows)
    assert read_jsonl(tmp_path / "ray.errors.jsonl") == read_jsonl(tmp_path / "local.errors.jsonl")
    assert (ray_summary.written, ray_summary.errors) == (local_summary.written, local_summary.errors) == (11, 2)


def map_workers():
    """The Ray Data actor processes of this test's Ray instance (descendants of this process)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "MapWorker" in " ".join(p.cmdline()) or "MapWorker" in p.name():
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_an_actor_killed_mid_job_loses_no_id_and_repeats_none(ray_instance, demo, tmp_path):
    n = 24
    rows = [{"id": i, "prompt": f"Line {i} of the", "max_new_tokens": 40} for i in range(n)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows)
    killed = []

    def kill_one_actor_after_the_first_results():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= 3:
                workers = map_workers()
                if workers:
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_actor_after_the_first_results)
    killer.start()
    job = BatchJob(str(inp), str(out), max_batch=1, progress=False)
    run_ray(job, None, actors=2, threads_per_actor=1)
    job.close()
    killer.join()
    assert killed, "no actor was killed: the job ended too soon or no MapWorker process was found"
    ids = [r["id"] for r in read_jsonl(out)]
    assert out.read_bytes().endswith(b"\n")
    assert sorted(ids) == list(range(n))  # every id exactly once
    expected = demo.generate([r["prompt"] for r in rows], max_new_tokens=40)
    assert {r["id"]: r["text"] for r in read_jsonl(out)} == dict(enumerate(expected))


# ---------------------------------------------------------------------------------------------------
# Ray Serve
# ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SingleProcessServer:
    """`gptj_ref.serve.create_app` on uvicorn in a thread of this process, as `gptj serve` runs it."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)
        assert self.server.started, "the single-process server did not start"
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=60)


# Greedy prompts whose continuations differ on the demo model (similar prompts such as "Request 0 says" and
# "Request 1 says" can share one), so that answers delivered to the wrong request would show.
GREEDY_PROMPTS = ("In the beginning", "The king of Babylon", "Jesus said to them", "And the dog")
REQUESTS = [{"prompt": p, "max_tokens": 12, "temperature": 0} for p in GREEDY_PROMPTS] + [
    {"prompt": f"Seeded {i}:", "max_tokens": 12, "temperature": 0.8, "top_p": 0.9, "seed": 10 + i} for i in range(4)
]


def complete_concurrently(base_url):
    """Every request of REQUESTS at once through the openai client; the texts in request order."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        responses = list(pool.map(lambda r: client.completions.create(model=model, **r), REQUESTS))
    return [r.choices[0].text for r in responses]


def test_serve_deployment_with_two_replicas_answers_like_the_single_process_server(ray_instance, demo):
    from ray import serve

    from gptj_ref.ray_serve import DEPLOYMENT_NAME, deployment
    from gptj_ref.serve import create_app

    with SingleProcessServer(create_app(demo)) as url:
        expected = complete_concurrently(url)
    assert len(set(expected)) == len(REQUESTS)  # distinct prompts and seeds: a mix-up would show

    deadline = time.monotonic() + 60  # the batch tests' actors release their CPUs when their jobs end
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= 2, "CPUs still held: two 1-CPU replicas would never start"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment(None, num_replicas=2, threads=1), name=DEPLOYMENT_NAME, route_prefix="/")
        replicas = serve.status().applications[DEPLOYMENT_NAME].deployments[DEPLOYMENT_NAME].replica_states
        assert replicas.get("RUNNING") == 2, replicas
        assert complete_concurrently(f"http://127.0.0.1:{port}/v1") == expected
    finally:
        serve.shutdown()


def test_gptj_serve_gets_ray_options_that_switch_to_ray_serve(monkeypatch):
    """cli.build_parser gives a `serve` subcommand --ray; without --ray it runs the single-process server."""
    import argparse

    from gptj_ref import ray_serve

    parser = argparse.ArgumentParser()
    serve_parser = parser.add_subparsers(dest="command").add_parser("serve")
    serve_parser.add_argument("--port", type=int, default=8000)
    calls = []
    serve_parser.set_defaults(run=lambda args: calls.append(("single", args.port)) or 0)
    ray_serve.add_ray_options(serve_parser)
    monkeypatch.setattr(ray_serve, "cmd_serve_ray", lambda args: calls.append(("ray", args.replicas)) or 0)
    for argv in (["serve", "--port", "9000"], ["serve", "--ray", "--replicas", "3"]):
        args = parser.parse_args(argv)
        args.run(args)
    assert calls == [("single", 9000), ("ray", 3)]


def test_the_documented_serve_config_builds_the_application():
    """deploy/ray-serve.yaml names an import path and arguments that build a Ray Serve application."""
    import importlib

    import yaml
    from ray.serve import Application

    path = os.path.join(os.path.dirname(__file__), "..", "deploy", "ray-serve.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)
    (app,) = config["applications"]
    module, name = app["import_path"].split(":")
    built = getattr(importlib.import_module(module), name)(app["args"])
    assert isinstance(built, Application)
