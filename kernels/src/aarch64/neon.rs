//! NEON + dotprod kernels: the aarch64 tier.
//!
//! Written for what is fast on an out-of-order Armv8.2+ core (Cortex-A76,
//! Neoverse N1, Apple M1: two to four 128-bit SIMD pipes, 4-cycle FMA and
//! `sdot` latency, two loads per cycle); under qemu only correctness means
//! anything.
//!
//! Every entry point is a safe function of [`super::NEON`] that checks the
//! lengths and calls an `unsafe` `#[target_feature(enable = "neon,dotprod")]`
//! function. The table is handed out only by [`crate::dispatch`] after
//! [`super::neon_available`] has seen both features, and these functions
//! are private to the crate, so the features are present whenever they run.
//!
//! Two instructions go through inline `asm!` rather than `std::arch`:
//! - `sdot` (`vdotq_s32`), whose intrinsic is still unstable
//!   (`stdarch_neon_dotprod`, rust-lang/rust#117224) as of rustc 1.95;
//! - `fcvtl`/`fcvtl2` (f16 → f32): base Armv8.0 Advanced SIMD, but the
//!   intrinsic `vcvt_f32_f16` is gated on the `fp16` feature (FEAT_FP16,
//!   half-precision *arithmetic*), which this tier does not detect.
//!
//! Both helpers are `#[inline(always)]` and are only called from functions
//! compiled with `neon,dotprod`, so the assembler accepts `sdot` there.
//!
//! Kernels:
//! - int8 matmuls (q8, q4, q4m weights): tiles of four weight rows × up to
//!   four tokens, so each activation block load serves four rows and each
//!   decoded weight block up to four tokens; `sdot` per 16 bytes, the four
//!   rows' i32 sums folded with `addp` into one vector (lane = row), one f32
//!   multiply and add per block and token. Bit-identical to the scalar
//!   twins (same per-block products and block order). The 2:4 sparse
//!   types' int8 kernels (`crate::quant::sparse::neon`) use this file's
//!   `sdot` and `gather_f16`.
//! - f32 activations: q8/q4 blocks decoded to f32 once per row and used by
//!   up to four tokens (FMAs, one scale per block); q4m replicates its
//!   scalar twin exactly (see `deq_row`); f32/f16 weights in tiles of four
//!   rows × two tokens with tails of 4 and 1 columns.
//! - `quantize_q8` bit-identical to its twin; `dot`/`axpy` with FMAs.
//!
//! Not used: `smmla` (i8mm), which would roughly double the int8 product
//! rate for n > 1 on cores that have it (Neoverse V1/N2, Apple M2+).

use crate::quant::{F32Activations, Planes, Q8Activations, Q8Row, WeightsRef, QK};
use half::f16;
use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

/// Weight rows per tile of the matrix kernels: each activation block
/// loaded is used by four rows.
const ROWS: usize = 4;

// Weight kinds of the int8 and dequantizing kernels (const generics).
const Q8: u8 = 0;
const Q4: u8 = 1;
const Q4M: u8 = 2;

// ---------------------------------------------------------------------------
// Helpers. `#[inline(always)]` and only called from `neon,dotprod` functions.
// ---------------------------------------------------------------------------

