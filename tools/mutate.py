"""Plant known bugs one at a time and report which ones the tests catch.

    PYTHONPATH=. nice -n 10 python3 tools/mutate.py            # every mutant
    python3 tools/mutate.py --list                             # what they are
    nice -n 10 python3 tools/mutate.py --only cpp-softmax-no-max ref-gelu-constant

Each mutant is a classic porting or optimisation mistake: an exact piece of source text (found exactly
once) and what it becomes, plus the tests that exist to catch it. The tracked files are copied once to a
scratch directory and the C++ extension is built there once; then for each mutant the file is changed,
the extension rebuilt incrementally when the change is C++, the tests run with -x (the first failure
kills the mutant), and the file restored. Nothing in the source tree is touched.

A mutant is *killed* when its tests fail, *survived* when they pass: a survivor is a bug the suite
would let through (or an equivalent mutant, which the list below avoids). Run on demand, not in CI: a
full run rebuilds the extension about fifteen times and takes tens of minutes on two cores.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNEL_TESTS = ("tests/test_kernels.py", "tests/test_kernel_paths.py")
Q8_TESTS = ("tests/test_q8_kernels.py", "tests/test_quant.py")
FORMAT_TESTS = ("tests/test_formats.py",)
MODEL_TESTS = ("tests/test_gptj_semantics.py", "tests/test_reference.py", "tests/test_runtime.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    edits: Tuple[Tuple[str, str], ...]  # (exact text, replacement); each text must occur once
    tests: Tuple[str, ...]
    why: str

    @property
    def is_cpp(self) -> bool:
        return self.path.startswith("cpp/")


def m(name, path, old, new, tests, why, *more_edits) -> Mutant:
    return Mutant(name, path, ((old, new),) + tuple(more_edits), tuple(tests), why)


MUTANTS: List[Mutant] = [
    # --- the NumPy reference --------------------------------------------------------------------
    m(
        "ref-gelu-constant",
        "gptj_ref/reference.py",
        "f32(0.044715)",
        "f32(0.0447)",
        ("tests/test_gptj_semantics.py", "tests/test_reference.py"),
        "GELU's cubic constant mistyped",
    ),
    m(
        "ref-positions-from-1",
        "gptj_ref/reference.py",
        "np.cumsum(mask, axis=1) - 1",
        "np.cumsum(mask, axis=1)",
        MODEL_TESTS,
        "rotary positions start at 1",
    ),
    m(
        "ref-rotary-sign",
        "gptj_ref/reference.py",
        "x_swapped[..., 0::2] = -x[..., 1::2]",
        "x_swapped[..., 0::2] = x[..., 1::2]",
        ("tests/test_reference.py",),
        "rotate_every_two's minus sign lost",
    ),
    m(
        "ref-rotate-half",
        "gptj_ref/reference.py",
        "x_swapped[..., 0::2] = -x[..., 1::2]                 # (x0, x1) -> (-x1, x0)\n"
        "    x_swapped[..., 1::2] = x[..., 0::2]",
        "half = x.shape[-1] // 2\n"
        "    x_swapped[..., :half] = -x[..., half:]\n"
        "    x_swapped[..., half:] = x[..., :half]",
        ("tests/test_reference.py",),
        "NeoX/LLaMA's rotate_half pairing on GPT-J weights",
    ),
    m(
        "ref-softmax-no-max",
        "gptj_ref/reference.py",
        "np.exp(x - x.max(axis=-1, keepdims=True))",
        "np.exp(x)",
        ("tests/test_gptj_semantics.py", "tests/test_reference.py"),
        "softmax without subtracting the row maximum",
    ),
    m(
        "ref-layernorm-unbiased",
        "gptj_ref/reference.py",
        "var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)",
        "var = ((x - mean) ** 2).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)",
        ("tests/test_reference.py",),
        "LayerNorm with the unbiased variance",
    ),
    m(
        "ref-serial-block",
        "gptj_ref/reference.py",
        'm = mlp(h, w["mlp"])',
        'm = mlp(layer_norm(x + a, w["ln_1"]["weight"], w["ln_1"]["bias"], config.layer_norm_epsilon), w["mlp"])',
        ("tests/test_reference.py",),
        "GPT-2's serial block instead of GPT-J's parallel one",
    ),
    m(
        "ref-no-lm-head-bias",
        "gptj_ref/reference.py",
        'linear(x, self.lm_head["weight"], self.lm_head["bias"])',
        'linear(x, self.lm_head["weight"])',
        ("tests/test_reference.py",),
        "lm_head's bias dropped",
    ),
    m(
        "ref-scale-by-d",
        "gptj_ref/reference.py",
        "/ f32(np.sqrt(d_head))",
        "/ f32(d_head)",
        ("tests/test_reference.py",),
        "scores scaled by 1/d_head instead of 1/sqrt(d_head)",
    ),
    m(
        "ref-mask-one-future",
        "gptj_ref/reference.py",
        "(key_slot <= query_slot)[None]",
        "(key_slot <= query_slot + 1)[None]",
        ("tests/test_reference.py",),
        "the causal mask lets a query see the next token",
    ),
    m(
        "ref-erf-gelu",
        "gptj_ref/reference.py",
        "f32(0.5) * x * (f32(1.0) + np.tanh(f32(np.sqrt(2.0 / np.pi)) * (x + f32(0.044715) * (x * x * x))))",
        "x * f32(0.5) * (f32(1.0) + np.vectorize(__import__('math').erf)(x / np.sqrt(2.0)).astype(f32))",
        ("tests/test_gptj_semantics.py", "tests/test_reference.py"),
        "the erf GELU instead of gelu_new",
    ),
    # --- generation -----------------------------------------------------------------------------
    m(
        "gen-top-p-boundary",
        "gptj_ref/generate.py",
        "cumulative <= (1 - p)",
        "cumulative < (1 - p)",
        ("tests/test_gptj_semantics.py", "tests/test_generate.py"),
        "top-p's boundary < instead of <=",
    ),
    m(
        "gen-top-k-drops-kth",
        "gptj_ref/generate.py",
        "np.where(scores < kth, NEG_INF, scores)",
        "np.where(scores <= kth, NEG_INF, scores)",
        ("tests/test_generate.py",),
        "top-k keeps k - 1 tokens",
    ),
    m(
        "gen-repetition-penalty-sign",
        "gptj_ref/generate.py",
        "np.where(seen < 0, seen * np.float32(penalty), seen / np.float32(penalty))",
        "seen / np.float32(penalty)",
        ("tests/test_generate.py",),
        "repetition penalty divides negative scores too",
    ),
    m(
        "gen-min-new-tokens-off-by-one",
        "gptj_ref/generate.py",
        "n_new < settings.min_new_tokens",
        "n_new <= settings.min_new_tokens",
        ("tests/test_generate.py",),
        "EOS suppressed one step too long",
    ),
    # --- int8 format ----------------------------------------------------------------------------
    m(
        "quant-scale-to-nearest",
        "gptj_ref/quant.py",
        "d16[low] = np.nextafter(d16[low], np.float16(np.inf))",
        "pass",
        Q8_TESTS,
        "the float16 scale rounded to nearest, so values clip",
    ),
    # --- C++ kernels ----------------------------------------------------------------------------
    m(
        "cpp-linear-prompt-drops-w-block",
        "cpp/kernels/linear_avx2.cpp",
        "for (int64_t nb = 0; nb < N; nb += kNb) {",
        "for (int64_t nb = 0; nb < N - N % kNb; nb += kNb) {",
        KERNEL_TESTS,
        "the prompt path (M > 64) drops its last partial block of output rows",
    ),
    m(
        "cpp-linear-prompt-drops-row-tile",
        "cpp/kernels/linear_avx2.cpp",
        "for (int64_t m = 0; m < M; m += kRm)\n                        for (int64_t j = 0;",
        "for (int64_t m = 0; m + kRm <= M; m += kRm)\n                        for (int64_t j = 0;",
        KERNEL_TESTS,
        "the prompt path drops the last partial tile of input rows",
    ),
    m(
        "cpp-softmax-no-max",
        "cpp/kernels/simd_avx2.h",
        "exp_f32x8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx8))",
        "exp_f32x8(_mm256_loadu_ps(x + i))",
        KERNEL_TESTS,
        "softmax without subtracting the row maximum (exp clamps at 88)",
        (
            "exp_f32x8(_mm256_sub_ps(_mm256_maskload_ps(x + n8, tail), mx8))",
            "exp_f32x8(_mm256_maskload_ps(x + n8, tail))",
        ),
    ),
    m(
        "cpp-gelu-constant-avx2",
        "cpp/kernels/activation_avx2.cpp",
        "_mm256_set1_ps(0.044715f)",
        "_mm256_set1_ps(0.0447f)",
        KERNEL_TESTS,
        "GELU's cubic constant mistyped in the AVX2 kernel",
    ),
    m(
        "cpp-positions-from-1",
        "cpp/runtime/model.cpp",
        "positions_.push_back(start + t)",
        "positions_.push_back(start + t + 1)",
        MODEL_TESTS,
        "the runtime's rotary positions start at 1",
    ),
    m(
        "cpp-rotary-sign-scalar",
        "cpp/kernels/rotary_scalar.cpp",
        "xh[2 * i + 1] = x1 * c[i] + x0 * s[i];",
        "xh[2 * i + 1] = x1 * c[i] - x0 * s[i];",
        KERNEL_TESTS,
        "a rotary sign error in the scalar kernel",
    ),
    m(
        "cpp-attention-sees-next",
        "cpp/kernels/attention_avx2.cpp",
        "const int64_t n_keys = start + t0 + r + 1;",
        "const int64_t n_keys = std::min(start + T, start + t0 + r + 2);",
        KERNEL_TESTS,
        "AVX2 attention lets a query see the next token",
    ),
    m(
        "cpp-attention-scale-by-d",
        "cpp/kernels/attention_avx2.cpp",
        "const float scale = std::sqrt(float(d_head));",
        "const float scale = float(d_head);",
        KERNEL_TESTS,
        "scores scaled by 1/d_head",
    ),
    m(
        "cpp-layernorm-unbiased",
        "cpp/kernels/norm_avx2.cpp",
        "std::sqrt(sq / float(N) + eps)",
        "std::sqrt(sq / float(N - 1) + eps)",
        KERNEL_TESTS,
        "LayerNorm with the unbiased variance (AVX2)",
    ),
    m(
        "cpp-q8-activation-truncates",
        "cpp/kernels/q8_scalar.cpp",
        "std::nearbyint(xb[j] / divisor)",
        "std::trunc(xb[j] / divisor)",
        Q8_TESTS,
        "activations quantized by truncation, not round to nearest",
    ),
    m(
        "cpp-q8-drops-last-block",
        "cpp/kernels/q8_scalar.cpp",
        "for (int64_t blk = 0; blk < nb; ++blk) {",
        "for (int64_t blk = 0; blk + 1 < nb; ++blk) {",
        Q8_TESTS,
        "the int8 dot product skips its last block",
    ),
    m(
        "cpp-residual-order",
        "cpp/kernels/activation_avx2.cpp",
        "const f32x8 am = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(m + i));\n"
        "        _mm256_storeu_ps(x + i, _mm256_add_ps(am, _mm256_loadu_ps(x + i)));",
        "const f32x8 mx = _mm256_add_ps(_mm256_loadu_ps(m + i), _mm256_loadu_ps(x + i));\n"
        "        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(a + i), mx));",
        KERNEL_TESTS,
        "the residual sum reassociated: a + (m + x) differs from transformers' (a + m) + x",
    ),
    m(
        "cpp-q4-panels-high-shift",
        "cpp/kernels/q4_avx512.cpp",
        "_mm512_srai_epi32(ph, 4)",
        "_mm512_srai_epi32(ph, 3)",
        FORMAT_TESTS,
        "the AVX-512 q4 kernel takes the high nibbles' sums as 8 u, not u",
    ),
    m(
        "cpp-q4-pack-panels-row-lanes",
        "cpp/kernels/q4_scalar.cpp",
        "std::memcpy(chunks + 64 * c + 4 * r, block + 4 * c, 4);",
        "std::memcpy(chunks + 64 * c + 4 * (r ^ 1), block + 4 * c, 4);",
        FORMAT_TESTS,
        "q4_pack_panels swaps neighbouring rows' lanes in every chunk",
    ),
    m(
        "cpp-q4-panels-avx2-high-nibbles",
        "cpp/kernels/q4_panels_avx2.inl",
        "return _mm256_and_si256(_mm256_srli_epi16(chunk, 4), _mm256_set1_epi8(0x0F));",
        "return _mm256_and_si256(_mm256_srli_epi16(chunk, 3), _mm256_set1_epi8(0x0F));",
        FORMAT_TESTS,
        "the AVX2 panel kernel reads the high nibbles one bit off",
    ),
    m(
        "cpp-q4-panels-vnni-high-shift",
        "cpp/kernels/q4_panels_avx2.inl",
        "return _mm256_add_epi32(pl, _mm256_srai_epi32(ph, 4));",
        "return _mm256_add_epi32(pl, _mm256_srai_epi32(ph, 3));",
        FORMAT_TESTS,
        "the AVX-VNNI panel kernel takes the high nibbles' sums as 8 u, not u",
    ),
    m(
        "cpp-q4-panels-avx512-block-scale",
        "cpp/kernels/q4_avx512.cpp",
        "_mm512_mul_ps(sw, _mm512_set1_ps(dx[t * nb + b]))",
        "_mm512_mul_ps(sw, _mm512_set1_ps(dx[t * nb]))",
        FORMAT_TESTS,
        "the AVX-512 panel kernel scales every block by the activations' first block scale",
    ),
    m(
        "cpp-q4-panels-avx2-unpack-rows",
        "cpp/kernels/q4_avx2.cpp",
        "out[8 * h + i] = _mm256_permute2x128_si256(lo, hi, 0x20);",
        "out[8 * h + i] = _mm256_permute2x128_si256(hi, lo, 0x20);",
        FORMAT_TESTS,
        "the unpack from panels swaps elements 0..15 and 16..31 of rows 0-3 and 8-11",
    ),
    m(
        "cpp-shared-ranges-drop-last",
        "cpp/kernels/parallel.h",
        "if (f >= b) return -1;",
        "if (f + 1 >= b) return -1;",
        Q8_TESTS + FORMAT_TESTS,
        "SharedRanges never hands out the last unit of each thread's range",
    ),
    m(
        "cpp-rows512-q8-no-flip",
        "cpp/kernels/rows_avx512.h",
        "*lo = _mm512_xor_si512(_mm512_permutex2var_epi64(w0, even_lanes(), w1), flip);",
        "*lo = _mm512_permutex2var_epi64(w0, even_lanes(), w1);",
        Q8_TESTS + FORMAT_TESTS,
        "the AVX-512 q8 row kernel forgets to flip the sign bit of elements 0..15 of each block",
    ),
    m(
        "cpp-rows512-skips-tail-block",
        "cpp/kernels/rows_avx512.h",
        "for (int64_t b = 4 * steps; b < nb; ++b) {",
        "for (int64_t b = 4 * steps; b + 1 < nb; ++b) {",
        FORMAT_TESTS,
        "the AVX-512 row kernel drops the last block after its four-block steps",
    ),
]


def tracked_files(root: str) -> List[str]:
    out = subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def copy_tree(root: str, scratch: str) -> None:
    for rel in tracked_files(root):
        src, dst = os.path.join(root, rel), os.path.join(scratch, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)


def build(scratch: str, log) -> bool:
    """Configure once, then build incrementally; copy the extension next to the package. True on success."""
    build_dir = os.path.join(scratch, "build", "mutate")
    if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        pybind11_dir = subprocess.run(
            [sys.executable, "-m", "pybind11", "--cmakedir"], check=True, capture_output=True, text=True
        ).stdout.strip()
        r = subprocess.run(
            [
                "cmake",
                "-S",
                scratch,
                "-B",
                build_dir,
                "-DCMAKE_BUILD_TYPE=Release",
                f"-Dpybind11_DIR={pybind11_dir}",
                f"-DPython_EXECUTABLE={sys.executable}",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            log(r.stdout + r.stderr)
            return False
    r = subprocess.run(["cmake", "--build", build_dir, "-j2"], capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout[-3000:] + r.stderr[-3000:])
        return False
    for so in glob.glob(os.path.join(build_dir, "_core*.so")):
        shutil.copy2(so, os.path.join(scratch, "gptj_ref"))
    return True


def run_tests(scratch: str, tests: Sequence[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONPATH=scratch)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        r = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)"
    if r.returncode == 0:
        return "survived"
    if r.returncode == 1 or (r.returncode == 3 and re.search(r"\b\d+ failed\b", r.stdout)):
        return "killed"  # exit 3: pytest's internal error while reporting a test that did fail
    return f"error (pytest exit {r.returncode})"


def apply(scratch: str, mutant: Mutant) -> str:
    """Write the mutant into the scratch copy; return the original text."""
    path = os.path.join(scratch, mutant.path)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    text = original
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise SystemExit(
                f"mutant {mutant.name}: the text to replace occurs {count} times in {mutant.path}, "
                f"expected once; update tools/mutate.py: {old!r}"
            )
        text = text.replace(old, new)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--baseline", action="store_true", help="first check that the unmutated tree passes")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mutant's tests (default 1200)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {mu.name for mu in MUTANTS}
        if unknown:
            parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
        mutants = [mu for mu in MUTANTS if mu.name in args.only]
    if args.list:
        for mu in mutants:
            print(f"{mu.name:34} {mu.path:34} {mu.why}")
        return 0

    scratch = tempfile.mkdtemp(prefix="gptj-mutate-")
    log = lambda text: print(text, file=sys.stderr)  # noqa: E731
    results = []
    try:
        copy_tree(ROOT, scratch)
        if not build(scratch, log):
            print("the unmutated tree does not build", file=sys.stderr)
            return 2
        if args.baseline:
            tests = sorted({t for mu in mutants for t in mu.tests})
            if run_tests(scratch, tests, args.timeout) != "survived":
                print("the unmutated tree fails its tests: fix that first", file=sys.stderr)
                return 2
        stale_build = False
        for mu in mutants:
            t0 = time.time()
            original = apply(scratch, mu)
            try:
                built = build(scratch, log) if (mu.is_cpp or stale_build) else True
                stale_build = False
                result = run_tests(scratch, mu.tests, args.timeout) if built else "stillborn (does not build)"
            finally:
                with open(os.path.join(scratch, mu.path), "w", encoding="utf-8") as f:
                    f.write(original)
                stale_build = stale_build or mu.is_cpp
            results.append((mu, result))
            print(f"{mu.name:34} {result:24} {time.time() - t0:6.0f} s   {mu.why}", flush=True)
    finally:
        if args.keep:
            print(f"scratch tree kept at {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    counted = [(mu, r) for mu, r in results if r.startswith(("killed", "survived"))]
    killed = sum(r.startswith("killed") for _, r in counted)
    uncounted = len(results) - len(counted)
    print(
        f"\nmutation score: {killed} of {len(counted)} killed"
        + (f" ({uncounted} not counted: stillborn or errors)" if uncounted else "")
    )
    survivors = [mu.name for mu, r in counted if r == "survived"]
    if survivors:
        print("survived: " + ", ".join(survivors))
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
