//! AVX2 and AVX-512 versions of the 2:4 sparse kernels: dot products on
//! f32 activations, and matrix products on int8 activations (decode; the
//! AVX-512 one and the AVX2 one are described where they start below).
//! The f32 ones gather the activations at the kept positions with a
//! permute and multiply-add only the kept values:
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

/// Asks for the rows after a row's `blocks` (rows are stored one after
/// another) while this one is multiplied: see [`crate::x86::prefetch`].
#[inline(always)]
pub(crate) fn prefetch_next_rows<T>(blocks: &[T]) {
    let len = std::mem::size_of_val(blocks);
    crate::x86::prefetch(
        blocks.as_ptr() as *const u8,
        len,
        crate::x86::PREFETCH_AHEAD,
    );
}

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

// ---------------------------------------------------------------------------
// `q4s24` × int8 activations, AVX-512 with VBMI (byte permutes) and GFNI:
// decode.
//
// Two blocks (128 inputs, 64 kept values) per step. One register holds
// the 64 kept nibbles as bytes, lanes of 16: [b0 kept 0..15, b1 0..15,
// b0 16..31, b1 16..31] (one `vpermb` of the two blocks' bytes, then one
// `vgf2p8affineqb` keeps the low nibbles in the lower half and the high
// ones in the upper half). The activation of each is found without
// leaving the registers:
// - each qword of a second register holds its block's 48-bit code field
//   (one broadcast load per block);
// - `vpmultishiftqb` moves, into byte `j`, the code of its group shifted
//   left by one; a ternary-logic op puts the byte's parity (first or
//   second kept value of the group) in bit 0;
// - `vpermb` looks `2·code + parity` up in a 16-entry table of positions,
//   and adding `64·block + 4·group` gives the input (0..127);
// - `vpermi2b` gathers the 64 activations from the 128 of the step.
// `vpdpbusd` then sums 4 products per 32-bit lane (nibble × int8), the
// nibbles' offset 8 is removed with a second `vpdpbusd` of 8 × the same
// activations, and each lane, which lies in one activation block of 32,
// is scaled by its `d_w · d_a`.
//
// `q8s24` runs through the same step loop with the same lane order: one
// `vpermi2b` of the two blocks' 80 bytes places their quants, the 2-bit
// positions need no table (`vpmultishiftqb`, then one ternary-logic op
// masks them and adds `64·block + 4·group`), and the signed quants are
// multiplied by the activations as unsigned bytes `a + 128` (kept beside
// them), whose offset `128·Σq` a second `vpdpbusd` removes.
// ---------------------------------------------------------------------------

use crate::quant::{Q8Activations, WeightsRef, QK};
use std::ops::Range;

/// The layout-cache slot of [`PrepS24`] (the dense 512-bit kernels use 0-2).
const S24_SLOT: usize = 3;