/// `acc + (Σ of each group of four a·b)` per i32 lane: `sdot`.
#[inline(always)]
pub(crate) unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Four f16 (bit patterns) to f32: `fcvtl`.
#[inline(always)]
unsafe fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!(
        "fcvtl {r:v}.4s, {h:v}.4h",
        r = out(vreg) r,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// Eight f16 (bit patterns) to f32: `fcvtl` and `fcvtl2`.
#[inline(always)]
unsafe fn cvt_f16x8(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    (lo, hi)
}

/// One f16 to f32 through `fcvtl` (no run-time feature check).
#[inline(always)]
unsafe fn h2f(h: f16) -> f32 {
    vgetq_lane_f32::<0>(cvt_f16x4(vdup_n_u16(h.to_bits())))
}

/// `p[0], p[stride], …` (the first `R ≤ 4`; the other lanes 0) as f32: the
/// scales (or minimums) of one block column of a row tile.
#[inline(always)]
pub(crate) unsafe fn gather_f16<const R: usize>(p: *const f16, stride: usize) -> float32x4_t {
    let mut h = [0u16; 4];
    for (i, hi) in h.iter_mut().enumerate().take(R) {
        *hi = (*p.add(i * stride)).to_bits();
    }
    cvt_f16x4(vld1_u16(h.as_ptr()))
}

/// The 32 weights of one q8/q4/q4m block as two int8 vectors (elements
/// 0..16 and 16..32): q4 as `n − 8`, q4m as the bare nibble `n`.
#[inline(always)]
unsafe fn load_block_i8<const K: u8>(p: *const u8) -> (int8x16_t, int8x16_t) {
    if K == Q8 {
        (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8))
    } else {
        let v = vld1q_u8(p);
        let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
        if K == Q4 {
            let eight = vdupq_n_s8(8);
            (vsubq_s8(lo, eight), vsubq_s8(hi, eight))
        } else {
            (lo, hi)
        }
    }
}

/// Sixteen int8 values as four f32 vectors.
#[inline(always)]
unsafe fn i8x16_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let lo = vmovl_s8(vget_low_s8(v));
    let hi = vmovl_high_s8(v);
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// Bytes of one block's quants.
const fn block_bytes(k: u8) -> usize {
    if k == Q8 {
        QK
    } else {
        QK / 2
    }
}

/// The planes of a quantized matrix as raw pointers (quants as bytes;
/// `mins` null unless q4m), or `None` for f32/f16.
fn quant_planes(w: &WeightsRef<'_>) -> Option<(u8, *const u8, *const f16, *const f16)> {
    match w.planes() {
        Planes::Q8 { quants, scales } => Some((
            Q8,
            quants.as_ptr() as *const u8,
            scales.as_ptr(),
            std::ptr::null(),
        )),
        Planes::Q4 { quants, scales } => Some((
            Q4,
            quants.as_ptr() as *const u8,
            scales.as_ptr(),
            std::ptr::null(),
        )),
        Planes::Q4m {
            quants,
            scales,
            mins,
        } => Some((
            Q4M,
            quants.as_ptr() as *const u8,
            scales.as_ptr(),
            mins.as_ptr(),
        )),
        // f32/f16, and the 2:4 sparse types (kernels of their own).
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Quantized weights × int8 activations.
// ---------------------------------------------------------------------------

/// q8 weights × int8 activations (see [`crate::dispatch::MatmulQ8Fn`]).
pub(crate) fn matmul_q8_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    matmul_int8(w, rows, x, out, Q8);
}

/// q4 weights × int8 activations (see [`crate::dispatch::MatmulQ8Fn`]).
pub(crate) fn matmul_q4_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    matmul_int8(w, rows, x, out, Q4);
}

/// q4m weights × int8 activations (see [`crate::dispatch::MatmulQ8Fn`]).
pub(crate) fn matmul_q4m_q8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    matmul_int8(w, rows, x, out, Q4M);
}

/// Checks the shapes, then tiles `rows` by four weight rows × four, two
/// or one token(s).
fn matmul_int8(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
    want: u8,
) {
    let (kind, quants, scales, mins) = quant_planes(w)
        .unwrap_or_else(|| panic!("matmul_q8: {} weights have no int8 kernel", w.ty()));
    assert_eq!(kind, want, "matmul_q8: kernel for another weight type");
    crate::dispatch::check_matmul_q8(w, &rows, x, out);
    let n = x.n();
    if n == 0 || rows.is_empty() {
        return;
    }
    let nb = w.cols() / QK;
    let p = TilePlanes {
        quants,
        scales,
        mins,
        nb,
    };
    let mut r = rows.start;
    while r < rows.end {
        let tile_rows = (rows.end - r).min(ROWS);
        let o = &mut out[(r - rows.start) * n..(r - rows.start + tile_rows) * n];
        let mut t = 0;
        while t < n {
            // SAFETY: the table holding this function is handed out only
            // after `neon_available()` saw neon and dotprod; the planes hold
            // `rows() · nb` blocks (checked by `WeightsRef::new`) and rows
            // r..r + tile_rows are below `rows.end ≤ rows()`; each `Q8Row`
            // holds `nb` blocks (`x.cols() == w.cols()`); `o` holds
            // `tile_rows · n` values and `t + T ≤ n`.
            unsafe {
                t += match n - t {
                    4.. => {
                        let a = [x.row(t), x.row(t + 1), x.row(t + 2), x.row(t + 3)];
                        int8_tiles(kind, &p, r, tile_rows, &a, o, n, t)
                    }
                    2..=3 => {
                        let a = [x.row(t), x.row(t + 1)];
                        int8_tiles(kind, &p, r, tile_rows, &a, o, n, t)
                    }
                    _ => int8_tiles(kind, &p, r, tile_rows, &[x.row(t)], o, n, t),
                };
            }
        }
        r += tile_rows;
    }
}

