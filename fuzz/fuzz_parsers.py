"""Long-running fuzzing of every parser a user's file reaches, for a time budget.

    PYTHONPATH=. nice -n 10 python3 fuzz/fuzz_parsers.py --minutes 15

Each round picks a target (safetensors header, native .gptj file, torch zip + pickle, config.json,
tokenizer files), mutates a valid file of that kind (bytes flipped, spans deleted, duplicated, cut) or
generates one from scratch, and parses it in a child process under limits: 20 s of time and 2 GiB of
address space. The input passes when the parser returns or raises a GPTJError. Anything else is a crash
and is saved under fuzz/crashes/ (another exception, a signal, a timeout, running out of memory).
At the end it prints the time run, the inputs tried per target and the crashes found.

Children are reused (one per batch of 200 inputs) so the rate stays high; a crash restarts the child.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import resource
import struct
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TIME_LIMIT = 20  # seconds for one batch's single input (checked per input by the parent)
MEMORY_LIMIT = 2 << 30  # address space of a child
BATCH = 200


def seeds(work: str) -> dict:
    """Valid files of every kind, to mutate."""
    import torch

    from gptj_ref.config import GPTJConfig
    from gptj_ref.layout import random_weights
    from gptj_ref.native import write_native
    from gptj_ref.safetensors_file import save_tensors

    config = GPTJConfig(
        vocab_size=300, n_positions=32, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, bos_token_id=299, eos_token_id=299
    )
    weights = random_weights(config, seed=3)
    save_tensors(os.path.join(work, "s.safetensors"), weights)
    write_native(os.path.join(work, "m.gptj"), config, weights.__getitem__, "q8", "")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in weights.items()}, buffer)
    with open(os.path.join(work, "s.safetensors"), "rb") as f:
        safetensors = f.read()
    with open(os.path.join(work, "m.gptj"), "rb") as f:
        native = f.read()
    vocab = {"!": 0, "a": 1, "b": 2, "ab": 3, "<|endoftext|>": 4}
    return {
        "safetensors": safetensors[: 8 + struct.unpack("<Q", safetensors[:8])[0] + 256],
        "native": native,
        "torchzip": buffer.getvalue(),
        "config": json.dumps(config.to_hf()).encode(),
        "tokenizer": json.dumps({"vocab": vocab, "merges": "a b\n"}).encode(),
        "config_json": config.to_hf(),
    }


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        pos = rng.randrange(len(out))
        kind = rng.random()
        if kind < 0.45:
            out[pos] = rng.randrange(256)
        elif kind < 0.6:
            del out[pos : pos + rng.randint(1, 64)]
        elif kind < 0.75:
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)] * rng.randint(1, 8)
        elif kind < 0.85:
            out[pos:pos] = rng.choice(
                [
                    b"[",
                    b"{",
                    b"9" * 30,
                    b"-1",
                    b"NaN",
                    b"\xff",
                    b"h\x00",
                    b"(",
                    b"t",
                    b"\x94",
                    b"0",
                    b"}",
                    b"s",
                    b"u",
                    b"R",
                    b"b",
                    b"Q",
                    b"\x85" * 50,
                ]
            )
        else:
            del out[pos:]
    return bytes(out)


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.random()
    if depth > 4 or kind < 0.4:
        return rng.choice(
            [None, True, 0, -1, 2**64, 2**31, 1.5, "", "F32", "gptj", "x" * rng.randint(0, 40), rng.randint(-10, 10**6)]
        )
    if kind < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(
            [
                "dtype",
                "shape",
                "data_offsets",
                "__metadata__",
                "n_layer",
                "n_embd",
                "vocab_size",
                "n_head",
                "rotary_dim",
                "n_positions",
                "a",
                "",
            ]
        ): random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 5))
    }


def make_input(rng: random.Random, target: str, seed_files: dict) -> bytes:
    if target == "config" and rng.random() < 0.5:
        config = dict(seed_files["config_json"])
        for _ in range(rng.randint(1, 3)):
            config[rng.choice(list(config) + ["n_inner"])] = random_json(rng, 3)
        return json.dumps(config).encode()
    if target == "safetensors" and rng.random() < 0.3:
        blob = json.dumps({rng.choice(["a", "b", "__metadata__"]): random_json(rng) for _ in range(3)}).encode()
        return struct.pack("<Q", len(blob)) + blob + bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    data = seed_files[target]
    if target == "native":  # mutate the header region mostly: that is where the parsing is
        n = 8 + struct.unpack("<Q", data[:8])[0]
        cut = min(len(data), n + 256) if rng.random() < 0.8 else len(data)
        return mutate(rng, data[:cut]) + data[cut:]
    if target == "torchzip" and rng.random() < 0.6:  # mutate the pickle inside an intact archive
        src = zipfile.ZipFile(io.BytesIO(data))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                body = src.read(info)
                dst.writestr(info, mutate(rng, body) if info.filename.endswith("data.pkl") else body)
        return out.getvalue()
    return mutate(rng, data)


def parse(target: str, data: bytes, work: str) -> None:
    """Parse one input the way gptj_ref reads a user's file of that kind."""
    from gptj_ref.checkpoint import open_checkpoint
    from gptj_ref.config import GPTJConfig
    from gptj_ref.native import open_native
    from gptj_ref.safetensors_file import SafetensorsFile
    from gptj_ref.tokenizer import Tokenizer

    if target == "safetensors":
        path = os.path.join(work, "in.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        SafetensorsFile(path)
    elif target == "native":
        path = os.path.join(work, "in.gptj")
        with open(path, "wb") as f:
            f.write(data)
        with open_native(path) as native:
            native.check()
    elif target == "torchzip":
        d = os.path.join(work, "bin")
        os.makedirs(d, exist_ok=True)
        GPTJConfig(
            vocab_size=300,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            rotary_dim=4,
            bos_token_id=299,
            eos_token_id=299,
        ).to_json_file(os.path.join(d, "config.json"))
        with open(os.path.join(d, "pytorch_model.bin"), "wb") as f:
            f.write(data)
        with open_checkpoint(d) as ckpt:
            ckpt.load_weights()
    elif target == "config":
        path = os.path.join(work, "config.json")
        with open(path, "wb") as f:
            f.write(data)
        GPTJConfig.from_json_file(path)
    elif target == "tokenizer":
        try:
            spec = json.loads(data)
            vocab, merges = json.dumps(spec.get("vocab")), str(spec.get("merges"))
        except (ValueError, AttributeError, TypeError):
            vocab, merges = data.decode("latin-1"), "a b\n"
        with open(os.path.join(work, "vocab.json"), "w") as f:
            f.write(vocab)
        with open(os.path.join(work, "merges.txt"), "w") as f:
            f.write(merges)
        Tokenizer.from_vocab_and_merges(os.path.join(work, "vocab.json"), os.path.join(work, "merges.txt"))


def child(conn, work: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    from gptj_ref.errors import GPTJError

    while True:
        job = conn.recv()
        if job is None:
            return
        target, data = job
        try:
            parse(target, data, work)
            conn.send(("ok", ""))
        except GPTJError:
            conn.send(("refused", ""))
        except BaseException as e:  # noqa: BLE001 - any other exception is the finding
            conn.send(("crash", f"{type(e).__name__}: {str(e)[:300]}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0, help="time budget (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="gptj-fuzz-")
    seed_files = seeds(work)
    targets = ["safetensors", "native", "torchzip", "config", "tokenizer"]
    tried = {t: 0 for t in targets}
    outcomes = {"ok": 0, "refused": 0, "crash": 0}
    crashes = []
    crash_dir = os.path.join(HERE, "crashes")
    started = time.monotonic()
    deadline = started + args.minutes * 60
    ctx = mp.get_context("fork")

    def start():
        parent, child_end = ctx.Pipe()
        p = ctx.Process(target=child, args=(child_end, work), daemon=True)
        p.start()
        return p, parent

    proc, conn = start()
    done = 0
    while time.monotonic() < deadline:
        target = targets[done % len(targets)]
        data = make_input(rng, target, seed_files)
        conn.send((target, data))
        tried[target] += 1
        done += 1
        if conn.poll(TIME_LIMIT):
            try:
                outcome, detail = conn.recv()
            except EOFError:
                outcome, detail = "crash", f"child died (exit code {proc.join(1) or proc.exitcode})"
        else:
            outcome, detail = "crash", f"timeout (> {TIME_LIMIT} s)"
        outcomes[outcome] += 1
        if outcome == "crash":
            os.makedirs(crash_dir, exist_ok=True)
            name = os.path.join(crash_dir, f"{target}-{len(crashes)}.bin")
            with open(name, "wb") as f:
                f.write(data)
            crashes.append((target, detail, name))
            print(f"CRASH {target}: {detail} (input saved to {name})", flush=True)
            proc.kill()
            proc.join()
            proc, conn = start()
        elif done % BATCH == 0:  # a fresh child now and then: nothing accumulates across inputs
            conn.send(None)
            proc.join(5)
            proc, conn = start()
        if done % 2000 == 0:
            print(f"{time.monotonic() - started:7.0f} s  {done} inputs  {outcomes}", flush=True)
    conn.send(None)
    proc.join(5)

    elapsed = time.monotonic() - started
    print(f"\nran {elapsed / 60:.1f} minutes, {done} inputs ({done / elapsed:.0f}/s), seed {args.seed}")
    print("inputs per target: " + ", ".join(f"{t} {n}" for t, n in tried.items()))
    print(f"parsed {outcomes['ok']}, refused with a GPTJError {outcomes['refused']}, crashes {outcomes['crash']}")
    for target, detail, name in crashes:
        print(f"  {target}: {detail} -> {name}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
