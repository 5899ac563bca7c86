"""Benchmark of `gptj serve` on a full-size GPT-J 6B int8 file with random weights.

    python benchmarks/bench_serve.py [--file /tmp/gptj6b-random-q8.gptj] [--threads 2]
                                                  [--tokens 32] [--clients 1 4 8 16]

The file is the one benchmarks/bench_int8.py makes (built when missing, ~7 GB, reused). One run measures:
  - `gptj generate` on the file (a subprocess, greedy): its decode tokens/s, the single-stream baseline;
  - the server (`gptj serve --max-batch 16`, a subprocess) with 1, 4, 8 and 16 concurrent streaming
    clients, each asking for --tokens greedy tokens after an 8-token prompt (min_tokens = max_tokens, so
    no client stops early): aggregate decode tokens/s (tokens after each client's first, over the time
    from the first first-token to the last token), p50/p95 time to first token and inter-token latency;
  - the delay a long prompt adds for others: one client decoding while another sends a 1024-token
    prompt; the decoding client's largest gap between tokens, next to its median gap.
Targets: 8 clients' aggregate decode >= 3x one client's; one client through the server >= 90% of
`gptj generate`. Timings on a shared machine vary: the ratios, taken in the same run, are what count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_int8 import DEFAULT_FILE, cpu_name, ensure_file, warm_page_cache  # noqa: E402

PROMPT_WORDS = [
    "The dog",
    "Once upon a time",
    "In the beginning",
    "A long way from home",
    "She said that",
    "The results show",
    "We propose a",
    "It was the best",
]


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def gptj_generate_rate(path: str, threads: int, tokens: int) -> float:
    """Decode tokens/s that `gptj generate` reports for a greedy run on the file."""
    command = [sys.executable, "-m", "gptj_ref.cli", "generate", "--model", path, "--threads", str(threads)]
    command += ["-n", str(tokens), "--min-new-tokens", str(tokens), "--no-stream", PROMPT_WORDS[0]]
    out = subprocess.run(command, env=env(), capture_output=True, text=True, check=True)
    m = re.search(r"new tokens at ([0-9.]+) tokens/s", out.stderr)
    if not m:
        raise RuntimeError(f"cannot read the rate from gptj generate's output:\n{out.stderr}")
    return float(m.group(1))


def start_server(path: str, threads: int, max_batch: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "gptj_ref.cli", "serve", "--model", path, "--model-name", "bench"]
    command += ["--threads", str(threads), "--port", str(port), "--max-batch", str(max_batch)]
    proc = subprocess.Popen(command, env=env(), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the server exited while starting")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def stream_one(url: str, prompt, tokens: int, result: dict) -> None:
    """One streaming client: arrival time of each chunk, and the usage the server reports."""
    import httpx

    body = {
        "model": "bench",
        "prompt": prompt,
        "max_tokens": tokens,
        "min_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result["start"] = time.perf_counter()
    result["times"] = []
    with httpx.Client(timeout=600) as http, http.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                result["tokens"] = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                result["times"].append(time.perf_counter())


def run_clients(url: str, n: int, tokens: int) -> dict:
    results = [dict() for _ in range(n)]
    threads = [
        threading.Thread(target=stream_one, args=(url, f"{PROMPT_WORDS[k % 8]} ({k})", tokens, results[k]))
        for k in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = [r["times"][0] for r in results]
    lasts = [r["times"][-1] for r in results]
    decode_tokens = sum(r["tokens"] - 1 for r in results)
    ttft = [r["times"][0] - r["start"] for r in results]
    gaps = np.concatenate([np.diff(r["times"]) for r in results])
    return {
        "clients": n,
        "tokens": sum(r["tokens"] for r in results),
        "decode_tokens_per_s": decode_tokens / (max(lasts) - min(firsts)),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "itl_p50_ms": 1e3 * float(np.percentile(gaps, 50)),
        "itl_p95_ms": 1e3 * float(np.percentile(gaps, 95)),
    }


def long_prompt_delay(url: str, tokens: int) -> dict:
    """A client decoding while another sends a 1024-token prompt: its largest gap between tokens."""
    decoding = {}
    t = threading.Thread(target=stream_one, args=(url, PROMPT_WORDS[1], tokens, decoding))
    t.start()
    while len(decoding.get("times", [])) < 3:
        time.sleep(0.01)
    long = {}
    stream_one(url, list(np.random.default_rng(0).integers(0, 50000, 1024).tolist()), 1, long)
    t.join()
    gaps = np.diff(decoding["times"])
    return {
        "decode_gap_median_ms": 1e3 * float(np.median(gaps)),
        "decode_gap_max_ms": 1e3 * float(gaps.max()),
        "long_prompt_ttft_s": long["times"][0] - long["start"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default=DEFAULT_FILE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()

    ensure_file(args.file)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; {args.threads} threads; file {args.file}", flush=True)
    print(f"page cache warmed in {warm_page_cache(args.file):.1f} s", flush=True)
    baseline = gptj_generate_rate(args.file, args.threads, args.tokens)
    print(f"gptj generate: {baseline:.2f} tokens/s decoding", flush=True)

    proc, url = start_server(args.file, args.threads, max(args.clients))
    try:
        run_clients(url, 1, 4)  # warm-up: the first forward touches every weight page
        rows = []
        for n in args.clients:
            row = run_clients(url, n, args.tokens)
            rows.append(row)
            print(
                f"{n:2d} clients: {row['decode_tokens_per_s']:6.2f} tokens/s aggregate decode; "
                f"TTFT p50 {row['ttft_p50_s']:.2f} s p95 {row['ttft_p95_s']:.2f} s; "
                f"inter-token p50 {row['itl_p50_ms']:.0f} ms p95 {row['itl_p95_ms']:.0f} ms",
                flush=True,
            )
        delay = long_prompt_delay(url, args.tokens)
        print(
            f"a 1024-token prompt arriving (prefill chunk 64): the decoding client's median gap "
            f"{delay['decode_gap_median_ms']:.0f} ms, largest {delay['decode_gap_max_ms']:.0f} ms; "
            f"the long prompt's first token after {delay['long_prompt_ttft_s']:.1f} s",
            flush=True,
        )
        proc.terminate()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    by_n = {r["clients"]: r for r in rows}
    summary = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "gptj_generate_tokens_per_s": baseline,
        "rows": rows,
        "long_prompt": delay,
    }
    if 1 in by_n:
        single = by_n[1]["decode_tokens_per_s"]
        summary["single_vs_generate"] = single / baseline
        print(f"single client / gptj generate: {single / baseline:.2f} (target >= 0.90)")
        if 8 in by_n:
            summary["eight_vs_single"] = by_n[8]["decode_tokens_per_s"] / single
            print(f"8 clients / 1 client aggregate decode: {summary['eight_vs_single']:.2f} (target >= 3)")
    print("RESULT " + json.dumps(summary))


if __name__ == "__main__":
    main()