/// Raw planes of a quantized matrix with `nb` blocks per row.
struct TilePlanes {
    quants: *const u8,
    scales: *const f16,
    mins: *const f16,
    nb: usize,
}

/// Rows `r0..r0 + rows` (at most four) × tokens `t0..t0 + T`: one
/// [`int8_tile`] of four rows, or the last rows of a range one at a time.
/// Returns `T`.
///
/// # Safety
/// As [`int8_tile`] for `R = rows`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_tiles<const T: usize>(
    kind: u8,
    p: &TilePlanes,
    r0: usize,
    rows: usize,
    a: &[Q8Row<'_>; T],
    out: &mut [f32],
    n: usize,
    t0: usize,
) -> usize {
    match (kind, rows) {
        (Q8, ROWS) => int8_tile::<Q8, ROWS, T>(p, r0, a, out, n, t0),
        (Q4, ROWS) => int8_tile::<Q4, ROWS, T>(p, r0, a, out, n, t0),
        (_, ROWS) => int8_tile::<Q4M, ROWS, T>(p, r0, a, out, n, t0),
        _ => {
            for i in 0..rows {
                let o = &mut out[i * n..(i + 1) * n];
                match kind {
                    Q8 => int8_tile::<Q8, 1, T>(p, r0 + i, a, o, n, t0),
                    Q4 => int8_tile::<Q4, 1, T>(p, r0 + i, a, o, n, t0),
                    _ => int8_tile::<Q4M, 1, T>(p, r0 + i, a, o, n, t0),
                }
            }
        }
    }
    T
}

/// `out[i·n + t0 + t] = Σ_c W[r0 + i, c] · a_t[c]` for `R ≤ 4` weight rows
/// and `T` tokens. Per block and (row, token) two `sdot`s give four i32
/// partial sums; `addp` folds the four rows' vectors into one exact `isum`
/// per row (lane i = row i), so that each block costs one f32 multiply
/// and add per token for all four rows, in the scalar twin's order:
/// `sum += (d_w·d_a)·isum` (q4m: `+ m_w·(d_a·Σa)` inside the term). The
/// result is bit-identical to the scalar kernels.
///
/// # Safety
/// The CPU has neon and dotprod; `p` holds at least `(r0 + R) · nb`
/// blocks (quants, scales and for q4m mins) of kind `K`; each `a[t]`
/// holds `nb` blocks; `out` holds `R · n` values and `t0 + T ≤ n`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_tile<const K: u8, const R: usize, const T: usize>(
    p: &TilePlanes,
    r0: usize,
    a: &[Q8Row<'_>; T],
    out: &mut [f32],
    n: usize,
    t0: usize,
) {
    let nb = p.nb;
    let bb = block_bytes(K);
    // Lane i: row r0 + i.
    let mut acc = [vdupq_n_f32(0.0); T];
    let row0 = r0 * nb;
    for b in 0..nb {
        let dw = gather_f16::<R>(p.scales.add(row0 + b), nb);
        let m = if K == Q4M {
            gather_f16::<R>(p.mins.add(row0 + b), nb)
        } else {
            vdupq_n_f32(0.0)
        };
        let mut wl = [vdupq_n_s8(0); R];
        let mut wh = [vdupq_n_s8(0); R];
        for i in 0..R {
            (wl[i], wh[i]) = load_block_i8::<K>(p.quants.add((row0 + i * nb + b) * bb));
        }
        for (t, at) in a.iter().enumerate() {
            let ap = at.quants.as_ptr().add(b) as *const i8;
            let (al, ah) = (vld1q_s8(ap), vld1q_s8(ap.add(16)));
            let mut s = [vdupq_n_s32(0); 4];
            for i in 0..R {
                s[i] = sdot(sdot(vdupq_n_s32(0), wl[i], al), wh[i], ah);
            }
            let isum = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
            let da = *at.scales.get_unchecked(b);
            let mut term = vmulq_f32(vmulq_n_f32(dw, da), vcvtq_f32_s32(isum));
            if K == Q4M {
                let ds = da * *at.sums.get_unchecked(b) as f32;
                term = vaddq_f32(term, vmulq_n_f32(m, ds));
            }
            acc[t] = vaddq_f32(acc[t], term);
        }
    }
    for (t, v) in acc.iter().enumerate() {
        let mut lanes = [0.0f32; 4];
        vst1q_f32(lanes.as_mut_ptr(), *v);
        for (i, &l) in lanes.iter().enumerate().take(R) {
            *out.get_unchecked_mut(i * n + t0 + t) = l;
        }
    }
}

