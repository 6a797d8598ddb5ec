//! AVX2 prompt kernel: q4 weights × f32 or int8 activations on
//! `vpmaddubsw`, for x86 CPUs without AVX-512 (Intel before Ice Lake, AMD
//! before Zen 4).
//!
//! `vpmaddubsw` multiplies 32 unsigned bytes by 32 signed bytes and adds
//! neighbouring pairs into 16-bit lanes. With q4 nibbles (0..15) against
//! int8 activations (±127) a pair is at most 3,810, so the eight steps of a
//! block of 32 columns add up in 16 bits without saturating (30,480), and
//! one `vpmaddwd` per block widens them: about two instructions per 32
//! multiply-adds, where f32 FMAs take four. The activations are the AVX-512
//! kernel's ([`super::vnni`]): int8 blocks, or f32 blocks split in two int8
//! parts (`x ≈ d·q_hi + (d/254)·q_lo`) for f32 accuracy, within the same
//! bound ([`crate::dispatch::Isa::f32_block_tolerance`]).
//!
//! Layout: per group of 8 weight rows, block and step of 4 columns, the 8
//! rows' 4 nibbles as bytes (one register); the nibble offset 8 is taken
//! off through each block's accumulator start, as in [`super::vnni`].
//! Products: the 8 lanes are 8 weight rows of one token, stored straight
//! into `out (n, rows)`. Other weight types run the AVX2 row kernels.

// Index loops over small register arrays read closest to the math here.
#![allow(clippy::needless_range_loop)]

use super::vnni::{self, Wt, XBlock};
use crate::pool::{Columns, Pool};
use crate::quant::{F32Activations, Planes, Q8Activations, WeightsRef, QK};
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// From this many tokens packing the weights pays for itself.
pub(crate) const MIN_TOKENS: usize = 8;

/// Weight rows per group: one register of 8 lanes.
const ROWS: usize = 8;

/// Tokens per tile: 6 × (16-bit sums, f32 sums), the weights, one
/// activation broadcast, the ones for `vpmaddwd` and the scales fill 16
/// registers.
const TOKENS: usize = 6;

/// Steps of 4 columns per block.
const STEPS: usize = QK / 4;

/// 32 bytes, aligned: 8 rows' 4 nibbles.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Line([u32; 8]);

const _: () = assert!(std::mem::size_of::<Line>() == 32);

/// A task's packed weights: per group, block and step one [`Line`], and
/// per group and block 8 f32 scales.
#[derive(Default)]
struct Packed {
    lines: Vec<Line>,
    scales: Vec<f32>,
}

thread_local! {
    /// A task's packed weights, kept between tasks.
    static PACKED: RefCell<Packed> = RefCell::new(Packed::default());
}

/// q4 weight rows `rows` of `w` into `p` (groups of 8, zero rows with zero
/// scales past the end).
fn pack_q4(w: &WeightsRef<'_>, rows: Range<usize>, p: &mut Packed) {
    let Planes::Q4 { quants, scales } = w.planes() else {
        unreachable!("pack_q4: q4 weights only")
    };
    let nb = w.cols() / QK;
    let groups = rows.len().div_ceil(ROWS);
    p.lines.clear();
    p.lines.resize(groups * nb * STEPS, Line::default());
    p.scales.clear();
    p.scales.resize(groups * nb * ROWS, 0.0);
    for (i, r) in rows.enumerate() {
        let (g, lane) = (i / ROWS, i % ROWS);
        for b in 0..nb {
            let qs = &quants[r * nb + b].qs;
            for k in 0..4 {
                // Byte j holds element j (low nibble) and j + 16.
                let v =
                    u32::from_le_bytes([qs[4 * k], qs[4 * k + 1], qs[4 * k + 2], qs[4 * k + 3]]);
                let at = (g * nb + b) * STEPS;
                p.lines[at + k].0[lane] = v & 0x0F0F_0F0F;
                p.lines[at + k + 4].0[lane] = (v >> 4) & 0x0F0F_0F0F;
            }
            p.scales[(g * nb + b) * ROWS + lane] = scales[r * nb + b].to_f32();
        }
    }
}

