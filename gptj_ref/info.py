"""`gptj info`: what a model is, the memory it needs and the threads and kernels it would run with.

Reads only headers and config files: describing a model never loads its weights.
"""

from __future__ import annotations

import os
from typing import List, Optional

from .errors import SettingsError


def describe_model(path: Optional[str], threads: Optional[int] = None, context: Optional[int] = None) -> List[str]:
    """The lines `gptj info` prints for the model at `path` (None: the built-in demo model; "tiny-random")."""
    from .api import BUILTIN_DESCRIPTION, cpp_available, open_model_file
    from .config import TINY
    from .demo import DEMO_PATH, TINY_RANDOM, TINY_RANDOM_DESCRIPTION
    from .memory import available_memory, estimate_memory, gb, limit_source
    from .native import NATIVE_DTYPES
    from .threads import check_threads, describe_threads

    lines: List[str] = []
    if path is not None and path != TINY_RANDOM:
        from .hub import local_or_hub

        path = local_or_hub(path)
    format_version = None
    if path == TINY_RANDOM:
        config, dtype, size = TINY, "f32 (in memory)", None
        tokenizer = "built-in GPT-2 BPE + 143 GPT-J extra tokens"
        lines.append(f"model: {TINY_RANDOM_DESCRIPTION}")
    elif path is None or os.path.isfile(path):
        native = open_model_file(DEMO_PATH if path is None else path)
        config, dtype, size = native.config, native.dtype, os.path.getsize(native.path)
        format_version = native.format_version
        tokenizer = (
            "embedded in the file" if native.tokenizer_json else "none embedded (the built-in GPT-2 BPE is used)"
        )
        lines.append(f"model: {BUILTIN_DESCRIPTION}" if path is None else f"model: {path} (gptj_ref native file)")
        lines.append(f"file: {native.path} (format version {format_version})")
    else:
        from .checkpoint import open_checkpoint

        with open_checkpoint(path) as ckpt:
            ckpt.check()  # the config's sizes against the tensors present (headers only)
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
    n_threads = check_threads(threads)
    lines.append(f"threads: {describe_threads(threads)}")
    if context is not None and context < 1:
        raise SettingsError(f"--context must be a positive number of tokens, got {context}")
    context = config.n_positions if context is None else min(context, config.n_positions)
    available = available_memory()
    lines.append(
        f"memory needed at a context of {context} tokens, cpp backend (weights + KV cache + scratch + "
        f"runtime; available: {gb(available) + ' (' + limit_source() + ')' if available else 'unknown'}):"
    )
    for d in NATIVE_DTYPES:
        # the file's own format version for its own dtype; a conversion writes the current version
        estimate = estimate_memory(
            config, d, "cpp", context, threads=n_threads, format_version=format_version if d == dtype else None
        )
        widened = " (widened to f32 at load: no f16 kernels)" if d == "f16" else ""
        lines.append(f"  {d}: {estimate.describe()}{widened}")
    reference = estimate_memory(config, "f32", "reference", context)
    lines.append(f"  reference backend (any dtype, float32): {reference.describe()}")
    if cpp_available():
        from . import runtime

        runnable = ", ".join(runtime.available_kernel_isas())
        lines.append(f"kernels: {runtime.kernel_isa()} (this CPU and build can run: {runnable})")
    else:
        lines.append("kernels: none (the C++ extension is not built; only backend='reference' runs)")
    return lines
