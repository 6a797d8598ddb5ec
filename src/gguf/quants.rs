//! Dequantization of ggml block formats to f32, bit-exact with ggml's
//! reference `dequantize_row_*` and with `gguf.quants.dequantize`.
//!
//! Bit-exactness needs the same f32 operations in the same order as the
//! reference, e.g. `(d * q) + m` for Q4_1 and `(d * sc) * q - (dmin * m)`
//! for the K-quants; Rust never contracts `a * b + c` into a fused
//! multiply-add on its own, so writing the formula as ggml does suffices.
//!
//! Blocks are `#[repr(C)]` structs of byte arrays (alignment 1), viewed in
//! place over the tensor bytes with `bytemuck`, so no reference is ever
//! unaligned; f16 fields are decoded from their two little-endian bytes.

use super::types::GgmlType;
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;
use std::fmt;
use std::mem::size_of;

/// Values per K-quant super-block.
const QK_K: usize = 256;

/// Tensors with at least this many values are dequantized on all cores.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Values per parallel work item (a multiple of every block size).
const PARALLEL_CHUNK_VALUES: usize = 1 << 14;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// microllm has no dequantizer for this type.
    Unsupported(GgmlType),
    /// The byte and value counts do not describe whole blocks of the type.
    SizeMismatch {
        /// The element type.
        ggml_type: GgmlType,
        /// Bytes given.
        bytes: usize,
        /// Values asked for.
        values: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::Unsupported(t) => write!(
                f,
                "ggml type {t} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"
            ),
            QuantError::SizeMismatch {
                ggml_type,
                bytes,
                values,
            } => write!(
                f,
                "{bytes} bytes of {ggml_type} data cannot hold {values} values"
            ),
        }
    }
}

impl std::error::Error for QuantError {}

/// True if [`dequantize`] handles `t`.
pub fn is_supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        t,
        F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q4_K | Q5_K | Q6_K
    )
}

/// Decodes `data`, the bytes of `out.len()` values of type `t`, into `out`.
/// Large buffers are split across rayon's thread pool.
pub fn dequantize(t: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !is_supported(t) {
        return Err(QuantError::Unsupported(t));
    }
    let mismatch = QuantError::SizeMismatch {
        ggml_type: t,
        bytes: data.len(),
        values: out.len(),
    };
    let (block, bytes_per_block) = (t.block_size(), t.type_size());
    if !out.len().is_multiple_of(block) {
        return Err(mismatch);
    }
    match (out.len() / block).checked_mul(bytes_per_block) {
        Some(n) if n == data.len() => {}
        _ => return Err(mismatch),
    }
    if out.len() < PARALLEL_MIN_VALUES {
        return dequantize_serial(t, data, out);
    }
    let chunk_bytes = PARALLEL_CHUNK_VALUES / block * bytes_per_block;
    out.par_chunks_mut(PARALLEL_CHUNK_VALUES)
        .zip(data.par_chunks(chunk_bytes))
        .try_for_each(|(o, d)| dequantize_serial(t, d, o))
}

/// [`dequantize`] on the calling thread; sizes already checked.
fn dequantize_serial(t: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    match t {
        GgmlType::F32 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *y = f16_to_f32([b[0], b[1]]);
            }
        }
        GgmlType::BF16 => {
            for (y, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *y = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        GgmlType::Q4_0 => each_block(t, data, out, BlockQ4_0::dequantize)?,
        GgmlType::Q4_1 => each_block(t, data, out, BlockQ4_1::dequantize)?,
        GgmlType::Q8_0 => each_block(t, data, out, BlockQ8_0::dequantize)?,
        GgmlType::Q4_K => each_block(t, data, out, BlockQ4K::dequantize)?,
        GgmlType::Q5_K => each_block(t, data, out, BlockQ5K::dequantize)?,
        GgmlType::Q6_K => each_block(t, data, out, BlockQ6K::dequantize)?,
        other => return Err(QuantError::Unsupported(other)),
    }
    Ok(())
}