/// Activations laid out for the 2:4 int8 kernels: per token and per
/// step of 128 inputs, the 128 int8 values (zero past the row's end) and
/// the lane scales `[d_a(4s)×4, d_a(4s+2)×4, d_a(4s+1)×4, d_a(4s+3)×4]`
/// (lanes 4..7 are the second block's first half).
pub(crate) struct PrepS24 {
    q: Vec<[__m512i; 2]>,
    /// `q` as unsigned bytes, `a + 128` (`q8s24`'s kernel multiplies the
    /// signed weights by them).
    qu: Vec<[__m512i; 2]>,
    d: Vec<__m512>,
    /// Steps per row.
    ns: usize,
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn prep_s24(x: &Q8Activations) -> PrepS24 {
    let nb = x.cols() / QK;
    let ns = nb.div_ceil(4);
    let mut q = Vec::with_capacity(x.n() * ns);
    let mut qu = Vec::with_capacity(x.n() * ns);
    let mut d = Vec::with_capacity(x.n() * ns);
    for t in 0..x.n() {
        let row = x.row(t);
        for s in 0..ns {
            let mut bytes = [0i8; 128];
            let mut dv = [0.0f32; 16];
            for (i, lane) in [0, 2, 1, 3].into_iter().enumerate() {
                let b = 4 * s + i;
                if b < nb {
                    bytes[32 * i..32 * i + 32].copy_from_slice(&row.quants[b].qs);
                    dv[4 * lane..4 * lane + 4].fill(row.scales[b]);
                }
            }
            // SAFETY: 64-byte reads from a 128-byte array, 16 floats from 16.
            let v = [
                _mm512_loadu_si512(bytes.as_ptr() as *const _),
                _mm512_loadu_si512(bytes.as_ptr().add(64) as *const _),
            ];
            let bias = _mm512_set1_epi8(-128);
            q.push(v);
            qu.push(v.map(|h| _mm512_xor_si512(h, bias)));
            d.push(_mm512_loadu_ps(dv.as_ptr()));
        }
    }
    PrepS24 { q, qu, d, ns }
}

/// The layout of `x` for the 2:4 int8 kernels, built before a matrix's
/// tasks start ([`crate::dispatch::Kernels::prepare_q8`]).
pub(crate) fn prepare_s24_q8(x: &Q8Activations) {
    if crate::x86::avx512_vbmi_available() {
        // SAFETY: AVX-512 F/BW checked just above.
        x.layout(S24_SLOT, || unsafe { prep_s24(x) });
    }
}

/// A 2:4 block type as the step loop of [`s24_rows`] takes it.
pub(crate) trait S24Kind {
    type Block: super::SparseBlock;
    /// The kernel's constant registers.
    type Consts;
    unsafe fn consts() -> Self::Consts;
    /// The prepared activations this kind multiplies: per step, 128 bytes.
    fn acts(p: &PrepS24) -> &[[__m512i; 2]];
    /// The exact integer sums `Σ w·a` of one step's activations `a`
    /// (from [`S24Kind::acts`]) against blocks `blk`, `blk + 1` (only `blk`
    /// when `two` is false), in the 16 lanes of [`PrepS24`]'s order.
    unsafe fn step(
        k: &Self::Consts,
        blk: *const Self::Block,
        two: bool,
        a: &[__m512i; 2],
    ) -> __m512i;
}

/// Output byte `j` of a step register: block `b = (j / 16) % 2`, kept
/// value `k = 16·(j / 32) + j % 16` of that block, in group `k / 2`; and
/// that kept value's input base `64·b + 4·group`.
fn lane_byte(j: usize) -> (usize, usize, u8) {
    let (b, k) = ((j / 16) % 2, 16 * (j / 32) + j % 16);
    (b, k, (64 * b + 4 * (k / 2)) as u8)
}

#[inline(always)]
unsafe fn ld64(a: &[u8; 64]) -> __m512i {
    _mm512_loadu_si512(a.as_ptr() as *const _)
}

/// Block `blk`'s 8 bytes at `at` in qwords 0, 1, 4, 5 and block `blk + 1`'s
/// (`stride` bytes on) in 2, 3, 6, 7: the qwords that the output bytes of
/// each block read in `vpmultishiftqb`.
#[inline(always)]
unsafe fn fields(b0: *const u8, at: usize, stride: usize, two: bool) -> __m512i {
    let f = _mm512_set1_epi64((b0.add(at) as *const i64).read_unaligned());
    if two {
        let f1 = (b0.add(stride + at) as *const i64).read_unaligned();
        _mm512_mask_set1_epi64(f, 0xCC, f1)
    } else {
        f
    }
}

/// `q4s24`: 3-bit pair codes and nibbles.
pub(crate) struct Q4S24Kind;

/// The constant registers of the `q4s24` step.
pub(crate) struct Q4S24Consts {
    /// `vpermb` of the two blocks' 44 bytes to [b0 qs, b1 qs, b0 qs, b1 qs].
    nib: __m512i,
    /// `vgf2p8affineqb` matrices: bits 0-3 of a byte (qwords 0-3), bits
    /// 4-7 (qwords 4-7).
    nibbles: __m512i,
    /// `vpmultishiftqb` control: byte `j` reads from bit `3·group − 1`.
    shift: __m512i,
    /// Byte `j`'s parity (0 or 1) in bit 0.
    parity: __m512i,
    /// `64·b + 4·group`.
    base: __m512i,
    /// `2·code + parity` → position in the group (see [`super::PAIRS`]).
    pos: __m512i,
}

impl S24Kind for Q4S24Kind {
    type Block = BlockQ4S24;
    type Consts = Q4S24Consts;

