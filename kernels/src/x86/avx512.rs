//! AVX-512 (F, BW, VL, VNNI) kernels.
