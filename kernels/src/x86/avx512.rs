//! AVX-512 (F, BW, VL, VNNI) kernels: the generic bodies of
//! [`super::avx2`] instantiated with `vpdpbusd` (one instruction per 4
//! products per lane instead of three) and wider register tiles (32
//! vector registers).
//!
//! The AVX-512 intrinsics and `target_feature` names are stable since Rust
//! 1.89, above the workspace's declared 1.80: this tier needs 1.89.

use super::avx2::{self, IntDot, Q4, Q4M, Q8};
use crate::quant::{BlockQ8, Q8Activations, WeightsRef};
use std::arch::x86_64::*;
use std::ops::Range;

/// `vpdpbusd` on 256-bit registers (AVX512-VNNI + VL); q8 weights biased
/// to unsigned (`w + 128`), the bias removed with `−128·Σa`.
struct VnniDot;

impl IntDot for VnniDot {
    const Q8_BIASED: bool = true;
    #[inline(always)]
    unsafe fn dot_u(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, a)
    }
    #[inline(always)]
    unsafe fn dot_s(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        // Not used (Q8_BIASED); the sign trick for completeness.
        _mm256_dpbusd_epi32(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
    }
}

/// Compiles the generic bodies for AVX-512 (with AVX2, FMA and F16C).
macro_rules! avx512_fn {
    (fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            $body
        }
    };
}

avx512_fn!(fn q8_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => avx2::matmul_int8::<Q8, VnniDot, 4, 3>(w, rows, x, out));
avx512_fn!(fn q4_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => avx2::matmul_int8::<Q4, VnniDot, 4, 3>(w, rows, x, out));
avx512_fn!(fn q4m_q8_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &Q8Activations, out: &mut [f32])
    => avx2::matmul_int8::<Q4M, VnniDot, 4, 3>(w, rows, x, out));
avx512_fn!(fn f32_imp(w: &WeightsRef<'_>, rows: Range<usize>, x: &[f32], n: usize, out: &mut [f32])
    => avx2::matmul_f32::<4, 5>(w, rows, x, n, out));
avx512_fn!(fn dot_imp(a: &[f32], b: &[f32]) -> f32 => avx2::dot_f32(a, b));
avx512_fn!(fn axpy_imp(y: &mut [f32], a: f32, x: &[f32]) => avx2::axpy_f32(y, a, x));
avx512_fn!(fn quantize_imp(x: &[f32], q: &mut [BlockQ8], s: &mut [f32], sums: &mut [i32])
    => avx2::quantize_q8(x, q, s, sums));

/// q8 weights × int8 activations.
pub(crate) fn matmul_q8_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { q8_q8_imp(w, rows, x, out) }
}

/// q4 weights × int8 activations.
pub(crate) fn matmul_q4_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { q4_q8_imp(w, rows, x, out) }
}

/// q4m weights × int8 activations.
pub(crate) fn matmul_q4m_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { q4m_q8_imp(w, rows, x, out) }
}

/// Any weights × f32 activations.
pub(crate) fn matmul_f32_entry(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { f32_imp(w, rows, x, n, out) }
}

/// `Σ a·b`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { dot_imp(a, b) }
}

/// `y += a·x`.
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { axpy_imp(y, a, x) }
}

/// Activations to int8 blocks, bit-identical to the scalar tier.
pub(crate) fn quantize(x: &[f32], q: &mut [BlockQ8], s: &mut [f32], sums: &mut [i32]) {
    // SAFETY: only reachable through `crate::x86::AVX512`, handed out after avx512_available().
    unsafe { quantize_imp(x, q, s, sums) }
}
