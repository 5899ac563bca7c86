"""`gptj batch IN.jsonl OUT.jsonl`: generate a continuation for every line of a JSONL file, resumably.

Each input line is one JSON object:

    {"id": "q1", "prompt": "The dog", "max_new_tokens": 32, "do_sample": true, "seed": 1, "stop": ["\\n"]}

`id` (a string or an integer, unique in the file) and `prompt` (non-empty text) are required; every other
key is a generation setting named as in the Python API (`Model.generate`): max_new_tokens, do_sample,
temperature, top_k, top_p, repetition_penalty, min_new_tokens, min_length, stop, stop_at_eos, seed.
OpenAI's `max_tokens` is accepted as another name for max_new_tokens. Each output line is

    {"id": "q1", "text": "...", "tokens": 12, "prompt_tokens": 2, "finish_reason": "stop"}

with `tokens` the number of generated tokens and `finish_reason` one of "length" (max_new_tokens reached),
"eos" (the model ended the text) or "stop" (a stop string appeared; the text ends before it).

Resuming. The output file is the job's only state. Each result is appended as one whole line with a
single write, then flushed to disk (fsync) before the next; a rerun reads the ids already in the output
and skips them. So a job killed at any moment loses at most the rows it was generating, never writes an
id twice, and leaves at most one partial last line (a write cut short by the kill); the rerun finds that
line (it has no newline), truncates it away and generates its row again. An exclusive lock on the output
file stops two jobs from appending to it at once.

Bad input lines (not JSON, no id, unknown or invalid settings, a duplicate id, a prompt too long for the
context) are not fatal: each is written to the error file (`OUT.errors.jsonl` unless `--errors` says
otherwise) as {"line": N, "id": ..., "error": "..."}, and the job goes on with the other lines. The error
file describes the latest run only; a bad line is not in the output, so a rerun reports it again.

Batching. Lines with equal settings are generated together, up to `--max-batch` rows per forward pass.
A sampled line with a seed runs alone: the batch loop draws every row's tokens from one random generator,
so a seeded row's text would otherwise depend on its batch mates. Greedy lines, and sampled lines without a
seed (which promise no particular text), share batches.

The same job runs on a Ray cluster with `--ray` (`gptj_ref.ray_batch`); it uses the functions here to
read, plan, generate and write, so both give the same output for the same input.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .errors import GPTJError, InputError, SettingsError
from .generate import GenerationSettings, cut_at_stop, make_settings
from .tokenizer import check_text

ALIASES = {"max_tokens": "max_new_tokens"}  # OpenAI's name -> the Python API's
DEFAULT_MAX_BATCH = 8


@dataclass(frozen=True)
class Job:
    """One valid input line."""

    line: int  # 1-based line number in the input file
    id: Any  # str or int, as given
    prompt: str
    settings: Dict[str, Any]  # keyword arguments of GenerationSettings, validated

    def to_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "prompt": self.prompt, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(d["line"], d["id"], d["prompt"], d["settings"])


def id_key(job_id) -> str:
    """A hashable key that keeps 1 and "1" apart."""
    return json.dumps(job_id)


def parse_line(line_no: int, text: str) -> Job:
    """One input line -> a Job; raises InputError or SettingsError saying what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f'expected a JSON object {{"id": ..., "prompt": ...}}, found {type(obj).__name__}')
    if "id" not in obj:
        raise InputError('no "id": every line needs a unique string or integer id')
    job_id = obj.pop("id")
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
        raise InputError(f'"id" must be a string or an integer, found {json.dumps(job_id)}')
    prompt = obj.pop("prompt", None)
    if not isinstance(prompt, str) or not prompt:
        raise InputError('"prompt" must be non-empty text')
    check_text(prompt, '"prompt"')  # a lone surrogate (JSON's \ud800) fails this line, not the whole job
    for alias, name in ALIASES.items():
        if alias in obj:
            if name in obj:
                raise SettingsError(f'give either "{alias}" or "{name}", not both')
            obj[name] = obj.pop(alias)
    return Job(line_no, job_id, prompt, settings_of(obj))


