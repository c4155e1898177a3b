// Run-time CPU feature detection for the AVX2/FMA clones of the hot loops.
#pragma once

#include <cstdlib>

namespace microtex::detail {

inline bool cpu_has_avx2_fma() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return ok;
#else
    return false;
#endif
}

// AVX-512F (for the kernels that have a 512-bit clone), unless the environment
// sets MICROTEX_NO_AVX512 (read once), which tests and benchmarks use to run
// the AVX2 path on a machine that has both.
inline bool cpu_has_avx512f() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    static const bool ok = [] {
        __builtin_cpu_init();
        const char* off = std::getenv("MICROTEX_NO_AVX512");
        return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && !(off && *off && *off != '0');
    }();
    return ok;
#else
    return false;
#endif
}

}  // namespace microtex::detail
