"""The `gptj` command line: generate | convert | info | bench | parity | eval | serve."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

from .errors import GPTJError, SettingsError
from .formats import FORMATS

EXAMPLES = {
    "generate": """examples:
  gptj generate "The dog"                               # the built-in demo model (trained, int8)
  gptj generate --model tiny-random "The dog"           # the random tiny model
  gptj generate --model gpt-j-6B.gptj "The dog" -n 64   # the real model, converted with `gptj convert`
  gptj generate --model ./gpt-j-6B --backend reference "The dog"
  echo "Once upon a time" | gptj generate --model m.gptj --sample --temperature 0.8 --top-p 0.9 --seed 1
  gptj generate --model m.gptj "Q: What is 2+2?\\nA:" --stop "\\n"
""",
    "convert": """examples:
  gptj convert ./gpt-j-6B gpt-j-6B.gptj                 # int8 (q8): a 6.4 GB file
  gptj convert ./gpt-j-6B gpt-j-6B-f16.gptj --dtype f16
""",
    "info": """examples:
  gptj info                     # the built-in demo model
  gptj info gpt-j-6B.gptj
  gptj info ./gpt-j-6B          # a Hugging Face directory
""",
    "bench": """examples:
  gptj bench gpt-j-6B.gptj --prompt-tokens 128 --new-tokens 32
  gptj bench --backend reference           # the built-in demo model
""",
    "parity": """examples:
  gptj parity ./gpt-j-6B "The dog" --a reference --b cpp
  gptj parity gpt-j-6B.gptj "The dog"       # int8 runtime against the reference on the same file
  gptj parity ./gpt-j-6B "The dog" --b transformers   # needs torch and transformers installed