    #[inline(always)]
    unsafe fn consts() -> Q4S24Consts {
        let (mut nib, mut shift, mut parity, mut base, mut pos) =
            ([0u8; 64], [0u8; 64], [0u8; 64], [0u8; 64], [0u8; 64]);
        for j in 0..64 {
            let (b, k, at) = lane_byte(j);
            nib[j] = (22 * b + 6 + j % 16) as u8;
            shift[j] = ((3 * (k / 2) + 63) % 64) as u8;
            parity[j] = (k % 2) as u8;
            base[j] = at;
        }
        for (c, &(p0, p1)) in super::PAIRS.iter().enumerate() {
            pos[2 * c] = p0;
            pos[2 * c + 1] = p1;
        }
        Q4S24Consts {
            nib: ld64(&nib),
            nibbles: {
                let (lo, hi) = (0x0102_0408_0000_0000i64, 0x1020_4080_0000_0000i64);
                _mm512_setr_epi64(lo, lo, lo, lo, hi, hi, hi, hi)
            },
            shift: ld64(&shift),
            parity: ld64(&parity),
            base: ld64(&base),
            pos: ld64(&pos),
        }
    }

    fn acts(p: &PrepS24) -> &[[__m512i; 2]] {
        &p.q
    }

    /// `Σ (n − 8)·a`.
    #[inline(always)]
    unsafe fn step(
        k: &Q4S24Consts,
        blk: *const BlockQ4S24,
        two: bool,
        a: &[__m512i; 2],
    ) -> __m512i {
        let b0 = blk as *const u8;
        // The two blocks' bytes (44, or 22 for a lone last block: never past it).
        let len: u64 = if two { (1 << 44) - 1 } else { (1 << 22) - 1 };
        let raw = _mm512_maskz_loadu_epi8(len, b0 as *const i8);
        let qs = _mm512_permutexvar_epi8(k.nib, raw);
        // Low nibbles in lanes 0-1, high ones in 2-3: one bit-matrix op.
        let w = _mm512_gf2p8affine_epi64_epi8::<0>(qs, k.nibbles);
        // Each code field read as 8 bytes from its block's start (inside
        // the 22-byte block).
        let t = _mm512_multishift_epi64_epi8(k.shift, fields(b0, 0, 22, two));
        // (t & 0b1110) | parity
        let u = _mm512_ternarylogic_epi32::<0xEA>(t, _mm512_set1_epi8(0x0E), k.parity);
        let idx = _mm512_add_epi8(_mm512_permutexvar_epi8(u, k.pos), k.base);
        let x = _mm512_permutex2var_epi8(a[0], idx, a[1]);
        let z = _mm512_setzero_si512();
        let wx = _mm512_dpbusd_epi32(z, w, x);
        let ex = _mm512_dpbusd_epi32(z, _mm512_set1_epi8(8), x);
        _mm512_sub_epi32(wx, ex)
    }
}

/// `q8s24`: int8 quants and 2-bit positions.
pub(crate) struct Q8S24Kind;

/// The constant registers of the `q8s24` step.
pub(crate) struct Q8S24Consts {
    /// `vpermi2b` of the two blocks' 80 bytes to [b0 qs 0..15, b1 qs
    /// 0..15, b0 qs 16..31, b1 qs 16..31].
    quants: __m512i,
    /// `vpmultishiftqb` control: byte `j` reads from bit `2k`.
    shift: __m512i,
    /// `64·b + 4·group`.
    base: __m512i,
}

impl S24Kind for Q8S24Kind {
    type Block = BlockQ8S24;
    type Consts = Q8S24Consts;

    #[inline(always)]
    unsafe fn consts() -> Q8S24Consts {
        let (mut quants, mut shift, mut base) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        for j in 0..64 {
            let (b, k, at) = lane_byte(j);
            quants[j] = (40 * b + k) as u8;
            shift[j] = (2 * k) as u8;
            base[j] = at;
        }
        Q8S24Consts {
            quants: ld64(&quants),
            shift: ld64(&shift),
            base: ld64(&base),
        }
    }

    fn acts(p: &PrepS24) -> &[[__m512i; 2]] {
        &p.qu
    }

