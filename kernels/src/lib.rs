//! Compute kernels for microllm.
//!
//! `f32` holds the exact reference path: every later kernel (quantized,
//! SIMD) is measured against it.

#![warn(missing_docs)]

pub mod f32;
pub mod quant;
