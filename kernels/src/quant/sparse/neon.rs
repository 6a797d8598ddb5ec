//! NEON versions of the 2:4 sparse kernels: dot products on f32
//! activations, and matrix products on int8 activations (decode; below).
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

// ---------------------------------------------------------------------------
// 2:4 weights × int8 activations (decode), `sdot` on the kept values only.
//
// A block's kept values 0..15 lie in its inputs 0..31 (activation block
// `2b`), 16..31 in 32..63 (block `2b + 1`). Per half: the 16 positions
// become `tbl` indices `4·group + p` in registers, one `vqtbl2q_s8`
// gathers the 16 activations from the half's 32, and one `sdot` multiplies
// them by the 16 kept weights. Four rows share each activation load; `addp`
// folds their sums into one vector (lane = row), and the f32 arithmetic per
// block is the scalar twin's (`dot_q8_q4s24`, `dot_q8_q8s24`) in its order,
// so the result is bit-identical to it.
//
// Positions: `q8s24` keeps `p_k` at bits `2·(k % 4)` of byte `k / 4`: one
// `tbl` copies byte `k / 4` to byte `k`, a per-byte `ushl` brings `p_k` to
// bits 0-1, one `bsl` keeps them under `4·group`. `q4s24` keeps one 3-bit
// code per group at bit `3g` of its first 6 bytes: one `tbl` copies the two
// bytes holding code `g` to 16-bit lane `g`, a per-lane `ushl` brings the
// code down, `sli` doubles it into both bytes (kept values `2g`, `2g + 1`),
// one `bsl` writes `8·parity` above it, and a `tbl` of [`super::PAIR_POS`] turns
// `code + 8·parity` into the position.
// ---------------------------------------------------------------------------

use crate::aarch64::{gather_f16, sdot};
use crate::quant::{Q8Activations, Q8Row, WeightsRef};
use std::ops::Range;

/// Rows per tile: each activation load serves four rows.
const S24_ROWS: usize = 4;

/// `4·(j / 2)` for kept value `j` of a half: its group's first input.
const GROUP_BASE: [u8; 16] = [0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28];

/// A 2:4 block type as [`s24_tile`] takes it.
pub(crate) trait S24Neon {
    type Block: super::SparseBlock;
    /// The 32 kept weights as int8, halves 0 (kept 0..15) and 1 (16..31).
    unsafe fn weights(b: *const Self::Block) -> [int8x16_t; 2];
    /// The `tbl` indices (0..32, within the half's inputs) of the 16 kept
    /// values of each half.
    unsafe fn indices(b: *const Self::Block) -> [uint8x16_t; 2];
}

/// `q4s24` for [`matmul_s24`].
pub(crate) struct Q4S24Neon;
/// `q8s24` for [`matmul_s24`].
pub(crate) struct Q8S24Neon;

impl S24Neon for Q8S24Neon {
    type Block = BlockQ8S24;

    #[inline(always)]
    unsafe fn weights(b: *const BlockQ8S24) -> [int8x16_t; 2] {
        let q = (*b).qs.as_ptr();
        [vld1q_s8(q), vld1q_s8(q.add(16))]
    }

    #[inline(always)]
    unsafe fn indices(b: *const BlockQ8S24) -> [uint8x16_t; 2] {
        const SEL: [[u8; 16]; 2] = [
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3],
            [4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7],
        ];
        const SHIFT: [i8; 16] = [0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6, 0, -2, -4, -6];
        let pos = vld1_u8((*b).idx.as_ptr());
        let pos = vcombine_u8(pos, pos);
        let (shift, three, base) = (
            vld1q_s8(SHIFT.as_ptr()),
            vdupq_n_u8(3),
            vld1q_u8(GROUP_BASE.as_ptr()),
        );
        SEL.map(|sel| {
            let x = vshlq_u8(vqtbl1q_u8(pos, vld1q_u8(sel.as_ptr())), shift);
            vbslq_u8(three, x, base)
        })
    }
}

/// Code `g` of a `q4s24` block lies at bit `3g`: byte `3g / 8`, shift
/// `3g % 8` (at most 7, so with the next byte the 16 bits hold all 3).
const fn code_bytes(h: usize) -> ([u8; 16], [i16; 8]) {
    let (mut sel, mut shift) = ([0u8; 16], [0i16; 8]);
    let mut g = 0;
    while g < 8 {
        let bit = 3 * (8 * h + g);
        sel[2 * g] = (bit / 8) as u8;
        sel[2 * g + 1] = (bit / 8 + 1) as u8;
        shift[g] = -((bit % 8) as i16);
        g += 1;
    }
    (sel, shift)
}

impl S24Neon for Q4S24Neon {
    type Block = BlockQ4S24;

    #[inline(always)]
    unsafe fn weights(b: *const BlockQ4S24) -> [int8x16_t; 2] {
        let q = vld1q_u8((*b).qs.as_ptr());
        let eight = vdupq_n_s8(8);
        [
            vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), eight),
            vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q)), eight),
        ]
    }

    #[inline(always)]
    unsafe fn indices(b: *const BlockQ4S24) -> [uint8x16_t; 2] {
        const CODES: [([u8; 16], [i16; 8]); 2] = [code_bytes(0), code_bytes(1)];
        // The 6 code bytes and 2 nibble bytes: the block is 22 bytes long.
        let f = vld1_u8(b as *const u8);
        let f = vcombine_u8(f, f);
        let (seven, base, table) = (
            vdupq_n_u8(7),
            vld1q_u8(GROUP_BASE.as_ptr()),
            vld1q_u8(super::PAIR_POS.as_ptr()),
        );
        // 8·parity: 0 in the low byte of each 16-bit lane, 8 in the high one.
        let parity = vreinterpretq_u8_u16(vdupq_n_u16(0x0800));
        CODES.map(|(sel, shift)| {
            let two = vreinterpretq_u16_u8(vqtbl1q_u8(f, vld1q_u8(sel.as_ptr())));
            let code = vshlq_u16(two, vld1q_s16(shift.as_ptr()));
            let both = vreinterpretq_u8_u16(vsliq_n_u16::<8>(code, code));
            let pos = vqtbl1q_u8(table, vbslq_u8(seven, both, parity));
            vorrq_u8(pos, base)
        })
    }
}

