//! x86-64 kernels: one file per tier, each function compiled with its
//! `#[target_feature]` set and only reached through the tables below,
//! which [`crate::dispatch`] hands out after checking the CPU.

use crate::dispatch::{Isa, Kernels, SCALAR};

pub mod avx2;
pub mod avx512;

/// AVX2 and FMA (Haswell and later, Zen 1 and later).
pub fn avx2_available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// AVX-512 F/BW/VL with VNNI (Ice Lake and later, Zen 4 and later), on
/// top of AVX2.
pub fn avx512_available() -> bool {
    avx2_available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

/// The AVX2 tier.
pub static AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    ..SCALAR
};

/// The AVX-512 (VNNI) tier.
pub static AVX512: Kernels = Kernels {
    isa: Isa::Avx512,
    ..AVX2
};
