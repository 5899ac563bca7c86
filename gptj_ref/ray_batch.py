"""`gptj batch --ray`: the batch job of `gptj_ref.batch` on Ray Data, one model per actor.

    driver:  read the input, skip the ids already in the output, plan the groups (gptj_ref.batch)
             -> ray.data.from_items(groups)                       one block per group
             -> map_batches(GroupGenerator, actor pool of N)      each actor memory-maps the model once
             -> iter_rows() on the driver -> the same durable appender as the local job

The driver writes every result itself, so the resumability contract of the local command holds as it is:
one whole line per result, fsync'ed, ids already written skipped (also when Ray retries a group whose
actor died after its result arrived). Ray Data restarts a dead actor and reruns the group it held, so a
killed actor costs that group's time, not its rows. The groups are planned on the driver with the local
command's planner and generated with its `generate_group`, so each row's text is the local command's.

Why not `read_json` on the workers: a bad line must be reported with its line number and must not stop
the job, and the ids already done must be skipped before any work is submitted; both need the driver to
read the file. The input holds prompts only, so it is small beside the work, and it need not be on a
path every node can see.

Only this module (and `gptj_ref.ray_serve`) import ray; install it with `pip install '.[ray]'`.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from .batch import BatchJob, Job, generate_group
from .errors import CheckpointError, SettingsError


class GroupGenerator:
    """A Ray Data actor: loads the model once, then generates one planned group per input row."""

    def __init__(self, model_path: Optional[str], backend: str, threads: int, kv_dtype: Optional[str]):
        from .api import load

        self.model = load(model_path, backend=backend, threads=threads, kv_dtype=kv_dtype)

    def __call__(self, batch: Dict[str, List[str]]) -> Dict[str, List[str]]:
        records = []
        for group in batch["group"]:
            jobs = [Job.from_dict(d) for d in json.loads(group)]
            records.append(json.dumps(generate_group(self.model, jobs)))
        return {"records": records}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SettingsError("--ray needs Ray: pip install 'gptj-ref[ray]' (ray[data,serve])") from None
    return ray


def run_ray(
    job: BatchJob,
    model_path: Optional[str],
    *,
    backend: str = "auto",
    kv_dtype: Optional[str] = None,
    address: Optional[str] = None,
    actors: int = 1,
    threads_per_actor: int = 1,
) -> None:
    """Generate the job's planned groups on a pool of `actors` Ray actors and append the results.

    Uses the running Ray if this process already called ray.init, else joins `address` (None starts a
    local Ray, as ray.init does) and shuts it down at the end.
    """
    if not isinstance(actors, int) or actors < 1:
        raise SettingsError(f"--actors must be an integer >= 1, got {actors!r}")
    if not isinstance(threads_per_actor, int) or threads_per_actor < 1:
        raise SettingsError(f"--threads-per-actor must be an integer >= 1, got {threads_per_actor!r}")
    if not job.groups:
        return
    if model_path is not None:
        model_path = os.path.abspath(model_path)  # the actors resolve it on their own node
        if not os.path.exists(model_path):  # else every actor would fail to start, far from here
            raise CheckpointError(
                f"no model at {model_path} on this machine; with --ray the path must hold the "
                "model here and on every node (a shared file system, or a copy at that path)"
            )
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if actors * threads_per_actor > cpus:
            raise SettingsError(
                f"{actors} actors x {threads_per_actor} threads need {actors * threads_per_actor} "
                f"CPUs but the Ray cluster has {cpus:g}; lower --actors or --threads-per-actor, "
                "or add nodes"
            )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts rows written
        context.print_on_execution_start = False
        groups = [{"group": json.dumps([j.to_dict() for j in g])} for g in job.groups]
        results = ray.data.from_items(groups, override_num_blocks=len(groups)).map_batches(
            GroupGenerator,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads_per_actor,
            fn_constructor_kwargs=dict(
                model_path=model_path, backend=backend, threads=threads_per_actor, kv_dtype=kv_dtype
            ),
        )
        for row in results.iter_rows():
            job.record(json.loads(row["records"]))
    finally:
        if started_here:
            ray.shutdown()