// ---------------------------------------------------------------------------
// Any weights × f32 activations.
// ---------------------------------------------------------------------------

/// Any weights × f32 activations (see [`crate::dispatch::MatmulF32Fn`]).
pub(crate) fn matmul_f32(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    xa: &F32Activations<'_>,
    out: &mut [f32],
) {
    let (cols, x, n) = (w.cols(), xa.data(), xa.n());
    assert!(
        rows.start <= rows.end && rows.end <= w.rows(),
        "matmul: rows"
    );
    assert_eq!(x.len(), n * cols, "matmul: x is not (n, cols)");
    assert_eq!(out.len(), rows.len() * n, "matmul: out is not (rows, n)");
    if n == 0 || rows.is_empty() {
        return;
    }
    match w.planes() {
        Planes::F32(_) | Planes::F16(_) => dense_rows(w, rows, x, n, out),
        // The 2:4 sparse types: row by row through their own kernels.
        Planes::Q4S24 { .. } | Planes::Q8S24 { .. } => {
            (crate::dispatch::SCALAR.matmul_f32)(w, rows, xa, out)
        }
        _ => {
            let (kind, quants, scales, mins) = quant_planes(w).expect("quantized planes");
            let p = TilePlanes {
                quants,
                scales,
                mins,
                nb: cols / QK,
            };
            for (r, o) in rows.clone().zip(out.chunks_exact_mut(n)) {
                let mut t = 0;
                while t < n {
                    let left = n - t;
                    // SAFETY: as in `matmul_int8` (features detected before
                    // the table is handed out; row r < rows() and the planes
                    // hold rows() · nb blocks); `x` holds n · cols values,
                    // `o` n values, and t + T ≤ n.
                    unsafe {
                        t += match (kind, left) {
                            (Q8, 4..) => deq_row::<Q8, 4>(&p, r, x, o, t),
                            (Q8, 2..=3) => deq_row::<Q8, 2>(&p, r, x, o, t),
                            (Q8, _) => deq_row::<Q8, 1>(&p, r, x, o, t),
                            (Q4, 4..) => deq_row::<Q4, 4>(&p, r, x, o, t),
                            (Q4, 2..=3) => deq_row::<Q4, 2>(&p, r, x, o, t),
                            (Q4, _) => deq_row::<Q4, 1>(&p, r, x, o, t),
                            (_, 4..) => deq_row::<Q4M, 4>(&p, r, x, o, t),
                            (_, 2..=3) => deq_row::<Q4M, 2>(&p, r, x, o, t),
                            _ => deq_row::<Q4M, 1>(&p, r, x, o, t),
                        };
                    }
                }
            }
        }
    }
}

