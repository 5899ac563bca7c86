"""`gptj eval`: perplexity, LAMBADA and multiple choice on local files, and lm-evaluation-harness tasks.

    gptj eval perplexity FILE.txt [--stride N]   rolling perplexity over a long text (strided windows)
    gptj eval lambada FILE.jsonl                 last-word accuracy and perplexity ({"text": ...} per line)
    gptj eval choice FILE.jsonl                  multiple choice ({"context", "choices", "label"} per line)
    gptj eval harness --tasks T1,T2              lm-eval tasks through the gptj_ref adapter (needs .[eval])

Each takes --model/--backend/--threads/--kv-dtype, so fp32, int8 and the reference can be compared on one
file; it shows a progress bar on a terminal and prints a short summary, or with --json one JSON object
whose metric keys are lm-eval's names (acc, acc_norm, perplexity, bits_per_byte, ...). The metrics are
computed as lm-eval computes them for lambada_openai and for multiple_choice tasks:

    lambada   context = the text up to its last space, target = " " + the last word;
              acc = mean of "greedy decoding gives every target token", perplexity = exp(-mean target ll)
    choice    continuation i = " " + choices[i]; acc = [argmax ll == label],
              acc_norm = [argmax ll / len(choices[i]) (characters) == label]

Bad input stops with one line naming the file and line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .cli import Command, add_model_arguments
from .errors import InputError, SettingsError

EXAMPLES = """examples:
  gptj eval perplexity --model gpt-j-6B.gptj wiki.test.txt --stride 1024
  gptj eval lambada --model gpt-j-6B.gptj lambada_test.jsonl --json
  gptj eval choice --model ./gpt-j-6B --backend reference piqa.jsonl --limit 100
  gptj eval harness --model gpt-j-6B.gptj --tasks lambada_openai,hellaswag --include-path my_tasks/
"""


def _eval_arguments(e: argparse.ArgumentParser) -> None:
    """The four tasks of `gptj eval`, each with the model arguments every `gptj` command shares."""
    tasks = e.add_subparsers(dest="eval_task", metavar="TASK")
    tasks.required = True

    p = tasks.add_parser(
        "perplexity",
        help="rolling perplexity over a text file",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="UTF-8 text file")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="a window of the model's context starts every N tokens (default: half the context)",
    )
    l_ = tasks.add_parser("lambada", help='last-word accuracy and perplexity over {"text": ...} lines')
    l_.add_argument("file", help='JSONL file, one {"text": "..."} per line')
    c = tasks.add_parser("choice", help='multiple choice over {"context", "choices", "label"} lines')
    c.add_argument("file", help='JSONL file, one {"context": str, "choices": [str, ...], "label": int} per line')
    for t in (l_, c):
        t.add_argument("--limit", type=int, default=None, help="score only the first N records")
    h = tasks.add_parser("harness", help="run lm-evaluation-harness tasks on this model (needs .[eval])")
    h.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    h.add_argument("--include-path", default=None, help="a directory of extra task YAML files (local data)")
    h.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per prompt")
    h.add_argument("--limit", type=float, default=None, help="documents per task (or a fraction below 1)")
    for t in (p, l_, c, h):
        add_model_arguments(t)
        t.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
        t.set_defaults(run=run_eval)


def run_eval(args) -> int:
    started = time.perf_counter()
    if args.eval_task == "harness":
        return _run_harness(args)
    task = {"perplexity": _perplexity, "lambada": _lambada, "choice": _choice}[args.eval_task]
    records = _read_text(args.file) if args.eval_task == "perplexity" else _read_jsonl(args.file, args.limit)
    model = _load(args)
    result = {"task": args.eval_task, "file": args.file, "model": model.description, "backend": model.backend.name}
    result.update(task(model, records, args))
    result["seconds"] = round(time.perf_counter() - started, 3)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_summary(result))
    return 0


def _load(args):
    from .api import BUILTIN_DESCRIPTION, load

    if args.model is None:
        print(f"gptj: no --model given, using {BUILTIN_DESCRIPTION}", file=sys.stderr)
    return load(args.model, backend=args.backend, threads=args.threads, kv_dtype=args.kv_dtype)


def _bar(total: int, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)  # None: off unless a tty


# ---------------------------------------------------------------------------------------------------
# Input files: every problem names the file and line
# ---------------------------------------------------------------------------------------------------


@contextmanager
def _reading(path: str):
    """Open `path` as UTF-8 text; a missing, unreadable or non-UTF-8 file becomes an InputError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            yield f
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from None