/// Views `data` as blocks `B` and decodes each into its `B::VALUES` outputs.
fn each_block<B: Block>(
    t: GgmlType,
    data: &[u8],
    out: &mut [f32],
    decode: fn(&B, &mut [f32]),
) -> Result<(), QuantError> {
    let blocks: &[B] = bytemuck::try_cast_slice(data).map_err(|_| QuantError::SizeMismatch {
        ggml_type: t,
        bytes: data.len(),
        values: out.len(),
    })?;
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(B::VALUES)) {
        decode(b, y);
    }
    Ok(())
}

/// A quantization block: `VALUES` values packed in `size_of::<Self>()` bytes.
trait Block: Pod {
    const VALUES: usize;
}

/// IEEE binary16 (little-endian bytes) to f32, exact for every input.
/// NaN payloads are kept as they are (not quieted), as numpy does, so that
/// F16 tensors match `gguf.quants.dequantize` bit for bit.
pub fn f16_to_f32(bytes: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(bytes);
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from(h >> 10) & 0x1f;
    let mantissa = u32::from(h & 0x3ff);
    let bits = match exp {
        // Zero and subnormals: mantissa * 2^-24 is exact in f32.
        0 => (mantissa as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        // Infinity and NaN.
        0x1f => 0x7f80_0000 | (mantissa << 13),
        // Normal: rebias the exponent from 15 to 127.
        _ => ((exp + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | bits)
}

/// Q4_0: `d * (q - 8)` for 32 4-bit `q`; value `j` in the low nibble of
/// `qs[j]`, value `j + 16` in its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4_0 {
    d: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const VALUES: usize = 32;
}

impl BlockQ4_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let (lo, hi) = y.split_at_mut(16);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = ((q & 0x0f) as i32 - 8) as f32 * d;
            *h = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: `d * q + m` for 32 4-bit `q`, nibble order as Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4_1 {
    d: [u8; 2],
    m: [u8; 2],
    qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

impl Block for BlockQ4_1 {
    const VALUES: usize = 32;
}

impl BlockQ4_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let (lo, hi) = y.split_at_mut(16);
        for ((&q, l), h) in self.qs.iter().zip(lo).zip(hi) {
            *l = d * (q & 0x0f) as f32 + m;
            *h = d * (q >> 4) as f32 + m;
        }
    }
}

/// Q8_0: `d * q` for 32 signed 8-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ8_0 {
    d: [u8; 2],
    qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

impl Block for BlockQ8_0 {
    const VALUES: usize = 32;
}

impl BlockQ8_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (&q, v) in self.qs.iter().zip(y) {
            *v = q as f32 * d;
        }
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K
/// block, packed in 12 bytes (ggml's `get_scale_min_k4`): sub-blocks 0..4
/// in the low 6 bits of bytes `j` and `j + 4`; sub-blocks 4..8 as a low
/// nibble in byte `j + 4` and the top 2 bits of bytes `j - 4` and `j`.
fn scale_min_k4(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q4_K: 8 sub-blocks of 32; value `(d * sc) * q - (dmin * m)` with 6-bit
/// `sc`, `m` per sub-block. Each 32 bytes of `qs` hold sub-block `2i` in
/// the low nibbles and `2i + 1` in the high nibbles.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ4K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

impl Block for BlockQ4K {
    const VALUES: usize = QK_K;
}

impl BlockQ4K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        for (i, (qs, y)) in self
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc1, m1) = scale_min_k4(2 * i, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * i + 1, &self.scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
                *l = d1 * (q & 0x0f) as f32 - min1;
                *h = d2 * (q >> 4) as f32 - min2;
            }
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per value: bit `s` of `qh[l]` is the
/// high bit of value `l` of sub-block `s`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ5K {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: [u8; 12],
    qh: [u8; QK_K / 8],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

impl Block for BlockQ5K {
    const VALUES: usize = QK_K;
}

impl BlockQ5K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let dmin = f16_to_f32(self.dmin);
        for (i, (qs, y)) in self
            .qs
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (s1, s2) = (2 * i, 2 * i + 1);
            let (sc1, m1) = scale_min_k4(s1, &self.scales);
            let (sc2, m2) = scale_min_k4(s2, &self.scales);
            let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
            let (lo, hi) = y.split_at_mut(32);
            for (((&q, &h), l), u) in qs.iter().zip(&self.qh).zip(lo).zip(hi) {
                let q1 = (q & 0x0f) | (((h >> s1) & 1) << 4);
                let q2 = (q >> 4) | (((h >> s2) & 1) << 4);
                *l = d1 * q1 as f32 - min1;
                *u = d2 * q2 as f32 - min2;
            }
        }
    }
}

