//! Compute kernels for microllm.
//!
//! `f32` holds the exact reference path: every later kernel (quantized,
//! SIMD) is measured against it. `quant` holds the block formats with their
//! scalar kernels; `x86` and `aarch64` the SIMD tiers, one file per
//! instruction set; `dispatch` picks a tier once at run time; `pool` is the
//! thread pool the matrix products run on.

#![warn(missing_docs)]

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod dispatch;
pub mod f32;
pub mod pool;
pub mod quant;
#[cfg(target_arch = "x86_64")]
pub mod x86;
