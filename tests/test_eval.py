"""`gptj eval` and the lm-eval adapter against lm-eval's own `hf` model and transformers.

One tiny GPT-J (real GPT-2 tokenizer, context 64) is trained here for a few seconds to memorise half
of a set of lines, so its accuracy on the task made from all the lines is well inside (0, 1): an
untrained model would score 0 everywhere and every comparison of accuracy would be vacuous. The task
data is written as local JSONL with lm-eval task YAMLs over it (the offline setup the README describes).
Everything expensive is a module-scope fixture, shared by the tests.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

N_POSITIONS = 64  # short, so the rolling and strided windows are exercised by a few lines of text
EOT = 50256

# Tolerances, each with its reason:
# - fp32 backends vs transformers / lm-eval's hf model: the same fp32 arithmetic in a different order
#   (BLAS vs our kernels); log-probabilities agree to ~1e-6 here, sums over hundreds of tokens to ~1e-5
#   relative, so perplexities are compared at 1e-4 relative (the bar) and accuracies exactly
#   (no near-tie in these data: the trained margins are far above 1e-4, checked below).
FP32_RTOL = 1e-4
# - int8 weights: each block of 32 weights is rounded to 1/254 of its largest magnitude, activations too.
#   Measured on this model against lm-eval's hf: perplexities move by 2.5e-4 (LAMBADA), 4e-4 (bytes) and
#   2e-3 (words: exp of a per-word sum, which multiplies the error) relative; one choice record of 40
#   flips under acc_norm. The bound 1e-2 relative leaves 5x room for other CPUs' kernel levels while
#   a real fault (a wrong scale, a dropped block) moves perplexity by factors; accuracy may move by at
#   most 3 records of 40, those whose fp32 margin is within int8's rounding.
INT8_PPL_RTOL = 1e-2
INT8_ACC_ATOL = 3 / 40


# ---------------------------------------------------------------------------------------------------
# The model and the data
# ---------------------------------------------------------------------------------------------------

ADJ = "red green blue small large quiet noisy old young brave".split()
ANIMALS = "fox cat dog bird horse mouse goat sheep lion bear".split()
FOODS = "apples bread cheese carrots honey rice fish seeds grass nuts".split()


def make_lines(n=40, seed=0):
    """Lines "the <adj> <animal> from farm <i> likes to eat <food>". In the even lines (the ones trained
    on) each animal eats its own food, a rule the model learns in a few steps; in the odd lines the food
    is random, so the model gets roughly the chance share of those right."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        animal = rng.choice(ANIMALS)
        food = FOODS[ANIMALS.index(animal)] if i % 2 == 0 else rng.choice(FOODS)
        out.append((f"the {rng.choice(ADJ)} {animal} from farm {i} likes to eat", food))
    return out


LINES = make_lines()
TRAINED = LINES[::2]  # memorised; the other half is never seen


