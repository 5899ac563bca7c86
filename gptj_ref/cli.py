"""The `gptj` command line: generate | convert | info | bench | parity, and the commands of other modules
(eval, serve, batch).

Every command that runs a model names it with `--model/-m` (a Hugging Face directory, a native .gptj file,
a Hub-style name found in the local Hugging Face cache, tiny-random, or nothing for the built-in demo
model) and takes the same --backend, --threads and --kv-dtype; a path given where older versions took it
(as a positional argument) is accepted with a note.

Adding a command: write, in your own module, a `Command` (a name, a one-line help, examples, a function
that adds the command's arguments to its parser and a function that runs it and returns the exit code),
then list the module in COMMAND_MODULES below. That module must import its heavy dependencies inside
`run`, since every `gptj` invocation imports it to build the parser:

    # gptj_ref/serve/cli.py
    from ..cli import Command, add_model_arguments

    def _arguments(parser):
        add_model_arguments(parser)
        parser.add_argument("--port", type=int, default=8000)

    def run(args) -> int:
        import uvicorn   # the serve extra only now
        ...
        return 0

    COMMAND = Command("serve", "serve the model over HTTP with OpenAI's API", _arguments, run,
                      examples="  gptj serve --model gpt-j-6B.gptj --port 8000\\n")

A GPTJError raised by `run` is printed as one line `gptj NAME: error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from importlib import import_module
from typing import Callable, List, Optional, Sequence

from . import __version__
from .errors import GPTJError, SettingsError

# Modules that each define COMMAND, a Command: one line per module.
COMMAND_MODULES: Sequence[str] = (
    "gptj_ref.evaluate",
    "gptj_ref.serve.cli",
    "gptj_ref.batch",
)


@dataclass(frozen=True)
class Command:
    """One `gptj` subcommand. `add_arguments(parser)` adds its options; `run(args)` returns the exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str = ""


# -------------------------------------------------------------------------------------------------
# Shared arguments
# -------------------------------------------------------------------------------------------------

MODEL_HELP = (
    "a Hugging Face GPT-J directory, a native .gptj file, a Hub name such as EleutherAI/gpt-j-6B "
    "found in the local Hugging Face cache, or tiny-random (default: the built-in demo model)"
)


def add_model_arguments(parser: argparse.ArgumentParser, runtime: bool = True) -> None:
    """--model/-m, and with runtime=True also --backend, --threads and --kv-dtype."""
    parser.add_argument("--model", "-m", default=None, help=MODEL_HELP)
    if not runtime:
        return
    from .api import BACKENDS
    from .backend import KV_DTYPES

    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="reference = NumPy oracle, cpp = C++ runtime, auto = cpp when built (default)",
    )
    parser.add_argument(
        "--threads",
        "-t",
        type=int,
        default=None,
        help="threads for the cpp backend (default: OMP_NUM_THREADS if set, else the physical cores)",
    )
    parser.add_argument(
        "--kv-dtype",
        default=None,
        choices=KV_DTYPES,
        help="KV cache precision (default: float16 for int8 models on the cpp backend, else float32)",
    )


def _positional_model(parser: argparse.ArgumentParser) -> None:
    """The older form `gptj info PATH`: accepted, with a note that names the usual form."""
    parser.add_argument("positional_model", nargs="?", default=None, help=argparse.SUPPRESS)


def _model_from(args, positional: Optional[str]) -> Optional[str]:
    if positional is not None:
        if args.model is not None:
            raise SettingsError(
                f"the model is given twice ({positional!r} and --model {args.model!r}); name it once, with --model"
            )
        print(
            f"gptj {args.command}: note: the model is named with --model (-m) in every command; using {positional!r}",
            file=sys.stderr,
        )
        args.model = positional
    return args.model


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrtabfv0\\'\"])")
_SIMPLE_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "0": "\0",
    "\\": "\\",
    "'": "'",
    '"': '"',
}


