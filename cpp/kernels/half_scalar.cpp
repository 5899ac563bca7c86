// IEEE half precision <-> float32, scalar. The AVX2 file does the array conversion with F16C, which
// rounds the same way (to nearest, ties to even), so the two agree bitwise; both equal NumPy's
// astype(np.float16) / astype(np.float32).
#include <cmath>
#include <cstring>

#include "kernels/half.h"
#include "kernels/impl.h"

namespace gptj::kernels {

float f16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    float mag;
    if (exp == 0) {
        mag = std::ldexp(float(man), -24);  // zero or subnormal: man * 2^-24, exact
    } else if (exp == 31) {
        mag = man ? NAN : INFINITY;
    } else {
        const uint32_t bits = ((exp + 112u) << 23) | (man << 13);  // rebias 15 -> 127
        std::memcpy(&mag, &bits, sizeof mag);
    }
    uint32_t out;
    std::memcpy(&out, &mag, sizeof out);
    out |= sign;
    float f;
    std::memcpy(&f, &out, sizeof f);
    return f;
}

uint16_t f32_to_f16(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
    const uint32_t mag = bits & 0x7fffffffu;
    if (mag >= 0x7f800000u) return sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN, infinity
    if (mag >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity (65504 is the largest half)
    if (mag < 0x38800000u) {
        // Below 2^-14, the smallest normal half: a subnormal m * 2^-24 (or zero). Scaling by 2^24 is
        // exact, and nearbyint rounds to nearest-even in the default mode; m = 1024 is the smallest
        // normal, whose bits are the same 0x0400.
        float magnitude;
        std::memcpy(&magnitude, &mag, sizeof magnitude);
        return sign | uint16_t(std::nearbyint(magnitude * 16777216.0f));
    }
    // Normal: rebias the exponent (127 -> 15), keep 10 of the 23 mantissa bits, round the 13 dropped
    // ones to nearest-even (a carry into the exponent is the right result).
    uint32_t h = ((mag >> 23) - 112u) << 10 | ((mag >> 13) & 0x3ffu);
    const uint32_t dropped = mag & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (h & 1u))) ++h;
    return sign | uint16_t(h);
}

namespace scalar {

void f32_to_f16(uint16_t* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = kernels::f32_to_f16(x[i]);
}

}  // namespace scalar

}  // namespace gptj::kernels
