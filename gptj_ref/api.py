"""The Python API: `load` a model, then `generate`, `stream` or `logits`; and a `pipeline` like transformers'.

    import gptj_ref
    model = gptj_ref.load("path/to/gpt-j-6B")          # a Hugging Face directory or a native .gptj file
    print(model.generate("The dog", max_new_tokens=20))
    for piece in model.stream("Once upon a time", do_sample=True, seed=1):
        print(piece, end="", flush=True)

With no path, `load()` returns the built-in demo model: a small GPT-J this project trained on the King James
and World English Bibles, shipped as an int8 file (gptj_ref/demo/README.md is its model card).
`load("tiny-random")` gives the random tiny model (2 layers, width 64, random weights).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backend import DEFAULT_KV_DTYPE
from .config import TINY, GPTJConfig
from .demo import DEMO_DESCRIPTION, DEMO_PATH, TINY_RANDOM, TINY_RANDOM_DESCRIPTION
from .errors import InputError, SettingsError
from .generate import BatchGeneration, GenerationSettings, GenerationStats
from .layout import random_weights
from .tokenizer import Tokenizer, default_tokenizer

if TYPE_CHECKING:
    from .scoring import TokenScores

BACKENDS = ("auto", "reference", "cpp")
BUILTIN_DESCRIPTION = DEMO_DESCRIPTION


def cpp_available() -> bool:
    try:
        from . import runtime  # noqa: F401  (imports the compiled extension)
    except ImportError:
        return False
    return True


def default_threads() -> int:
    """Physical cores when they can be counted (hyper-threads share the FMA units), else logical CPUs."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            physical = core = None
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((physical, core))
        if cores:
            return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except (OSError, AttributeError):
        pass
    return max(1, os.cpu_count() or 1)


def _make_backend(backend: str, config: GPTJConfig, weights, threads: Optional[int], kv_dtype: Optional[str]):
    if backend == "reference":
        from .reference import Reference

        return Reference(config, weights, kv_dtype=kv_dtype or DEFAULT_KV_DTYPE)
    from .runtime import CppModel

    return CppModel(config, weights, threads=threads or default_threads(), kv_dtype=kv_dtype)


def load(path: Optional[Union[str, os.PathLike]] = None, backend: str = "auto", threads: Optional[int] = None,
         kv_dtype: Optional[str] = None) -> "Model":
    """Load a model.

    path      a Hugging Face GPT-J directory (config.json + safetensors or pytorch_model.bin, sharded or
              not), a native model file written by `gptj convert`, None for the built-in demo model, or
              "tiny-random" for the random tiny model.
    backend   "reference" (NumPy, the oracle), "cpp" (the C++ runtime) or "auto" (cpp when built).
    threads   threads for the cpp backend (default: physical cores).
    kv_dtype  precision of the KV cache, "float32" or "float16". Default: float16 for int8 (q8) models on
              the cpp backend (half the cache memory: 0.94 GB instead of 1.9 GB at 2048 tokens of 6B),
              float32 otherwise.
    """
    if backend not in BACKENDS:
        raise SettingsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise SettingsError(f"threads must be a positive integer, got {threads!r}")
    if backend == "auto":
        backend = "cpp" if cpp_available() else "reference"
    elif backend == "cpp" and not cpp_available():
        raise SettingsError("the cpp backend is not available: the compiled extension gptj_ref._core is missing; "
                            "reinstall with `pip install .` or use backend='reference'")

    if path == TINY_RANDOM:
        weights = random_weights(TINY, seed=0)
        return Model(_make_backend(backend, TINY, weights, threads, kv_dtype), default_tokenizer(),
                     TINY_RANDOM_DESCRIPTION)
    builtin = path is None
    path = DEMO_PATH if builtin else os.fspath(path)
    from .native import model_kind, open_native

    if model_kind(path) == "native":
        native = open_native(path)
        tokenizer = Tokenizer.from_json(native.tokenizer_json) if native.tokenizer_json else default_tokenizer()
        if backend == "reference":
            model_backend = _make_backend("reference", native.config, native.dequantized_weights(), None, kv_dtype)
        else:
            from .runtime import CppModel

            model_backend = CppModel.from_native(native, threads=threads or default_threads(), kv_dtype=kv_dtype)
        return Model(model_backend, tokenizer, BUILTIN_DESCRIPTION if builtin else f"{path} ({native.dtype})")

    from .checkpoint import open_checkpoint

    with open_checkpoint(path) as checkpoint:
        weights = checkpoint.load_weights()  # memory-mapped arrays outlive the checkpoint object
        config, description = checkpoint.config, f"{path} ({checkpoint.format})"
    return Model(_make_backend(backend, config, weights, threads, kv_dtype), Tokenizer.from_checkpoint_dir(path),
                 description)


