//! aarch64 kernels (NEON with the dot-product extension), reached only
//! through [`NEON`], which [`crate::dispatch`] hands out after checking
//! the CPU.

use crate::dispatch::{Isa, Kernels, SCALAR};

pub mod neon;

/// NEON (always present on aarch64) and the `sdot`/`udot` dot-product
/// extension (Armv8.2 and later: Cortex-A55/A76, Apple M1, Raspberry Pi 5).
pub fn neon_available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The NEON tier.
pub static NEON: Kernels = Kernels {
    isa: Isa::Neon,
    ..SCALAR
};
