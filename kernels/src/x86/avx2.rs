//! AVX2 + FMA kernels.