class Model:
    """A backend plus its tokenizer: text in, text out."""

    def __init__(self, backend, tokenizer: Tokenizer, description: str = ""):
        self.backend = backend
        self.tokenizer = tokenizer
        self.description = description
        self.last_stats = GenerationStats()

    @property
    def config(self) -> GPTJConfig:
        return self.backend.config

    # ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text)

    def logits(self, prompt: Union[str, Sequence[int]]) -> np.ndarray:
        """fp32 logits [T, vocab], one row per position of the prompt (text or token ids)."""
        ids = self._prompt_ids(prompt)
        return self.backend.forward(np.asarray(ids, dtype=np.int64), self.backend.new_cache(len(ids)))

    def score(self, text: Union[str, Sequence[int]], stride: Optional[int] = None) -> "TokenScores":
        """Log-probability of each token of a text (or token ids) given the tokens before it.

        Every token but the first is scored (the first has nothing before it). Texts longer than the
        context are scored in windows that start every `stride` tokens (default: half the context), as in
        transformers' perplexity guide. Returns `TokenScores`: token_ids, logprobs (float64), greedy,
        total and perplexity.
        """
        from .scoring import score_tokens, text_ids

        return score_tokens(self.backend, text_ids(self.tokenizer, text), stride)

    def loglikelihood(self, context: Union[str, Sequence[int]],
                      continuation: Union[str, Sequence[int]]) -> Tuple[float, bool]:
        """(log-probability of the continuation after the context, whether greedy decoding produces it).

        Text pairs are tokenized as lm-evaluation-harness does (see gptj_ref.scoring); an empty context
        stands for <|endoftext|>. Token id lists are used as given.
        """
        return self.loglikelihoods([(context, continuation)])[0]

    def loglikelihoods(self, pairs: Sequence[Tuple[Union[str, Sequence[int]], Union[str, Sequence[int]]]],
                       progress: Optional[Callable[[int], None]] = None) -> List[Tuple[float, bool]]:
        """`loglikelihood` of many (context, continuation) pairs; pairs that share a context (multiple
        choice) run it once. progress(k) is called as k more pairs are done."""
        from .scoring import pair_ids, score_pairs, sum_scores

        ids = [pair_ids(self.tokenizer, c, t) for c, t in pairs]
        return sum_scores(score_pairs(self.backend, ids, progress))

    def generate(self, prompt: Union[str, Sequence[str]], **settings) -> Union[str, List[str]]:
        """The continuation of one prompt (a str) or of each of several prompts generated together.
        With a seed, every prompt of a list is generated with that seed: each equals its run alone."""
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, **settings))
        if not isinstance(prompt, (list, tuple)):
            raise InputError(f"generate takes a prompt (str) or a list of prompts, got {type(prompt).__name__}")
        prompts = list(prompt)
        if not prompts:
            raise InputError("no prompts given")
        run = self._start([self._prompt_ids(p) for p in prompts], GenerationSettings(**settings))
        for _ in run.steps():
            pass
        self._record(run)
        return [row.text for row in run.rows]

    def generate_ids(self, prompt_ids: Sequence[int], **settings) -> List[int]:
        """Token ids in, the new token ids out."""
        run = self._start([self._prompt_ids(prompt_ids)], GenerationSettings(**settings))
        for _ in run.steps():
            pass
        self._record(run)
        return run.rows[0].new

    def stream(self, prompt: str, **settings) -> Iterator[str]:
        """Text pieces of the continuation as tokens arrive.

        Characters split across tokens are held back until complete, and text that might be the start
        of a stop string is held back until it is known not to be; joined, the pieces equal `generate`.
        """
        run = self._start([self._prompt_ids(prompt)], GenerationSettings(**settings))
        for produced in run.steps():
            for _, step in produced:
                if step.text:
                    yield step.text
        self._record(run)

    # ---------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt) -> List[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("the prompt is empty; give at least one character of text")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = prompt_token_ids(prompt, self.config.vocab_size)
        if len(ids) > self.config.n_positions:
            raise InputError(f"the prompt has {len(ids)} tokens but the model's context is {self.config.n_positions}; "
                             "shorten the prompt")
        return ids

    def _start(self, prompts: List[List[int]], settings: GenerationSettings) -> BatchGeneration:
        return BatchGeneration(self.backend, prompts, settings, self.config.eos_token_id, self.tokenizer)

    def _record(self, run: BatchGeneration) -> None:
        self.last_stats = run.stats()


