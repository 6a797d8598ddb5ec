//! 2:4 sparse quantized types: `q4s24` and `q8s24`.
//!
//! A matrix pruned to the 2:4 pattern (in every group of 4 consecutive
//! input weights of a row, at most 2 are non-zero) stores only the 2 kept
//! values of each group, quantized, and their positions. The kernels read
//! only those: half the multiply-adds of a dense row, and fewer bytes.
//!
//! Layout (see `docs/format.md`, section 6): a row is cut into blocks of
//! [`SK`] = 64 inputs (16 groups of 4), each keeping [`SKEPT`] = 32 values.
//! Kept values `2g` and `2g + 1` belong to group `g` (inputs `4g .. 4g+3`
//! of the block), at positions `p0 < p1` in it. Per block:
//! - `q4s24` ([`BlockQ4S24`], 22 bytes): 6 bytes of 3-bit codes, the code
//!   of group `g` at bits `3g` of the 48-bit little-endian field, naming the
//!   group's pair `(p0, p1)` in [`PAIRS`] (codes 6 and 7, which no encoder
//!   writes, read as `(0, 1)`); then 16 bytes of nibbles in the order of
//!   [`BlockQ4`] (byte `j`: kept value `j` low, `j + 16` high), so kept
//!   values 0..15 (inputs 0..31) are the low nibbles and 16..31 (inputs
//!   32..63) the high ones. Value `d·(n − 8)`. There are 6 ways to keep 2
//!   of 4, so 3 bits per group instead of two 2-bit positions: 3.0 bits
//!   per weight instead of 3.25.
//! - `q8s24` ([`BlockQ8S24`], 40 bytes): 32 int8 quants in kept order, then
//!   8 bytes of 2-bit positions, `p_k` at bits `2·(k % 4)` of byte `k / 4`
//!   (the 8 bytes read as a little-endian u64 hold `p_k` at bits `2k`).
//!   Value `d·q`.
//!
//! One f16 scale `d` per block in its own plane, as for the dense types:
//! 24 bytes per 64 weights (3.0 bits/weight) for `q4s24`, 42 (5.25) for
//! `q8s24`. A block's 32 kept values share one scale, as the 32 values of
//! a dense `q4` block do, so the quantization error per kept value is that
//! of dense `q4` (the same quantizer runs on them).
//!
//! Dequantization adds each kept value at its input (a `q8s24` encoder
//! never writes a position twice, but any bytes give one defined answer,
//! the one the dot products compute; a `q4s24` code cannot repeat one).
//!
//! Kernels, each with a scalar reference and SIMD versions chosen by an
//! explicit [`Isa`] (the dispatch tier; [`x86`]: AVX2 and AVX-512;
//! [`neon`]). The safe wrappers check that the CPU has the tier and fall
//! back to scalar otherwise, so no `Isa` value can make them run an
//! unsupported instruction; `WeightsRef` passes the active tier
//! ([`crate::dispatch::kernels`], which `MICROLLM_ISA` can force):
//! - [`dot_q4s24`] / [`dot_q8s24`]: f32 activations; the SIMD versions
//!   gather the activations at the kept positions with a permute
//!   (`vpermps`, `vpermt2ps`, `tbl`) and multiply-add 8/16/4 kept values
//!   at a time.
//! - [`dot_q8_q4s24`] / [`dot_q8_q8s24`]: int8 activations ([`Q8Row`]);
//!   kept values 0..15 use activation block `2b`, 16..31 block `2b + 1`,
//!   so each half is an exact i32 sum scaled by its activation block. The
//!   scalar references; both types have a SIMD matrix kernel (the table
//!   entries `Kernels::matmul_q4s24_q8` and `Kernels::matmul_q8s24_q8`)
//!   on AVX-512 with VBMI and GFNI (`x86::matmul_s24_q8`, one step loop
//!   for both), on AVX2 (`x86::matmul_s24_q8_avx2`) and on NEON with
//!   dotprod (`neon::matmul_s24`), which
//!   decode the codes or positions and gather the activations in
//!   registers (`vpermi2b`, `vpshufb`, `tbl`).