def _read_text(path: str) -> str:
    with _reading(path) as f:
        text = f.read()
    if not text.strip():
        raise InputError(f"{path}: the file is empty; give some text to score")
    return text


def _read_jsonl(path: str, limit: Optional[int]) -> List[Tuple[int, Dict[str, Any]]]:
    """(line number, object) for each non-blank line."""
    if limit is not None and limit < 1:
        raise SettingsError(f"--limit must be at least 1, got {limit}")
    records = []
    with _reading(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: each line must be a JSON object, got {type(obj).__name__}")
            records.append((n, obj))
            if limit is not None and len(records) == limit:
                break
    if not records:
        raise InputError(f"{path}: the file has no records; give one JSON object per line")
    return records


def _field(path: str, n: int, obj: dict, name: str, kind, what: str):
    if name not in obj:
        raise InputError(f'{path}:{n}: no "{name}" field; each line needs {what}')
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f'{path}:{n}: "{name}" must be {what}, got {type(value).__name__}')
    return value


def _pairs_that_fit(model, path: str, items: List[Tuple[int, str, str]]):
    """Token ids of (line, context, continuation) items; a continuation no window can hold is an error."""
    from .scoring import encode_pair

    n_ctx, out, cut = model.config.n_positions, [], 0
    for n, context, continuation in items:
        ctx, cont = encode_pair(model.tokenizer, context, continuation)
        if len(cont) > n_ctx:
            raise InputError(
                f"{path}:{n}: the text to score has {len(cont)} tokens, longer than any window of "
                f"this model ({n_ctx} tokens); shorten it or drop the line"
            )
        cut += len(ctx) + len(cont) > n_ctx + 1
        out.append((ctx, cont))
    return out, cut


def _score(model, pairs, unit="pair"):
    from .scoring import score_pairs, sum_scores

    with _bar(len(pairs), unit) as bar:
        return sum_scores(score_pairs(model.backend, pairs, progress=bar.update))


# ---------------------------------------------------------------------------------------------------
# The tasks
# ---------------------------------------------------------------------------------------------------


def _perplexity(model, text: str, args) -> dict:
    from .scoring import default_stride, score_tokens

    window = model.config.n_positions
    stride = default_stride(window) if args.stride is None else args.stride
    if not 1 <= stride <= window:
        raise SettingsError(f"--stride must be between 1 and the model's context of {window} tokens, got {stride}")
    ids = model.encode(text)
    if len(ids) < 2:
        raise InputError(f"{args.file}: the text is {len(ids)} token long; scoring needs at least 2")
    started = time.perf_counter()
    with _bar(len(ids) - 1, "tok") as bar:
        scores = score_tokens(model.backend, ids, stride, progress=bar.update)
    seconds = time.perf_counter() - started
    nll = -scores.total
    n_bytes = sum(len(model.tokenizer.token_bytes(i)) for i in scores.token_ids)
    return {
        "perplexity": math.exp(nll / len(scores.token_ids)),
        "bits_per_byte": nll / n_bytes / math.log(2),
        "byte_perplexity": math.exp(nll / n_bytes),
        "tokens": len(scores.token_ids),
        "bytes": n_bytes,
        "window": window,
        "stride": stride,
        "tokens_per_second": len(scores.token_ids) / seconds,
    }


def _lambada(model, records, args) -> dict:
    items = []
    for n, obj in records:
        text = _field(args.file, n, obj, "text", str, "a string")
        if " " not in text.strip(" "):
            raise InputError(f'{args.file}:{n}: "text" has no space, so it has no last word to predict')
        words = text.split(" ")  # lm-eval's lambada_openai: split on single spaces
        items.append((n, " ".join(words[:-1]), " " + words[-1]))
    pairs, cut = _pairs_that_fit(model, args.file, items)
    results = _score(model, pairs)
    lls = np.array([ll for ll, _ in results])
    out = {
        "acc": float(np.mean([g for _, g in results])),
        "perplexity": float(np.exp(-np.mean(lls))),
        "records": len(results),
    }
    if cut:
        out["contexts_cut"] = cut
    return out