    /// `Σ q·a`, as `Σ q·(a + 128) − 128·Σ q`.
    #[inline(always)]
    unsafe fn step(
        k: &Q8S24Consts,
        blk: *const BlockQ8S24,
        two: bool,
        a: &[__m512i; 2],
    ) -> __m512i {
        let b0 = blk as *const u8;
        // Bytes 0..64 and 64..80 of the two 40-byte blocks, or the first
        // block's 32 quants alone: never past the last block.
        let (lo, hi) = if two {
            (
                _mm512_loadu_si512(b0 as *const _),
                _mm512_maskz_loadu_epi8(0xFFFF, b0.add(64) as *const i8),
            )
        } else {
            (
                _mm512_maskz_loadu_epi8(0xFFFF_FFFF, b0 as *const i8),
                _mm512_setzero_si512(),
            )
        };
        let w = _mm512_permutex2var_epi8(lo, k.quants, hi);
        // Positions at bytes 32..40 of each block.
        let t = _mm512_multishift_epi64_epi8(k.shift, fields(b0, 32, 40, two));
        // (t & 3) | base
        let idx = _mm512_ternarylogic_epi32::<0xEA>(t, _mm512_set1_epi8(3), k.base);
        let x = _mm512_permutex2var_epi8(a[0], idx, a[1]);
        let z = _mm512_setzero_si512();
        let wx = _mm512_dpbusd_epi32(z, x, w);
        let off = _mm512_dpbusd_epi32(z, _mm512_set1_epi8(-128), w);
        _mm512_sub_epi32(wx, off)
    }
}

/// Rows `r..r + R` of a 2:4 matrix against token `t`.
#[inline(always)]
unsafe fn s24_rows<K: S24Kind, const R: usize>(
    k: &K::Consts,
    blocks: *const K::Block,
    scales: *const u16,
    nb: usize,
    p: &PrepS24,
    r: usize,
    t: usize,
) -> [f32; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    let mut ws = [[0.0f32; 16]; R];
    for g in 0..nb.div_ceil(16) {
        let b0 = 16 * g;
        let count = (nb - b0).min(16);
        for (i, w) in ws.iter_mut().enumerate() {
            let plane = scales.add((r + i) * nb + b0);
            let h = if count == 16 {
                _mm256_loadu_si256(plane as *const __m256i)
            } else {
                _mm256_maskz_loadu_epi16(((1u32 << count) - 1) as u16, plane as *const i16)
            };
            _mm512_storeu_ps(w.as_mut_ptr(), _mm512_cvtph_ps(h));
        }
        for s in 0..count.div_ceil(2) {
            let step = t * p.ns + 8 * g + s;
            let a = K::acts(p).get_unchecked(step);
            let da = *p.d.get_unchecked(step);
            let two = b0 + 2 * s + 1 < nb;
            for i in 0..R {
                let isum = K::step(k, blocks.add((r + i) * nb + b0 + 2 * s), two, a);
                // d_w of b0 in lanes 0-3 and 8-11, of b1 in 4-7 and 12-15.
                let dw = _mm512_mask_mov_ps(
                    _mm512_set1_ps(ws[i][2 * s]),
                    0xF0F0,
                    _mm512_set1_ps(ws[i][2 * s + 1]),
                );
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), da);
                acc[i] = _mm512_fmadd_ps(v, dw, acc[i]);
            }
        }
    }
    std::array::from_fn(|i| _mm512_reduce_add_ps(acc[i]))
}

/// 2:4 weights of kind `K` × int8 activations, rows `rows` of `w` against
/// every token of `x` (`out (rows, n)`).
///
/// # Safety
/// The CPU must have AVX-512 F, BW, VL, VNNI, VBMI and GFNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni")]
unsafe fn matmul_s24_q8_avx512<K: S24Kind>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    let (bp, sp) = s24_planes::<K::Block>(w);
    // SAFETY (of the unchecked reads in `s24_rows`): `WeightsRef::new`
    // checked that the planes hold `rows() · nb` blocks and scales; a step
    // reads blocks `r·nb + 2s` and, when it is in the row, `+ 1`, of rows
    // below `rows.end ≤ rows()` (checked by `s24_tiles`); `p` holds
    // `n · ceil(nb / 2)` steps.
    let p = x.layout(S24_SLOT, || prep_s24(x));
    let k = K::consts();
    s24_tiles(
        w,
        rows,
        x,
        out,
        sp,
        |r, t| s24_rows::<K, S24_ROWS>(&k, bp, sp, w.cols() / super::SK, p, r, t),
        |r, t| s24_rows::<K, 1>(&k, bp, sp, w.cols() / super::SK, p, r, t)[0],
    );
}