def unescape(text: str) -> str:
    """Backslash escapes as C and Python write them: \\n \\r \\t \\a \\b \\f \\v \\0 \\\\ \\' \\" \\xHH \\uHHHH
    \\UHHHHHHHH. Any other backslash stays as it is. Non-ASCII text passes through unchanged."""

    def replace(match: "re.Match[str]") -> str:
        code = match.group(1)
        if code[0] in "xuU":
            try:
                return chr(int(code[1:], 16))
            except (ValueError, OverflowError):
                return match.group(0)
        return _SIMPLE_ESCAPES[code]

    return _ESCAPE.sub(replace, text)


def _load(args, context: Optional[int] = None):
    from .api import BUILTIN_DESCRIPTION, load

    if args.model is None:
        print(f"gptj: no --model given, using {BUILTIN_DESCRIPTION}", file=sys.stderr)
    return load(args.model, backend=args.backend, threads=args.threads, kv_dtype=args.kv_dtype, context=context)


# -------------------------------------------------------------------------------------------------
# generate
# -------------------------------------------------------------------------------------------------


def _generate_arguments(g: argparse.ArgumentParser) -> None:
    from .generate import GenerationSettings

    d = GenerationSettings()
    g.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="the prompt (read from standard input when omitted; the one newline that ends it is dropped)",
    )
    g.add_argument(
        "--escape",
        "-e",
        action="store_true",
        help="interpret backslash escapes (\\n, \\t, \\\\, \\xHH, \\uHHHH ...) in the prompt argument",
    )
    add_model_arguments(g)
    g.add_argument(
        "--max-new-tokens",
        "-n",
        type=int,
        default=d.max_new_tokens,
        help=f"tokens to generate (default {d.max_new_tokens})",
    )
    g.add_argument(
        "--sample",
        action="store_true",
        help="sample instead of greedy decoding (implied by --temperature/--top-k/--top-p)",
    )
    g.add_argument(
        "--temperature", type=float, default=None, help=f"sampling temperature (default {d.temperature}; 0 = greedy)"
    )
    g.add_argument(
        "--top-k", type=int, default=None, help=f"keep the k most likely tokens (default {d.top_k}, 0 = off)"
    )
    g.add_argument(
        "--top-p", type=float, default=None, help=f"nucleus sampling mass in (0, 1] (default {d.top_p} = off)"
    )
    g.add_argument(
        "--repetition-penalty",
        type=float,
        default=d.repetition_penalty,
        help=f"> 1 discourages repeats (default {d.repetition_penalty})",
    )
    g.add_argument(
        "--min-new-tokens", type=int, default=d.min_new_tokens, help="suppress end-of-text before this many tokens"
    )
    g.add_argument(
        "--stop",
        action="append",
        default=[],
        help="stop when this text appears (repeatable; backslash escapes such as \\n are interpreted)",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed that makes sampling reproducible")
    g.add_argument("--no-stream", action="store_true", help="print the text at the end instead of as it arrives")


def _read_prompt(args) -> str:
    if args.prompt is not None:
        return unescape(args.prompt) if args.escape else args.prompt
    if sys.stdin is None or sys.stdin.isatty():
        raise SettingsError("no prompt: give it as an argument or on standard input")
    # Bytes that are not UTF-8 become lone surrogates, as in command-line arguments: the tokenizer then
    # refuses both the same way (tokenizer.check_text).
    prompt = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    # `echo` and editors end the text with one newline; it is not part of the prompt.
    if prompt.endswith("\r\n"):
        return prompt[:-2]
    return prompt[:-1] if prompt.endswith("\n") else prompt


def _run_generate(args) -> int:
    from .generate import GenerationSettings

    prompt = _read_prompt(args)
    if prompt == "":
        raise SettingsError("the prompt is empty; give at least one character of text")
    do_sample = args.sample or any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    given = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=do_sample,
        repetition_penalty=args.repetition_penalty,
        min_new_tokens=args.min_new_tokens,
        stop=tuple(unescape(s) for s in args.stop),
        **{name: value for name, value in given.items() if value is not None},
    )
    GenerationSettings(**settings)  # validate before the (possibly slow) load
    # A token holds at least one byte of text, so this context bounds what the run needs.
    model = _load(args, context=len(prompt.encode("utf-8", "surrogatepass")) + args.max_new_tokens)
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
    threads = getattr(model.backend, "threads", None)
    print(
        f"gptj: {s.prompt_tokens} prompt tokens at {s.prompt_tokens_per_second:.1f} tokens/s, "
        f"{s.new_tokens} new tokens at {s.decode_tokens_per_second:.2f} tokens/s "
        f"({model.backend.name} backend" + (f", {threads} threads)" if threads else ")"),
        file=sys.stderr,
    )
    return 0


