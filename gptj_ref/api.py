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
from .errors import CheckpointError, InputError, SettingsError
from .generate import BatchGeneration, GenerationSettings, GenerationStats, make_settings
from .layout import random_weights
from .threads import check_threads, default_threads  # noqa: F401  (default_threads: re-exported)
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


def _make_backend(backend: str, config: GPTJConfig, weights, threads: Optional[int], kv_dtype: Optional[str]):
    if backend == "reference":
        from .reference import Reference

        return Reference(config, weights, kv_dtype=kv_dtype or DEFAULT_KV_DTYPE)
    from .runtime import CppModel

    return CppModel(config, weights, threads=threads, kv_dtype=kv_dtype)


def load(
    path: Optional[Union[str, os.PathLike]] = None,
    backend: str = "auto",
    threads: Optional[int] = None,
    kv_dtype: Optional[str] = None,
    dtype: Optional[str] = None,
    context: Optional[int] = None,
) -> "Model":
    """Load a model.

    path      a Hugging Face GPT-J directory (config.json + safetensors or pytorch_model.bin, sharded or
              not), a native model file written by `gptj convert`, a Hub name such as "EleutherAI/gpt-j-6B"
              already in the local Hugging Face cache (nothing is downloaded), None for the built-in demo
              model, or "tiny-random" for the random tiny model.
    backend   "reference" (NumPy, the oracle), "cpp" (the C++ runtime) or "auto" (cpp when built).
    threads   threads for the cpp backend (default: OMP_NUM_THREADS when set, else the physical cores;
              see gptj_ref.threads).
    kv_dtype  precision of the KV cache, "float32" or "float16". Default: float16 for int8 (q8) models on
              the cpp backend (half the cache memory: 0.94 GB instead of 1.9 GB at 2048 tokens of 6B),
              float32 otherwise.
    dtype     "q8" (int8), "f16" or "f32": convert the weights while loading, exactly as `gptj convert`
              followed by load does (it converts through a temporary file that is removed at once, so the
              extra memory is the converter's, about one tensor). None: use the weights as stored (a
              Hugging Face directory then runs in float32: 24 GB for GPT-J 6B).
    context   at most this many tokens per sequence (prompt + generated) will be used: the memory check
              counts the KV cache for them (default, and at most: the model's context). Before anything
              large is read, the memory the model needs is estimated (gptj_ref.memory) and the load
              refused with MemoryLimitError when it exceeds the memory available (or GPTJ_MEMORY_LIMIT).
    """
    from .native import NATIVE_DTYPES

    if backend not in BACKENDS:
        raise SettingsError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    threads = check_threads(threads)
    if dtype is not None and dtype not in NATIVE_DTYPES:
        raise SettingsError(f"unknown dtype {dtype!r}; choose one of {', '.join(NATIVE_DTYPES)} (or None: as stored)")
    if backend == "auto":
        backend = "cpp" if cpp_available() else "reference"
    elif backend == "cpp" and not cpp_available():
        raise SettingsError(
            "the cpp backend is not available: the compiled extension gptj_ref._core is missing; "
            "reinstall with `pip install .` or use backend='reference'"
        )

    if path == TINY_RANDOM:
        if dtype not in (None, "f32"):
            raise SettingsError("the random tiny model is float32 in memory; dtype applies to a checkpoint or file")
        weights = random_weights(TINY, seed=0)
        return Model(
            _make_backend(backend, TINY, weights, threads, kv_dtype),
            default_tokenizer(),
            TINY_RANDOM_DESCRIPTION,
            dtype="f32",
        )
    builtin = path is None
    from .hub import local_or_hub

    path = DEMO_PATH if builtin else local_or_hub(os.fspath(path))
    from .memory import check_memory, estimate_memory

    format_version = None
    if os.path.isfile(path):
        native = open_model_file(path)
        source_dtype, mapped, format_version = native.dtype, True, native.format_version
        config = native.config
    else:
        from .checkpoint import open_checkpoint

        with open_checkpoint(path) as checkpoint:
            config = checkpoint.config
            source_dtype, mapped = "f32", all(checkpoint.dtype(n) == "F32" for n in checkpoint.names())
    wanted = dtype or source_dtype
    if context is not None:
        if not isinstance(context, (int, np.integer)) or isinstance(context, bool) or context < 1:
            raise SettingsError(f"context must be a positive number of tokens, got {context!r}")
        context = min(int(context), config.n_positions)  # a bound: more than the model holds counts as all
    converted = wanted != source_dtype
    estimate = estimate_memory(
        config,
        wanted,
        backend,
        context,
        kv_dtype,
        threads=threads,
        mapped=mapped or converted,
        format_version=None if converted else format_version,
    )
    check_memory(estimate, path)

    if converted:
        native = _convert_on_load(path, wanted)
        description = f"{BUILTIN_DESCRIPTION if builtin else path} ({wanted}, converted on load)"
    elif os.path.isfile(path):
        description = BUILTIN_DESCRIPTION if builtin else f"{path} ({native.dtype})"
    else:
        native = None
    if native is not None:
        tokenizer = Tokenizer.from_json(native.tokenizer_json) if native.tokenizer_json else default_tokenizer()
        if backend == "reference":
            model_backend = _make_backend("reference", native.config, native.dequantized_weights(), None, kv_dtype)
        else:
            from .runtime import CppModel

            model_backend = CppModel.from_native(native, threads=threads, kv_dtype=kv_dtype)
        return Model(model_backend, tokenizer, description, dtype=wanted)

    from .checkpoint import open_checkpoint
    from .layout import weight_shapes
    from .progress import progress_bar

    with open_checkpoint(path) as checkpoint:
        checkpoint.check()
        names = list(weight_shapes(checkpoint.config))
        bar = progress_bar(sum(checkpoint.nbytes(n) for n in names), "load")
        weights = {}
        for name in names:  # memory-mapped arrays (or float32 copies of f16/bf16) outlive the checkpoint object
            weights[name] = checkpoint.read_weight(name)
            bar.update(checkpoint.nbytes(name))
        bar.close()
        config, description = checkpoint.config, f"{path} ({checkpoint.format})"
    return Model(
        _make_backend(backend, config, weights, threads, kv_dtype),
        Tokenizer.from_checkpoint_dir(path),
        description,
        dtype="f32",
    )