use super::{q4, q8, sum8, BlockQ4, BlockQ8, Planes, Q8Row, QuantError, WeightsRef, QK};
pub use crate::dispatch::Isa;
use half::f16;

#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
pub mod x86;

/// Inputs per sparse block.
pub const SK: usize = 64;
/// Kept values per sparse block (2 of every 4 inputs).
pub const SKEPT: usize = 32;

/// A `q4s24` block: the 3-bit pair codes of its 16 groups and 32 kept
/// nibbles (64 inputs). The codes come first so that an 8-byte read at
/// the start of any block stays inside it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4S24 {
    /// Code of group `g` (an index into [`PAIRS`]) at bits `3g` of the
    /// little-endian 48-bit field.
    pub codes: [u8; 6],
    /// Kept nibbles, [`BlockQ4`] order (byte `j`: kept `j` low, `j + 16` high).
    pub qs: [u8; 16],
}

/// The 6 ways to keep 2 of 4 inputs, `(p0, p1)` with `p0 < p1`, by code;
/// codes 6 and 7 (never written) read as `(0, 1)`.
pub const PAIRS: [(u8, u8); 8] = [
    (0, 1),
    (0, 2),
    (0, 3),
    (1, 2),
    (1, 3),
    (2, 3),
    (0, 1),
    (0, 1),
];

/// For the 6 bits of two groups' codes, the byte of 2-bit positions of
/// their 4 kept values (the `q8s24` position byte): how the kernels written
/// for 2-bit positions read `q4s24` codes, one lookup per 8 inputs.
pub static CODE_PAIR_POS: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut c = 0;
    while c < 64 {
        let (a0, a1) = PAIRS[c & 7];
        let (b0, b1) = PAIRS[c >> 3];
        t[c] = a0 | (a1 << 2) | (b0 << 4) | (b1 << 6);
        c += 1;
    }
    t
};

/// [`PAIRS`] as one 16-byte lookup table indexed by `code + 8·parity`:
/// the first positions of the 8 codes, then their second positions (what
/// the NEON and AVX2 int8 kernels look a group's code up in, `tbl` or
/// `vpshufb`).
pub(crate) const PAIR_POS: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut c = 0;
    while c < 8 {
        t[c] = PAIRS[c].0;
        t[8 + c] = PAIRS[c].1;
        c += 1;
    }
    t
};

/// A 2:4 block type as the SIMD kernels find it in a matrix.
pub(crate) trait SparseBlock: Sized {
    /// The blocks and scales planes of `w`, when it holds this type.
    fn planes<'a>(w: &WeightsRef<'a>) -> Option<(&'a [Self], &'a [f16])>;
}

impl SparseBlock for BlockQ4S24 {
    fn planes<'a>(w: &WeightsRef<'a>) -> Option<(&'a [Self], &'a [f16])> {
        match w.planes() {
            Planes::Q4S24 { blocks, scales } => Some((blocks, scales)),
            _ => None,
        }
    }
}

impl SparseBlock for BlockQ8S24 {
    fn planes<'a>(w: &WeightsRef<'a>) -> Option<(&'a [Self], &'a [f16])> {
        match w.planes() {
            Planes::Q8S24 { blocks, scales } => Some((blocks, scales)),
            _ => None,
        }
    }
}

/// A `q8s24` block: 32 kept int8 quants and their 2-bit positions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8S24 {
    /// Kept quants, in kept order.
    pub qs: [i8; SKEPT],
    /// Positions, as in [`BlockQ4S24::idx`].
    pub idx: [u8; 8],
}

const _: () = assert!(std::mem::size_of::<BlockQ4S24>() == 22);
const _: () = assert!(std::mem::align_of::<BlockQ4S24>() == 1);
const _: () = assert!(std::mem::size_of::<BlockQ8S24>() == 40);
const _: () = assert!(std::mem::align_of::<BlockQ8S24>() == 1);