/// One quantized weight row × `T` tokens of f32 activations, each block
/// decoded once into eight f32 vectors and used by all `T` tokens.
///
/// q8 and q4 accumulate `Σ q·x` per block with FMAs and scale it by `d`
/// once (one more FMA per block and token); the error is a few ulps of
/// `Σ|ŵ·x|`.
///
/// q4m follows its scalar twin operation for operation, `d·Σ x·n +
/// m·Σ x` per block with the same eight partial sums, and is
/// bit-identical to it: that form cancels when `m ≈ −d·n` (the outputs can
/// be far smaller than either term), so any reordering would differ from
/// the scalar result by more than a few ulps of `Σ|ŵ·x|`. Its cost is
/// about three times the FMA form's.
///
/// Returns `T`.
///
/// # Safety
/// The CPU has neon; `p` holds at least `(r + 1) · nb` blocks of kind `K`;
/// `x` holds `n · 32·nb` values, `out` `n` values, and `t0 + T ≤ n`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn deq_row<const K: u8, const T: usize>(
    p: &TilePlanes,
    r: usize,
    x: &[f32],
    out: &mut [f32],
    t0: usize,
) -> usize {
    let nb = p.nb;
    let cols = nb * QK;
    let bb = block_bytes(K);
    let mut tot = [vdupq_n_f32(0.0); T];
    let mut tot_q4m = [0.0f32; T];
    for b in 0..nb {
        let blk = r * nb + b;
        let d = h2f(*p.scales.add(blk));
        // Element 4k..4k + 4 of the block in wv[k] (k < 4: low nibbles).
        let mut wv = [vdupq_n_f32(0.0); 8];
        if K == Q4M {
            let v = vld1q_u8(p.quants.add(blk * bb));
            for (h, half) in [vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v)]
                .into_iter()
                .enumerate()
            {
                let lo = vmovl_u8(vget_low_u8(half));
                let hi = vmovl_high_u8(half);
                wv[4 * h] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
                wv[4 * h + 1] = vcvtq_f32_u32(vmovl_high_u16(lo));
                wv[4 * h + 2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
                wv[4 * h + 3] = vcvtq_f32_u32(vmovl_high_u16(hi));
            }
        } else {
            let (lo, hi) = load_block_i8::<K>(p.quants.add(blk * bb));
            let (l, h) = (i8x16_to_f32(lo), i8x16_to_f32(hi));
            wv[..4].copy_from_slice(&l);
            wv[4..].copy_from_slice(&h);
        }
        let dm = if K == Q4M {
            let m = h2f(*p.mins.add(blk));
            let dm = [d, m, d, m];
            vld1q_f32(dm.as_ptr())
        } else {
            vdupq_n_f32(0.0)
        };
        for t in 0..T {
            let xp = x.as_ptr().add((t0 + t) * cols + b * QK);
            let xv: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(xp.add(4 * k)));
            if K == Q4M {
                // Scalar: acc[j % 8] += x[j]·n[j] + x[j+16]·n[j+16] and
                // xs[j % 8] += x[j] + x[j+16] for j in 0..16, so lanes
                // 0..4 take j = 0..4 then 8..12, lanes 4..8 j = 4..8 then
                // 12..16; then ((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7)).
                let pr =
                    |k: usize| vaddq_f32(vmulq_f32(xv[k], wv[k]), vmulq_f32(xv[k + 4], wv[k + 4]));
                let ps = |k: usize| vaddq_f32(xv[k], xv[k + 4]);
                let acc = vaddq_f32(vaddq_f32(pr(0), pr(2)), vaddq_f32(pr(1), pr(3)));
                let xs = vaddq_f32(vaddq_f32(ps(0), ps(2)), vaddq_f32(ps(1), ps(3)));
                // [S, XS, S, XS] · [d, m, d, m], then d·S + m·XS.
                let pp = vpaddq_f32(acc, xs);
                let sx = vmulq_f32(vpaddq_f32(pp, pp), dm);
                tot_q4m[t] += vpadds_f32(vget_low_f32(sx));
            } else {
                // Two chains of four FMAs.
                let mut s0 = vmulq_f32(wv[0], xv[0]);
                let mut s1 = vmulq_f32(wv[1], xv[1]);
                for k in (2..8).step_by(2) {
                    s0 = vfmaq_f32(s0, wv[k], xv[k]);
                    s1 = vfmaq_f32(s1, wv[k + 1], xv[k + 1]);
                }
                tot[t] = vfmaq_n_f32(tot[t], vaddq_f32(s0, s1), d);
            }
        }
    }
    for t in 0..T {
        *out.get_unchecked_mut(t0 + t) = if K == Q4M {
            tot_q4m[t]
        } else {
            vaddvq_f32(tot[t])
        };
    }
    T
}