/// The planes of a 2:4 matrix with `nb` blocks per row.
struct S24Planes<B> {
    blocks: *const B,
    scales: *const f16,
    nb: usize,
}

impl<B> Clone for S24Planes<B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for S24Planes<B> {}

/// `out[i·n + t] = Σ_c W[r0 + i, c] · a[c]` for `R ≤ 4` rows and one token.
///
/// # Safety
/// The CPU has neon and dotprod; `w` holds at least `(r0 + R) · nb`
/// blocks and scales; `a` holds `2·nb` activation blocks; `out` holds
/// `R · n` values and `t < n`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn s24_tile<K: S24Neon, const R: usize>(
    w: &S24Planes<K::Block>,
    r0: usize,
    a: &Q8Row<'_>,
    out: &mut [f32],
    n: usize,
    t: usize,
) {
    let S24Planes { blocks, scales, nb } = *w;
    let mut acc = vdupq_n_f32(0.0);
    let row0 = r0 * nb;
    for b in 0..nb {
        let dw = gather_f16::<R>(scales.add(row0 + b), nb);
        let half = |h: usize| {
            let p = a.quants.get_unchecked(2 * b + h).qs.as_ptr();
            int8x16x2_t(vld1q_s8(p), vld1q_s8(p.add(16)))
        };
        let (a0, a1) = (half(0), half(1));
        let (mut lo, mut hi) = ([vdupq_n_s32(0); 4], [vdupq_n_s32(0); 4]);
        for i in 0..R {
            let blk = blocks.add(row0 + i * nb + b);
            let [w0, w1] = K::weights(blk);
            let [i0, i1] = K::indices(blk);
            lo[i] = sdot(vdupq_n_s32(0), w0, vqtbl2q_s8(a0, i0));
            hi[i] = sdot(vdupq_n_s32(0), w1, vqtbl2q_s8(a1, i1));
        }
        let fold = |s: [int32x4_t; 4]| {
            vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3])))
        };
        let (da0, da1) = (
            *a.scales.get_unchecked(2 * b),
            *a.scales.get_unchecked(2 * b + 1),
        );
        // The scalar twin's `d_w · (d_a0·lo + d_a1·hi)`, unfused.
        let both = vaddq_f32(vmulq_n_f32(fold(lo), da0), vmulq_n_f32(fold(hi), da1));
        acc = vaddq_f32(acc, vmulq_f32(dw, both));
    }
    let mut lanes = [0.0f32; 4];
    vst1q_f32(lanes.as_mut_ptr(), acc);
    for (i, &l) in lanes.iter().enumerate().take(R) {
        *out.get_unchecked_mut(i * n + t) = l;
    }
}

/// 2:4 weights of kind `K` × int8 activations: rows `rows` of `w` against
/// every token of `x` (`out (rows, n)`), in tiles of four rows. The NEON
/// table's `matmul_q4s24_q8` ([`Q4S24Neon`]) and `matmul_q8s24_q8`
/// ([`Q8S24Neon`]).
pub(crate) fn matmul_s24<K: S24Neon>(
    w: &WeightsRef<'_>,
    rows: Range<usize>,
    x: &Q8Activations,
    out: &mut [f32],
) {
    use super::SparseBlock;
    let Some((blocks, scales)) = K::Block::planes(w) else {
        panic!("matmul_q8: a 2:4 kernel got {} weights", w.ty());
    };
    let (blocks, scales) = (blocks.as_ptr(), scales.as_ptr());
    crate::dispatch::check_matmul_q8(w, &rows, x, out);
    let n = x.n();
    let nb = w.cols() / SK;
    let p = S24Planes { blocks, scales, nb };
    let mut r = rows.start;
    while r < rows.end {
        let tile = (rows.end - r).min(S24_ROWS);
        let o = &mut out[(r - rows.start) * n..(r - rows.start + tile) * n];
        for t in 0..n {
            let a = x.row(t);
            // SAFETY: this function is reached only through the NEON table,
            // which `crate::dispatch` hands out after `neon_available()` saw
            // neon and dotprod; `WeightsRef::new` checked that the planes
            // hold `rows() · nb` blocks and scales, and rows r..r + tile are
            // below `rows.end ≤ rows()`; `a` holds `cols / 32 = 2·nb`
            // blocks (`x.cols() == w.cols()`); `o` holds `tile · n` values.
            unsafe {
                match tile {
                    S24_ROWS => s24_tile::<K, S24_ROWS>(&p, r, &a, o, n, t),
                    _ => {
                        for i in 0..tile {
                            let oi = &mut o[i * n..(i + 1) * n];
                            s24_tile::<K, 1>(&p, r + i, &a, oi, n, t);
                        }
                    }
                }
            }
        }
        r += tile;
    }
}
