//! `q4m`: asymmetric 4-bit, `x = d·n + m` with `n` a nibble, one f16 scale
//! `d` and one f16 minimum `m` per block of 32 (ggml's Q4_1 values).
//!
//! Quantizer: a `(d, m)` search minimising the squared error, in the manner
//! of ggml's `make_qkx2_quants`. Stage 1: for inverse scales around
//! `15 / (max − min)`, the least-squares `(d, m)` of the quants that scale
//! gives, compared by the error the fit leaves (no second pass). Stage 2:
//! the best fit and the plain min/max choice (`m = min`,
//! `d = (max − min)/15`, ggml's Q4_1) are rounded to f16, the block
//! requantized with the rounded values and its error measured; two more
//! least-squares steps from the best quants. Because the min/max choice is
//! measured like the others, data dequantized from a Q4_1 file (every
//! block of which has its minimum at `n = 0` and its maximum at `n = 15`)
//! comes back bit-exactly, and no block is worse than ggml's Q4_1.

use super::{check_finite, round_clamped, sum8, BlockQ4, Q8Row, QuantError, QK};
use half::f16;

/// Inverse scales tried: `(15 + RMIN + RDELTA·i) / (max − min)`, i in 0..=NSTEP.
const RMIN: f32 = -1.0;
const RDELTA: f32 = 0.1;
const NSTEP: usize = 20;

/// Nibbles and squared error of `xb` on the grid `m + d·[0, 15]`, with the
/// dequantization rounding (`n·d`, then `+ m`) of the kernels.
#[inline]
fn round_to(xb: &[f32], d: f32, m: f32) -> ([u8; QK], f32) {
    let mut n = [0u8; QK];
    let mut err = [0.0f32; 8];
    for (i, &v) in xb.iter().enumerate() {
        // Division rather than a product with 1/d: exact on a grid.
        let q = if d > 0.0 {
            round_clamped((v - m) / d, 0.0, 15.0)
        } else {
            0.0
        };
        n[i] = q as u8;
        let e = v - (q * d + m);
        err[i % 8] += e * e;
    }
    (n, sum8(err))
}

/// Least-squares `(d, m)` minimising `Σ (x − d·l − m)²` for fixed `l`,
/// and the amount `d·Σxl + m·Σx` by which it lowers the error below `Σx²`
/// (for a least-squares fit the error is `Σx² − d·Σxl − m·Σx`).
fn fit(xb: &[f32], l: &[u8; QK]) -> Option<(f32, f32, f32)> {
    let (mut sl, mut sl2, mut sx, mut sxl) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
    for (i, (&v, &li)) in xb.iter().zip(l).enumerate() {
        let li = li as f32;
        sl[i % 8] += li;
        sl2[i % 8] += li * li;
        sx[i % 8] += v;
        sxl[i % 8] += v * li;
    }
    let (sl, sl2, sx, sxl) = (sum8(sl), sum8(sl2), sum8(sx), sum8(sxl));
    let w = QK as f32;
    let det = w * sl2 - sl * sl;
    if det <= 0.0 {
        return None;
    }
    let d = (w * sxl - sl * sx) / det;
    let m = (sl2 * sx - sl * sxl) / det;
    (d > 0.0).then_some((d, m, d * sxl + m * sx))
}

/// Nibbles, scale, minimum and squared error of one candidate.
type Candidate = ([u8; QK], f16, f16, f32);

/// Rounds `(d, m)` to f16, requantizes `xb` with them and keeps the result
/// in `best` if its error is lower.
fn consider(xb: &[f32], d: f32, m: f32, best: &mut Option<Candidate>) {
    let (dh, mh) = (f16::from_f32(d), f16::from_f32(m));
    if !(dh.is_finite() && mh.is_finite()) {
        return;
    }
    let (n, err) = round_to(xb, dh.to_f32(), mh.to_f32());
    if best.as_ref().is_none_or(|b| err < b.3) {
        *best = Some((n, dh, mh, err));
    }
}

/// Quantizes one block of 32 finite values; `None` when its minimum or
/// scale is beyond the f16 range.
pub fn quantize_block(xb: &[f32]) -> Option<(BlockQ4, f16, f16)> {
    debug_assert_eq!(xb.len(), QK);
    let (mut min, mut max) = (xb[0], xb[0]);
    for &v in xb {
        min = min.min(v);
        max = max.max(v);
    }
    let limit = f16::MAX.to_f32();
    if min.abs() > limit || max.abs() > limit {
        return None;
    }
    if max == min {
        return Some((BlockQ4::pack(&[0; QK]), f16::ZERO, f16::from_f32(min)));
    }

    // Stage 1: the least-squares fit of each candidate grid, compared by
    // the error it leaves before any f16 rounding (no second pass).
    let range = max - min;
    let mut best_fit: Option<(f32, f32, f32)> = None;
    for i in 0..=NSTEP {
        let iscale = (15.0 + RMIN + RDELTA * i as f32) / range;
        let mut l = [0u8; QK];
        for (li, &v) in l.iter_mut().zip(xb) {
            *li = round_clamped((v - min) * iscale, 0.0, 15.0) as u8;
        }
        if let Some(f) = fit(xb, &l) {
            if best_fit.is_none_or(|b| f.2 > b.2) {
                best_fit = Some(f);
            }
        }
    }
    // Stage 2: the min/max choice and the best fit, rounded to f16 and
    // measured as the kernels will dequantize them; then one more
    // least-squares step from the best quants.
    let mut best: Option<Candidate> = None;
    consider(xb, range / 15.0, min, &mut best);
    if let Some((d, m, _)) = best_fit {
        consider(xb, d, m, &mut best);
    }
    for _ in 0..2 {
        if let Some((d, m, _)) = best.as_ref().and_then(|b| fit(xb, &b.0)) {
            consider(xb, d, m, &mut best);
        }
    }
    best.map(|(n, d, m, _)| (BlockQ4::pack(&n), d, m))
}

