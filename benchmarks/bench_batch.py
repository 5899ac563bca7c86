"""Batch throughput of `gptj batch`: local, and on Ray Data with 1 and 2 actors, on one machine.

    python benchmarks/bench_batch.py [--model PATH] [--prompts 64] [--new-tokens 32]
                                                  [--max-batch 8] [--threads 2]
    python benchmarks/bench_batch.py --small      # a 4-layer, 1024-wide q8 file in /tmp

The same job (greedy, `--prompts` distinct prompts, `--new-tokens` each, batches of `--max-batch`) runs
three ways, each into a fresh output file:

  local    one process, the model with --threads threads
  ray x1   Ray Data, 1 actor with --threads threads
  ray x2   Ray Data, 2 actors with max(--threads / 2, 1) threads each
  local 2  the local run again, last: its spread from the first is the machine's noise

For each: the wall time of the whole job (reading, planning, for Ray the actors' start and model load,
generating, the durable writes) as prompts/s and generated tokens/s, and the time to the first result
written (for Ray: mostly starting the actors and loading the model in them, the fixed cost of a job).
Starting Ray itself (ray.init) is printed apart: a cluster is started once and serves many jobs. The three
outputs are checked to be the same records.
With no --model the built-in demo model runs (2 layers, width 64): its tokens cost almost nothing, so the
Ray overhead shows at its largest. `--small` writes (once) and runs a q8 file of 4 layers at width 1024
with random weights and the real vocabulary (~0.3 GB), memory-mapped as the real model is, where a token
costs enough for the generation to dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gptj_ref.api import load  # noqa: E402
from gptj_ref.batch import BatchJob, run_local  # noqa: E402
from gptj_ref.config import GPTJConfig  # noqa: E402

SMALL_FILE = "/tmp/gptj-small-q8.gptj"
SMALL = GPTJConfig(n_embd=1024, n_layer=4, n_head=16, rotary_dim=64)


def build_small(path: str) -> None:
    from gptj_ref.layout import random_weights
    from gptj_ref.native import write_native

    weights = random_weights(SMALL, seed=0)
    write_native(path, SMALL, lambda name: weights[name], "q8")


def write_input(path: str, prompts: int, new_tokens: int) -> None:
    with open(path, "w") as f:
        for i in range(prompts):
            f.write(
                json.dumps(
                    {
                        "id": i,
                        "prompt": f"Story number {i} begins when the",
                        "max_new_tokens": new_tokens,
                        "stop_at_eos": False,
                    }
                )
                + "\n"
            )


def timed_job(in_path: str, out_path: str, max_batch: int, run) -> dict:
    job = BatchJob(in_path, out_path, max_batch=max_batch, progress=False)
    stamps = []
    record = job.record

    def record_with_time(records):
        record(records)
        stamps.append(time.perf_counter())

    job.record = record_with_time
    started = time.perf_counter()
    run(job)
    wall = time.perf_counter() - started
    summary = job.close()
    return {
        "wall_s": wall,
        "rows": summary.written,
        "tokens": summary.tokens,
        "prompts_per_s": summary.written / wall,
        "tokens_per_s": summary.tokens / wall,
        "first_result_s": stamps[0] - started,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the built-in demo model)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="threads of the local run and of the 1-actor run")
    ap.add_argument("--small", action="store_true", help=f"run {SMALL_FILE} (written when missing)")
    args = ap.parse_args()
    if args.small:
        if not os.path.exists(SMALL_FILE):
            build_small(SMALL_FILE)
        args.model = SMALL_FILE

    import ray

    from gptj_ref.ray_batch import run_ray

    work = tempfile.mkdtemp(prefix="bench-batch-")
    in_path = os.path.join(work, "in.jsonl")
    write_input(in_path, args.prompts, args.new_tokens)
    print(
        f"model: {args.model or 'built-in demo'}; threads {args.threads}; "
        f"{args.prompts} prompts x {args.new_tokens} new tokens, "
        f"batches of {args.max_batch}; {os.cpu_count()} CPUs; ray {ray.__version__}"
    )

    results = {}
    started = time.perf_counter()
    model = load(args.model, threads=args.threads)
    load_s = time.perf_counter() - started
    results["local"] = timed_job(
        in_path, os.path.join(work, "local.jsonl"), args.max_batch, lambda job: run_local(job, model)
    )
    results["local"]["wall_s_with_load"] = results["local"]["wall_s"] + load_s

    started = time.perf_counter()
    ray.init(num_cpus=max(args.threads, 2), include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - started
    half = max(args.threads // 2, 1)
    for name, actors, threads in (("ray x1", 1, args.threads), ("ray x2", 2, half)):
        results[name] = timed_job(
            in_path,
            os.path.join(work, name.replace(" ", "") + ".jsonl"),
            args.max_batch,
            lambda job, a=actors, t=threads: run_ray(job, args.model, actors=a, threads_per_actor=t),
        )
    ray.shutdown()
    # local once more, after the Ray runs: the spread between the two local runs is the machine's noise
    results["local 2"] = timed_job(
        in_path, os.path.join(work, "local2.jsonl"), args.max_batch, lambda job: run_local(job, model)
    )

    def records(name):
        with open(os.path.join(work, name.replace(" ", "") + ".jsonl")) as f:
            return sorted(f.read().splitlines())

    same = records("local") == records("ray x1") == records("ray x2")
    print(f"model load (local): {load_s:.2f} s; ray.init: {ray_init_s:.1f} s; same records in all three: {same}")
    print(f"{'':8} {'wall s':>8} {'prompts/s':>10} {'tokens/s':>9} {'first result s':>15}")
    for name, r in results.items():
        print(
            f"{name:8} {r['wall_s']:8.2f} {r['prompts_per_s']:10.2f} {r['tokens_per_s']:9.1f} "
            f"{r['first_result_s']:15.2f}"
        )
    print(json.dumps({"load_s": load_s, "ray_init_s": ray_init_s, **results, "same_records": same}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