def train_tiny_gptj(path, steps=30):
    """A 2-layer GPT-J (width 64, vocabulary 50400) trained to predict the last word of the TRAINED
    lines, saved with its tokenizer in transformers' format."""
    import torch
    import transformers

    from gptj_ref.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
    torch.manual_seed(0)
    config = transformers.GPTJConfig(
        vocab_size=50400,
        n_positions=N_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=4,
        rotary_dim=8,
        bos_token_id=EOT,
        eos_token_id=EOT,
    )
    model = transformers.GPTJForCausalLM(config)
    rows, labels = [], []
    for context, food in TRAINED:
        n_context = 1 + len(tokenizer.encode(context))
        row = [EOT] + tokenizer.encode(f"{context} {food}")
        rows.append(row)
        labels.append([-100] * n_context + row[n_context:])  # the loss is on the last word only
    width = max(map(len, rows))
    ids = torch.tensor([r + [EOT] * (width - len(r)) for r in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on contended two
    try:
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(path)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer._tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    hf_tokenizer.save_pretrained(path)


TASK_YAML = {
    # lm-eval's own lambada_openai, pointed at a local file.
    "tiny_lambada": """include: {lambada_yaml}
task: tiny_lambada
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}/lambada.jsonl
""",
    "tiny_choice": """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/choice.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "tiny_rolling": """task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/rolling.jsonl
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(checkpoint dir, int8 native file, task dir) shared by every test here."""
    import lm_eval

    from gptj_ref.convert import convert

    root = tmp_path_factory.mktemp("eval")
    checkpoint = root / "tiny-gptj"
    train_tiny_gptj(checkpoint)
    q8 = root / "tiny-gptj-q8.gptj"
    convert(str(checkpoint), str(q8), dtype="q8", progress=False)

    data = root / "tasks"
    data.mkdir()
    with open(data / "lambada.jsonl", "w") as f:
        for context, food in LINES:
            f.write(json.dumps({"text": f"{context} {food}"}) + "\n")
    rng = random.Random(1)
    with open(data / "choice.jsonl", "w") as f:
        for context, food in LINES:
            choices = [food] + rng.sample([x for x in FOODS if x != food], 3)
            rng.shuffle(choices)
            f.write(json.dumps({"context": context, "choices": choices, "label": choices.index(food)}) + "\n")
    with open(data / "rolling.jsonl", "w") as f:
        for k in range(0, len(LINES), 8):  # 5 documents of 8 lines: ~100 tokens each, past the 64 context
            f.write(json.dumps({"text": ". ".join(f"{c} {food}" for c, food in LINES[k : k + 8]) + "."}) + "\n")
    lambada_yaml = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "lambada", "lambada_openai.yaml")
    for name, text in TASK_YAML.items():
        (data / f"{name}.yaml").write_text(text.format(data=data, lambada_yaml=lambada_yaml))
    with pytest.MonkeyPatch.context() as env:  # no network: the data and the model are local files
        env.setenv("HF_DATASETS_OFFLINE", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        yield checkpoint, q8, data


def lm_eval_results(model, model_args, data):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import gptj_ref.harness  # noqa: F401  (registers "gptj_ref")

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=sorted(TASK_YAML),
        task_manager=TaskManager(include_path=str(data)),
        batch_size=1,
    )
    return {
        task: {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none")}
        for task, metrics in out["results"].items()
    }


@pytest.fixture(scope="module")
def hf_results(workspace):
    checkpoint, _, data = workspace
    return lm_eval_results("hf", f"pretrained={checkpoint},dtype=float32,device=cpu", data)


@pytest.fixture(scope="module")
def ours(workspace):
    """lm-eval results of the gptj_ref adapter: reference and cpp on the checkpoint, cpp on the int8 file."""
    checkpoint, q8, data = workspace
    return {
        name: lm_eval_results("gptj_ref", args, data)
        for name, args in [
            ("reference", f"pretrained={checkpoint},backend=reference"),
            ("cpp", f"pretrained={checkpoint},backend=cpp"),
            ("int8", f"pretrained={q8},backend=cpp"),
        ]
    }


def run_gptj(*args):
    return subprocess.run(
        [sys.executable, "-m", "gptj_ref.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=os.path.dirname(sys.executable),  # not the source tree: it has no compiled extension
    )


def run_gptj_json(*args):
    result = run_gptj(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------------
# The adapter against lm-eval's hf model
# ---------------------------------------------------------------------------------------------------


def test_the_task_is_not_vacuous(hf_results):
    # The model memorised half of the lines: accuracy must sit well inside (0, 1) for the comparisons
    # below to mean anything.
    for task, metric in [("tiny_lambada", "acc"), ("tiny_choice", "acc"), ("tiny_choice", "acc_norm")]:
        assert 0.2 < hf_results[task][metric] < 0.95, (task, metric, hf_results[task])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_fp32_adapter_equals_lm_eval_hf(hf_results, ours, backend):
    got = ours[backend]
    for task, metrics in hf_results.items():
        for metric, expected in metrics.items():
            if metric.endswith("stderr"):
                continue
            if metric.startswith("acc"):
                assert got[task][metric] == expected, (task, metric, got[task][metric], expected)
            else:
                assert got[task][metric] == pytest.approx(expected, rel=FP32_RTOL), (task, metric)


def test_int8_adapter_within_stated_tolerance(hf_results, ours):
    got = ours["int8"]
    for task, metrics in hf_results.items():
        for metric, expected in metrics.items():
            if metric.endswith("stderr"):
                continue
            if metric.startswith("acc"):
                assert abs(got[task][metric] - expected) <= INT8_ACC_ATOL, (task, metric, got[task][metric], expected)
            else:
                assert got[task][metric] == pytest.approx(expected, rel=INT8_PPL_RTOL), (task, metric)


def test_gptj_eval_harness_runs_local_tasks(workspace, hf_results, capsys):
    from gptj_ref.cli import main

    checkpoint, _, data = workspace
    # In-process (lm-eval is slow to import): the wrapper's exit status, its JSON, its one-line error.
    assert (
        main(
            [
                "eval",
                "harness",
                "--tasks",
                "tiny_choice",
                "--include-path",
                str(data),
                "--model",
                str(checkpoint),
                "--json",
            ]
        )
        == 0
    )
    got = json.loads(capsys.readouterr().out)["results"]["tiny_choice"]
    assert (got["acc,none"], got["acc_norm,none"]) == (
        hf_results["tiny_choice"]["acc"],
        hf_results["tiny_choice"]["acc_norm"],
    )
    assert (
        main(["eval", "harness", "--tasks", "no_such_task", "--include-path", str(data), "--model", str(checkpoint)])
        == 2
    )
    assert "unknown lm-eval task(s): no_such_task" in capsys.readouterr().err


def test_adapter_generate_until_is_greedy_and_stops(workspace):
    from lm_eval.api.instance import Instance

    import gptj_ref
    from gptj_ref.harness import GPTJRefLM

    checkpoint, _, _ = workspace
    lm = GPTJRefLM(pretrained=str(checkpoint), backend="cpp")
    context = TRAINED[0][0]
    request = Instance("generate_until", doc={}, arguments=(context, {"until": ["\n"], "max_gen_toks": 8}), idx=0)
    (text,) = lm.generate_until([request])
    expected = gptj_ref.load(checkpoint, backend="reference").generate(context, max_new_tokens=8, stop=["\n"])
    assert text == expected.split("\n")[0]
    assert text.startswith(" " + TRAINED[0][1])  # it memorised this line


# ---------------------------------------------------------------------------------------------------
# gptj eval against lm-eval's metric computation and transformers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gptj_eval_lambada_equals_lm_eval_lambada_openai(workspace, hf_results, backend):
    checkpoint, _, data = workspace
    got = run_gptj_json("eval", "lambada", data / "lambada.jsonl", "--model", checkpoint, "--backend", backend)
    assert got["records"] == len(LINES)
    assert got["acc"] == hf_results["tiny_lambada"]["acc"]
    assert got["perplexity"] == pytest.approx(hf_results["tiny_lambada"]["perplexity"], rel=FP32_RTOL)


def test_gptj_eval_choice_equals_lm_eval_multiple_choice(workspace, hf_results):
    checkpoint, _, data = workspace
    got = run_gptj_json("eval", "choice", data / "choice.jsonl", "--model", checkpoint, "--backend", "cpp")
    assert (got["acc"], got["acc_norm"]) == (hf_results["tiny_choice"]["acc"], hf_results["tiny_choice"]["acc_norm"])


def transformers_strided_perplexity(checkpoint, ids, stride):
    """The strided method of transformers' perplexity guide, counting each window's scored tokens exactly
    (labels outside the window's new tokens are -100; the loss averages the rest)."""
    import torch
    import transformers

    model = transformers.GPTJForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = torch.tensor([ids])
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + N_POSITIONS, ids.shape[1])
        targets = ids[:, begin:end].clone()
        targets[:, : -(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(ids[:, begin:end], labels=targets).loss
        scored = int((targets[:, 1:] != -100).sum())  # the model shifts labels: position 0 is never scored
        nll_sum += float(loss) * scored
        n_scored += scored
        prev_end = end
        if end == ids.shape[1]:
            break
    return math.exp(nll_sum / n_scored), n_scored


@pytest.mark.parametrize("backend,stride", [("cpp", 16), ("cpp", N_POSITIONS), ("reference", 40)])
def test_gptj_eval_perplexity_equals_transformers_strided(workspace, tmp_path, backend, stride):
    from gptj_ref.tokenizer import default_tokenizer

    checkpoint, _, _ = workspace
    text = "\n".join(f"{c} {food}." for c, food in LINES[:12])  # ~130 tokens: several windows
    (tmp_path / "text.txt").write_text(text)
    got = run_gptj_json(
        "eval", "perplexity", tmp_path / "text.txt", "--model", checkpoint, "--backend", backend, "--stride", stride
    )
    expected, n_scored = transformers_strided_perplexity(checkpoint, default_tokenizer().encode(text), stride)
    assert got["tokens"] == n_scored
    assert got["perplexity"] == pytest.approx(expected, rel=FP32_RTOL)
    assert got["bits_per_byte"] > 0


def test_int8_perplexity_is_close_to_fp32(workspace, tmp_path):
    checkpoint, q8, _ = workspace
    (tmp_path / "text.txt").write_text("\n".join(f"{c} {food}." for c, food in LINES))
    fp32 = run_gptj_json("eval", "perplexity", tmp_path / "text.txt", "--model", checkpoint)
    int8 = run_gptj_json("eval", "perplexity", tmp_path / "text.txt", "--model", q8)
    assert int8["tokens"] == fp32["tokens"]
    assert int8["perplexity"] == pytest.approx(fp32["perplexity"], rel=INT8_PPL_RTOL)


def test_scores_equal_log_softmax_of_transformers_logits(workspace):
    """Model.score and Model.loglikelihoods on the trained model against torch's log_softmax (float64)."""
    import torch
    import transformers

    import gptj_ref

    checkpoint, _, _ = workspace
    hf = transformers.GPTJForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model = gptj_ref.load(checkpoint, backend="cpp")
    text = f"{LINES[0][0]} {LINES[0][1]}. {LINES[1][0]} {LINES[1][1]}."
    ids = model.encode(text)
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()
    expected = logp[np.arange(len(ids) - 1), ids[1:]]
    scores = model.score(text)
    # 1e-4 absolute per token: fp32 logits of two implementations differ by ~1e-6 here.
    np.testing.assert_allclose(scores.logprobs, expected, rtol=0, atol=1e-4)
    assert scores.token_ids == ids[1:]
    # A pair: context = the first 5 tokens, continuation = the rest.
    ((ll, greedy),) = model.loglikelihoods([(ids[:5], ids[5:])])
    assert ll == pytest.approx(expected[4:].sum(), rel=0, abs=1e-4 * len(ids))
    assert greedy == bool((logp[4:-1].argmax(axis=1) == np.array(ids[5:])).all())


# ---------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the line, exit 2
# ---------------------------------------------------------------------------------------------------


def long_word(tokens: int) -> str:
    from gptj_ref.tokenizer import default_tokenizer

    word = "".join(random.Random(0).choice("bcdfghjklmnpqrstvwxz0123456789") for _ in range(4 * tokens))
    assert len(default_tokenizer().encode(" " + word)) > tokens
    return word


@pytest.mark.parametrize(
    "command,content,expected",
    [
        ("perplexity", "", "the file is empty"),
        ("lambada", "", "has no records"),
        ("lambada", '{"text": "a b c"}\n{"txt": "a b c"}\n', ':2: no "text" field'),
        ("lambada", '{"text": "a b c"}\nnot json\n', ":2: not valid JSON"),
        ("lambada", '{"text": "a b c"}\n{"text": "two words ' + "LONGWORD" + '"}\n', ":2: the text to score has"),
        (
            "choice",
            '{"context": "a", "choices": ["x", "y"], "label": 2}\n',
            ":1: label 2 is out of range for 2 choices",
        ),
        ("choice", '{"context": "a", "choices": ["x", "y"]}\n', ':1: no "label" field'),
    ],
)
def test_bad_input_is_one_line_naming_file_and_line(workspace, tmp_path, command, content, expected):
    checkpoint, _, _ = workspace
    path = tmp_path / ("in.txt" if command == "perplexity" else "in.jsonl")
    path.write_text(content.replace("LONGWORD", long_word(N_POSITIONS)) if "LONGWORD" in content else content)
    result = run_gptj("eval", command, path, "--model", checkpoint)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith(f"gptj eval: error: {path}"), result.stderr
    assert expected in message[0]
