"""The weight formats a native file can store, each described once (the Python side of the C++ formats
table, cpp/kernels/formats.h).

A format says which stored tensors hold a weight matrix and what they mean. `native.py` (layout,
writing, validation, dequantization), `convert.py` (the dtype choice) and `runtime.py` (what the C++
model receives) iterate `FORMATS` instead of branching on a dtype; the C++ model gets each linear's
format by name, as the file's metadata names it.

    f32   every tensor float32
    f16   every matrix float16 (runs on the fp32 kernels after a conversion at load)
    q8    int8 blocks of 32 with a float16 scale each (quant.py)           1.0625 bytes per weight
    q4    4-bit blocks of 32 with a float16 scale each (quant.py, q4 notes)  0.5625 bytes per weight

A block format stores a quantized matrix as two tensors: the values under the weight's own name and
the block scales under `name + "_scale"`. Which tensor is stored how is `WeightFormat.tensor_format`,
the one place that says it: a block format quantizes `quant.is_quantized` (the six linears of every
block and lm_head) in its own layout and, from native format version 2 on, the embedding
transformer.wte.weight as q8 rows (`embedding`); the rest stay float32. q4 keeps the embedding in q8,
not q4: a lookup reads one row per token, so its bytes cost nothing per decoded token, and q8 rows
keep the embedding 16x more finely than 4-bit ones for about 3% more file (6B: 0.2 GB vs 0.1 GB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import quant
from .errors import InputError

Spec = Tuple[str, str, Tuple[int, ...]]  # (stored name, safetensors dtype, shape)

EMBEDDING = "transformer.wte.weight"
EMBEDDING_BLOCKS_SINCE = 2  # the native format version from which a block format quantizes the embedding
CURRENT_FILE_VERSION = 2  # native.FORMAT_VERSION (native.py imports this module, not the reverse)


def scale_name(name: str) -> str:
    """The name of a quantized weight's scale tensor: "...q_proj.weight" -> "...q_proj.weight_scale"."""
    return name + "_scale"


@dataclass(frozen=True)
class WeightFormat:
    """One stored weight format. Block formats (block > 1) fill the quantization functions:

    quantize(w [N, K] float)            -> (values, scales float16 [N, K/block])
    dequantize(values, scales)          -> float32 [N, K]: what the file means
    emulate(x, values, scales, bias)    -> float32: the C++ kernels' exact integer arithmetic (the scalar
                                           kernel equals it bitwise)
    error_bound(x, values, scales, bias, lanes) -> float64: |SIMD kernel - emulate| <= this
    check_values(values)                -> None, or what is wrong with the stored values
    """

    name: str
    version: int
    block: int  # elements of K per scale (1: no blocks)
    values_dtype: str  # safetensors dtype of the stored matrix
    description: str
    quantize: Optional[Callable] = None
    dequantize: Optional[Callable] = None
    emulate: Optional[Callable] = None
    error_bound: Optional[Callable] = None
    check_values: Optional[Callable] = None
    values_per_byte: int = 1
    values_name: str = ""  # what one stored value is, for messages: "int8", "4-bit"
    signed_scales: bool = False  # scales may be negative (q4: the grid [-8, 7] is used either way round)
    embedding: str = ""  # the block format of the embedding rows (file version >= 2); "" keeps it F32

    @property
    def is_block(self) -> bool:
        return self.block > 1

    def tensor_format(
        self, name: str, shape: Tuple[int, ...], file_version: int = CURRENT_FILE_VERSION
    ) -> "WeightFormat":
        """The format the float tensor `name` [shape] is stored in by a file of this format and native
        format version: this format for the matrices it quantizes, `embedding` for the embedding rows,
        f32 for vectors and the rest of a block format's file."""
        if len(shape) == 1:
            return FORMATS["f32"]
        if not self.is_block or quant.is_quantized(name):
            return self
        if name == EMBEDDING and self.embedding and file_version >= EMBEDDING_BLOCKS_SINCE:
            return FORMATS[self.embedding]
        return FORMATS["f32"]

    def stores(self, name: str, shape: Tuple[int, ...], file_version: int = CURRENT_FILE_VERSION) -> List[Spec]:
        """The stored tensors of the float tensor `name` [shape] in a file of this format."""
        fmt = self.tensor_format(name, shape, file_version)
        if fmt.is_block:
            out, n_in = shape
            if n_in % fmt.block != 0:
                raise InputError(
                    f"{name} has {n_in} inputs, not a multiple of the {fmt.values_name} block size "
                    f"{fmt.block}; a {self.name} file needs n_embd and d_ff to be multiples of "
                    f"{fmt.block} (use f16 or f32)"
                )
            return [
                (name, fmt.values_dtype, (out, n_in // fmt.values_per_byte)),
                (scale_name(name), "F16", (out, n_in // fmt.block)),
            ]
        return [(name, fmt.values_dtype, shape)]

    def bytes_per_weight(self) -> float:
        item = {"F32": 4, "F16": 2, "I8": 1, "U8": 1}[self.values_dtype] / self.values_per_byte
        return item + (2 / self.block if self.is_block else 0.0)


def _check_int8(values: np.ndarray) -> Optional[str]:
    return "holds -128; q8 weights are in [-127, 127]" if (values == -128).any() else None


FORMATS: Dict[str, WeightFormat] = {
    f.name: f
    for f in (
        WeightFormat(
            "q8",
            1,
            quant.QK,
            "I8",
            "int8 blocks of 32, float16 scales",
            quantize=quant.quantize_blocks,
            dequantize=quant.dequantize_blocks,
            emulate=quant.q8_linear,
            error_bound=quant.q8_linear_error_bound,
            check_values=_check_int8,
            values_name="int8",
            embedding="q8",
        ),
        WeightFormat(
            "q4",
            1,
            quant.QK,
            "U8",
            "4-bit blocks of 32, float16 scales",
            values_per_byte=2,
            values_name="4-bit",
            signed_scales=True,
            embedding="q8",
            quantize=quant.q4_quantize_blocks,
            dequantize=quant.q4_dequantize_blocks,
            emulate=quant.q4_linear,
            error_bound=lambda x, v, s, b=None, lanes=quant.QK: quant.q8_linear_error_bound(
                x, quant.q4_unpack(v), s, b, lanes
            ),
        ),
        WeightFormat("f16", 1, 1, "F16", "float16 matrices (converted to float32 for the C++ kernels)"),
        WeightFormat("f32", 1, 1, "F32", "float32"),
    )
}
BLOCK_FORMATS = tuple(name for name, f in FORMATS.items() if f.is_block)


def weight_format(name: str) -> WeightFormat:
    """The format of this name, or an InputError naming the known ones."""
    if name not in FORMATS:
        raise InputError(f"unknown weight format {name!r}; this gptj_ref knows {', '.join(FORMATS)}")
    return FORMATS[name]