/// f32 or f16 weights: tiles of four rows × two tokens, eight columns per
/// step (two accumulators per (row, token)), then four, then a scalar tail.
fn dense_rows(wr: &WeightsRef<'_>, rows: Range<usize>, x: &[f32], n: usize, out: &mut [f32]) {
    let cols = wr.cols();
    let (w, half) = match wr.planes() {
        Planes::F32(v) => (v.as_ptr() as *const u8, false),
        Planes::F16(v) => (v.as_ptr() as *const u8, true),
        _ => unreachable!("dense_rows: quantized weights"),
    };
    assert!(rows.end <= wr.rows() && x.len() == n * cols && out.len() == rows.len() * n);
    let mut r = rows.start;
    while r < rows.end {
        let tile_rows = (rows.end - r).min(ROWS);
        let o = &mut out[(r - rows.start) * n..(r - rows.start + tile_rows) * n];
        let mut t = 0;
        while t < n {
            let tt = if t + 2 <= n { 2 } else { 1 };
            // SAFETY: features detected before the table is handed out;
            // `w` points at a plane of rows() · cols elements (f32 or f16,
            // checked by `WeightsRef::new`) and r + tile_rows ≤ rows();
            // `x` holds n · cols values, `o` tile_rows · n, and t + T ≤ n.
            unsafe {
                match (half, tile_rows == ROWS, tt) {
                    (false, true, 2) => dense_tile::<false, ROWS, 2>(w, cols, r, x, o, n, t),
                    (false, true, _) => dense_tile::<false, ROWS, 1>(w, cols, r, x, o, n, t),
                    (true, true, 2) => dense_tile::<true, ROWS, 2>(w, cols, r, x, o, n, t),
                    (true, true, _) => dense_tile::<true, ROWS, 1>(w, cols, r, x, o, n, t),
                    _ => {
                        for i in 0..tile_rows {
                            let oi = &mut o[i * n..(i + 1) * n];
                            match (half, tt) {
                                (false, 2) => {
                                    dense_tile::<false, 1, 2>(w, cols, r + i, x, oi, n, t)
                                }
                                (false, _) => {
                                    dense_tile::<false, 1, 1>(w, cols, r + i, x, oi, n, t)
                                }
                                (true, 2) => dense_tile::<true, 1, 2>(w, cols, r + i, x, oi, n, t),
                                (true, _) => dense_tile::<true, 1, 1>(w, cols, r + i, x, oi, n, t),
                            }
                        }
                    }
                }
            }
            t += tt;
        }
        r += tile_rows;
    }
}

/// Loads four weights at element `i` of the row at `w`, f32 or f16.
#[inline(always)]
unsafe fn load_w4<const HALF: bool>(w: *const u8, i: usize) -> float32x4_t {
    if HALF {
        cvt_f16x4(vld1_u16((w as *const u16).add(i)))
    } else {
        vld1q_f32((w as *const f32).add(i))
    }
}

/// Loads eight weights at element `i` of the row at `w`, f32 or f16.
#[inline(always)]
unsafe fn load_w8<const HALF: bool>(w: *const u8, i: usize) -> (float32x4_t, float32x4_t) {
    if HALF {
        cvt_f16x8(vld1q_u16((w as *const u16).add(i)))
    } else {
        let p = (w as *const f32).add(i);
        (vld1q_f32(p), vld1q_f32(p.add(4)))
    }
}