def open_model_file(path: str):
    """Open and validate a native model file: the one check, and the one message, for every command."""
    from .native import open_native

    try:
        return open_native(path)
    except CheckpointError as e:
        if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")):
            raise CheckpointError(
                f"{e}. For a Hugging Face checkpoint, pass the directory that holds config.json"
            ) from None
        raise


def _convert_on_load(path: str, dtype: str):
    """convert() into a temporary file, open it, remove its name: the mapping keeps the data until unloaded."""
    import tempfile

    from .convert import convert

    fd, temporary = tempfile.mkstemp(prefix="gptj-load-", suffix=f"-{dtype}.gptj")
    os.close(fd)
    try:
        convert(path, temporary, dtype=dtype, progress=True)
        return open_model_file(temporary)
    finally:
        try:
            os.unlink(temporary)
        except OSError:  # Windows cannot remove a mapped file; the OS's temp cleaning will
            pass


class Model:
    """A backend plus its tokenizer: text in, text out.

    backend      the implementation: `.name` ("reference", "cpp", "cpp-q8"), `.config`, `.forward`,
                 `.new_cache` (and `.threads` on the cpp backend, settable)
    tokenizer    the model's tokenizer (gptj_ref.tokenizer.Tokenizer): `.encode(text)`, `.decode(ids)`,
                 `.stream_decoder()`; `model.encode` and `model.decode` are shortcuts
    config       the GPTJConfig (sizes, context, end-of-text id)
    dtype        the weights' format: "q8", "f16" or "f32"
    description  where the model came from, for messages
    last_stats   GenerationStats of the last generate/stream/generate_ids call: tokens and tokens/s

    Generation settings (generate, stream, generate_ids) are those of gptj_ref.generate.GenerationSettings:
    max_new_tokens (32), do_sample (False), temperature (1.0; 0 = greedy), top_k (50), top_p (1.0),
    repetition_penalty (1.0), min_new_tokens (0), min_length (0), stop (strings), stop_at_eos (True),
    seed (None), eos_token_id (the model's); and transformers' names max_length (prompt + new tokens)
    and stop_strings. Names that do not apply here (num_beams, typical_p, device, ...) raise SettingsError
    saying what to use instead.
    """

    def __init__(self, backend, tokenizer: Tokenizer, description: str = "", dtype: str = "f32"):
        self.backend = backend
        self.tokenizer = tokenizer
        self.description = description
        self.dtype = dtype
        self.last_stats = GenerationStats()

    @property
    def config(self) -> GPTJConfig:
        return self.backend.config

    def __repr__(self) -> str:
        c = self.config
        threads = getattr(self.backend, "threads", None)
        return (
            f"Model({self.description!r}, backend={self.backend.name!r}, dtype={self.dtype!r}, "
            f"kv_dtype={getattr(self.backend, 'kv_dtype', 'float32')!r}"
            + (f", threads={threads}" if threads is not None else "")
            + f", layers={c.n_layer}, n_embd={c.n_embd}, context={c.n_positions})"
        )

    # ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> List[int]:
        """Text -> token ids (the model's tokenizer)."""
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (the model's tokenizer); incomplete UTF-8 at the end becomes U+FFFD."""
        return self.tokenizer.decode(list(ids))

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

    def loglikelihood(
        self, context: Union[str, Sequence[int]], continuation: Union[str, Sequence[int]]
    ) -> Tuple[float, bool]:
        """(log-probability of the continuation after the context, whether greedy decoding produces it).

        Text pairs are tokenized as lm-evaluation-harness does (see gptj_ref.scoring); an empty context
        stands for <|endoftext|>. Token id lists are used as given.
        """
        return self.loglikelihoods([(context, continuation)])[0]

    def loglikelihoods(
        self,
        pairs: Sequence[Tuple[Union[str, Sequence[int]], Union[str, Sequence[int]]]],
        progress: Optional[Callable[[int], None]] = None,
    ) -> List[Tuple[float, bool]]:
        """`loglikelihood` of many (context, continuation) pairs; pairs that share a context (multiple
        choice) run it once. progress(k) is called as k more pairs are done."""
        from .scoring import pair_ids, score_pairs, sum_scores

        ids = [pair_ids(self.tokenizer, c, t) for c, t in pairs]
        return sum_scores(score_pairs(self.backend, ids, progress))

    def generate(self, prompt: Union[str, Sequence[str]], **settings) -> Union[str, List[str]]:
        """The continuation of one prompt (a str), or of each prompt of a list of str, generated together.
        With a seed, every prompt of a list is generated with that seed: each equals its run alone.

        Settings (see the class docstring and GenerationSettings): max_new_tokens, do_sample, temperature,
        top_k, top_p, repetition_penalty, min_new_tokens, min_length, stop, stop_at_eos, seed,
        presence_penalty, frequency_penalty, eos_token_id, and transformers' max_length and stop_strings.
        Token ids go to generate_ids.
        """
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, **settings))
        prompts = _text_prompts(prompt, "generate")
        ids = [self._prompt_ids(p) for p in prompts]
        run = self._start(ids, make_settings(settings, prompt_tokens=max(len(i) for i in ids)))
        for _ in run.steps():
            pass
        self._record(run)
        return [row.text for row in run.rows]

    def generate_ids(self, prompt_ids: Sequence[int], **settings) -> List[int]:
        """Token ids in, the new token ids out (no text, no stop strings). Settings as generate's."""
        ids = self._prompt_ids(prompt_ids)
        run = self._start([ids], make_settings(settings, prompt_tokens=len(ids)))
        for _ in run.steps():
            pass
        self._record(run)
        return run.rows[0].new

    def stream(self, prompt: str, **settings) -> Iterator[str]:
        """Text pieces of the continuation of one prompt (a str) as tokens arrive. Settings as generate's.

        Characters split across tokens are held back until complete, and text that might be the start
        of a stop string is held back until it is known not to be; joined, the pieces equal `generate`.
        """
        if not isinstance(prompt, str):
            _text_prompts(prompt, "stream")  # raises InputError saying what to call instead
            raise InputError("stream takes one text prompt (a str); for several prompts use generate([...])")
        ids = self._prompt_ids(prompt)
        return self._stream(ids, make_settings(settings, prompt_tokens=len(ids)))

    def _stream(self, ids: List[int], s: GenerationSettings) -> Iterator[str]:
        run = self._start([ids], s)
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
            raise InputError(
                f"the prompt has {len(ids)} tokens but the model's context is {self.config.n_positions}; "
                "shorten the prompt"
            )
        return ids

    def _start(self, prompts: List[List[int]], settings: GenerationSettings) -> BatchGeneration:
        return BatchGeneration(self.backend, prompts, settings, self.config.eos_token_id, self.tokenizer)

    def _record(self, run: BatchGeneration) -> None:
        self.last_stats = run.stats()