def _choice(model, records, args) -> dict:
    items, docs = [], []
    for n, obj in records:
        context = _field(args.file, n, obj, "context", str, "a string")
        choices = _field(args.file, n, obj, "choices", list, "a list of strings")
        label = _field(args.file, n, obj, "label", int, "an integer index into choices")
        if not choices or not all(isinstance(c, str) and c for c in choices):
            raise InputError(f'{args.file}:{n}: "choices" must be a non-empty list of non-empty strings')
        if not 0 <= label < len(choices):
            raise InputError(
                f"{args.file}:{n}: label {label} is out of range for {len(choices)} choices (0..{len(choices) - 1})"
            )
        docs.append((choices, label))
        items += [(n, context, " " + choice) for choice in choices]  # lm-eval's target_delimiter " "
    pairs, cut = _pairs_that_fit(model, args.file, items)
    results = iter(_score(model, pairs))
    acc, acc_norm = [], []
    for choices, label in docs:
        lls = np.array([next(results)[0] for _ in choices])
        lengths = np.array([float(len(c)) for c in choices])
        acc.append(float(np.argmax(lls) == label))
        acc_norm.append(float(np.argmax(lls / lengths) == label))
    out = {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)), "records": len(docs)}
    if cut:
        out["contexts_cut"] = cut
    return out


def _summary(r: dict) -> str:
    lines = [f"gptj eval {r['task']}: {r['file']}", f"model: {r['model']} ({r['backend']} backend)"]
    if r["task"] == "perplexity":
        lines += [
            f"perplexity: {r['perplexity']:.4f} per token",
            f"bits per byte: {r['bits_per_byte']:.4f}",
            f"tokens scored: {r['tokens']} ({r['bytes']} bytes) in windows of {r['window']}, stride {r['stride']}",
            f"speed: {r['tokens_per_second']:.1f} scored tokens/s",
        ]
    elif r["task"] == "lambada":
        lines += [
            f"accuracy: {100 * r['acc']:.2f}% of {r['records']} records",
            f"perplexity: {r['perplexity']:.4f} (of the last word)",
        ]
    else:
        lines += [
            f"accuracy: {100 * r['acc']:.2f}% of {r['records']} records",
            f"accuracy, length-normalised: {100 * r['acc_norm']:.2f}%",
        ]
    if r.get("contexts_cut"):
        lines.append(f"note: {r['contexts_cut']} contexts were cut from the left to fit the model's context")
    lines.append(f"time: {r['seconds']:.1f} s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# lm-evaluation-harness
# ---------------------------------------------------------------------------------------------------


def _run_harness(args) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SettingsError("gptj eval harness needs lm-evaluation-harness: pip install 'gptj-ref[eval]'") from None
    from .harness import GPTJRefLM

    tasks = [t for t in args.tasks.split(",") if t]
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise InputError(f"{args.include_path}: no such directory (--include-path takes a directory of task YAMLs)")
    manager = TaskManager(include_path=args.include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if not tasks or unknown:
        raise SettingsError(
            f"unknown lm-eval task(s): {', '.join(unknown) or '(none given)'}; "
            "list them with `lm_eval ls tasks`, or add --include-path for your own YAML"
        )
    lm = GPTJRefLM(model=_load(args))
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=args.num_fewshot, limit=args.limit, task_manager=manager
    )
    if args.json:
        print(
            json.dumps(
                {"model": lm.model.description, "backend": lm.model.backend.name, "results": results["results"]},
                indent=2,
                default=str,
            )
        )
    else:
        from lm_eval.utils import make_table

        print(make_table(results))
    return 0


COMMAND = Command(
    "eval",
    "score a model: perplexity, LAMBADA, multiple choice, lm-eval tasks",
    _eval_arguments,
    run_eval,
    examples=EXAMPLES.split("\n", 1)[1],
)