""",
}


def _add_model_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("model", nargs="?", default=None,
                       help="Hugging Face GPT-J directory, native .gptj file or tiny-random (default: the built-in demo model)")
    else:
        p.add_argument("--model", "-m", default=None,
                       help="Hugging Face GPT-J directory, native .gptj file or tiny-random (default: the built-in demo model)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "cpp"],
                   help="reference = NumPy oracle, cpp = C++ runtime, auto = cpp when built (default)")
    p.add_argument("--threads", "-t", type=int, default=None, help="threads for the cpp backend (default: physical cores)")
    p.add_argument("--kv-dtype", default=None, choices=["float16", "float32"],
                   help="KV cache precision (default: float16 for int8 models on the cpp backend, else float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptj", description="GPT-J 6B on the CPU: a NumPy reference, a C++ fp32 core and an int8 runtime.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `gptj COMMAND --help` for each command's options and examples")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    g = sub.add_parser("generate", help="generate text from a prompt", epilog=EXAMPLES["generate"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt", nargs="?", default=None, help="the prompt (read from stdin when omitted)")
    _add_model_args(g)
    g.add_argument("--max-new-tokens", "-n", type=int, default=32, help="tokens to generate (default 32)")
    g.add_argument("--sample", action="store_true",
                   help="sample instead of greedy decoding (implied by --temperature/--top-k/--top-p)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default 50, 0 = off)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default 1.0 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0)")
    g.add_argument("--min-new-tokens", type=int, default=0, help="suppress end-of-text before this many tokens")
    g.add_argument("--stop", action="append", default=[], help="stop when this text appears (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="random seed that makes sampling reproducible")
    g.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it arrives")
    g.set_defaults(run=cmd_generate)

    c = sub.add_parser("convert", help="convert a checkpoint to a native model file", epilog=EXAMPLES["convert"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("src", help="Hugging Face GPT-J directory (safetensors or pytorch_model.bin, sharded or not)")
    c.add_argument("dst", help="the native model file to write (e.g. gpt-j-6B.gptj)")
    c.add_argument("--dtype", default="q8", choices=list(FORMATS), help="weight format (default q8)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(run=cmd_convert)

    i = sub.add_parser("info", help="describe a model", epilog=EXAMPLES["info"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("model", nargs="?", default=None, help="model path (default: the built-in demo model)")
    i.set_defaults(run=cmd_info)

    b = sub.add_parser("bench", help="measure prompt and decode tokens/s", epilog=EXAMPLES["bench"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(b, positional=True)
    b.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    b.add_argument("--new-tokens", type=int, default=32, help="tokens to decode (default 32)")
    b.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default 3)")
    b.set_defaults(run=cmd_bench)

    q = sub.add_parser("parity", help="compare two backends block by block", epilog=EXAMPLES["parity"],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("model", nargs="?", default=None, help="model path (default: the built-in demo model)")
    q.add_argument("prompt", nargs="?", default="The dog", help='prompt (default "The dog")')
    q.add_argument("--a", default="reference", choices=["reference", "cpp"], help="first backend (default reference)")
    q.add_argument("--b", default="cpp", choices=["reference", "cpp", "transformers"],
                   help="second backend (default cpp)")
    q.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to compare (default 16)")
    q.add_argument("--threads", "-t", type=int, default=None, help="threads for the cpp backend")
    q.set_defaults(run=cmd_parity)
    from .evaluate import add_eval_parser

    add_eval_parser(sub)

    from .serve.cli import add_parser as add_serve_parser  # imports nothing from the serve extra

    add_serve_parser(sub)

    from .batch import add_parser as add_batch_parser
    add_batch_parser(sub, _add_model_args)
    if "serve" in sub.choices:
        from .ray_serve import add_ray_options
        add_ray_options(sub.choices["serve"])
    return parser


def _load(args):
    from .api import BUILTIN_DESCRIPTION, load

    if args.model is None:
        print(f"gptj: no --model given, using {BUILTIN_DESCRIPTION}", file=sys.stderr)
    return load(args.model, backend=args.backend, threads=args.threads, kv_dtype=args.kv_dtype)


def cmd_generate(args) -> int:
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise SettingsError("no prompt: give it as an argument or on standard input")
        # Bytes that are not UTF-8 become lone surrogates, as in command-line arguments: the tokenizer
        # then refuses both the same way (tokenizer.check_text).
        prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    if prompt == "":
        raise SettingsError("the prompt is empty; give at least one character of text")
    do_sample = args.sample or any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    settings = dict(max_new_tokens=args.max_new_tokens, do_sample=do_sample,
                    temperature=1.0 if args.temperature is None else args.temperature,
                    top_k=50 if args.top_k is None else args.top_k, top_p=1.0 if args.top_p is None else args.top_p,
                    repetition_penalty=args.repetition_penalty, min_new_tokens=args.min_new_tokens,
                    stop=tuple(args.stop), seed=args.seed)
    from .generate import GenerationSettings

    GenerationSettings(**settings)  # validate before the (possibly slow) load
    model = _load(args)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    if args.no_stream:
        out.write(model.generate(prompt, **settings))
    else:
        for piece in model.stream(prompt, **settings):
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    s = model.last_stats
    print(f"gptj: {s.prompt_tokens} prompt tokens at {s.prompt_tokens_per_second:.1f} tokens/s, "
          f"{s.new_tokens} new tokens at {s.decode_tokens_per_second:.2f} tokens/s "
          f"({model.backend.name} backend)", file=sys.stderr)
    return 0


def cmd_convert(args) -> int:
    from .convert import convert

    started = time.perf_counter()
    convert(args.src, args.dst, dtype=args.dtype, progress=not args.no_progress)
    size = os.path.getsize(args.dst)
    print(f"gptj: wrote {args.dst} ({size / 1e9:.2f} GB, {args.dtype}) in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from .api import BUILTIN_DESCRIPTION
    from .config import TINY
    from .demo import DEMO_PATH, TINY_RANDOM, TINY_RANDOM_DESCRIPTION
    from .native import model_kind, open_native

    path = args.model
    lines: List[str] = []
    if path == TINY_RANDOM:
        config, dtype, size, tokenizer = TINY, "f32 (in memory)", None, "built-in GPT-2 BPE + 143 GPT-J extra tokens"
        lines.append(f"model: {TINY_RANDOM_DESCRIPTION}")
    elif path is None or model_kind(path) == "native":
        native = open_native(DEMO_PATH if path is None else path)
        config, dtype, size = native.config, native.dtype, os.path.getsize(native.path)
        tokenizer = "embedded in the file" if native.tokenizer_json else "none embedded (the built-in GPT-2 BPE is used)"
        lines.append(f"model: {BUILTIN_DESCRIPTION}" if path is None else f"model: {path} (gptj_ref native file)")
        lines.append(f"file: {native.path} (format version {native.format_version})")
    else:
        from .checkpoint import open_checkpoint

        with open_checkpoint(path) as ckpt:
            ckpt.check()   # the config's sizes against the tensors present (headers only)
            config = ckpt.config
            dtypes = sorted({ckpt.dtype(n) for n in ckpt.names()})
            dtype, size = "/".join(dtypes), sum(ckpt.nbytes(n) for n in ckpt.names())
            lines.append(f"model: {path} (Hugging Face checkpoint, {ckpt.format})")
        has = [f for f in ("tokenizer.json", "vocab.json", "merges.txt") if os.path.exists(os.path.join(path, f))]
        tokenizer = ", ".join(has) if has else "none in the directory (the built-in GPT-2 BPE is used)"
    lines += [
        f"parameters: {config.n_params():,}",
        f"dtype: {dtype}",
        f"size: {size / 1e9:.3f} GB" if size is not None else "size: -",
        f"tokenizer: {tokenizer}",
        f"layers {config.n_layer}, n_embd {config.n_embd}, heads {config.n_head} x {config.head_dim}, "
        f"rotary_dim {config.rotary_dim}, d_ff {config.d_ff}, vocab {config.vocab_size}, context {config.n_positions}",
    ]
    try:
        from . import runtime

        lines.append(f"kernels: {runtime.kernel_isa()} (this CPU and build can run: "
                     f"{', '.join(runtime.available_kernel_isas())})")
    except ImportError:
        lines.append("kernels: none (the C++ extension is not built; only backend='reference' runs)")
    print("\n".join(lines))
    return 0


def cmd_bench(args) -> int:
    import numpy as np

    if args.prompt_tokens < 1 or args.new_tokens < 2 or args.repeats < 1:
        raise SettingsError("--prompt-tokens must be >= 1, --new-tokens >= 2 and --repeats >= 1")
    model = _load(args)
    if args.prompt_tokens + args.new_tokens > model.config.n_positions:
        raise SettingsError(f"--prompt-tokens + --new-tokens must fit the context of {model.config.n_positions}")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, min(model.config.vocab_size, 50256), size=args.prompt_tokens).tolist()
    prompt_rates, decode_rates = [], []
    for _ in range(args.repeats):
        model.generate_ids(prompt, max_new_tokens=args.new_tokens, stop_at_eos=False)
        s = model.last_stats
        prompt_rates.append(s.prompt_tokens_per_second)
        decode_rates.append(s.decode_tokens_per_second)
    print(f"backend: {model.backend.name}; model: {model.description}")
    print(f"prompt: {args.prompt_tokens} tokens, {float(np.median(prompt_rates)):.2f} tokens/s (median of {args.repeats})")
    print(f"decode: {args.new_tokens} tokens, {float(np.median(decode_rates)):.2f} tokens/s, "
          f"{1000 / float(np.median(decode_rates)):.1f} ms/token (median of {args.repeats})")
    return 0


def cmd_parity(args) -> int:
    from .parity import run_parity

    return run_parity(args.model, args.prompt, a=args.a, b=args.b, new_tokens=args.new_tokens, threads=args.threads)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except GPTJError as e:
        print(f"gptj {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptj: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:   # writing the output: a full disk (/dev/full), a closed terminal
        _silence_stdout()
        print(f"gptj {args.command}: error: cannot write the output: {e.strerror or e}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"gptj {args.command}: error: out of memory (or over this process's memory limit)", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of unwritable output cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
