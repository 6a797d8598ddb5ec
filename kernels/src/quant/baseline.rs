//! Simple quantizers to measure the real ones against: ggml's reference
//! Q4_0 and Q4_1 (`quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`) and
//! plain round-to-nearest with `d = max|x| / 7`. They write the same
//! planes as `q4` / `q4m`, so the same dequantizers and kernels apply.
//! Not used for writing files.

use super::{BlockQ4, QK};
use half::f16;

/// ggml's Q4_0: `d = x_m / −8` (`x_m` the value of largest magnitude),
/// nibbles from the unrounded `d`, `d` stored as f16.
pub fn q4_0_ref(x: &[f32], quants: &mut [BlockQ4], scales: &mut [f16]) {
    for ((xb, q), s) in x.chunks_exact(QK).zip(quants).zip(scales) {
        let (mut amax, mut xm) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                xm = v;
            }
        }
        let d = xm / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let n: [u8; QK] = std::array::from_fn(|i| ((xb[i] * id + 8.5) as i8).min(15) as u8);
        *q = BlockQ4::pack(&n);
        *s = f16::from_f32(d);
    }
}

/// Round to nearest with the symmetric scale `d = max|x| / 7` (the naive
/// choice the `q4` search is measured against).
pub fn q4_naive_max7(x: &[f32], quants: &mut [BlockQ4], scales: &mut [f16]) {
    for ((xb, q), s) in x.chunks_exact(QK).zip(quants).zip(scales) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let dh = f16::from_f32(amax / 7.0);
        let d = dh.to_f32();
        let n: [u8; QK] = std::array::from_fn(|i| {
            let qv = if d == 0.0 {
                0.0
            } else {
                (xb[i] / d).round().clamp(-8.0, 7.0)
            };
            (qv + 8.0) as u8
        });
        *q = BlockQ4::pack(&n);
        *s = dh;
    }
}

/// ggml's Q4_1: `m = min`, `d = (max − min) / 15`, nibbles from the
/// unrounded values, both stored as f16.
pub fn q4_1_ref(x: &[f32], quants: &mut [BlockQ4], scales: &mut [f16], mins: &mut [f16]) {
    for (((xb, q), s), mn) in x.chunks_exact(QK).zip(quants).zip(scales).zip(mins) {
        let min = xb.iter().copied().fold(f32::INFINITY, f32::min);
        let max = xb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let n: [u8; QK] = std::array::from_fn(|i| (((xb[i] - min) * id + 0.5) as i8).min(15) as u8);
        *q = BlockQ4::pack(&n);
        *s = f16::from_f32(d);
        *mn = f16::from_f32(min);
    }
}