def settings_of(given: Dict[str, Any]) -> Dict[str, Any]:
    """A line's settings checked by generate.make_settings (the one check of the Python API and the server),
    kept as the GenerationSettings keywords that differ from the defaults."""
    try:
        settings = dataclasses.asdict(make_settings(given))
    except GPTJError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong JSON type, e.g. "stop": 5
        raise SettingsError(f"invalid settings: {e}") from None
    defaults = dataclasses.asdict(GenerationSettings())
    return {name: value for name, value in settings.items() if value != defaults[name]}


def read_jobs(path: str) -> Tuple[List[Job], List[dict]]:
    """All valid jobs of an input file in file order, and an error record for every bad line."""
    jobs: List[Job] = []
    errors: List[dict] = []
    first_line: Dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.append({"line": line_no, "id": None, "error": f"not UTF-8 text (byte {e.start})"})
                continue
            if not text.strip():
                continue
            try:
                job = parse_line(line_no, text)
            except GPTJError as e:
                errors.append({"line": line_no, "id": _id_if_any(text), "error": str(e)})
                continue
            key = id_key(job.id)
            if key in first_line:
                errors.append(
                    {
                        "line": line_no,
                        "id": job.id,
                        "error": f"duplicate id {key}: first used on line {first_line[key]}",
                    }
                )
                continue
            first_line[key] = line_no
            jobs.append(job)
    return jobs, errors


def _id_if_any(text: str):
    try:
        obj = json.loads(text)
        return obj.get("id") if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------------
# Durable appending
# ---------------------------------------------------------------------------------------------------