/// Input (0..64) of kept value `k` (0..32) given the block's positions.
#[inline(always)]
pub fn kept_input(idx: &[u8; 8], k: usize) -> usize {
    4 * (k / 2) + ((idx[k / 4] >> (2 * (k % 4))) & 3) as usize
}

impl BlockQ4S24 {
    /// The 48-bit code field.
    #[inline(always)]
    pub fn code_bits(&self) -> u64 {
        let c = &self.codes;
        u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64
            | (u16::from_le_bytes([c[4], c[5]]) as u64) << 32
    }

    /// The positions in the `q8s24` form (`p_k` at bits `2k`).
    #[inline(always)]
    pub fn idx(&self) -> [u8; 8] {
        let c = self.code_bits();
        std::array::from_fn(|j| CODE_PAIR_POS[((c >> (6 * j)) & 63) as usize])
    }

    /// Nibble (0..=15) of kept value `k`.
    #[inline(always)]
    pub fn nibble(&self, k: usize) -> u8 {
        let b = self.qs[k % 16];
        if k < 16 {
            b & 0x0F
        } else {
            b >> 4
        }
    }
}

/// Chooses the 32 kept positions of one 64-input block: the non-zero
/// values of each group of 4 (at most 2), completed with its first zero
/// positions. Returns the kept values, in kept order, and the packed
/// positions; a group with more than 2 non-zero values is an error naming
/// its first input (relative to the block).
fn select(xb: &[f32]) -> Result<([f32; SKEPT], [u8; 8], u64), usize> {
    let mut vals = [0.0f32; SKEPT];
    let mut idx = [0u8; 8];
    let mut codes = 0u64;
    for g in 0..SK / 4 {
        let grp = &xb[4 * g..4 * g + 4];
        let nz = grp.iter().filter(|v| **v != 0.0).count();
        if nz > 2 {
            return Err(4 * g);
        }
        // Non-zero positions first, then zeros, both in order; keep 2,
        // written in increasing position order.
        let mut pos: Vec<usize> = (0..4).filter(|&p| grp[p] != 0.0).collect();
        pos.extend((0..4).filter(|&p| grp[p] == 0.0));
        let (mut a, mut b) = (pos[0], pos[1]);
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        for (j, p) in [a, b].into_iter().enumerate() {
            let k = 2 * g + j;
            vals[k] = grp[p];
            idx[k / 4] |= (p as u8) << (2 * (k % 4));
        }
        let code = PAIRS[..6].iter().position(|&pr| pr == (a as u8, b as u8));
        codes |= (code.expect("a pair of distinct positions") as u64) << (3 * g);
    }
    Ok((vals, idx, codes))
}

/// The error for a group that is not 2:4 sparse.
fn not_sparse(ty: &str, index: usize) -> QuantError {
    QuantError::Layout(format!(
        "{ty}: inputs {index}..={} hold more than 2 non-zero weights in a group of 4; \
         {ty} stores 2 of every 4 (prune with --pattern 2:4 first)",
        index + 3
    ))
}

fn check_row(x: &[f32], blocks: usize, scales: usize, what: &str) {
    assert!(
        x.len().is_multiple_of(SK) && blocks == x.len() / SK && scales == blocks,
        "{what}: lengths"
    );
}

/// Quantizes one 2:4-sparse row (`x.len()` a multiple of 64) to `q4s24`.
/// The kept values of a block are quantized as one dense `q4` block.
/// Element indices in errors are relative to `x`.
pub fn quantize_row_q4s24(
    x: &[f32],
    blocks: &mut [BlockQ4S24],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    check_row(x, blocks.len(), scales.len(), "q4s24::quantize_row");
    super::check_finite(x)?;
    for (b, ((xb, blk), s)) in x.chunks_exact(SK).zip(blocks).zip(scales).enumerate() {
        let (vals, _, codes) = select(xb).map_err(|i| not_sparse("q4s24", b * SK + i))?;
        let (q, d) = q4::quantize_block(&vals).ok_or_else(|| QuantError::OutOfRange {
            index: b * SK,
            max_abs: vals.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        })?;
        let codes = codes.to_le_bytes();
        *blk = BlockQ4S24 {
            codes: std::array::from_fn(|i| codes[i]),
            qs: q.qs,
        };
        *s = d;
    }
    Ok(())
}

