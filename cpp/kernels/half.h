// IEEE half precision (float16) <-> float32, element by element: the int8 scales of a q8 file and the
// float16 KV cache. Conversions round to nearest, ties to even, as NumPy's astype does.
#pragma once

#include <cstdint>

namespace gptj::kernels {

// float16 bits -> float32, exact (subnormals included).
float f16_to_f32(uint16_t h);
// float32 -> float16 bits, rounded to nearest-even; beyond the half range: infinity.
uint16_t f32_to_f16(float x);

}  // namespace gptj::kernels