/// One tile: the group's 8 rows × tokens `t0..t0 + T`, over all blocks and
/// the first `PARTS` parts of each, stored into view columns
/// `c0..c0 + valid` of `out`.
///
/// # Safety
/// AVX2 and FMA present; `lines`/`scales` hold the group's `nb` blocks;
/// `x` holds tokens `t0..t0 + T`, `nb` blocks each.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const T: usize, const PARTS: usize>(
    lines: &[Line],
    scales: &[f32],
    x: &[XBlock],
    nb: usize,
    t0: usize,
    out: &mut Columns<'_>,
    c0: usize,
    valid: usize,
) {
    debug_assert!(lines.len() >= nb * STEPS && scales.len() >= nb * ROWS);
    debug_assert!(x.len() >= (t0 + T) * nb);
    let xp = x.as_ptr().add(t0 * nb);
    let wl = lines.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut f = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let dw = _mm256_loadu_ps(scales.as_ptr().add(b * ROWS));
        for part in 0..PARTS {
            let mut acc = [_mm256_setzero_si256(); T];
            for s in 0..STEPS {
                let w = _mm256_load_si256(wl.add(b * STEPS + s) as *const __m256i);
                for t in 0..T {
                    let xv = _mm256_set1_epi32((*xp.add(t * nb + b)).q[part * STEPS + s]);
                    acc[t] = _mm256_add_epi16(acc[t], _mm256_maddubs_epi16(w, xv));
                }
            }
            for t in 0..T {
                let m = &*xp.add(t * nb + b);
                let start = _mm256_set1_epi32(m.start[Wt::Q4 as usize][part]);
                let sum = _mm256_add_epi32(_mm256_madd_epi16(acc[t], ones), start);
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(m.d[part]));
                f[t] = _mm256_fmadd_ps(v, dw, f[t]);
            }
        }
    }
    let mut lanes = [0.0f32; ROWS];
    for t in 0..T {
        _mm256_storeu_ps(lanes.as_mut_ptr(), f[t]);
        out.row_mut(t0 + t)[c0..c0 + valid].copy_from_slice(&lanes[..valid]);
    }
}

/// q4 weight rows `rows` × the `n` tokens of `x` (`PARTS` parts each) into
/// `out`, whose columns stand for those rows.
///
/// # Safety
/// AVX2 and FMA present.
unsafe fn matmul<const PARTS: usize>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &[XBlock],
    n: usize,
    mut out: Columns<'_>,
) {
    let nb = w.cols() / QK;
    assert_eq!(rows.len(), out.cols().len(), "matmul: view and rows differ");
    assert_eq!(x.len(), n * nb, "matmul: arranged activations");
    PACKED.with(|p| {
        let p = &mut *p.borrow_mut();
        pack_q4(w, rows.clone(), p);
        for g in 0..rows.len().div_ceil(ROWS) {
            let lines = &p.lines[g * nb * STEPS..][..nb * STEPS];
            let scales = &p.scales[g * nb * ROWS..][..nb * ROWS];
            let c0 = g * ROWS;
            let valid = (rows.len() - c0).min(ROWS);
            let mut t0 = 0;
            while t0 < n {
                let left = n - t0;
                let o = &mut out;
                match left.min(TOKENS) {
                    6 => tile::<6, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                    5 => tile::<5, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                    4 => tile::<4, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                    3 => tile::<3, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                    2 => tile::<2, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                    _ => tile::<1, PARTS>(lines, scales, x, nb, t0, o, c0, valid),
                }
                t0 += left.min(TOKENS);
            }
        }
    });
}

/// [`vnni::split_block`] on 256-bit registers, the same bits (the same
/// operations in the same order, 8 values at a time).
///
/// # Safety
/// AVX2 and FMA present.
#[target_feature(enable = "avx2,fma")]
unsafe fn split_block_256(xb: &[f32; QK], m: &mut XBlock) {
    let v: [__m256; 4] = std::array::from_fn(|h| _mm256_loadu_ps(xb.as_ptr().add(8 * h)));
    let sign = _mm256_set1_ps(-0.0);
    let mut amax = _mm256_setzero_ps();
    let mut ord = _mm256_setzero_ps();
    for h in 0..4 {
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[h]));
        ord = _mm256_or_ps(ord, _mm256_cmp_ps::<_CMP_UNORD_Q>(v[h], v[h]));
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), amax);
    let amax = lanes.iter().fold(0.0f32, |a, &b| a.max(b));
    if _mm256_movemask_ps(ord) != 0 || !amax.is_finite() {
        return vnni::split_block(xb, m);
    }
    let d1 = amax / 127.0;
    let d2 = d1 / 254.0;
    let id1 = _mm256_set1_ps(if d1 > 0.0 { 1.0 / d1 } else { 0.0 });
    let id2 = _mm256_set1_ps(if d2 > 0.0 { 1.0 / d2 } else { 0.0 });
    let (lo_q, hi_q) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let round_clamp = |y: __m256| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        _mm256_min_ps(_mm256_max_ps(r, lo_q), hi_q)
    };
    let mut sums = [_mm256_setzero_si256(); 2];
    let mut bytes = [[0i8; QK]; 2];
    for h in 0..4 {
        let q1 = round_clamp(_mm256_mul_ps(v[h], id1));
        let rest = _mm256_fnmadd_ps(_mm256_set1_ps(d1), q1, v[h]);
        let q2 = round_clamp(_mm256_mul_ps(rest, id2));
        let (i1, i2) = (_mm256_cvtps_epi32(q1), _mm256_cvtps_epi32(q2));
        sums[0] = _mm256_add_epi32(sums[0], i1);
        sums[1] = _mm256_add_epi32(sums[1], i2);
        let mut a = [0i32; 8];
        for (p, i) in [i1, i2].into_iter().enumerate() {
            _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, i);
            for j in 0..8 {
                bytes[p][8 * h + j] = a[j] as i8;
            }
        }
    }
    for s in 0..STEPS {
        for p in 0..2 {
            let b = &bytes[p][4 * s..4 * s + 4];
            m.q[p * STEPS + s] =
                i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]);
        }
    }
    let total = |v: __m256i| {
        let mut a = [0i32; 8];
        _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, v);
        a.iter().sum::<i32>()
    };
    let (s1, s2) = (total(sums[0]), total(sums[1]));
    m.d = [d1, d2];
    m.start = [[-8 * s1, -8 * s2], [-128 * s1, -128 * s2]];
}