class JsonlAppender:
    """Appends JSON lines to a file so that each line is on disk, whole, before `append` returns.

    Opening takes an exclusive lock on the file (a second job on the same file is refused), truncates
    a partial last line left by a killed writer and collects the ids of the complete lines.
    """

    def __init__(self, path: str, lock: bool = True):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        if lock:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise SettingsError(
                    f"{path} is being written by another gptj batch job; wait for it to finish "
                    "or give another output file"
                ) from None
        self.done_ids = set()  # id_key of every complete line
        self.dropped_partial = 0  # bytes of a partial last line removed at open
        self._recover()

    def _recover(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a cut-short write
        if end < len(data):
            self.dropped_partial = len(data) - end
            os.ftruncate(self.fd, end)
            os.fsync(self.fd)
        for line_no, raw in enumerate(data[:end].splitlines(), start=1):
            try:
                record = json.loads(raw)
                self.done_ids.add(id_key(record["id"]))
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                raise InputError(
                    f"{self.path} line {line_no} is not a result line of gptj batch; give an output "
                    "file that only this command writes"
                ) from None

    def append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # os.write may write less than asked (rare for regular files, but allowed)
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)
        if "id" in record:
            self.done_ids.add(id_key(record["id"]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also releases the lock
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def default_errors_path(out_path: str) -> str:
    stem = out_path[: -len(".jsonl")] if out_path.endswith(".jsonl") else out_path
    return stem + ".errors.jsonl"


# ---------------------------------------------------------------------------------------------------
# Planning and generating
# ---------------------------------------------------------------------------------------------------


def runs_alone(settings: Dict[str, Any]) -> bool:
    """A seeded sampled row must not share the batch loop's one random generator with other rows."""
    return bool(settings.get("do_sample")) and settings.get("seed") is not None


def plan_groups(jobs: Iterable[Job], max_batch: int = DEFAULT_MAX_BATCH) -> List[List[Job]]:
    """Jobs grouped into batches: equal settings, at most max_batch rows; in order of first appearance.

    The plan depends only on the jobs and max_batch, so the local and the Ray runs batch alike.
    """
    if not isinstance(max_batch, int) or max_batch < 1:
        raise SettingsError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    groups: List[List[Job]] = []
    open_group: Dict[str, List[Job]] = {}
    for job in jobs:
        if runs_alone(job.settings):
            groups.append([job])
            continue
        key = _group_key(job.settings)
        group = open_group.get(key)
        if group is None or len(group) >= max_batch:
            group = open_group[key] = []
            groups.append(group)
        group.append(job)
    return groups


def _group_key(settings: Dict[str, Any]) -> str:
    """Equal for settings that generate alike (defaults filled in; a greedy row's seed does not matter)."""
    full = dataclasses.asdict(GenerationSettings(**settings))
    if not full["do_sample"]:
        full["seed"] = None
    return json.dumps(full, sort_keys=True, default=list)


def generate_group(model, jobs: List[Job]) -> List[dict]:
    """Generate one planned group in one batch; a result record per job, or an error record for a job
    whose prompt does not fit the context."""
    n_ctx = model.config.n_positions
    records: Dict[int, dict] = {}
    runnable: List[Tuple[int, List[int]]] = []
    for i, job in enumerate(jobs):
        ids = model.encode(job.prompt)
        max_new = job.settings.get("max_new_tokens", GenerationSettings.max_new_tokens)
        if len(ids) + max_new > n_ctx:
            records[i] = {
                "line": job.line,
                "id": job.id,
                "error": f"the prompt ({len(ids)} tokens) plus max_new_tokens ({max_new}) exceed the "
                f"model's context of {n_ctx} tokens; shorten the prompt or lower max_new_tokens",
            }
        else:
            runnable.append((i, ids))
    if runnable:
        settings = GenerationSettings(**jobs[runnable[0][0]].settings)
        run = model._start([ids for _, ids in runnable], settings)  # the batch loop Model.generate runs
        for _ in run.steps():
            pass
        for (i, ids), row in zip(runnable, run.rows):
            text = cut_at_stop(model.tokenizer.decode(row.new), settings.stop)
            records[i] = {
                "id": jobs[i].id,
                "text": text,
                "tokens": len(row.new),
                "prompt_tokens": len(ids),
                "finish_reason": row.finish_reason,  # a RowState's; every row has one when the steps end
            }
    return [records[i] for i in range(len(jobs))]


def is_error(record: dict) -> bool:
    return "error" in record


# ---------------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    total: int = 0  # valid lines in the input
    skipped: int = 0  # already in the output
    written: int = 0  # results written by this run
    errors: int = 0  # bad lines (input and generation)
    tokens: int = 0  # generated tokens written by this run
    seconds: float = 0.0


class BatchJob:
    """Reads the input, opens the output for appending and knows what is left to do; the runners
    (local or Ray) generate the planned groups and hand each group's records to `record`."""

    def __init__(
        self,
        in_path: str,
        out_path: str,
        errors_path: Optional[str] = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        progress: Optional[bool] = None,
    ):
        if os.path.abspath(in_path) == os.path.abspath(out_path):
            raise SettingsError("the output file must not be the input file")
        if not os.path.isfile(in_path):
            raise InputError(f'no input file {in_path!r}: give a JSONL file with one {{"id", "prompt"}} per line')
        self.jobs, input_errors = read_jobs(in_path)
        self.out = JsonlAppender(out_path)
        self.errors_path = errors_path or default_errors_path(out_path)
        if os.path.exists(self.errors_path):
            os.remove(self.errors_path)  # it describes the latest run only
        self._errors: Optional[JsonlAppender] = None
        self.pending = [j for j in self.jobs if id_key(j.id) not in self.out.done_ids]
        self.groups = plan_groups(self.pending, max_batch)
        self.summary = BatchSummary(total=len(self.jobs), skipped=len(self.jobs) - len(self.pending))
        self._started = time.perf_counter()
        for e in input_errors:
            self._error(e)
        self.bar = _progress_bar(self.summary.total, self.summary.skipped, progress)

    def _error(self, record: dict) -> None:
        if self._errors is None:
            self._errors = JsonlAppender(self.errors_path, lock=False)
        self._errors.append({"line": record.get("line"), "id": record.get("id"), "error": record["error"]})
        self.summary.errors += 1

    def record(self, records: List[dict]) -> None:
        """Write one group's records: results to the output, errors to the error file."""
        for r in records:
            if is_error(r):
                self._error(r)
            elif id_key(r["id"]) not in self.out.done_ids:  # a retried group must not write an id twice
                self.out.append(r)
                self.summary.written += 1
                self.summary.tokens += r["tokens"]
        if self.bar is not None:
            self.bar.update(len(records))
            elapsed = time.perf_counter() - self._started
            self.bar.set_postfix_str(f"{self.summary.tokens / max(elapsed, 1e-9):.1f} tokens/s", refresh=True)

    def close(self) -> BatchSummary:
        """Closes the files (again is harmless); the summary of the run."""
        if self.out.fd < 0:
            return self.summary
        self.summary.seconds = time.perf_counter() - self._started
        if self.bar is not None:
            self.bar.close()
        self.out.close()
        if self._errors is not None:
            self._errors.close()
        return self.summary


def _progress_bar(total: int, done: int, enabled: Optional[bool]):
    """A tqdm bar on stderr (done/total, rows/s, ETA, tokens/s); None when disabled. enabled=None shows it
    only when stderr is a terminal."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="row", file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def run_local(job: BatchJob, model) -> None:
    for group in job.groups:
        job.record(generate_group(model, group))


def print_summary(summary: BatchSummary, job: BatchJob, out_path: str) -> None:
    rate = summary.tokens / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"gptj batch: {summary.written} new results in {out_path} ({summary.skipped} already there, "
        f"{summary.total} valid lines), {summary.tokens} tokens in {summary.seconds:.1f} s ({rate:.1f} tokens/s)",
        file=sys.stderr,
    )
    if summary.errors:
        print(f"gptj batch: {summary.errors} bad lines, see {job.errors_path}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------

EXAMPLES = """examples:
  gptj batch prompts.jsonl results.jsonl --model gpt-j-6B.gptj
  gptj batch prompts.jsonl results.jsonl --model gpt-j-6B.gptj --ray --actors 4 --threads-per-actor 8
  gptj batch prompts.jsonl results.jsonl --model /shared/gpt-j-6B.gptj --ray --address auto

input lines:  {"id": "q1", "prompt": "The dog", "max_new_tokens": 32, "do_sample": true, "seed": 1}
output lines: {"id": "q1", "text": "...", "tokens": 32, "prompt_tokens": 2, "finish_reason": "length"}
Rerun the same command after an interruption: ids already in the output are skipped.
"""


def _arguments(p) -> None:
    """The `batch` subcommand's arguments (its Command is COMMAND, listed in cli.COMMAND_MODULES)."""
    from .cli import add_model_arguments

    p.add_argument("input", help='JSONL file, one {"id", "prompt", ...settings} object per line')
    p.add_argument("output", help="JSONL file the results are appended to (created if missing)")
    add_model_arguments(p)
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"rows generated together in one batch (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument("--errors", default=None, help="file for bad lines (default: OUTPUT with .errors.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal anyway)")
    p.add_argument("--ray", action="store_true", help="run on Ray Data (needs the ray extra: pip install '.[ray]')")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. auto or ray://head:10001; default: start a local Ray)",
    )
    p.add_argument("--actors", type=int, default=1, help="with --ray: model replicas, one per actor (default 1)")
    p.add_argument(
        "--threads-per-actor",
        type=int,
        default=None,
        help="with --ray: threads (and CPUs reserved) per actor (default: --threads or 1)",
    )


def cmd_batch(args) -> int:
    if args.max_batch < 1:
        raise SettingsError("--max-batch must be >= 1")
    job = BatchJob(args.input, args.output, args.errors, args.max_batch, progress=False if args.no_progress else None)
    try:
        if args.ray:
            from .ray_batch import run_ray

            run_ray(
                job,
                args.model,
                backend=args.backend,
                kv_dtype=args.kv_dtype,
                address=args.address,
                actors=args.actors,
                threads_per_actor=args.threads_per_actor or args.threads or 1,
            )
        else:
            from .api import BUILTIN_DESCRIPTION, load

            if args.model is None:
                print(f"gptj: no --model given, using {BUILTIN_DESCRIPTION}", file=sys.stderr)
            model = load(args.model, backend=args.backend, threads=args.threads, kv_dtype=args.kv_dtype)
            run_local(job, model)
    finally:
        summary = job.close()
    print_summary(summary, job, args.output)
    return 1 if summary.errors else 0


def _command():
    from .cli import Command

    return Command(
        "batch",
        "generate for every line of a JSONL file (resumable; --ray for a cluster)",
        _arguments,
        cmd_batch,
        examples=EXAMPLES.split("\n", 1)[1],
    )


COMMAND = _command()
