//! `q4`: symmetric 4-bit, `x = d·(n − 8)` with `n` a nibble (so values
//! `d·[-8, 7]`), one f16 scale `d` (either sign) per block of 32.
//!
//! Quantizer: a scale search minimising the squared error. For each
//! candidate inverse scale `t / x_m` (`x_m` the block's value of largest
//! magnitude, signed; `t` on [`GRID`]) the block is rounded to the grid and
//! the scale refitted by least squares for those quants; the best fit (by
//! the least-squares error, computed without a second pass) is then rounded
//! to f16, the block requantized with the rounded scale and refitted once
//! more. ggml's Q4_0 scale `x_m / −8` goes through the same rounding and is
//! kept if it is better, so no block is ever worse than Q4_0's choice.

use super::{check_finite, round_clamped, sum8, BlockQ4, Q8Row, QuantError, QK};
use half::f16;

/// Candidate values `t` that the block's largest-magnitude value is mapped
/// to before rounding: both the −8 end and the +7 end of the range, from 4
/// to 9.5 in magnitude in steps of 1/4. Magnitudes above 8 (−8 end) or 7
/// (+7 end) clip the largest values, which pays off when a block has an
/// outlier. Every integer is present, so a block already on a q4 grid is
/// found exactly. (Measured on SmolLM2 weights and Gaussian data: a grid
/// of 3 to 12 in steps of 1/32, 578 candidates, gives the same error to
/// five digits.)
pub const GRID: [f32; 46] = {
    let mut g = [0.0f32; 46];
    let mut i = 0;
    while i < 23 {
        // 4.0, 4.25, ..., 9.5
        let t = 4.0 + i as f32 * 0.25;
        g[2 * i] = -t;
        g[2 * i + 1] = t;
        i += 1;
    }
    g
};

/// Nibbles and squared error of rounding `xb` to the grid of `d`.
#[inline]
fn round_to(xb: &[f32], d: f32) -> ([u8; QK], f32) {
    let mut n = [8u8; QK];
    let mut err = [0.0f32; 8];
    for (i, &v) in xb.iter().enumerate() {
        let q = if d == 0.0 {
            0.0
        } else {
            round_clamped(v / d, -8.0, 7.0)
        };
        n[i] = (q + 8.0) as u8;
        let e = v - d * q;
        err[i % 8] += e * e;
    }
    (n, sum8(err))
}

/// Least-squares scale for the given nibbles: `Σ x·q / Σ q²`.
fn refit(xb: &[f32], n: &[u8; QK]) -> Option<f32> {
    let (mut sxq, mut sqq) = (0.0f32, 0.0f32);
    for (&v, &ni) in xb.iter().zip(n) {
        let q = ni as f32 - 8.0;
        sxq += v * q;
        sqq += q * q;
    }
    (sqq > 0.0).then(|| sxq / sqq)
}

/// Quantizes one block of 32 finite values; `None` when no candidate
/// scale fits in f16.
pub fn quantize_block(xb: &[f32]) -> Option<(BlockQ4, f16)> {
    debug_assert_eq!(xb.len(), QK);
    let (mut amax, mut xm) = (0.0f32, 0.0f32);
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            xm = v;
        }
    }
    if amax == 0.0 {
        return Some((BlockQ4::pack(&[8; QK]), f16::ZERO));
    }

    // Stage 1: for a fixed set of quants l, the best scale is Σxl/Σl² and
    // leaves an error Σx² − (Σxl)²/Σl²: maximise (Σxl)²/Σl².
    let (mut best_num, mut best_den, mut best_d) = (0.0f32, 1.0f32, xm / -8.0);
    for &t in GRID.iter() {
        let iscale = t / xm;
        let (mut sxl, mut sll) = ([0.0f32; 8], [0.0f32; 8]);
        for (i, &v) in xb.iter().enumerate() {
            let l = round_clamped(v * iscale, -8.0, 7.0);
            sxl[i % 8] += v * l;
            sll[i % 8] += l * l;
        }
        let (sxl, sll) = (sum8(sxl), sum8(sll));
        if sll > 0.0 && sxl * sxl * best_den > best_num * sll {
            (best_num, best_den, best_d) = (sxl * sxl, sll, sxl / sll);
        }
    }

    // Stage 2: round to f16, requantize with the rounded scale, refit once.
    let mut best: Option<([u8; QK], f16, f32)> = None;
    for start in [best_d, xm / -8.0] {
        let mut d = start;
        for _ in 0..2 {
            let dh = f16::from_f32(d);
            if !dh.is_finite() {
                break;
            }
            let (n, err) = round_to(xb, dh.to_f32());
            if best.as_ref().is_none_or(|b| err < b.2) {
                best = Some((n, dh, err));
            }
            match refit(xb, &n) {
                Some(r) => d = r,
                None => break,
            }
        }
    }
    best.map(|(n, d, _)| (BlockQ4::pack(&n), d))
}