/// Q6_K: 16 sub-blocks of 16; value `(d * sc) * (q - 32)` with 6-bit `q`
/// (4 low bits in `ql`, 2 high bits in `qh`) and signed 8-bit `sc`. Each
/// half of 128 values uses 64 bytes of `ql`, 32 of `qh` and 8 scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BlockQ6K {
    ql: [u8; QK_K / 2],
    qh: [u8; QK_K / 4],
    scales: [i8; QK_K / 16],
    d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

impl Block for BlockQ6K {
    const VALUES: usize = QK_K;
}

impl BlockQ6K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let halves = self
            .ql
            .chunks_exact(64)
            .zip(self.qh.chunks_exact(32))
            .zip(self.scales.chunks_exact(8))
            .zip(y.chunks_exact_mut(128));
        for (((ql, qh), sc), y) in halves {
            // Scale of each group of 16 values of this half.
            let mut ds = [0f32; 8];
            for (dsi, &s) in ds.iter_mut().zip(sc) {
                *dsi = d * s as f32;
            }
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = ds[is] * q1 as f32;
                y[l + 32] = ds[is + 2] * q2 as f32;
                y[l + 64] = ds[is + 4] * q3 as f32;
                y[l + 96] = ds[is + 6] * q4 as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        let cases: [(u16, u32); 9] = [
            (0x0000, 0x0000_0000), // +0
            (0x8000, 0x8000_0000), // -0
            (0x3c00, 0x3f80_0000), // 1
            (0xc000, 0xc000_0000), // -2
            (0x0001, 0x3380_0000), // smallest subnormal 2^-24
            (0x03ff, 0x387f_c000), // largest subnormal
            (0x7bff, 0x477f_e000), // 65504
            (0x7c00, 0x7f80_0000), // inf
            (0x7c01, 0x7f80_2000), // signalling NaN kept as is
        ];
        for (h, f) in cases {
            assert_eq!(f16_to_f32(h.to_le_bytes()).to_bits(), f, "f16 {h:#06x}");
        }
        // Every finite f16 agrees with the `half` crate.
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h.to_le_bytes());
            let theirs = half::f16::from_bits(h).to_f32();
            if !theirs.is_nan() {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "f16 {h:#06x}");
            } else {
                assert!(ours.is_nan());
            }
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1, nibbles q: low j, high 15 - j.
        let mut b = vec![0x00, 0x38, 0x00, 0xbc];
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * j as f32 - 1.0);
            assert_eq!(y[j + 16], 0.5 * (15 - j) as f32 - 1.0);
        }
    }

    #[test]
    fn sizes_are_checked() {
        let mut y = [0f32; 32];
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], &mut y),
            Err(QuantError::SizeMismatch { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], &mut y[..31]),
            Err(QuantError::SizeMismatch { .. })
        ));
        assert_eq!(
            dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut [0f32; 256]),
            Err(QuantError::Unsupported(GgmlType::IQ2_XXS))
        );
        assert!(dequantize(GgmlType::Q8_0, &[], &mut []).is_ok());
    }

    #[test]
    fn parallel_path_matches_serial() {
        // Enough Q4_1 blocks to take the parallel path, with varied bytes.
        let n = PARALLEL_MIN_VALUES * 2;
        let mut data = vec![0u8; n / 32 * 20];
        let mut x: u32 = 12345;
        for (i, b) in data.iter_mut().enumerate() {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Keep f16 scale bytes finite: clear the exponent's top bit.
            *b = if i % 20 == 1 || i % 20 == 3 {
                ((x >> 16) as u8) & 0x3b
            } else {
                (x >> 16) as u8
            };
        }
        let mut par = vec![0f32; n];
        let mut ser = vec![0f32; n];
        dequantize(GgmlType::Q4_1, &data, &mut par).unwrap();
        dequantize_serial(GgmlType::Q4_1, &data, &mut ser).unwrap();
        assert!(par
            .iter()
            .zip(&ser)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(par.iter().any(|&v| v != 0.0));
    }
}