/// Quantizes one row (`x.len()` a multiple of 32). Element indices in
/// errors are relative to `x`.
pub fn quantize_row(
    x: &[f32],
    quants: &mut [BlockQ4],
    scales: &mut [f16],
    mins: &mut [f16],
) -> Result<(), QuantError> {
    assert!(
        x.len().is_multiple_of(QK)
            && quants.len() == x.len() / QK
            && scales.len() == quants.len()
            && mins.len() == quants.len(),
        "q4m::quantize_row: lengths"
    );
    check_finite(x)?;
    for (b, (((xb, q), s), mn)) in x
        .chunks_exact(QK)
        .zip(quants)
        .zip(scales)
        .zip(mins)
        .enumerate()
    {
        let (block, d, m) = quantize_block(xb).ok_or_else(|| QuantError::OutOfRange {
            index: b * QK,
            max_abs: xb.iter().fold(0.0f32, |a, v| a.max(v.abs())),
        })?;
        *q = block;
        *s = d;
        *mn = m;
    }
    Ok(())
}

/// `out[i] = n[i]·d + m` for one row (rounded after the product, then
/// after the sum, as ggml and gguf-py dequantize Q4_1).
pub fn dequantize_row(quants: &[BlockQ4], scales: &[f16], mins: &[f16], out: &mut [f32]) {
    assert!(
        quants.len() == scales.len()
            && mins.len() == scales.len()
            && out.len() == quants.len() * QK,
        "q4m::dequantize_row: lengths"
    );
    for (((q, s), mn), o) in quants
        .iter()
        .zip(scales)
        .zip(mins)
        .zip(out.chunks_exact_mut(QK))
    {
        let (d, m) = (s.to_f32(), mn.to_f32());
        for j in 0..QK / 2 {
            o[j] = (q.qs[j] & 0x0F) as f32 * d + m;
            o[j + QK / 2] = (q.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// `Σ x[i]·(d·n[i] + m)` over one row: per block `d·Σ x·n + m·Σ x`.
#[inline]
pub fn dot(quants: &[BlockQ4], scales: &[f16], mins: &[f16], x: &[f32]) -> f32 {
    assert!(
        quants.len() == scales.len() && mins.len() == scales.len() && x.len() == quants.len() * QK,
        "q4m::dot: lengths"
    );
    let mut sum = 0.0f32;
    for (((q, s), mn), xb) in quants.iter().zip(scales).zip(mins).zip(x.chunks_exact(QK)) {
        let mut acc = [0.0f32; 8];
        let mut xs = [0.0f32; 8];
        for j in 0..QK / 2 {
            let (a, b) = (xb[j], xb[j + QK / 2]);
            acc[j % 8] += a * (q.qs[j] & 0x0F) as f32 + b * (q.qs[j] >> 4) as f32;
            xs[j % 8] += a + b;
        }
        sum += s.to_f32() * sum8(acc) + mn.to_f32() * sum8(xs);
    }
    sum
}

/// `Σ (d_w·d_a)·Σ n·q_a + m_w·(d_a·Σ q_a)` over one row (ggml's Q4_1 × Q8_1
/// form): exact i32 sums per block, the activation sums precomputed.
#[inline]
pub fn dot_q8(quants: &[BlockQ4], scales: &[f16], mins: &[f16], a: Q8Row<'_>) -> f32 {
    assert!(
        quants.len() == scales.len()
            && mins.len() == scales.len()
            && a.quants.len() == quants.len()
            && a.scales.len() == quants.len()
            && a.sums.len() == quants.len(),
        "q4m::dot_q8: lengths"
    );
    let mut sum = 0.0f32;
    for (((q, s), mn), ((aq, &ad), &asum)) in quants
        .iter()
        .zip(scales)
        .zip(mins)
        .zip(a.quants.iter().zip(a.scales).zip(a.sums))
    {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (q.qs[j] & 0x0F) as i32 * aq.qs[j] as i32;
            isum += (q.qs[j] >> 4) as i32 * aq.qs[j + QK / 2] as i32;
        }
        sum += (s.to_f32() * ad) * isum as f32 + mn.to_f32() * (ad * asum as f32);
    }
    sum
}
