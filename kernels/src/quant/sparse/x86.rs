//! AVX2 and AVX-512 versions of the 2:4 sparse dot products (f32
//! activations). Each gathers the activations at the kept positions with
//! a permute and multiply-adds only the kept values:
//! - AVX2: 8 kept values (16 inputs, two registers) per step: positions
//!   decoded with one variable shift, two `vpermps` and a blend;
//! - AVX-512: 16 kept values (32 inputs) per step with one `vpermt2ps`.
//!
//! Callers check the lengths and the CPU features (see the safe wrappers
//! in the parent module).
//!
//! The AVX-512 intrinsics are stable since Rust 1.89, the workspace's
//! minimum.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{BlockQ4S24, BlockQ8S24, SK};
use half::f16;

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Activations at the kept positions of 8 kept values (`bits`: their 2-bit
/// positions) from the 16 inputs at `xp`.
#[inline(always)]
unsafe fn gather8_avx2(xp: *const f32, bits: u32, shifts: __m256i, base: __m256i) -> __m256 {
    let x0 = _mm256_loadu_ps(xp);
    let x1 = _mm256_loadu_ps(xp.add(8));
    let pos = _mm256_add_epi32(
        _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(bits as i32), shifts),
            _mm256_set1_epi32(3),
        ),
        base,
    );
    _mm256_blend_ps::<0xF0>(
        _mm256_permutevar8x32_ps(x0, pos),
        _mm256_permutevar8x32_ps(x1, pos),
    )
}

/// AVX2 `q4s24` dot product.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x.len() == 64·blocks.len()` and
/// `scales.len() == blocks.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q4s24_avx2(blocks: &[BlockQ4S24], scales: &[f16], x: &[f32]) -> f32 {
    let shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
    let eight = _mm256_set1_epi32(8);
    let low = _mm_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let q = _mm_loadu_si128(b.qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
        let idx = u64::from_le_bytes(b.idx());
        let nib = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        let mut bacc = _mm256_setzero_ps();
        for (j, n) in nib.into_iter().enumerate() {
            let g = gather8_avx2(
                xp.add(16 * j),
                (idx >> (16 * j)) as u32 & 0xFFFF,
                shifts,
                base,
            );
            let w = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(n), eight));
            bacc = _mm256_fmadd_ps(w, g, bacc);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(s.to_f32()), bacc, acc);
    }
    hsum256(acc)
}

/// AVX2 `q8s24` dot product.
///
/// # Safety
/// As [`dot_q4s24_avx2`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_q8s24_avx2(blocks: &[BlockQ8S24], scales: &[f16], x: &[f32]) -> f32 {
    let shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
    let mut acc = _mm256_setzero_ps();
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let idx = u64::from_le_bytes(b.idx);
        let mut bacc = _mm256_setzero_ps();
        for j in 0..4 {
            let g = gather8_avx2(
                xp.add(16 * j),
                (idx >> (16 * j)) as u32 & 0xFFFF,
                shifts,
                base,
            );
            let q = _mm_loadl_epi64(b.qs.as_ptr().add(8 * j) as *const __m128i);
            let w = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            bacc = _mm256_fmadd_ps(w, g, bacc);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(s.to_f32()), bacc, acc);
    }
    hsum256(acc)
}

/// Activations at the kept positions of 16 kept values from the 32
/// inputs at `xp`.
#[inline(always)]
unsafe fn gather16_avx512(xp: *const f32, bits: u32, shifts: __m512i, base: __m512i) -> __m512 {
    let x0 = _mm512_loadu_ps(xp);
    let x1 = _mm512_loadu_ps(xp.add(16));
    let pos = _mm512_add_epi32(
        _mm512_and_si512(
            _mm512_srlv_epi32(_mm512_set1_epi32(bits as i32), shifts),
            _mm512_set1_epi32(3),
        ),
        base,
    );
    _mm512_permutex2var_ps(x0, pos, x1)
}

const SHIFTS16: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
const BASE16: [i32; 16] = [0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28];

/// AVX-512 `q4s24` dot product.
///
/// # Safety
/// The CPU must have AVX-512F; lengths as [`dot_q4s24_avx2`].
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_q4s24_avx512(blocks: &[BlockQ4S24], scales: &[f16], x: &[f32]) -> f32 {
    let shifts = _mm512_loadu_si512(SHIFTS16.as_ptr() as *const _);
    let base = _mm512_loadu_si512(BASE16.as_ptr() as *const _);
    let eight = _mm512_set1_epi32(8);
    let low = _mm_set1_epi8(0x0F);
    let mut acc = _mm512_setzero_ps();
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let q = _mm_loadu_si128(b.qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(q, low);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), low);
        let idx = u64::from_le_bytes(b.idx());
        let g0 = gather16_avx512(xp, idx as u32, shifts, base);
        let g1 = gather16_avx512(xp.add(32), (idx >> 32) as u32, shifts, base);
        let w0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(lo), eight));
        let w1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(hi), eight));
        let bacc = _mm512_fmadd_ps(w1, g1, _mm512_mul_ps(w0, g0));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(s.to_f32()), bacc, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// AVX-512 `q8s24` dot product.
///
/// # Safety
/// As [`dot_q4s24_avx512`].
#[target_feature(enable = "avx512f")]
pub unsafe fn dot_q8s24_avx512(blocks: &[BlockQ8S24], scales: &[f16], x: &[f32]) -> f32 {
    let shifts = _mm512_loadu_si512(SHIFTS16.as_ptr() as *const _);
    let base = _mm512_loadu_si512(BASE16.as_ptr() as *const _);
    let mut acc = _mm512_setzero_ps();
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let idx = u64::from_le_bytes(b.idx);
        let g0 = gather16_avx512(xp, idx as u32, shifts, base);
        let g1 = gather16_avx512(xp.add(32), (idx >> 32) as u32, shifts, base);
        let q0 = _mm_loadu_si128(b.qs.as_ptr() as *const __m128i);
        let q1 = _mm_loadu_si128(b.qs.as_ptr().add(16) as *const __m128i);
        let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0));
        let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1));
        let bacc = _mm512_fmadd_ps(w1, g1, _mm512_mul_ps(w0, g0));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(s.to_f32()), bacc, acc);
    }
    _mm512_reduce_add_ps(acc)
}
