// Run-time CPU feature detection for the AVX2/FMA clones of the hot loops.
#pragma once

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

}  // namespace microtex::detail