/// Quantizes one row (`x.len()` a multiple of 32). Element indices in
/// errors are relative to `x`.
pub fn quantize_row(
    x: &[f32],
    quants: &mut [BlockQ4],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    assert!(
        x.len().is_multiple_of(QK) && quants.len() == x.len() / QK && scales.len() == quants.len(),
        "q4::quantize_row: lengths"
    );
    check_finite(x)?;
    for (b, ((xb, q), s)) in x.chunks_exact(QK).zip(quants).zip(scales).enumerate() {
        let (block, d) = quantize_block(xb).ok_or_else(|| QuantError::OutOfRange {
            index: b * QK,
            max_abs: xb.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        })?;
        *q = block;
        *s = d;
    }
    Ok(())
}

/// `out[i] = d·(n[i] − 8)` for one row.
pub fn dequantize_row(quants: &[BlockQ4], scales: &[f16], out: &mut [f32]) {
    assert!(
        quants.len() == scales.len() && out.len() == quants.len() * QK,
        "q4::dequantize_row: lengths"
    );
    for ((q, s), o) in quants.iter().zip(scales).zip(out.chunks_exact_mut(QK)) {
        let d = s.to_f32();
        for j in 0..QK / 2 {
            o[j] = ((q.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            o[j + QK / 2] = ((q.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `Σ x[i]·d·(n[i] − 8)` over one row: per block `d · Σ x·(n − 8)`.
#[inline]
pub fn dot(quants: &[BlockQ4], scales: &[f16], x: &[f32]) -> f32 {
    assert!(
        quants.len() == scales.len() && x.len() == quants.len() * QK,
        "q4::dot: lengths"
    );
    let mut sum = 0.0f32;
    for ((q, s), xb) in quants.iter().zip(scales).zip(x.chunks_exact(QK)) {
        let mut acc = [0.0f32; 8];
        for j in 0..QK / 2 {
            let lo = (q.qs[j] & 0x0F) as i32 - 8;
            let hi = (q.qs[j] >> 4) as i32 - 8;
            acc[j % 8] += xb[j] * lo as f32 + xb[j + QK / 2] * hi as f32;
        }
        sum += s.to_f32() * sum8(acc);
    }
    sum
}

/// `Σ (d_w·d_a) · Σ (n − 8)·q_a` over one row: exact i32 sums per block.
#[inline]
pub fn dot_q8(quants: &[BlockQ4], scales: &[f16], a: Q8Row<'_>) -> f32 {
    assert!(
        quants.len() == scales.len()
            && a.quants.len() == quants.len()
            && a.scales.len() == quants.len(),
        "q4::dot_q8: lengths"
    );
    let mut sum = 0.0f32;
    for ((q, s), (aq, &ad)) in quants.iter().zip(scales).zip(a.quants.iter().zip(a.scales)) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += ((q.qs[j] & 0x0F) as i32 - 8) * aq.qs[j] as i32;
            isum += ((q.qs[j] >> 4) as i32 - 8) * aq.qs[j + QK / 2] as i32;
        }
        sum += (s.to_f32() * ad) * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_holds_every_integer_end() {
        for t in [
            -9.0, -8.0, -7.0, -6.0, -5.0, -4.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0,
        ] {
            assert!(GRID.contains(&t), "{t}");
        }
    }
}
