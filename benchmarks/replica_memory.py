"""Do replicas on one node share the memory-mapped model? N processes each load the same file and
generate a few tokens (so every weight page has been read); then each one's memory is read from
/proc/PID/smaps_rollup while all are alive.

    python benchmarks/replica_memory.py [--file /tmp/gptj6b-random-q8.gptj] [--replicas 2]

Rss counts every page a process maps, shared or not; Pss divides each page among the processes that map
it; Private is what only that process holds (KV cache, scratch, Python). If the weights are shared, the
Rss of each process is about the file size, its Pss about file size / N + Private, and the node holds the
file once (in the page cache) plus each replica's Private.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = r"""
import sys, gptj_ref
model = gptj_ref.load(sys.argv[1], threads=1)
model.generate_ids([50256] * 8, max_new_tokens=2, stop_at_eos=False)
print("ready", flush=True)
sys.stdin.read()   # stay alive until the parent has measured
"""


def rollup(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default="/tmp/gptj6b-random-q8.gptj")
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    size = os.path.getsize(args.file)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, args.file], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(args.replicas)
    ]
    started = time.perf_counter()
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("a replica failed to load the model")
        print(
            f"file {args.file}: {size / 1e9:.2f} GB; {args.replicas} processes ready after "
            f"{time.perf_counter() - started:.0f} s"
        )
        total_pss = 0
        for p in procs:
            r = rollup(p.pid)
            private = r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
            shared = r.get("Shared_Clean", 0) + r.get("Shared_Dirty", 0)
            total_pss += r["Pss"]
            print(
                f"pid {p.pid}: Rss {r['Rss'] / 1e9:.2f} GB, Pss {r['Pss'] / 1e9:.2f} GB, "
                f"shared {shared / 1e9:.2f} GB, private {private / 1e9:.2f} GB "
                f"(anonymous {r.get('Anonymous', 0) / 1e9:.2f} GB)"
            )
        print(
            f"sum of Pss (the node's memory for all replicas): {total_pss / 1e9:.2f} GB "
            f"(not shared it would be about {args.replicas} x Rss)"
        )
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