/// The split of `x` (in [`vnni::SLOT`], the same blocks as the AVX-512
/// tier's), tokens spread over `pool`.
fn split_of<'x>(x: &'x F32Activations<'_>, pool: &Pool) -> &'x [XBlock] {
    &x.layout(vnni::SLOT, || {
        vnni::split_with(x, pool, &|first, part| {
            let data = &x.data()[first * x.cols()..];
            for (xb, m) in data.chunks_exact(QK).zip(part) {
                let xb: &[f32; QK] = xb.try_into().expect("chunks of QK");
                // SAFETY: only reached from the AVX2 table's entries, handed
                // out after `avx2_available()`: AVX2 and FMA present.
                unsafe { split_block_256(xb, m) }
            }
        })
    })
    .0
}

/// The table's `prepare` entry: splits `x` over `pool`.
pub(crate) fn prepare_f32(x: &F32Activations<'_>, pool: &Pool) {
    split_of(x, pool);
}

/// The table's `prepare` entry for int8 inputs.
pub(crate) fn prepare_q8(x: &Q8Activations, pool: &Pool) {
    x.layout(vnni::Q8_SLOT, || vnni::int8_blocks(x, pool));
}

/// `out` from a `(rows, n)` row-form kernel `f`, transposed into the view:
/// the weight types this kernel does not take.
fn through_rows(n: usize, mut out: Columns<'_>, f: impl FnOnce(Range<usize>, &mut [f32])) {
    let rows = out.cols();
    let mut tmp = vec![0.0f32; rows.len() * n];
    f(rows.clone(), &mut tmp);
    for t in 0..n {
        for (i, o) in out.row_mut(t).iter_mut().enumerate() {
            *o = tmp[i * n + t];
        }
    }
}

fn takes(w: &WeightsRef<'_>) -> bool {
    matches!(w.planes(), Planes::Q4 { .. }) && w.cols().is_multiple_of(QK)
}

/// The table's in-place entry (see [`crate::dispatch::ColsKernel`]): q4
/// weights on split activations, anything else on the AVX2 row kernels.
pub(crate) fn matmul_f32_cols(w: &WeightsRef<'_>, x: &F32Activations<'_>, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul: x is not (n, cols)");
    if !takes(w) {
        return through_rows(x.n(), out, |r, o| super::avx2::matmul_f32_entry(w, r, x, o));
    }
    let split = split_of(x, &Pool::new(1));
    // SAFETY: only reachable through `crate::x86::AVX2` (and the tables
    // built on it), handed out after `avx2_available()`: AVX2 and FMA
    // present. Shapes are checked above; stores go through
    // `Columns::row_mut`'s bounds.
    unsafe { matmul::<2>(w, out.cols(), split, x.n(), out) }
}

/// The table's in-place int8 entry (see [`crate::dispatch::Q8ColsKernel`]):
/// q4 weights on the tile, q8 on the AVX2 row kernel.
pub(crate) fn matmul_q8_cols(w: &WeightsRef<'_>, x: &Q8Activations, out: Columns<'_>) {
    assert!(out.cols().end <= w.rows(), "matmul_q8: rows out of range");
    assert_eq!(out.n(), x.n(), "matmul_q8: out has other tokens than x");
    assert_eq!(x.cols(), w.cols(), "matmul_q8: x is not (n, cols)");
    if !takes(w) {
        return through_rows(x.n(), out, |r, o| super::avx2::matmul_q8_q8(w, r, x, o));
    }
    let xs = &x
        .layout(vnni::Q8_SLOT, || vnni::int8_blocks(x, &Pool::new(1)))
        .0;
    // SAFETY: as in matmul_f32_cols.
    unsafe { matmul::<1>(w, out.cols(), xs, x.n(), out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The 256-bit split gives the reference's bits.
        #[test]
        fn split_matches_reference(
            seed in any::<u64>(),
            exp in -30i32..30,
            zeros in any::<bool>(),
        ) {
            if !crate::x86::avx2_available() {
                return Ok(());
            }
            let mut s = seed | 1;
            let xb: [f32; QK] = std::array::from_fn(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if zeros && i % 3 == 0 { 0.0 } else { u * 2f32.powi(exp) }
            });
            let (mut a, mut b) = (XBlock::default(), XBlock::default());
            vnni::split_block(&xb, &mut a);
            // SAFETY: AVX2 checked above.
            unsafe { split_block_256(&xb, &mut b) };
            prop_assert_eq!(a.q, b.q);
            prop_assert_eq!(a.d.map(f32::to_bits), b.d.map(f32::to_bits));
            prop_assert_eq!(a.start, b.start);
        }
    }
}