/// Weight element `i` as f32.
#[inline(always)]
unsafe fn load_w1<const HALF: bool>(w: *const u8, i: usize) -> f32 {
    if HALF {
        h2f(*(w as *const f16).add(i))
    } else {
        *(w as *const f32).add(i)
    }
}

/// `out[i·n + t0 + t] = Σ_c W[r0 + i, c] · x[t0 + t, c]` for `R` rows of
/// f32 (`HALF = false`) or f16 weights and `T` tokens.
///
/// # Safety
/// The CPU has neon; `w` points at a plane of at least `(r0 + R) · cols`
/// elements; `x` holds `n · cols` values, `out` `R · n`, and `t0 + T ≤ n`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dense_tile<const HALF: bool, const R: usize, const T: usize>(
    w: *const u8,
    cols: usize,
    r0: usize,
    x: &[f32],
    out: &mut [f32],
    n: usize,
    t0: usize,
) {
    let esize = if HALF { 2 } else { 4 };
    let wr: [*const u8; R] = std::array::from_fn(|i| w.add((r0 + i) * cols * esize));
    let xr: [*const f32; T] = std::array::from_fn(|t| x.as_ptr().add((t0 + t) * cols));
    let mut acc0 = [[vdupq_n_f32(0.0); T]; R];
    let mut acc1 = [[vdupq_n_f32(0.0); T]; R];
    let mut c = 0;
    while c + 8 <= cols {
        let xv: [(float32x4_t, float32x4_t); T] =
            std::array::from_fn(|t| (vld1q_f32(xr[t].add(c)), vld1q_f32(xr[t].add(c + 4))));
        for i in 0..R {
            let (w0, w1) = load_w8::<HALF>(wr[i], c);
            for t in 0..T {
                acc0[i][t] = vfmaq_f32(acc0[i][t], w0, xv[t].0);
                acc1[i][t] = vfmaq_f32(acc1[i][t], w1, xv[t].1);
            }
        }
        c += 8;
    }
    if c + 4 <= cols {
        for i in 0..R {
            let w0 = load_w4::<HALF>(wr[i], c);
            for t in 0..T {
                acc0[i][t] = vfmaq_f32(acc0[i][t], w0, vld1q_f32(xr[t].add(c)));
            }
        }
        c += 4;
    }
    for i in 0..R {
        for t in 0..T {
            let mut s = vaddvq_f32(vaddq_f32(acc0[i][t], acc1[i][t]));
            for j in c..cols {
                s += load_w1::<HALF>(wr[i], j) * *xr[t].add(j);
            }
            *out.get_unchecked_mut(i * n + t0 + t) = s;
        }
    }
}

// ---------------------------------------------------------------------------
// Activations, dot, axpy.
// ---------------------------------------------------------------------------

