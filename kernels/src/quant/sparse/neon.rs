//! NEON versions of the 2:4 sparse dot products (f32 activations).
//!
//! Per 4 kept values (8 inputs, two registers): one position byte indexes
//! a 256-entry table of `tbl` byte indices, and one `vqtbl2q_u8` gathers
//! the 4 activations at the kept positions from the 32 bytes of the 8
//! inputs. Callers check the lengths and the CPU feature.

use super::{BlockQ4S24, BlockQ8S24, SK};
use half::f16;
use std::arch::aarch64::*;

/// For each position byte (4 kept values: 2 groups of 4 inputs), the
/// `tbl` indices of the 4 kept activations' bytes within 8 f32 inputs.
static GATHER: [[u8; 16]; 256] = {
    let mut t = [[0u8; 16]; 256];
    let mut b = 0;
    while b < 256 {
        let mut l = 0;
        while l < 4 {
            let p = (b >> (2 * l)) & 3;
            let input = 4 * (l / 2) + p;
            let mut c = 0;
            while c < 4 {
                t[b][4 * l + c] = (4 * input + c) as u8;
                c += 1;
            }
            l += 1;
        }
        b += 1;
    }
    t
};

/// The 4 activations of kept values `4j..4j+3` of a block (inputs `8j..8j+7` at `xp`).
#[inline(always)]
unsafe fn gather4(xp: *const f32, pos: u8) -> float32x4_t {
    let t = uint8x16x2_t(
        vreinterpretq_u8_f32(vld1q_f32(xp)),
        vreinterpretq_u8_f32(vld1q_f32(xp.add(4))),
    );
    let ix = vld1q_u8(GATHER[pos as usize].as_ptr());
    vreinterpretq_f32_u8(vqtbl2q_u8(t, ix))
}

/// Eight signed 16-bit values as two f32 vectors.
#[inline(always)]
unsafe fn s16x8_to_f32(v: int16x8_t) -> [float32x4_t; 2] {
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(v))),
        vcvtq_f32_s32(vmovl_high_s16(v)),
    ]
}

/// NEON `q4s24` dot product.
///
/// # Safety
/// The CPU must have NEON; `x.len() == 64·blocks.len()` and
/// `scales.len() == blocks.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q4s24_neon(blocks: &[BlockQ4S24], scales: &[f16], x: &[f32]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    let eight = vdupq_n_s16(8);
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let idx = b.idx();
        let q = vld1q_u8(b.qs.as_ptr());
        let lo = vandq_u8(q, vdupq_n_u8(0x0F));
        let hi = vshrq_n_u8::<4>(q);
        // Kept values 0..7, 8..15 (low nibbles), 16..23, 24..31 (high).
        let halves = [
            vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo))),
            vreinterpretq_s16_u16(vmovl_high_u8(lo)),
            vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi))),
            vreinterpretq_s16_u16(vmovl_high_u8(hi)),
        ];
        let mut bacc = vdupq_n_f32(0.0);
        for (h, n) in halves.into_iter().enumerate() {
            let w = s16x8_to_f32(vsubq_s16(n, eight));
            for (j, wj) in w.into_iter().enumerate() {
                let quad = 2 * h + j; // kept values 4·quad .. 4·quad + 3
                let g = gather4(xp.add(8 * quad), idx[quad]);
                bacc = vfmaq_f32(bacc, wj, g);
            }
        }
        acc = vfmaq_n_f32(acc, bacc, s.to_f32());
    }
    vaddvq_f32(acc)
}

/// NEON `q8s24` dot product.
///
/// # Safety
/// As [`dot_q4s24_neon`].
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8s24_neon(blocks: &[BlockQ8S24], scales: &[f16], x: &[f32]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let xp = x.as_ptr().add(i * SK);
        let q0 = vld1q_s8(b.qs.as_ptr());
        let q1 = vld1q_s8(b.qs.as_ptr().add(16));
        let halves = [
            vmovl_s8(vget_low_s8(q0)),
            vmovl_high_s8(q0),
            vmovl_s8(vget_low_s8(q1)),
            vmovl_high_s8(q1),
        ];
        let mut bacc = vdupq_n_f32(0.0);
        for (h, n) in halves.into_iter().enumerate() {
            let w = s16x8_to_f32(n);
            for (j, wj) in w.into_iter().enumerate() {
                let quad = 2 * h + j;
                let g = gather4(xp.add(8 * quad), b.idx[quad]);
                bacc = vfmaq_f32(bacc, wj, g);
            }
        }
        acc = vfmaq_n_f32(acc, bacc, s.to_f32());
    }
    vaddvq_f32(acc)
}