/// Quantizes one 2:4-sparse row to `q8s24` (the kept values of a block
/// quantized as one dense `q8` block).
pub fn quantize_row_q8s24(
    x: &[f32],
    blocks: &mut [BlockQ8S24],
    scales: &mut [f16],
) -> Result<(), QuantError> {
    check_row(x, blocks.len(), scales.len(), "q8s24::quantize_row");
    super::check_finite(x)?;
    for (b, ((xb, blk), s)) in x.chunks_exact(SK).zip(blocks).zip(scales).enumerate() {
        let (vals, idx, _) = select(xb).map_err(|i| not_sparse("q8s24", b * SK + i))?;
        let mut q = [BlockQ8 { qs: [0; QK] }];
        let mut d = [f16::ZERO];
        q8::quantize_row(&vals, &mut q, &mut d).map_err(|e| super::shift_error(e, b * SK))?;
        *blk = BlockQ8S24 { qs: q[0].qs, idx };
        *s = d[0];
    }
    Ok(())
}

/// `out` = the dense row of a `q4s24` row (zeros at pruned inputs).
pub fn dequantize_row_q4s24(blocks: &[BlockQ4S24], scales: &[f16], out: &mut [f32]) {
    check_row(out, blocks.len(), scales.len(), "q4s24::dequantize_row");
    for ((b, s), o) in blocks.iter().zip(scales).zip(out.chunks_exact_mut(SK)) {
        let d = s.to_f32();
        let idx = b.idx();
        o.fill(0.0);
        for k in 0..SKEPT {
            o[kept_input(&idx, k)] += (b.nibble(k) as i32 - 8) as f32 * d;
        }
    }
}

/// `out` = the dense row of a `q8s24` row (zeros at pruned inputs).
pub fn dequantize_row_q8s24(blocks: &[BlockQ8S24], scales: &[f16], out: &mut [f32]) {
    check_row(out, blocks.len(), scales.len(), "q8s24::dequantize_row");
    for ((b, s), o) in blocks.iter().zip(scales).zip(out.chunks_exact_mut(SK)) {
        let d = s.to_f32();
        o.fill(0.0);
        for k in 0..SKEPT {
            o[kept_input(&b.idx, k)] += b.qs[k] as f32 * d;
        }
    }
}

/// Scalar `Σ x[i]·w[i]` over one `q4s24` row: per block `d · Σ_k x[p_k]·(n_k − 8)`.
pub fn dot_q4s24_scalar(blocks: &[BlockQ4S24], scales: &[f16], x: &[f32]) -> f32 {
    check_row(x, blocks.len(), scales.len(), "q4s24::dot");
    let mut sum = 0.0f32;
    for ((b, s), xb) in blocks.iter().zip(scales).zip(x.chunks_exact(SK)) {
        let mut acc = [0.0f32; 8];
        let idx = b.idx();
        for k in 0..SKEPT {
            acc[k % 8] += xb[kept_input(&idx, k)] * (b.nibble(k) as i32 - 8) as f32;
        }
        sum += s.to_f32() * sum8(acc);
    }
    sum
}

/// Scalar `Σ x[i]·w[i]` over one `q8s24` row.
pub fn dot_q8s24_scalar(blocks: &[BlockQ8S24], scales: &[f16], x: &[f32]) -> f32 {
    check_row(x, blocks.len(), scales.len(), "q8s24::dot");
    let mut sum = 0.0f32;
    for ((b, s), xb) in blocks.iter().zip(scales).zip(x.chunks_exact(SK)) {
        let mut acc = [0.0f32; 8];
        for k in 0..SKEPT {
            acc[k % 8] += xb[kept_input(&b.idx, k)] * b.qs[k] as f32;
        }
        sum += s.to_f32() * sum8(acc);
    }
    sum
}