GENERATE = Command(
    "generate",
    "generate text from a prompt",
    _generate_arguments,
    _run_generate,
    examples="""\
  gptj generate "The dog"                               # the built-in demo model (trained, int8)
  gptj generate --model tiny-random "The dog"           # the random tiny model
  gptj generate --model gpt-j-6B.gptj "The dog" -n 64   # the real model, converted with `gptj convert`
  gptj generate --model ./gpt-j-6B --backend reference "The dog"
  echo "Once upon a time" | gptj generate --model m.gptj --sample --temperature 0.8 --top-p 0.9 --seed 1
  gptj generate --model m.gptj -e "Q: What is 2+2?\\nA:" --stop "\\n"
""",
)


# -------------------------------------------------------------------------------------------------
# convert
# -------------------------------------------------------------------------------------------------


def _convert_arguments(c: argparse.ArgumentParser) -> None:
    from .native import NATIVE_DTYPES

    c.add_argument("src", help="Hugging Face GPT-J directory (safetensors or pytorch_model.bin, sharded or not)")
    c.add_argument("dst", help="the native model file to write (e.g. gpt-j-6B.gptj)")
    c.add_argument(
        "--dtype", default=NATIVE_DTYPES[0], choices=NATIVE_DTYPES, help=f"weight format (default {NATIVE_DTYPES[0]})"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_convert(args) -> int:
    from .convert import convert

    started = time.perf_counter()
    convert(args.src, args.dst, dtype=args.dtype, progress=not args.no_progress)
    size = os.path.getsize(args.dst)
    print(
        f"gptj: wrote {args.dst} ({size / 1e9:.2f} GB, {args.dtype}) in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


CONVERT = Command(
    "convert",
    "convert a checkpoint to a native model file",
    _convert_arguments,
    _run_convert,
    examples="""\
  gptj convert ./gpt-j-6B gpt-j-6B.gptj                 # int8 (q8): a 7.0 GB file
  gptj convert ./gpt-j-6B gpt-j-6B-f16.gptj --dtype f16
""",
)


# -------------------------------------------------------------------------------------------------
# info
# -------------------------------------------------------------------------------------------------


def _info_arguments(i: argparse.ArgumentParser) -> None:
    add_model_arguments(i, runtime=False)
    _positional_model(i)
    i.add_argument(
        "--threads", "-t", type=int, default=None, help="the thread count to describe (default: the default)"
    )
    i.add_argument(
        "--context",
        "-c",
        type=int,
        default=None,
        help="tokens (prompt + generated) for the memory estimate (default: the model's context)",
    )


def _run_info(args) -> int:
    from .info import describe_model

    path = _model_from(args, args.positional_model)
    print("\n".join(describe_model(path, threads=args.threads, context=args.context)))
    return 0


INFO = Command(
    "info",
    "describe a model, the memory it needs and the threads and kernels it would use",
    _info_arguments,
    _run_info,
    examples="""\
  gptj info                           # the built-in demo model
  gptj info --model gpt-j-6B.gptj
  gptj info --model ./gpt-j-6B -c 512  # a Hugging Face directory; memory estimated for 512 tokens
""",
)


# -------------------------------------------------------------------------------------------------
# bench
# -------------------------------------------------------------------------------------------------


def _bench_arguments(b: argparse.ArgumentParser) -> None:
    add_model_arguments(b)
    _positional_model(b)
    b.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    b.add_argument("--new-tokens", type=int, default=32, help="tokens to decode (default 32)")
    b.add_argument("--repeats", type=int, default=3, help="runs; the median is reported (default 3)")


def _run_bench(args) -> int:
    import numpy as np

    _model_from(args, args.positional_model)
    if args.prompt_tokens < 1 or args.new_tokens < 2 or args.repeats < 1:
        raise SettingsError("--prompt-tokens must be >= 1, --new-tokens >= 2 and --repeats >= 1")
    model = _load(args, context=args.prompt_tokens + args.new_tokens)
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
    print(
        f"prompt: {args.prompt_tokens} tokens, {float(np.median(prompt_rates)):.2f} tokens/s (median of {args.repeats})"
    )
    print(
        f"decode: {args.new_tokens} tokens, {float(np.median(decode_rates)):.2f} tokens/s, "
        f"{1000 / float(np.median(decode_rates)):.1f} ms/token (median of {args.repeats})"
    )
    return 0


BENCH = Command(
    "bench",
    "measure prompt and decode tokens/s",
    _bench_arguments,
    _run_bench,
    examples="""\
  gptj bench --model gpt-j-6B.gptj --prompt-tokens 128 --new-tokens 32
  gptj bench --backend reference           # the built-in demo model
""",
)


# -------------------------------------------------------------------------------------------------
# parity
# -------------------------------------------------------------------------------------------------


def _parity_arguments(q: argparse.ArgumentParser) -> None:
    from .api import BACKENDS

    runnable = [b for b in BACKENDS if b != "auto"]
    add_model_arguments(q, runtime=False)
    q.add_argument("words", nargs="*", metavar="prompt", help='prompt (default "The dog")')
    q.add_argument("--a", default="reference", choices=runnable, help="first backend (default reference)")
    q.add_argument("--b", default="cpp", choices=runnable + ["transformers"], help="second backend (default cpp)")
    q.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to compare (default 16)")
    q.add_argument("--threads", "-t", type=int, default=None, help="threads for the cpp backend")


def _run_parity(args) -> int:
    from .parity import run_parity

    words = list(args.words)
    if len(words) > 2:
        raise SettingsError(
            f'give one prompt (quoted), got {len(words)} words; e.g. gptj parity --model m.gptj "The dog"'
        )
    positional = words.pop(0) if len(words) == 2 else None  # the older form: gptj parity MODEL PROMPT
    _model_from(args, positional)
    args.prompt = words[0] if words else "The dog"
    return run_parity(args.model, args.prompt, a=args.a, b=args.b, new_tokens=args.new_tokens, threads=args.threads)


PARITY = Command(
    "parity",
    "compare two backends block by block",
    _parity_arguments,
    _run_parity,
    examples="""\
  gptj parity --model ./gpt-j-6B "The dog" --a reference --b cpp
  gptj parity --model gpt-j-6B.gptj "The dog"       # int8 runtime against the reference on the same file
  gptj parity --model ./gpt-j-6B "The dog" --b transformers   # needs torch and transformers installed
""",
)


BUILTIN_COMMANDS = (GENERATE, CONVERT, INFO, BENCH, PARITY)


# -------------------------------------------------------------------------------------------------
# The parser and main
# -------------------------------------------------------------------------------------------------


def commands() -> List[Command]:
    """The built-in commands, then those of COMMAND_MODULES."""
    return list(BUILTIN_COMMANDS) + [import_module(name).COMMAND for name in COMMAND_MODULES]


def build_parser(extra: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptj",
        description="GPT-J 6B on the CPU: a NumPy reference, a C++ fp32 core and an int8 runtime.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run `gptj COMMAND --help` for each command's options and examples",
    )
    parser.add_argument("--version", action="version", version=f"gptj {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in commands() + list(extra):
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog="examples:\n" + command.examples if command.examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(run=command.run)  # before the arguments: an option may wrap it (serve --ray)
        command.add_arguments(p)
    return parser


def main(argv: Optional[List[str]] = None, extra: Sequence[Command] = ()) -> int:
    parser = build_parser(extra)
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
    except OSError as e:  # writing the output: a full disk (/dev/full), a closed terminal
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