def prompt_token_ids(prompt, vocab_size: int) -> List[int]:
    """A prompt given as token ids: a sequence (list, tuple, 1-D array) of integers (Python ints or NumPy
    integer scalars; not bools, floats, strings or bytes) in [0, vocab_size)."""
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise InputError(
            "a prompt is text (str) or a sequence of token ids, not bytes; decode bytes to text "
            "first, e.g. prompt.decode('utf-8')"
        )
    if isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not (np.issubdtype(prompt.dtype, np.integer) or prompt.size == 0):
            raise InputError(
                f"token ids must be a 1-D array of integers, got a {prompt.ndim}-D array of {prompt.dtype}"
            )
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


def _text_prompts(prompt, method: str) -> List[str]:
    """A list of str prompts, or InputError saying what was given and what to call instead."""
    if isinstance(prompt, (bytes, bytearray)):
        raise InputError(f"{method} takes text, got bytes; decode them first, e.g. prompt.decode('utf-8')")
    if isinstance(prompt, np.ndarray) or (
        isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (int, np.integer)) for p in prompt)
    ):
        raise InputError(f"{method} takes text; for token ids use generate_ids(ids) (or logits(ids))")
    if not isinstance(prompt, (list, tuple)):
        raise InputError(f"{method} takes a prompt as a str (or a list of str), got {type(prompt).__name__}")
    if not prompt:
        raise InputError("no prompts given")
    bad = [p for p in prompt if not isinstance(p, str)]
    if bad:
        raise InputError(f"every prompt must be a str, got {type(bad[0]).__name__} {bad[0]!r:.60}")
    return list(prompt)