/// The blocks and scales (as f16 bits) of `w`, which must hold `B`.
fn s24_planes<B: super::SparseBlock>(w: &WeightsRef<'_>) -> (*const B, *const u16) {
    match B::planes(w) {
        Some((b, s)) => (b.as_ptr(), s.as_ptr() as *const u16),
        None => panic!("matmul_q8: a 2:4 kernel got {} weights", w.ty()),
    }
}

/// What the 2:4 int8 kernels share: the shape checks, and the walk over
/// tokens and rows in tiles of [`S24_ROWS`] (`rows4(r, t)`: rows
/// `r..r + 4` against token `t`; `row1(r, t)`: row `r` alone), each tile
/// asking for the next one's bytes first.
#[inline(always)]
fn s24_tiles(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
    sp: *const u16,
    rows4: impl Fn(usize, usize) -> [f32; S24_ROWS],
    row1: impl Fn(usize, usize) -> f32,
) {
    crate::dispatch::check_matmul_q8(w, &rows, x, out);
    let n = x.n();
    let nb = w.cols() / super::SK;
    if n == 0 || rows.is_empty() || nb == 0 {
        out.fill(0.0);
        return;
    }
    for t in 0..n {
        let mut i = 0;
        while i + S24_ROWS <= rows.len() {
            prefetch_rows(w, sp, nb, rows.start + i);
            for (j, v) in rows4(rows.start + i, t).into_iter().enumerate() {
                out[(i + j) * n + t] = v;
            }
            i += S24_ROWS;
        }
        while i < rows.len() {
            out[i * n + t] = row1(rows.start + i, t);
            i += 1;
        }
    }
}

/// Asks for the blocks and scales of the [`S24_ROWS`] rows after the
/// ones at `r` (see [`crate::x86::prefetch`]).
#[inline(always)]
fn prefetch_rows(w: &WeightsRef<'_>, sp: *const u16, nb: usize, r: usize) {
    use crate::x86::{prefetch, PREFETCH_AHEAD};
    let (b, brow) = w.value_rows();
    prefetch(b.wrapping_add(r * brow), S24_ROWS * brow, PREFETCH_AHEAD);
    // The scales plane moves 2 bytes per 22 (or 40) of blocks.
    let srow = 2 * nb;
    prefetch(
        sp.wrapping_add(r * nb) as *const u8,
        S24_ROWS * srow,
        PREFETCH_AHEAD / 8,
    );
}

/// Rows per call of [`s24_rows`]: they share the activation loads.
const S24_ROWS: usize = 4;

/// The table entries (`Kernels::matmul_q4s24_q8` with [`Q4S24Kind`],
/// `Kernels::matmul_q8s24_q8` with [`Q8S24Kind`]): the 2:4 int8 kernel
/// behind the safe signature of [`crate::dispatch::MatmulQ8Fn`].
pub(crate) fn matmul_s24_q8<K: S24Kind>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: only reachable through the AVX-512 tables that
    // `crate::dispatch` hands out when `avx512_vbmi_available()` (VBMI and
    // GFNI).
    unsafe { matmul_s24_q8_avx512::<K>(w, rows, x, out) }
}