fn check_q8(blocks: usize, scales: usize, a: &Q8Row<'_>, what: &str) {
    assert!(
        scales == blocks && a.quants.len() == 2 * blocks && a.scales.len() == 2 * blocks,
        "{what}: lengths"
    );
}

/// `Σ d_w · (d_a[2b]·Σ_{k<16} (n_k − 8)·q_a[p_k] + d_a[2b+1]·Σ_{k≥16} …)`
/// over one `q4s24` row with int8 activations: exact i32 sums per half.
pub fn dot_q8_q4s24(blocks: &[BlockQ4S24], scales: &[f16], a: Q8Row<'_>) -> f32 {
    check_q8(blocks.len(), scales.len(), &a, "q4s24::dot_q8");
    let mut sum = 0.0f32;
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let (a0, a1) = (&a.quants[2 * i], &a.quants[2 * i + 1]);
        let idx = b.idx();
        let (mut lo, mut hi) = (0i32, 0i32);
        for k in 0..SKEPT / 2 {
            lo += (b.nibble(k) as i32 - 8) * a0.qs[kept_input(&idx, k)] as i32;
            let k2 = k + SKEPT / 2;
            hi += (b.nibble(k2) as i32 - 8) * a1.qs[kept_input(&idx, k2) - QK] as i32;
        }
        sum += s.to_f32() * (a.scales[2 * i] * lo as f32 + a.scales[2 * i + 1] * hi as f32);
    }
    sum
}

/// The `q8s24` twin of [`dot_q8_q4s24`].
pub fn dot_q8_q8s24(blocks: &[BlockQ8S24], scales: &[f16], a: Q8Row<'_>) -> f32 {
    check_q8(blocks.len(), scales.len(), &a, "q8s24::dot_q8");
    let mut sum = 0.0f32;
    for (i, (b, s)) in blocks.iter().zip(scales).enumerate() {
        let (a0, a1) = (&a.quants[2 * i], &a.quants[2 * i + 1]);
        let (mut lo, mut hi) = (0i32, 0i32);
        for k in 0..SKEPT / 2 {
            lo += b.qs[k] as i32 * a0.qs[kept_input(&b.idx, k)] as i32;
            let k2 = k + SKEPT / 2;
            hi += b.qs[k2] as i32 * a1.qs[kept_input(&b.idx, k2) - QK] as i32;
        }
        sum += s.to_f32() * (a.scales[2 * i] * lo as f32 + a.scales[2 * i + 1] * hi as f32);
    }
    sum
}

