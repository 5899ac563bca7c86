"""`gptj batch`: results equal `Model.generate`, bad lines are reported and skipped, and a job killed with
SIGKILL and rerun has every id exactly once and no partial line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import gptj_ref
from gptj_ref.batch import BatchJob, JsonlAppender, plan_groups, read_jobs, run_local
from gptj_ref.generate import GenerationSettings

GPTJ = shutil.which("gptj")


def command(*args):
    return ([GPTJ] if GPTJ else [sys.executable, "-m", "gptj_ref.cli"]) + list(args)


def run(*args):
    return subprocess.run(
        command(*args), capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def demo():
    return gptj_ref.load(threads=1)  # one thread: a loaded 2-core machine makes OpenMP threads wait on each other


MIXED = [
    {"id": "g1", "prompt": "The dog", "max_new_tokens": 12},
    {"id": "g2", "prompt": "Once upon a time there was", "max_new_tokens": 12},
    {"id": 3, "prompt": "Hello", "max_tokens": 12, "do_sample": True, "seed": 5, "top_p": 0.9},
    {"id": "s2", "prompt": "The cat", "max_new_tokens": 12, "do_sample": True, "seed": 6, "temperature": 0.7},
    {"id": "stop", "prompt": "The", "max_new_tokens": 20, "stop": ["e"]},
    {"id": "g3", "prompt": "A", "max_new_tokens": 12, "seed": 99},  # greedy: the seed does not matter
]


def test_results_equal_model_generate_whatever_the_batch(demo, tmp_path):
    """Every row's text equals Model.generate of that row alone with the same settings: greedy rows
    batched together, seeded sampled rows alone."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, MIXED)
    job = BatchJob(str(inp), str(out), progress=False)
    assert [[j.id for j in g] for g in job.groups] == [["g1", "g2", "g3"], [3], ["s2"], ["stop"]]
    run_local(job, demo)
    summary = job.close()
    assert summary.written == len(MIXED) and summary.errors == 0
    results = {r["id"]: r for r in read_jsonl(out)}
    assert list(results) == ["g1", "g2", "g3", 3, "s2", "stop"]  # written group by group
    for row in MIXED:
        settings = {k: v for k, v in row.items() if k not in ("id", "prompt")}
        if "max_tokens" in settings:
            settings["max_new_tokens"] = settings.pop("max_tokens")
        assert results[row["id"]]["text"] == demo.generate(row["prompt"], **settings), row
    assert results["stop"]["finish_reason"] == "stop" and "e" not in results["stop"]["text"]
    assert results["g1"]["finish_reason"] == "length" and results["g1"]["tokens"] == 12
    assert results["g1"]["prompt_tokens"] == len(demo.encode("The dog"))


def test_groups_respect_max_batch_and_settings(tmp_path):
    inp = tmp_path / "in.jsonl"
    rows = [{"id": i, "prompt": "x", "max_new_tokens": 4 + i % 2} for i in range(7)]
    write_jsonl(inp, rows)
    jobs, errors = read_jobs(str(inp))
    assert not errors
    assert [[j.id for j in g] for g in plan_groups(jobs, max_batch=2)] == [[0, 2], [1, 3], [4, 6], [5]]