// ---------------------------------------------------------------------------
// 2:4 weights × int8 activations on AVX2 (decode).
//
// One block (64 inputs, 32 kept values) per step and row. Lane 0 of the
// step's registers holds kept values 0..15 (groups 0..7, activation block
// `2b`), lane 1 kept 16..31 (groups 8..15, block `2b + 1`), each group's
// two values in one 16-bit word. `vpshufb` only moves bytes within a
// 16-byte lane, so the block's activations are split across two registers
// with the same lane halves: A = inputs [0..16 | 32..48], B = [16..32 |
// 48..64] (two `vperm2i128` per block, shared by the four rows of a tile).
// A group's 4 inputs then sit at bytes `4·(group % 4)` of A (groups 0-3 of
// a half) or of B (groups 4-7), so one index register `4·(group % 4) + p`
// serves both `vpshufb`s and a dword blend picks A's or B's bytes.
//
// Indices, per kind:
// - `q8s24`: byte `g / 2` of the positions holds group `g`'s pair in its
//   low (even `g`) or high (odd) nibble. One `vpshufb` copies it to both
//   bytes of the group's word, with the words in the order [0, 2, 1, 3, 4,
//   6, 5, 7] so that a dword holds two even or two odd groups: one
//   `vpsrlvd` brings the odd ones' nibble down, and `vpmaddubsw` of
//   `[n & 3, n & 12]` by `[1, 64]` gives `[p0, p1]`. The quants are put in
//   the same order with one `vpshufb`.
// - `q4s24`: one `vpshufb` copies the two bytes holding group `g`'s 3-bit
//   code to its word, `vpmullw` by `2^(8 − 3g % 8)` lifts the code to bits
//   8-10, one `vpshufb` copies that byte to both, and a `vpshufb` table of
//   the 6 pairs turns `code + 8·parity` into the position. The nibbles are
//   in order already (low ones lane 0, high ones lane 1: one `vpsrlvq`).
// The products: `vpmaddubsw` (`q8s24` with the sign trick, `q4s24` as
// `n·a − 8·a`), `vpmaddwd` by ones; each lane is then one half block's
// exact sum, scaled by its activation block's `d_a` and the block's `d_w`.
// ---------------------------------------------------------------------------

use crate::quant::Q8Row;

/// A 2:4 block type as the AVX2 step of [`s24_rows_avx2`] takes it.
pub(crate) trait S24Avx2 {
    type Block: super::SparseBlock;
    /// The kernel's constant registers.
    type Consts;
    unsafe fn consts() -> Self::Consts;
    /// The block's 32 kept weights as bytes, and the `vpshufb` index of each
    /// one's activation, both in the kind's word order (module comment).
    unsafe fn load(k: &Self::Consts, b: *const Self::Block) -> (__m256i, __m256i);
    /// `Σ w·x` over each dword's 4 bytes, for weights `w` from
    /// [`S24Avx2::load`] and activations `x` gathered by its indices.
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i;
}