/// `Σ x[i]·w[i]` over one `q4s24` row (`x` 64 per block) with the `isa` version.
#[inline]
pub fn dot_q4s24(isa: Isa, blocks: &[BlockQ4S24], scales: &[f16], x: &[f32]) -> f32 {
    check_row(x, blocks.len(), scales.len(), "q4s24::dot");
    match isa {
        #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
        // AMX is the AVX-512 tier plus tiles: the same vector kernels.
        Isa::Avx512 | Isa::Amx if isa.is_available() => {
            x86::prefetch_next_rows(blocks);
            // SAFETY: the CPU has AVX-512F (checked above); lengths checked.
            unsafe { x86::dot_q4s24_avx512(blocks, scales, x) }
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
        Isa::Avx2 if isa.is_available() => {
            x86::prefetch_next_rows(blocks);
            // SAFETY: the CPU has AVX2 and FMA (checked above); lengths checked.
            unsafe { x86::dot_q4s24_avx2(blocks, scales, x) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_available() => {
            // SAFETY: the CPU has NEON (checked above); lengths checked.
            unsafe { neon::dot_q4s24_neon(blocks, scales, x) }
        }
        _ => dot_q4s24_scalar(blocks, scales, x),
    }
}

/// `Σ x[i]·w[i]` over one `q8s24` row with the `isa` version.
#[inline]
pub fn dot_q8s24(isa: Isa, blocks: &[BlockQ8S24], scales: &[f16], x: &[f32]) -> f32 {
    check_row(x, blocks.len(), scales.len(), "q8s24::dot");
    match isa {
        #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
        // AMX is the AVX-512 tier plus tiles: the same vector kernels.
        Isa::Avx512 | Isa::Amx if isa.is_available() => {
            x86::prefetch_next_rows(blocks);
            // SAFETY: as in `dot_q4s24`.
            unsafe { x86::dot_q8s24_avx512(blocks, scales, x) }
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
        Isa::Avx2 if isa.is_available() => {
            x86::prefetch_next_rows(blocks);
            // SAFETY: as in `dot_q4s24`.
            unsafe { x86::dot_q8s24_avx2(blocks, scales, x) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if isa.is_available() => {
            // SAFETY: as in `dot_q4s24`.
            unsafe { neon::dot_q8s24_neon(blocks, scales, x) }
        }
        _ => dot_q8s24_scalar(blocks, scales, x),
    }
}

/// The dense `q4` blocks (two per sparse block, both with the sparse
/// block's scale, nibble 8 = zero at pruned inputs) that hold exactly the
/// values of a `q4s24` row: what the tests run the dense kernels on.
/// Never `None` (a code names two distinct positions); `Option` as for
/// [`q8s24_to_dense`].
pub fn q4s24_to_dense(blocks: &[BlockQ4S24], scales: &[f16]) -> Option<(Vec<BlockQ4>, Vec<f16>)> {
    let mut qs = Vec::with_capacity(blocks.len() * 2);
    let mut ds = Vec::with_capacity(blocks.len() * 2);
    for (b, s) in blocks.iter().zip(scales) {
        let mut n = [[8u8; QK]; 2];
        let mut seen = [false; SK];
        let idx = b.idx();
        for k in 0..SKEPT {
            let p = kept_input(&idx, k);
            if std::mem::replace(&mut seen[p], true) {
                return None;
            }
            n[p / QK][p % QK] = b.nibble(k);
        }
        for h in n {
            qs.push(BlockQ4::pack(&h));
            ds.push(*s);
        }
    }
    Some((qs, ds))
}

/// The `q8s24` twin of [`q4s24_to_dense`] (dense `q8` blocks, 0 at pruned inputs).
pub fn q8s24_to_dense(blocks: &[BlockQ8S24], scales: &[f16]) -> Option<(Vec<BlockQ8>, Vec<f16>)> {
    let mut qs = Vec::with_capacity(blocks.len() * 2);
    let mut ds = Vec::with_capacity(blocks.len() * 2);
    for (b, s) in blocks.iter().zip(scales) {
        let mut q = [[0i8; QK]; 2];
        let mut seen = [false; SK];
        for k in 0..SKEPT {
            let p = kept_input(&b.idx, k);
            if std::mem::replace(&mut seen[p], true) {
                return None;
            }
            q[p / QK][p % QK] = b.qs[k];
        }
        for h in q {
            qs.push(BlockQ8 { qs: h });
            ds.push(*s);
        }
    }
    Some((qs, ds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_non_zeros_in_order_and_rejects_three() {
        let mut x = [0.0f32; SK];
        x[1] = 1.0;
        x[3] = -2.0; // group 0: positions 1, 3
        x[6] = 5.0; // group 1: 6 and the first zero, 4
        let (vals, idx, codes) = select(&x).unwrap();
        assert_eq!(codes & 0o77, 0o14); // group 0: (1, 3) is code 4; group 1: (0, 2) code 1
        assert_eq!((kept_input(&idx, 0), kept_input(&idx, 1)), (1, 3));
        assert_eq!((vals[0], vals[1]), (1.0, -2.0));
        assert_eq!((kept_input(&idx, 2), kept_input(&idx, 3)), (4, 6));
        assert_eq!((vals[2], vals[3]), (0.0, 5.0));
        x[2] = 1.0;
        assert_eq!(select(&x).unwrap_err(), 0);
    }
}