/// Quantizes whole blocks of 32 activations to int8, bit-identical to
/// [`crate::quant::quantize_q8_blocks`] (see [`crate::dispatch::Kernels::quantize_q8`]).
pub(crate) fn quantize_q8(
    x: &[f32],
    quants: &mut [crate::quant::BlockQ8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    assert!(
        x.len() == quants.len() * QK && scales.len() == quants.len() && sums.len() == quants.len(),
        "quantize_q8: lengths"
    );
    // SAFETY: features detected before the table is handed out; the
    // lengths were just checked.
    unsafe { quantize_q8_neon(x, quants, scales, sums) }
}

/// # Safety
/// The CPU has neon; `x.len() = 32 · quants.len()`, and `scales`, `sums`
/// as long as `quants`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn quantize_q8_neon(
    x: &[f32],
    quants: &mut [crate::quant::BlockQ8],
    scales: &mut [f32],
    sums: &mut [i32],
) {
    for (b, q) in quants.iter_mut().enumerate() {
        let p = x.as_ptr().add(b * QK);
        let v: [float32x4_t; 8] = std::array::from_fn(|k| vld1q_f32(p.add(4 * k)));
        // FMAX and FMAXV return NaN when either input is NaN, as the
        // scalar fold does; |inf| = inf gives d = inf and id = 0.
        let mut m = vabsq_f32(v[0]);
        for vk in &v[1..] {
            m = vmaxq_f32(m, vabsq_f32(*vk));
        }
        let amax = vmaxvq_f32(m);
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        // Round to nearest even (FCVTNS; NaN → 0 as `as i8` does), clamp.
        let (lo, hi) = (vdupq_n_s32(-127), vdupq_n_s32(127));
        let qi: [int32x4_t; 8] = std::array::from_fn(|k| {
            vmaxq_s32(vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(v[k], id)), hi), lo)
        });
        let h: [int16x8_t; 4] =
            std::array::from_fn(|k| vcombine_s16(vmovn_s32(qi[2 * k]), vmovn_s32(qi[2 * k + 1])));
        let q0 = vcombine_s8(vmovn_s16(h[0]), vmovn_s16(h[1]));
        let q1 = vcombine_s8(vmovn_s16(h[2]), vmovn_s16(h[3]));
        let qp = q.qs.as_mut_ptr();
        vst1q_s8(qp, q0);
        vst1q_s8(qp.add(16), q1);
        let s = vaddq_s32(
            vaddq_s32(vaddq_s32(qi[0], qi[1]), vaddq_s32(qi[2], qi[3])),
            vaddq_s32(vaddq_s32(qi[4], qi[5]), vaddq_s32(qi[6], qi[7])),
        );
        *sums.get_unchecked_mut(b) = vaddvq_s32(s);
        *scales.get_unchecked_mut(b) = if amax.is_finite() { d } else { f32::NAN };
    }
}

/// `Σ a[i] · b[i]`: four accumulators of four lanes, then a scalar tail.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    // SAFETY: features detected before the table is handed out; equal
    // lengths were just checked.
    unsafe { dot_neon(a, b) }
}

/// # Safety
/// The CPU has neon; `a.len() == b.len()`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_neon(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= len {
        for (k, ak) in acc.iter_mut().enumerate() {
            *ak = vfmaq_f32(
                *ak,
                vld1q_f32(pa.add(i + 4 * k)),
                vld1q_f32(pb.add(i + 4 * k)),
            );
        }
        i += 16;
    }
    while i + 4 <= len {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
        i += 4;
    }
    let mut s = vaddvq_f32(vaddq_f32(
        vaddq_f32(acc[0], acc[1]),
        vaddq_f32(acc[2], acc[3]),
    ));
    while i < len {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

/// One query's attention over a cache: [`dot`], softmax and [`axpy`] in
/// one call (see [`crate::dispatch::Kernels::attend`]).
pub(crate) fn attend(
    out: &mut [f32],
    q: &[f32],
    cache: crate::f32::HeadCache<'_>,
    scale: f32,
    scores: &mut [f32],
) {
    crate::f32::attend_body(out, q, cache, scale, scores, dot, axpy)
}

/// `y[i] += a · x[i]` (fused multiply-add).
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    assert_eq!(y.len(), x.len(), "axpy: length mismatch");
    // SAFETY: features detected before the table is handed out; equal
    // lengths were just checked.
    unsafe { axpy_neon(y, a, x) }
}

/// # Safety
/// The CPU has neon; `y.len() == x.len()`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn axpy_neon(y: &mut [f32], a: f32, x: &[f32]) {
    let len = y.len();
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    while i + 16 <= len {
        for k in 0..4 {
            let p = py.add(i + 4 * k);
            vst1q_f32(
                p,
                vfmaq_n_f32(vld1q_f32(p), vld1q_f32(px.add(i + 4 * k)), a),
            );
        }
        i += 16;
    }
    while i + 4 <= len {
        let p = py.add(i);
        vst1q_f32(p, vfmaq_n_f32(vld1q_f32(p), vld1q_f32(px.add(i)), a));
        i += 4;
    }
    while i < len {
        *py.add(i) = (*px.add(i)).mul_add(a, *py.add(i));
        i += 1;
    }
}