# transformers' pipeline defaults for GPT-J come from its config's task_specific_params["text-generation"].
PIPELINE_DEFAULTS = {"do_sample": True, "temperature": 1.0, "max_length": 50}


class TextGenerationPipeline:
    """`pipeline("text-generation", model=...)`: call with a prompt (or a list), get
    `[{"generated_text": prompt + continuation}]` (a list of such lists for a list of prompts)."""

    def __init__(self, model: Model):
        self.model = model

    def __call__(
        self,
        text: Union[str, Sequence[str]],
        max_length: Optional[int] = None,
        max_new_tokens: Optional[int] = None,
        return_full_text: bool = True,
        num_return_sequences: int = 1,
        **settings,
    ):
        if isinstance(text, str):
            return self._one(text, max_length, max_new_tokens, return_full_text, num_return_sequences, settings)
        return [
            self._one(t, max_length, max_new_tokens, return_full_text, num_return_sequences, settings) for t in text
        ]

    def _one(self, text, max_length, max_new_tokens, return_full_text, num_return_sequences, settings):
        settings = {**{k: v for k, v in PIPELINE_DEFAULTS.items() if k != "max_length"}, **settings}
        if max_new_tokens is None:
            total = PIPELINE_DEFAULTS["max_length"] if max_length is None else max_length
            max_new_tokens = total - len(self.model.encode(text))
            if max_new_tokens < 1:
                raise SettingsError(
                    f"max_length={total} leaves no room after the {total - max_new_tokens}-token prompt; "
                    "raise max_length or use max_new_tokens"
                )
        results = []
        seed = settings.pop("seed", None)
        for i in range(num_return_sequences):
            run_seed = None if seed is None else seed + i
            continuation = self.model.generate(text, max_new_tokens=max_new_tokens, seed=run_seed, **settings)
            results.append({"generated_text": (text + continuation) if return_full_text else continuation})
        return results


def pipeline(
    task: str = "text-generation",
    model: Union[None, str, os.PathLike, Model] = None,
    backend: str = "auto",
    threads: Optional[int] = None,
) -> TextGenerationPipeline:
    if task != "text-generation":
        raise SettingsError(f"unknown task {task!r}; gptj_ref provides 'text-generation'")
    if not isinstance(model, Model):
        model = load(model, backend=backend, threads=threads)
    return TextGenerationPipeline(model)