/// The 16 bytes of a 16-byte-lane table, as both lanes of a register.
#[inline(always)]
unsafe fn lanes16(t: &[u8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

/// The `q8s24` constants of the AVX2 step.
pub(crate) struct Q8S24Avx2Consts {
    /// Byte of the positions for both bytes of each word.
    sel: __m256i,
    /// Per dword: 0 (even groups) or 4 (odd groups).
    shift: __m256i,
    /// `[3, 12]` per word.
    mask: __m256i,
    /// `[1, 64]` per word (`vpmaddubsw`).
    place: __m256i,
    /// `4·(group % 4)`.
    base: __m256i,
    /// The quants into word order.
    order: __m256i,
}

/// Groups of the words of a `q8s24` lane.
const Q8S24_WORDS: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

pub(crate) struct Q8S24Avx2;

impl S24Avx2 for Q8S24Avx2 {
    type Block = BlockQ8S24;
    type Consts = Q8S24Avx2Consts;

    #[inline(always)]
    unsafe fn consts() -> Q8S24Avx2Consts {
        let (mut sel, mut base, mut order) = ([[0u8; 16]; 2], [0u8; 16], [0u8; 16]);
        for (m, &g) in Q8S24_WORDS.iter().enumerate() {
            for (lane, s) in sel.iter_mut().enumerate() {
                s[2 * m] = ((8 * lane + g) / 2) as u8;
                s[2 * m + 1] = ((8 * lane + g) / 2) as u8;
            }
            base[2 * m] = (4 * (g % 4)) as u8;
            base[2 * m + 1] = (4 * (g % 4)) as u8;
            order[2 * m] = (2 * g) as u8;
            order[2 * m + 1] = (2 * g + 1) as u8;
        }
        Q8S24Avx2Consts {
            sel: _mm256_loadu_si256(sel.as_ptr() as *const __m256i),
            shift: _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4),
            mask: _mm256_set1_epi16(0x0C03),
            place: _mm256_set1_epi16(0x4001),
            base: lanes16(&base),
            order: lanes16(&order),
        }
    }

    #[inline(always)]
    unsafe fn load(k: &Q8S24Avx2Consts, b: *const BlockQ8S24) -> (__m256i, __m256i) {
        let pos = _mm256_set1_epi64x(((*b).idx.as_ptr() as *const i64).read_unaligned());
        let nib = _mm256_srlv_epi32(_mm256_shuffle_epi8(pos, k.sel), k.shift);
        let p = _mm256_maddubs_epi16(_mm256_and_si256(nib, k.mask), k.place);
        let q = _mm256_loadu_si256((*b).qs.as_ptr() as *const __m256i);
        (_mm256_shuffle_epi8(q, k.order), _mm256_or_si256(p, k.base))
    }

    #[inline(always)]
    unsafe fn dot(w: __m256i, x: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

/// The `q4s24` constants of the AVX2 step.
pub(crate) struct Q4S24Avx2Consts {
    /// The two code bytes of each word's group.
    sel: __m256i,
    /// `2^(8 − 3g % 8)` per word.
    lift: __m256i,
    /// Byte 1 of each word to bytes 0 and 1.
    dup: __m256i,
    /// `8·parity`: 0 in the low byte of each word, 8 in the high one.
    parity: __m256i,
    /// `code + 8·parity` → position ([`super::PAIR_POS`]).
    pos: __m256i,
    /// `4·(group % 4)`.
    base: __m256i,
    /// Per qword: 0 (lane 0, low nibbles) or 4 (lane 1, high nibbles).
    nibble: __m256i,
}

pub(crate) struct Q4S24Avx2;

impl S24Avx2 for Q4S24Avx2 {
    type Block = BlockQ4S24;
    type Consts = Q4S24Avx2Consts;

    #[inline(always)]
    unsafe fn consts() -> Q4S24Avx2Consts {
        let (mut sel, mut lift) = ([[0u8; 16]; 2], [0i16; 16]);
        let (mut base, mut dup) = ([0u8; 16], [0u8; 16]);
        for m in 0..8 {
            for (lane, s) in sel.iter_mut().enumerate() {
                let bit = 3 * (8 * lane + m);
                s[2 * m] = (bit / 8) as u8;
                s[2 * m + 1] = (bit / 8 + 1) as u8;
                lift[8 * lane + m] = 1 << (8 - bit % 8);
            }
            base[2 * m] = (4 * (m % 4)) as u8;
            base[2 * m + 1] = (4 * (m % 4)) as u8;
            dup[2 * m] = (2 * m + 1) as u8;
            dup[2 * m + 1] = (2 * m + 1) as u8;
        }
        Q4S24Avx2Consts {
            sel: _mm256_loadu_si256(sel.as_ptr() as *const __m256i),
            lift: _mm256_loadu_si256(lift.as_ptr() as *const __m256i),
            dup: lanes16(&dup),
            parity: _mm256_set1_epi16(0x0800),
            pos: lanes16(&super::PAIR_POS),
            base: lanes16(&base),
            nibble: _mm256_setr_epi64x(0, 0, 4, 4),
        }
    }

    #[inline(always)]
    unsafe fn load(k: &Q4S24Avx2Consts, b: *const BlockQ4S24) -> (__m256i, __m256i) {
        // The 6 code bytes and the first 2 nibble bytes (inside the block).
        let f = _mm256_set1_epi64x((b as *const i64).read_unaligned());
        let two = _mm256_shuffle_epi8(f, k.sel);
        let code = _mm256_shuffle_epi8(_mm256_mullo_epi16(two, k.lift), k.dup);
        let i = _mm256_or_si256(_mm256_and_si256(code, _mm256_set1_epi8(7)), k.parity);
        let idx = _mm256_or_si256(_mm256_shuffle_epi8(k.pos, i), k.base);
        let q = _mm256_broadcastsi128_si256(_mm_loadu_si128((*b).qs.as_ptr() as *const __m128i));
        let n = _mm256_and_si256(_mm256_srlv_epi64(q, k.nibble), _mm256_set1_epi8(0x0F));
        (n, idx)
    }

    /// `Σ (n − 8)·x` as `Σ n·x − Σ 8·x` (`vpmaddubsw` takes `n` unsigned).
    #[inline(always)]
    unsafe fn dot(n: __m256i, x: __m256i) -> __m256i {
        let p = _mm256_sub_epi16(
            _mm256_maddubs_epi16(n, x),
            _mm256_maddubs_epi16(_mm256_set1_epi8(8), x),
        );
        _mm256_madd_epi16(p, _mm256_set1_epi16(1))
    }
}

/// Rows `r..r + R` of a 2:4 matrix against one token's activations `a`.
// `s` indexes the blocks and every row's scales.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn s24_rows_avx2<K: S24Avx2, const R: usize>(
    k: &K::Consts,
    blocks: *const K::Block,
    scales: *const u16,
    nb: usize,
    a: &Q8Row<'_>,
    r: usize,
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    let mut ws = [[0.0f32; 8]; R];
    for g in 0..nb.div_ceil(8) {
        let b0 = 8 * g;
        let count = (nb - b0).min(8);
        for (i, w) in ws.iter_mut().enumerate() {
            let mut h = [0u16; 8];
            std::ptr::copy_nonoverlapping(scales.add((r + i) * nb + b0), h.as_mut_ptr(), count);
            let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
            _mm256_storeu_ps(w.as_mut_ptr(), v);
        }
        for s in 0..count {
            let b = b0 + s;
            let ld = |j: usize| {
                let q = a.quants.get_unchecked(j).qs.as_ptr();
                _mm256_loadu_si256(q as *const __m256i)
            };
            let (lo, hi) = (ld(2 * b), ld(2 * b + 1));
            let xa = _mm256_permute2x128_si256::<0x20>(lo, hi);
            let xb = _mm256_permute2x128_si256::<0x31>(lo, hi);
            let da = _mm256_set_m128(
                _mm_set1_ps(*a.scales.get_unchecked(2 * b + 1)),
                _mm_set1_ps(*a.scales.get_unchecked(2 * b)),
            );
            for i in 0..R {
                let (w, idx) = K::load(k, blocks.add((r + i) * nb + b));
                // Dwords 0-1 of each lane (groups 0-3 of the half) from A,
                // 2-3 (groups 4-7) from B.
                let x = _mm256_blend_epi32::<0xCC>(
                    _mm256_shuffle_epi8(xa, idx),
                    _mm256_shuffle_epi8(xb, idx),
                );
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(K::dot(w, x)), da);
                acc[i] = _mm256_fmadd_ps(v, _mm256_set1_ps(ws[i][s]), acc[i]);
            }
        }
    }
    std::array::from_fn(|i| crate::x86::avx2::hsum(acc[i]))
}

/// 2:4 weights of kind `K` × int8 activations on AVX2, rows `rows` of `w`
/// against every token of `x` (`out (rows, n)`).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn s24_q8_avx2<K: S24Avx2>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    let (bp, sp) = s24_planes::<K::Block>(w);
    // SAFETY (of the unchecked reads in `s24_rows_avx2`): `WeightsRef::new`
    // checked that the planes hold `rows() · nb` blocks and scales, and the
    // rows read are below `rows.end ≤ rows()` (checked by `s24_tiles`);
    // each token's `Q8Row` holds `cols / 32 = 2·nb` blocks and scales.
    let k = K::consts();
    let nb = w.cols() / super::SK;
    s24_tiles(
        w,
        rows,
        x,
        out,
        sp,
        |r, t| s24_rows_avx2::<K, S24_ROWS>(&k, bp, sp, nb, &x.row(t), r),
        |r, t| s24_rows_avx2::<K, 1>(&k, bp, sp, nb, &x.row(t), r)[0],
    );
}

/// The AVX2 table entries (`Kernels::matmul_q4s24_q8` with [`Q4S24Avx2`],
/// `Kernels::matmul_q8s24_q8` with [`Q8S24Avx2`]).
pub(crate) fn matmul_s24_q8_avx2<K: S24Avx2>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    // SAFETY: only reachable through the AVX2 and later tables, which
    // `crate::dispatch` hands out after checking AVX2, FMA and F16C.
    unsafe { s24_q8_avx2::<K>(w, rows, x, out) }
}