def prompt_token_ids(prompt, vocab_size: int) -> List[int]:
    """A prompt given as token ids: a sequence (list, tuple, 1-D array) of integers (Python ints or NumPy
    integer scalars; not bools, floats, strings or bytes) in [0, vocab_size)."""
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise InputError("a prompt is text (str) or a sequence of token ids, not bytes; decode bytes to text "
                         "first, e.g. prompt.decode('utf-8')")
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not (np.issubdtype(prompt.dtype, np.integer) or prompt.size == 0):
            raise InputError(f"token ids must be a 1-D array of integers, got a {prompt.ndim}-D array of {prompt.dtype}")
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)):
        raise InputError(f"a prompt is text (str) or a sequence of token ids, got {type(prompt).__name__}")
    if not prompt:
        raise InputError("the prompt is empty; give at least one token id")
    for i, x in enumerate(prompt):
        if not isinstance(x, (int, np.integer)) or isinstance(x, (bool, np.bool_)):
            raise InputError(f"token id {i} is a {type(x).__name__}; token ids are integers")
        if not 0 <= x < vocab_size:
            raise InputError(f"token id {int(x)} is outside the vocabulary [0, {vocab_size})")
    return [int(x) for x in prompt]


# transformers' pipeline defaults for GPT-J come from its config's task_specific_params["text-generation"].
PIPELINE_DEFAULTS = {"do_sample": True, "temperature": 1.0, "max_length": 50}


class TextGenerationPipeline:
    """`pipeline("text-generation", model=...)`: call with a prompt (or a list), get
    `[{"generated_text": prompt + continuation}]` (a list of such lists for a list of prompts)."""

    def __init__(self, model: Model):
        self.model = model

    def __call__(self, text: Union[str, Sequence[str]], max_length: Optional[int] = None,
                 max_new_tokens: Optional[int] = None, return_full_text: bool = True,
                 num_return_sequences: int = 1, **settings):
        if isinstance(text, str):
            return self._one(text, max_length, max_new_tokens, return_full_text, num_return_sequences, settings)
        return [self._one(t, max_length, max_new_tokens, return_full_text, num_return_sequences, settings) for t in text]

    def _one(self, text, max_length, max_new_tokens, return_full_text, num_return_sequences, settings):
        settings = {**{k: v for k, v in PIPELINE_DEFAULTS.items() if k != "max_length"}, **settings}
        if max_new_tokens is None:
            total = PIPELINE_DEFAULTS["max_length"] if max_length is None else max_length
            max_new_tokens = total - len(self.model.encode(text))
            if max_new_tokens < 1:
                raise SettingsError(f"max_length={total} leaves no room after the {total - max_new_tokens}-token prompt; "
                                    "raise max_length or use max_new_tokens")
        results = []
        seed = settings.pop("seed", None)
        for i in range(num_return_sequences):
            run_seed = None if seed is None else seed + i
            continuation = self.model.generate(text, max_new_tokens=max_new_tokens, seed=run_seed, **settings)
            results.append({"generated_text": (text + continuation) if return_full_text else continuation})
        return results


def pipeline(task: str = "text-generation", model: Union[None, str, os.PathLike, Model] = None,
             backend: str = "auto", threads: Optional[int] = None) -> TextGenerationPipeline:
    if task != "text-generation":
        raise SettingsError(f"unknown task {task!r}; gptj_ref provides 'text-generation'")
    if not isinstance(model, Model):
        model = load(model, backend=backend, threads=threads)
    return TextGenerationPipeline(model)
