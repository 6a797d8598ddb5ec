//! aarch64 kernels (NEON with the dot-product extension), reached only
//! through the crate-private table `NEON`, which [`crate::dispatch`] hands
//! out after checking the CPU.

use crate::dispatch::{Isa, Kernels};

// Private: the kernels assume the features `neon_available` checks, so
// they are reachable only through the table below.
mod neon;
// For the 2:4 sparse int8 kernels (`crate::quant::sparse::neon`), which
// run only through the table below as well.
pub(crate) use neon::{gather_f16, sdot};

/// NEON (always present on aarch64) and the `sdot`/`udot` dot-product
/// extension (Armv8.2 and later: Cortex-A55/A76, Apple M1, Raspberry Pi 5).
pub fn neon_available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
}

use crate::quant::sparse::neon as s24;

/// The NEON tier. Crate-private: its entries are safe functions that run
/// `neon,dotprod` code, so only [`crate::dispatch`] hands the table out,
/// and only after [`neon_available`] returned true.
pub(crate) static NEON: Kernels = Kernels {
    isa: Isa::Neon,
    quantize_q8: neon::quantize_q8,
    matmul_q8_q8: neon::matmul_q8_q8,
    matmul_q4_q8: neon::matmul_q4_q8,
    matmul_q4m_q8: neon::matmul_q4m_q8,
    matmul_q4s24_q8: Some(s24::matmul_s24::<s24::Q4S24Neon>),
    matmul_q8s24_q8: Some(s24::matmul_s24::<s24::Q8S24Neon>),
    prepare_q8: crate::dispatch::no_prepare_q8,
    matmul_f32: neon::matmul_f32,
    matmul_f32_cols: None,
    matmul_q8_cols: None,
    dot: neon::dot,
    axpy: neon::axpy,
    // NEON is baseline on aarch64: the portable bodies vectorise as they are.
    softmax: crate::f32::softmax,
    attend: neon::attend,
    silu_mul: crate::f32::silu_mul,
};