def test_bad_lines_are_reported_with_their_line_number_and_the_rest_runs(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(
        inp,
        [
            {"id": "ok", "prompt": "The dog", "max_new_tokens": 3},
            "{not json",
            {"prompt": "no id"},
            {"id": "ok", "prompt": "a duplicate"},
            {"id": "t", "prompt": "x", "temprature": 0.5},
            {"id": "n", "prompt": "x", "max_new_tokens": 0},
            {"id": "e", "prompt": ""},
            {"id": "long", "prompt": "x", "max_new_tokens": 5000},
            {"id": "stop-type", "prompt": "x", "stop": 5},
            {"id": "ok2", "prompt": "The cat", "max_new_tokens": 3},
        ],
    )
    result = run("batch", str(inp), str(out), "--backend", "reference")
    assert result.returncode == 1, result.stderr  # finished, but with bad lines
    assert [r["id"] for r in read_jsonl(out)] == ["ok", "ok2"]
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert [e["line"] for e in errors] == [2, 3, 4, 5, 6, 7, 9, 8]  # input errors first, then generation's
    messages = [e["error"] for e in errors]
    assert "not valid JSON" in messages[0] and 'no "id"' in messages[1] and "duplicate id" in messages[2]
    assert "temprature" in messages[3] and "max_new_tokens must be" in messages[4] and "prompt" in messages[5]
    assert "stop must be a string or a list of strings" in messages[6] and "context" in messages[7]
    assert "8 bad lines" in result.stderr


def test_a_partial_last_line_is_dropped_and_redone(demo, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": i, "prompt": f"Number {i}", "max_new_tokens": 4} for i in range(3)]
    write_jsonl(inp, rows)
    job = BatchJob(str(inp), str(out), progress=False)
    run_local(job, demo)
    job.close()
    complete = out.read_bytes()
    lines = complete.splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][:7])  # as if killed in the middle of the second write
    appender = JsonlAppender(str(out))
    assert appender.done_ids == {"0"} and appender.dropped_partial == 7
    appender.close()
    job = BatchJob(str(inp), str(out), progress=False)
    assert [j.id for j in job.pending] == [1, 2]
    run_local(job, demo)
    job.close()
    assert out.read_bytes() == complete


def test_a_second_job_on_the_same_output_is_refused(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, [{"id": 1, "prompt": "x"}])
    first = JsonlAppender(str(out))
    try:
        with pytest.raises(gptj_ref.SettingsError, match="another gptj batch job"):
            BatchJob(str(inp), str(out), progress=False)
    finally:
        first.close()


def test_sigkill_mid_job_then_rerun_gives_every_id_exactly_once(demo, tmp_path):
    n = 60
    rows = [{"id": f"r{i}", "prompt": f"Item {i}: the", "max_new_tokens": 24 + i % 3} for i in range(n)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(inp, rows)
    proc = subprocess.Popen(
        command("batch", str(inp), str(out), "--max-batch", "1", "--threads", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    written = out.read_bytes()
    first_run = written[: written.rfind(b"\n") + 1]
    assert 5 <= first_run.count(b"\n") < n

    result = run("batch", str(inp), str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(first_run) and data.endswith(b"\n")
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(r["id"] for r in rows) and len(ids) == n  # each exactly once
    # and each result is the one an uninterrupted run gives
    expected = {r["id"]: demo.generate(r["prompt"], max_new_tokens=r["max_new_tokens"]) for r in rows}
    assert {r["id"]: r["text"] for r in read_jsonl(out)} == expected


def test_help_shows_the_line_formats_and_examples():
    out = run("batch", "--help").stdout
    assert "examples:" in out and "gptj batch" in out and '"finish_reason"' in out and "--ray" in out


def test_lines_are_checked_by_make_settings_like_the_python_api(tmp_path):
    """One check for settings: temperature 0 is greedy, seeds are bounded and transformers' names that do
    not apply are explained, in batch lines exactly as in Model.generate (generate.make_settings)."""
    from gptj_ref.generate import make_settings

    inp = tmp_path / "in.jsonl"
    write_jsonl(
        inp,
        [
            {"id": "greedy", "prompt": "x", "temperature": 0, "do_sample": True},
            {"id": "beams", "prompt": "x", "num_beams": 4},
            {"id": "seed", "prompt": "x", "seed": 2**64},
            {"id": "stop_strings", "prompt": "x", "stop_strings": ["\n"]},
        ],
    )
    jobs, errors = read_jobs(str(inp))
    assert [j.id for j in jobs] == ["greedy", "stop_strings"]
    assert GenerationSettings(**jobs[0].settings) == make_settings({"temperature": 0, "do_sample": True})
    assert GenerationSettings(**jobs[0].settings).do_sample is False
    assert GenerationSettings(**jobs[1].settings).stop == ("\n",)
    assert "num_beams is not supported" in errors[0]["error"] and "beam search" in errors[0]["error"]
    assert "seed must be an integer in [0, 2**64)" in errors[1]["error"]
