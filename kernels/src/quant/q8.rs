//! `q8`: `x = d·q`, q int8 in [-127, 127], one f16 scale per block of 32.
//!
//! Quantizer: round to nearest with `d = max|x| / 127`. The quants are
//! computed with the f16-rounded `d`, so `|x − d·q| ≤ d/2` holds for the
//! stored `d`; when the rounding leaves `max|x| / d` above 127.5 (only
//! possible for subnormal `d`, whose steps are coarse) `d` is moved up one
//! f16 step. On Q8_0 data (the grid of an f16 `d`) this is exact.

use super::{check_finite, sum8, BlockQ8, Q8Row, QuantError, QK};
use half::f16;

/// The f16 scale for a block whose largest magnitude is `amax`, such that
/// every value maps into [-127.5, 127.5]; `None` beyond the f16 range.
fn scale_for(amax: f32) -> Option<f16> {
    if amax == 0.0 {
        return Some(f16::ZERO);
    }
    let mut d = f16::from_f32(amax / 127.0);
    // Rounding to nearest can only have gone down by half a step, so one
    // step up always suffices; `d == 0` (underflow) gives inf and is bumped.
    if d.is_finite() && amax / d.to_f32() > 127.5 {
        d = f16::from_bits(d.to_bits() + 1);
    }
    d.is_finite().then_some(d)
}

/// Quantizes one row (`x.len()` a multiple of 32) into `quants` and
/// `scales` (one per block). Element indices in errors are relative to `x`.
pub fn quantize_row(
    x: &[f32],
    quants: &mut [BlockQ8],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    assert!(
        x.len().is_multiple_of(QK) && quants.len() == x.len() / QK && scales.len() == quants.len(),
        "q8::quantize_row: lengths"
    );
    check_finite(x)?;
    for (b, ((xb, q), s)) in x.chunks_exact(QK).zip(quants).zip(scales).enumerate() {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = scale_for(amax).ok_or(QuantError::OutOfRange {
            index: b * QK,
            max_abs: amax,
        })?;
        let df = d.to_f32();
        for (qi, &v) in q.qs.iter_mut().zip(xb) {
            *qi = if df == 0.0 {
                0
            } else {
                (v / df).round().clamp(-127.0, 127.0) as i8
            };
        }
        *s = d;
    }
    Ok(())
}

/// `out[i] = d·q[i]` for one row.
pub fn dequantize_row(quants: &[BlockQ8], scales: &[f16], out: &mut [f32]) {
    assert!(
        quants.len() == scales.len() && out.len() == quants.len() * QK,
        "q8::dequantize_row: lengths"
    );
    for ((q, s), o) in quants.iter().zip(scales).zip(out.chunks_exact_mut(QK)) {
        let d = s.to_f32();
        for (oi, &qi) in o.iter_mut().zip(&q.qs) {
            *oi = d * qi as f32;
        }
    }
}

/// `Σ x[i]·d·q[i]` over one row: per block `d · Σ x·q` (f32).
#[inline]
pub fn dot(quants: &[BlockQ8], scales: &[f16], x: &[f32]) -> f32 {
    assert!(
        quants.len() == scales.len() && x.len() == quants.len() * QK,
        "q8::dot: lengths"
    );
    let mut sum = 0.0f32;
    for ((q, s), xb) in quants.iter().zip(scales).zip(x.chunks_exact(QK)) {
        let mut acc = [0.0f32; 8];
        for i in 0..QK {
            acc[i % 8] += xb[i] * q.qs[i] as f32;
        }
        sum += s.to_f32() * sum8(acc);
    }
    sum
}

/// `Σ (d_w·d_a) · Σ q_w·q_a` over one row: exact i32 products per block.
#[inline]
pub fn dot_q8(quants: &[BlockQ8], scales: &[f16], a: Q8Row<'_>) -> f32 {
    assert!(
        quants.len() == scales.len()
            && a.quants.len() == quants.len()
            && a.scales.len() == quants.len(),
        "q8::dot_q8: lengths"
    );
    let mut sum = 0.0f32;
    for ((q, s), (aq, &ad)) in quants.iter().zip(scales).zip(a.quants.iter().zip(a.scales)) {
        let isum: i32 =
            q.qs.iter()
                .zip(&aq.qs)
                .map(|(&w, &v)| w as i32 * v as i32)
                .sum();
        sum += (s.to_f32() * ad) * isum as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_bumped_when_f16_rounding_would_clip() {
        // amax / 127 = 1.4 · 2^-24 rounds down to the smallest subnormal 2^-24,
        // which would put amax at 178 steps: the scale must go up.
        let amax = 127.0 * 1.4 * 2f32.powi(-24);
        let d = scale_for(amax).unwrap();
        assert!(amax / d.to_f32() <= 127.5);
        assert_eq!(d.to_bits(), 2);
        // Values so small that amax / 127 underflows to zero still get a scale.
        let tiny = 1e-9f32;
        let d = scale_for(tiny).unwrap();
        assert!(d.to_f32() > 0.0 && tiny / d.to_f32() <= 127.5);
        assert_eq!(scale_for(0.0), Some(f16::ZERO));
        assert_eq!(scale_for(1e7), None);
        assert!(scale_for(8.0e6).is_some());
    }
}
