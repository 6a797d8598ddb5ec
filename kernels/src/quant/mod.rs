//! Quantized tensor types, their block layout, quantizers and scalar
//! reference kernels.
//!
//! Layout (see `docs/format.md`, section 6): a matrix of `rows × cols`
//! (`(out, in)`, row-major) is cut along each row into blocks of [`QK`] = 32
//! elements, and stored as planes: all quant blocks (row-major), then one
//! f16 scale per block, then (for [`TensorType::Q4m`]) one f16 minimum per
//! block. The same planes are what [`WeightsRef`] borrows from a mapped
//! `.mllm` file and what the kernels read, without conversion.
//!
//! Every type has two scalar kernels, the twins of later SIMD versions:
//! - `dot` (f32 activations): dequantizes each block inside the dot product;
//! - `dot_q8` (activations quantized to int8 per block, [`Q8Activations`]):
//!   integer products summed per block, scaled once per block, as llama.cpp
//!   does.

use crate::dispatch::{Kernels, MatmulQ8Fn};
use crate::pool::Pool;
use half::f16;
use rayon::prelude::*;
use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

pub mod baseline;
pub mod q4;
pub mod q4m;
pub mod q8;
pub mod sparse;

use sparse::{BlockQ4S24, BlockQ8S24};

/// Elements per quantization block.
pub const QK: usize = 32;

/// 32 int8 quants of a `q8` block (weights or activations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8 {
    /// Element `i` of the block.
    pub qs: [i8; QK],
}

/// 32 four-bit quants of a `q4` or `q4m` block: byte `j` holds element `j`
/// in its low nibble and element `j + 16` in its high nibble (ggml's order:
/// one mask and one shift give the two contiguous halves).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4 {
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

// The file layout depends on these exact sizes, and on the planes being
// castable from any byte offset (alignment 1) or any even one (f16).
const _: () = assert!(std::mem::size_of::<BlockQ8>() == 32);
const _: () = assert!(std::mem::align_of::<BlockQ8>() == 1);
const _: () = assert!(std::mem::size_of::<BlockQ4>() == 16);
const _: () = assert!(std::mem::align_of::<BlockQ4>() == 1);
const _: () = assert!(std::mem::size_of::<f16>() == 2);

impl BlockQ4 {
    /// Nibble `i` (0..32) of the block, 0..=15.
    #[inline]
    pub fn get(&self, i: usize) -> u8 {
        let b = self.qs[i % 16];
        if i < 16 {
            b & 0x0F
        } else {
            b >> 4
        }
    }

    /// Packs 32 nibbles (each 0..=15).
    pub fn pack(n: &[u8; QK]) -> BlockQ4 {
        let mut qs = [0u8; QK / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = (n[j] & 0x0F) | (n[j + 16] << 4);
        }
        BlockQ4 { qs }
    }
}

/// The element types a `.mllm` tensor can have. The ids are the file's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// `x = d·q`, q int8 in [-127, 127], f16 `d` per block of 32: 8.5 bits/weight.
    Q8,
    /// `x = d·(n − 8)`, n a nibble, f16 `d` per block of 32: 4.5 bits/weight.
    Q4,
    /// `x = d·n + m`, n a nibble, f16 `d` and `m` per block of 32: 5 bits/weight.
    Q4m,
    /// 2:4 sparse `q4`: per 64 inputs the 32 kept values as nibbles, a
    /// 3-bit code per group of 4 naming its 2 kept positions, and one f16
    /// scale: 3.0 bits/weight ([`sparse`]).
    Q4S24,
    /// 2:4 sparse `q8`: per 64 inputs 32 kept int8 quants, positions and
    /// one f16 scale: 5.25 bits/weight ([`sparse`]).
    Q8S24,
}

impl TensorType {
    /// Every type, in id order.
    pub const ALL: [TensorType; 7] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q8,
        TensorType::Q4,
        TensorType::Q4m,
        TensorType::Q4S24,
        TensorType::Q8S24,
    ];

    /// The id stored in the tensor table.
    pub const fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8 => 2,
            TensorType::Q4 => 3,
            TensorType::Q4m => 4,
            TensorType::Q4S24 => 5,
            TensorType::Q8S24 => 6,
        }
    }

    /// The type with this id, if any.
    pub fn from_id(id: u32) -> Option<TensorType> {
        TensorType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// Lower-case name as written in metadata ("q4m").
    pub const fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "f32",
            TensorType::F16 => "f16",
            TensorType::Q8 => "q8",
            TensorType::Q4 => "q4",
            TensorType::Q4m => "q4m",
            TensorType::Q4S24 => "q4s24",
            TensorType::Q8S24 => "q8s24",
        }
    }

    /// The type with this name, if any.
    pub fn from_name(name: &str) -> Option<TensorType> {
        TensorType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// True for the block-quantized types, whose rows must be a whole
    /// number of [`QK`]-element blocks.
    pub const fn is_quantized(self) -> bool {
        matches!(
            self,
            TensorType::Q8
                | TensorType::Q4
                | TensorType::Q4m
                | TensorType::Q4S24
                | TensorType::Q8S24
        )
    }

    /// True for the 2:4 sparse types, whose rows must be a whole number of
    /// [`sparse::SK`] = 64-element blocks.
    pub const fn is_sparse(self) -> bool {
        matches!(self, TensorType::Q4S24 | TensorType::Q8S24)
    }

    /// The dense type with the same quantization as a sparse one (`q4`
    /// for `q4s24`), or the type itself.
    pub const fn dense(self) -> TensorType {
        match self {
            TensorType::Q4S24 => TensorType::Q4,
            TensorType::Q8S24 => TensorType::Q8,
            t => t,
        }
    }

    /// The 2:4 sparse type with this type's quantization, if there is one.
    pub const fn sparse_2_4(self) -> Option<TensorType> {
        match self {
            TensorType::Q4 | TensorType::Q4S24 => Some(TensorType::Q4S24),
            TensorType::Q8 | TensorType::Q8S24 => Some(TensorType::Q8S24),
            _ => None,
        }
    }

    /// Storage cost per weight, scales and minimums included.
    pub const fn bits_per_weight(self) -> f64 {
        match self {
            TensorType::F32 => 32.0,
            TensorType::F16 => 16.0,
            TensorType::Q8 => 8.5,
            TensorType::Q4 => 4.5,
            TensorType::Q4m => 5.0,
            TensorType::Q4S24 => 3.0,
            TensorType::Q8S24 => 5.25,
        }
    }

    /// Bytes of a `rows × cols` tensor of this type, or `None` when the
    /// count overflows `u64` or `cols` is not a multiple of [`QK`] for a
    /// quantized type.
    pub fn byte_len(self, rows: u64, cols: u64) -> Option<u64> {
        let numel = rows.checked_mul(cols)?;
        if !self.is_quantized() {
            let size = if self == TensorType::F32 { 4 } else { 2 };
            return numel.checked_mul(size);
        }
        if self.is_sparse() {
            if !cols.is_multiple_of(sparse::SK as u64) {
                return None;
            }
            let block = if self == TensorType::Q4S24 { 22 } else { 40 };
            return (numel / sparse::SK as u64).checked_mul(block + 2);
        }
        if !cols.is_multiple_of(QK as u64) {
            return None;
        }
        let blocks = numel / QK as u64;
        let quants = if self == TensorType::Q8 {
            numel
        } else {
            numel / 2
        };
        let per_block_f16 = if self == TensorType::Q4m { 2 } else { 1 };
        quants.checked_add(blocks.checked_mul(2 * per_block_f16)?)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a matrix could not be quantized or viewed.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantError {
    /// Element `index` (row-major) is NaN or infinite.
    NonFinite {
        /// Row-major element index.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The block starting at element `index` needs a scale or minimum
    /// beyond the f16 range (`max_abs` is its largest magnitude).
    OutOfRange {
        /// First element of the block.
        index: usize,
        /// Largest magnitude in the block.
        max_abs: f32,
    },
    /// Lengths, shape or alignment do not fit the type.
    Layout(String),
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NonFinite { index, value } => {
                write!(f, "element {index} is {value}: cannot quantize a non-finite value")
            }
            QuantError::OutOfRange { index, max_abs } => write!(
                f,
                "block at element {index} has values up to {max_abs:e}, beyond what an f16 scale can represent"
            ),
            QuantError::Layout(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for QuantError {}

/// Index of the first non-finite value, as an error.
fn check_finite(x: &[f32]) -> Result<(), QuantError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFinite {
            index,
            value: x[index],
        }),
        None => Ok(()),
    }
}

/// Adds `offset` to the element index an error reports (a row's error
/// reported for the whole matrix).
fn shift_error(e: QuantError, offset: usize) -> QuantError {
    match e {
        QuantError::NonFinite { index, value } => QuantError::NonFinite {
            index: index + offset,
            value,
        },
        QuantError::OutOfRange { index, max_abs } => QuantError::OutOfRange {
            index: index + offset,
            max_abs,
        },
        other => other,
    }
}

/// The planes of a matrix, borrowed: typed slices in the file's layout.
#[derive(Clone, Copy, Debug)]
pub enum Planes<'a> {
    /// `rows · cols` values.
    F32(&'a [f32]),
    /// `rows · cols` values.
    F16(&'a [f16]),
    /// `rows · nb` blocks and as many scales.
    Q8 {
        /// Quant blocks, row-major.
        quants: &'a [BlockQ8],
        /// One scale per block.
        scales: &'a [f16],
    },
    /// `rows · nb` blocks and as many scales.
    Q4 {
        /// Quant blocks, row-major.
        quants: &'a [BlockQ4],
        /// One scale per block.
        scales: &'a [f16],
    },
    /// `rows · nb` blocks, scales and minimums.
    Q4m {
        /// Quant blocks, row-major.
        quants: &'a [BlockQ4],
        /// One scale per block.
        scales: &'a [f16],
        /// One minimum per block.
        mins: &'a [f16],
    },
    /// `rows · cols / 64` sparse blocks and as many scales.
    Q4S24 {
        /// Sparse blocks, row-major.
        blocks: &'a [BlockQ4S24],
        /// One scale per block.
        scales: &'a [f16],
    },
    /// `rows · cols / 64` sparse blocks and as many scales.
    Q8S24 {
        /// Sparse blocks, row-major.
        blocks: &'a [BlockQ8S24],
        /// One scale per block.
        scales: &'a [f16],
    },
}

impl Planes<'_> {
    /// The element type.
    pub fn ty(&self) -> TensorType {
        match self {
            Planes::F32(_) => TensorType::F32,
            Planes::F16(_) => TensorType::F16,
            Planes::Q8 { .. } => TensorType::Q8,
            Planes::Q4 { .. } => TensorType::Q4,
            Planes::Q4m { .. } => TensorType::Q4m,
            Planes::Q4S24 { .. } => TensorType::Q4S24,
            Planes::Q8S24 { .. } => TensorType::Q8S24,
        }
    }
}

/// A `rows × cols` weight matrix `(out, in)` in any [`TensorType`],
/// borrowed (typically from a mapped file). Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct WeightsRef<'a> {
    rows: usize,
    cols: usize,
    planes: Planes<'a>,
}

/// One token's quantized activations, as the `dot_q8` kernels take them.
#[derive(Clone, Copy, Debug)]
pub struct Q8Row<'a> {
    /// `cols / 32` blocks.
    pub quants: &'a [BlockQ8],
    /// One f32 scale per block: `x ≈ scale · q`.
    pub scales: &'a [f32],
    /// Per block, the sum of its 32 quants (for `q4m`'s minimum term).
    pub sums: &'a [i32],
}

impl<'a> WeightsRef<'a> {
    /// Checks that the planes hold exactly `rows × cols` elements.
    pub fn new(rows: usize, cols: usize, planes: Planes<'a>) -> Result<Self, QuantError> {
        let ty = planes.ty();
        let numel = rows
            .checked_mul(cols)
            .ok_or_else(|| QuantError::Layout(format!("{rows} × {cols} overflows")))?;
        if ty.is_quantized() && !cols.is_multiple_of(QK) {
            return Err(QuantError::Layout(format!(
                "{ty} needs a multiple of {QK} columns, got {cols}"
            )));
        }
        if ty.is_sparse() && !cols.is_multiple_of(sparse::SK) {
            return Err(QuantError::Layout(format!(
                "{ty} needs a multiple of {} columns, got {cols}",
                sparse::SK
            )));
        }
        let nblocks = numel / QK;
        let nsparse = numel / sparse::SK;
        let ok = match planes {
            Planes::F32(v) => v.len() == numel,
            Planes::F16(v) => v.len() == numel,
            Planes::Q8 { quants, scales } => quants.len() == nblocks && scales.len() == nblocks,
            Planes::Q4 { quants, scales } => quants.len() == nblocks && scales.len() == nblocks,
            Planes::Q4m {
                quants,
                scales,
                mins,
            } => quants.len() == nblocks && scales.len() == nblocks && mins.len() == nblocks,
            Planes::Q4S24 { blocks, scales } => blocks.len() == nsparse && scales.len() == nsparse,
            Planes::Q8S24 { blocks, scales } => blocks.len() == nsparse && scales.len() == nsparse,
        };
        if !ok {
            return Err(QuantError::Layout(format!(
                "{ty} planes do not hold a {rows} × {cols} matrix"
            )));
        }
        Ok(WeightsRef { rows, cols, planes })
    }

    /// Views the bytes of a tensor in the file layout (little-endian planes
    /// back to back, see [`TensorType::byte_len`]). Fails when the length
    /// does not match, when `bytes` is not aligned for its element type
    /// (4 for f32, 2 otherwise; file tensors are 64-aligned), or on a
    /// big-endian host.
    pub fn from_le_bytes(
        ty: TensorType,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, QuantError> {
        if cfg!(target_endian = "big") {
            return Err(QuantError::Layout(
                "big-endian hosts are not supported".into(),
            ));
        }
        let want = ty.byte_len(rows as u64, cols as u64).ok_or_else(|| {
            QuantError::Layout(format!("{ty} cannot hold a {rows} × {cols} matrix"))
        })?;
        if bytes.len() as u64 != want {
            return Err(QuantError::Layout(format!(
                "{ty} {rows} × {cols} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        let misaligned = |_| QuantError::Layout(format!("{ty} data is not aligned"));
        let f16s = |b: &'a [u8]| bytemuck::try_cast_slice::<u8, f16>(b).map_err(misaligned);
        // Lengths are known to fit: `want` matched and was computed checked.
        let numel = rows * cols;
        let nblocks = numel / QK;
        let planes = match ty {
            TensorType::F32 => Planes::F32(bytemuck::try_cast_slice(bytes).map_err(misaligned)?),
            TensorType::F16 => Planes::F16(f16s(bytes)?),
            TensorType::Q8 => {
                let (q, s) = bytes.split_at(numel);
                Planes::Q8 {
                    quants: bytemuck::cast_slice(q),
                    scales: f16s(s)?,
                }
            }
            TensorType::Q4 => {
                let (q, s) = bytes.split_at(numel / 2);
                Planes::Q4 {
                    quants: bytemuck::cast_slice(q),
                    scales: f16s(s)?,
                }
            }
            TensorType::Q4m => {
                let (q, rest) = bytes.split_at(numel / 2);
                let (s, m) = rest.split_at(nblocks * 2);
                Planes::Q4m {
                    quants: bytemuck::cast_slice(q),
                    scales: f16s(s)?,
                    mins: f16s(m)?,
                }
            }
            TensorType::Q4S24 => {
                let (q, s) = bytes.split_at(numel / sparse::SK * std::mem::size_of::<BlockQ4S24>());
                Planes::Q4S24 {
                    blocks: bytemuck::cast_slice(q),
                    scales: f16s(s)?,
                }
            }
            TensorType::Q8S24 => {
                let (q, s) = bytes.split_at(numel / sparse::SK * 40);
                Planes::Q8S24 {
                    blocks: bytemuck::cast_slice(q),
                    scales: f16s(s)?,
                }
            }
        };
        WeightsRef::new(rows, cols, planes)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.planes.ty()
    }

    /// The typed planes.
    pub fn planes(&self) -> Planes<'a> {
        self.planes
    }

    /// The plane that holds the values (f32/f16 data, quant or sparse
    /// blocks) as a byte pointer, and its bytes per row: what a decode
    /// kernel streams through, for [`crate::x86`]'s prefetching.
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn value_rows(&self) -> (*const u8, usize) {
        fn bytes<T>(v: &[T], rows: usize) -> (*const u8, usize) {
            (
                v.as_ptr() as *const u8,
                std::mem::size_of_val(v) / rows.max(1),
            )
        }
        let r = self.rows;
        match self.planes {
            Planes::F32(v) => bytes(v, r),
            Planes::F16(v) => bytes(v, r),
            Planes::Q8 { quants, .. } => bytes(quants, r),
            Planes::Q4 { quants, .. } | Planes::Q4m { quants, .. } => bytes(quants, r),
            Planes::Q4S24 { blocks, .. } => bytes(blocks, r),
            Planes::Q8S24 { blocks, .. } => bytes(blocks, r),
        }
    }

    /// Writes row `r` as f32 into `out` (`cols` values): an embedding
    /// lookup, or a reference for tests.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "dequantize_row: row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: out is not one row");
        let (c, nb) = (self.cols, self.cols / QK);
        let blocks = r * nb..(r + 1) * nb;
        match self.planes {
            Planes::F32(v) => out.copy_from_slice(&v[r * c..(r + 1) * c]),
            Planes::F16(v) => {
                for (o, h) in out.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = h.to_f32();
                }
            }
            Planes::Q8 { quants, scales } => {
                q8::dequantize_row(&quants[blocks.clone()], &scales[blocks], out)
            }
            Planes::Q4 { quants, scales } => {
                q4::dequantize_row(&quants[blocks.clone()], &scales[blocks], out)
            }
            Planes::Q4m {
                quants,
                scales,
                mins,
            } => q4m::dequantize_row(
                &quants[blocks.clone()],
                &scales[blocks.clone()],
                &mins[blocks],
                out,
            ),
            Planes::Q4S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dequantize_row_q4s24(&b[sb.clone()], &scales[sb], out)
            }
            Planes::Q8S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dequantize_row_q8s24(&b[sb.clone()], &scales[sb], out)
            }
        }
    }

    /// The sparse blocks of row `r` (64 inputs each).
    #[inline]
    fn sparse_blocks(&self, r: usize) -> std::ops::Range<usize> {
        let nb = self.cols / sparse::SK;
        r * nb..(r + 1) * nb
    }

    /// The whole matrix as f32 (tests and tools; the kernels never need it).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        if self.cols > 0 {
            for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
                self.dequantize_row(r, row);
            }
        }
        out
    }

    /// Dot product of row `r` with `x` (`cols` f32 values), each block
    /// dequantized inside the product.
    #[inline]
    pub fn dot_row(&self, r: usize, x: &[f32]) -> f32 {
        let (c, nb) = (self.cols, self.cols / QK);
        let blocks = r * nb..(r + 1) * nb;
        match self.planes {
            Planes::F32(v) => crate::f32::dot(&v[r * c..(r + 1) * c], x),
            Planes::F16(v) => f16_dot(&v[r * c..(r + 1) * c], x),
            Planes::Q8 { quants, scales } => q8::dot(&quants[blocks.clone()], &scales[blocks], x),
            Planes::Q4 { quants, scales } => q4::dot(&quants[blocks.clone()], &scales[blocks], x),
            Planes::Q4m {
                quants,
                scales,
                mins,
            } => q4m::dot(
                &quants[blocks.clone()],
                &scales[blocks.clone()],
                &mins[blocks],
                x,
            ),
            Planes::Q4S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dot_q4s24(
                    crate::dispatch::kernels().isa,
                    &b[sb.clone()],
                    &scales[sb],
                    x,
                )
            }
            Planes::Q8S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dot_q8s24(
                    crate::dispatch::kernels().isa,
                    &b[sb.clone()],
                    &scales[sb],
                    x,
                )
            }
        }
    }

    /// Integer dot product of row `r` with one token's int8 activations.
    ///
    /// # Panics
    /// For f32 and f16 weights, which have no integer kernel.
    #[inline]
    pub fn dot_row_q8(&self, r: usize, a: Q8Row<'_>) -> f32 {
        let nb = self.cols / QK;
        let blocks = r * nb..(r + 1) * nb;
        match self.planes {
            Planes::Q8 { quants, scales } => {
                q8::dot_q8(&quants[blocks.clone()], &scales[blocks], a)
            }
            Planes::Q4 { quants, scales } => {
                q4::dot_q8(&quants[blocks.clone()], &scales[blocks], a)
            }
            Planes::Q4m {
                quants,
                scales,
                mins,
            } => q4m::dot_q8(
                &quants[blocks.clone()],
                &scales[blocks.clone()],
                &mins[blocks],
                a,
            ),
            Planes::Q4S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dot_q8_q4s24(&b[sb.clone()], &scales[sb], a)
            }
            Planes::Q8S24 { blocks: b, scales } => {
                let sb = self.sparse_blocks(r);
                sparse::dot_q8_q8s24(&b[sb.clone()], &scales[sb], a)
            }
            Planes::F32(_) | Planes::F16(_) => {
                panic!("dot_row_q8: {} weights have no int8 kernel", self.ty())
            }
        }
    }

    /// `out (n, rows) = x (n, cols) · Wᵀ` with f32 activations, each block
    /// of `W` dequantized inside the product (never the whole matrix), on
    /// the active tier ([`crate::dispatch::kernels`]) and the global
    /// [`crate::pool`].
    pub fn matmul(&self, out: &mut [f32], x: &[f32], n: usize) {
        self.matmul_with(crate::dispatch::kernels(), crate::pool::global(), out, x, n)
    }

    /// [`WeightsRef::matmul`] on a given tier and pool.
    pub fn matmul_with(&self, k: &Kernels, pool: &Pool, out: &mut [f32], x: &[f32], n: usize) {
        assert_eq!(x.len(), n * self.cols, "matmul: x is not (n, cols)");
        self.matmul_act_with(k, pool, out, &F32Activations::new(x, n, self.cols))
    }

    /// [`WeightsRef::matmul`] on activations that several matrices share
    /// (the query, key and value projections), so that a kernel's
    /// arrangement of them is made once.
    pub fn matmul_act(&self, out: &mut [f32], x: &F32Activations<'_>) {
        self.matmul_act_with(crate::dispatch::kernels(), crate::pool::global(), out, x)
    }

    /// [`WeightsRef::matmul_act`] on a given tier and pool.
    pub fn matmul_act_with(
        &self,
        k: &Kernels,
        pool: &Pool,
        out: &mut [f32],
        x: &F32Activations<'_>,
    ) {
        assert_eq!(x.cols(), self.cols, "matmul: x is not (n, cols)");
        let n = x.n();
        assert_eq!(out.len(), n * self.rows, "matmul: out is not (n, rows)");
        match k.f32_cols_for(self, n) {
            Some(c) => {
                (c.prepare)(self, x, pool);
                let per = prompt_columns_per_task(self.rows, pool);
                pool.for_column_blocks(out, n, self.rows, per, &|_, o| (c.f)(self, x, o));
            }
            _ => {
                let f = k.matmul_f32;
                par_row_blocks(pool, out, n, self.rows, self.cols, &|rows, o| {
                    f(self, rows, x, o)
                });
            }
        }
    }

    /// [`WeightsRef::matmul_q8_with`] for several matrices that take the
    /// same input, `outs[j] = x · ws[j]ᵀ`: for one token, one pool job for
    /// all of them (decode's query, key and value projections; gate and
    /// up), so that the threads meet once instead of once per matrix.
    ///
    /// # Panics
    /// As [`WeightsRef::matmul_q8_with`], for any of the matrices.
    pub fn matmul_q8_many_with(
        k: &Kernels,
        pool: &Pool,
        ws: &[&WeightsRef<'_>],
        outs: &mut [&mut [f32]],
        x: &Q8Activations,
    ) {
        assert_eq!(
            ws.len(),
            outs.len(),
            "matmul_q8_many: one output per matrix"
        );
        if x.n() != 1 {
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                w.matmul_q8_with(k, pool, o, x);
            }
            return;
        }
        let fs: Vec<MatmulQ8Fn> = ws
            .iter()
            .zip(outs.iter())
            .map(|(w, o)| w.q8_kernel(k, o, x))
            .collect();
        let per: Vec<usize> = ws
            .iter()
            .map(|w| rows_per_task(w.rows, w.cols, pool.threads()))
            .collect();
        pool.for_chunks_multi(outs, &per, &|j, i, o| {
            let r0 = i * per[j];
            fs[j](ws[j], r0..r0 + o.len(), x, o)
        });
    }

    /// `out (n, rows) = x · Wᵀ` with `x` quantized to int8 per block
    /// ([`Q8Activations`]): integer products within each block, one float
    /// multiply-add per block; on the active tier and the global pool.
    ///
    /// # Panics
    /// For f32 and f16 weights, or when `x` is not `cols` wide.
    pub fn matmul_q8(&self, out: &mut [f32], x: &Q8Activations) {
        self.matmul_q8_with(crate::dispatch::kernels(), crate::pool::global(), out, x)
    }

    /// [`WeightsRef::matmul_q8`] on a given tier and pool.
    pub fn matmul_q8_with(&self, k: &Kernels, pool: &Pool, out: &mut [f32], x: &Q8Activations) {
        if let Some(c) = k.q8_cols_for(self, x.n()) {
            self.check_q8_shapes(out, x);
            (c.prepare)(x, pool);
            let per = prompt_columns_per_task(self.rows, pool);
            pool.for_column_blocks(out, x.n(), self.rows, per, &|_, o| (c.f)(self, x, o));
            return;
        }
        let f = self.q8_kernel(k, out, x);
        par_row_blocks(pool, out, x.n(), self.rows, self.cols, &|rows, o| {
            f(self, rows, x, o)
        });
    }

    /// The int8 kernel for these weights on `k`, after checking the shapes
    /// of `x` and `out` and arranging `x` for it ([`Kernels::prepare_q8`]).
    fn q8_kernel(&self, k: &Kernels, out: &[f32], x: &Q8Activations) -> MatmulQ8Fn {
        let f = k
            .matmul_q8_for(self)
            .unwrap_or_else(|| panic!("matmul_q8: {} weights have no int8 kernel", self.ty()));
        self.check_q8_shapes(out, x);
        (k.prepare_q8)(self, x);
        f
    }

    /// Panics unless `x` is `(n, cols)` and `out` `(n, rows)`.
    fn check_q8_shapes(&self, out: &[f32], x: &Q8Activations) {
        assert_eq!(x.cols(), self.cols, "matmul_q8: x is not (n, cols)");
        assert_eq!(
            out.len(),
            x.n() * self.rows,
            "matmul_q8: out is not (n, rows)"
        );
    }
}

/// Weight rows per task of an in-place prompt kernel: one column block per
/// thread, since each task reads all of the activations (so few, large
/// tasks), in whole groups of 32 rows, what the kernels take at a time (a
/// part-filled group costs a whole one).
fn prompt_columns_per_task(rows: usize, pool: &Pool) -> usize {
    rows.div_ceil(32).div_ceil(pool.threads().max(1)) * 32
}

/// Weight rows per task: about 16 KiB of q4 weights, at least 16 rows (a
/// whole number of the kernels' row tiles) and at least four tasks per
/// thread, so that a core slowed by another process hands work over.
fn rows_per_task(rows: usize, cols: usize, threads: usize) -> usize {
    let by_size = (32 * 1024 / cols.max(1)).max(16);
    let by_balance = rows.div_ceil(4 * threads.max(1)).max(16);
    by_size.min(by_balance).next_multiple_of(16)
}

/// Fills `out (n, rows)` by calling `f(row range, out_t block)` on blocks of
/// weight rows over `pool`, where each block is `(rows, n)` row-major; for
/// `n > 1` each task transposes its block into `out`.
fn par_row_blocks(
    pool: &Pool,
    out: &mut [f32],
    n: usize,
    rows: usize,
    cols: usize,
    f: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) {
    if n == 0 || rows == 0 {
        return;
    }
    let per = rows_per_task(rows, cols, pool.threads());
    if n == 1 {
        pool.for_chunks(out, per, &|i, o| {
            let r0 = i * per;
            f(r0..r0 + o.len(), o)
        });
    } else {
        pool.for_row_blocks_transposed(out, n, rows, per, &|i, o| {
            let r0 = i * per;
            f(r0..r0 + o.len() / n, o)
        });
    }
}

/// Dot product of f16 weights with f32 values (eight partial sums, as
/// [`crate::f32::dot`]).
fn f16_dot(w: &[f16], x: &[f32]) -> f32 {
    assert_eq!(w.len(), x.len(), "dot: length mismatch");
    let mut acc = [0.0f32; 8];
    let mut cw = w.chunks_exact(8);
    let mut cx = x.chunks_exact(8);
    for (a, b) in (&mut cw).zip(&mut cx) {
        for i in 0..8 {
            acc[i] += a[i].to_f32() * b[i];
        }
    }
    let mut tail = 0.0f32;
    for (a, b) in cw.remainder().iter().zip(cx.remainder()) {
        tail += a.to_f32() * b;
    }
    sum8(acc) + tail
}

/// `v` clamped to `[lo, hi]` and rounded to the nearest integer (ties to
/// even), for `lo`, `hi` integers of magnitude below 2^22. Adding and
/// subtracting 1.5·2^23 rounds in the FPU's default mode and, unlike
/// `f32::round` on baseline x86-64 (a libm call), vectorizes.
#[inline(always)]
pub(crate) fn round_clamped(v: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v.clamp(lo, hi) + MAGIC) - MAGIC
}

/// Pairwise sum of eight partial sums.
#[inline]
pub(crate) fn sum8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// A quantized matrix that owns its planes: what the quantizers produce
/// and the writer stores.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeights {
    ty: TensorType,
    rows: usize,
    cols: usize,
    /// `BlockQ8` or `BlockQ4` bytes, row-major.
    quants: Vec<u8>,
    scales: Vec<f16>,
    /// Empty unless `ty` is `Q4m`.
    mins: Vec<f16>,
}

impl QuantizedWeights {
    /// Quantizes a row-major `rows × cols` matrix to `ty` (`q8`, `q4` or
    /// `q4m`), in parallel over rows. `cols` must be a multiple of 32.
    /// NaN or infinite values, and blocks beyond the f16 scale range, are
    /// an error naming the element.
    pub fn quantize(
        ty: TensorType,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<QuantizedWeights, QuantError> {
        if !ty.is_quantized() {
            return Err(QuantError::Layout(format!("{ty} is not a quantized type")));
        }
        if ty.is_sparse() {
            return sparse_quantize(ty, x, rows, cols);
        }
        let numel = rows
            .checked_mul(cols)
            .filter(|&n| n == x.len())
            .ok_or_else(|| {
                QuantError::Layout(format!(
                    "{} values are not a {rows} × {cols} matrix",
                    x.len()
                ))
            })?;
        if !cols.is_multiple_of(QK) {
            return Err(QuantError::Layout(format!(
                "{ty} needs a multiple of {QK} columns, got {cols}"
            )));
        }
        // Report the first bad value deterministically before going parallel.
        check_finite(x)?;
        let nb = cols / QK;
        let quant_bytes = if ty == TensorType::Q8 { QK } else { QK / 2 };
        let mut quants = vec![0u8; numel / QK * quant_bytes];
        let mut scales = vec![f16::ZERO; numel / QK];
        let mut mins = vec![f16::ZERO; if ty == TensorType::Q4m { numel / QK } else { 0 }];
        if numel > 0 {
            let row_q = nb * quant_bytes;
            let mins_rows: Vec<&mut [f16]> = if ty == TensorType::Q4m {
                mins.chunks_mut(nb).collect()
            } else {
                (0..rows).map(|_| <&mut [f16]>::default()).collect()
            };
            let errors = quants
                .par_chunks_mut(row_q)
                .zip(scales.par_chunks_mut(nb))
                .zip(mins_rows)
                .enumerate()
                .filter_map(|(r, ((q, s), m))| {
                    let xr = &x[r * cols..(r + 1) * cols];
                    let res = match ty {
                        TensorType::Q8 => q8::quantize_row(xr, bytemuck::cast_slice_mut(q), s),
                        TensorType::Q4 => q4::quantize_row(xr, bytemuck::cast_slice_mut(q), s),
                        _ => q4m::quantize_row(xr, bytemuck::cast_slice_mut(q), s, m),
                    };
                    res.err().map(|e| (r, shift_error(e, r * cols)))
                });
            first_row_error(errors)?;
        }
        Ok(QuantizedWeights {
            ty,
            rows,
            cols,
            quants,
            scales,
            mins,
        })
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.ty
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// A borrowed view for the kernels.
    pub fn as_ref(&self) -> WeightsRef<'_> {
        let planes = match self.ty {
            TensorType::Q8 => Planes::Q8 {
                quants: bytemuck::cast_slice(&self.quants),
                scales: &self.scales,
            },
            TensorType::Q4 => Planes::Q4 {
                quants: bytemuck::cast_slice(&self.quants),
                scales: &self.scales,
            },
            TensorType::Q4S24 => Planes::Q4S24 {
                blocks: bytemuck::cast_slice(&self.quants),
                scales: &self.scales,
            },
            TensorType::Q8S24 => Planes::Q8S24 {
                blocks: bytemuck::cast_slice(&self.quants),
                scales: &self.scales,
            },
            _ => Planes::Q4m {
                quants: bytemuck::cast_slice(&self.quants),
                scales: &self.scales,
                mins: &self.mins,
            },
        };
        WeightsRef {
            rows: self.rows,
            cols: self.cols,
            planes,
        }
    }

    /// The bytes as stored in a `.mllm` file: planes back to back,
    /// little-endian.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.quants.len() + 2 * (self.scales.len() + self.mins.len()));
        out.extend_from_slice(&self.quants);
        for s in self.scales.iter().chain(&self.mins) {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
}

/// The error of the first failing row among `(row, error)` pairs from a
/// parallel pass over the rows, not of the first row a thread reached: the
/// message does not depend on the threads' timing.
fn first_row_error(
    errors: impl rayon::iter::ParallelIterator<Item = (usize, QuantError)>,
) -> Result<(), QuantError> {
    errors
        .min_by_key(|&(r, _)| r)
        .map_or(Ok(()), |(_, e)| Err(e))
}

/// [`QuantizedWeights::quantize`] for the 2:4 sparse types: every group
/// of 4 inputs must hold at most 2 non-zero values.
fn sparse_quantize(
    ty: TensorType,
    x: &[f32],
    rows: usize,
    cols: usize,
) -> Result<QuantizedWeights, QuantError> {
    let sk = sparse::SK;
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(QuantError::Layout(format!(
            "{} values are not a {rows} × {cols} matrix",
            x.len()
        )));
    }
    if !cols.is_multiple_of(sk) {
        return Err(QuantError::Layout(format!(
            "{ty} needs a multiple of {sk} columns, got {cols}"
        )));
    }
    check_finite(x)?;
    let nb = cols / sk;
    let block_bytes = if ty == TensorType::Q4S24 { 22 } else { 40 };
    let mut quants = vec![0u8; x.len() / sk * block_bytes];
    let mut scales = vec![f16::ZERO; x.len() / sk];
    if !x.is_empty() {
        let errors = quants
            .par_chunks_mut(nb * block_bytes)
            .zip(scales.par_chunks_mut(nb))
            .enumerate()
            .filter_map(|(r, (q, s))| {
                let xr = &x[r * cols..(r + 1) * cols];
                let res = if ty == TensorType::Q4S24 {
                    sparse::quantize_row_q4s24(xr, bytemuck::cast_slice_mut(q), s)
                } else {
                    sparse::quantize_row_q8s24(xr, bytemuck::cast_slice_mut(q), s)
                };
                res.err().map(|e| match e {
                    QuantError::Layout(m) => (r, QuantError::Layout(format!("row {r}: {m}"))),
                    e => (r, shift_error(e, r * cols)),
                })
            });
        first_row_error(errors)?;
    }
    Ok(QuantizedWeights {
        ty,
        rows,
        cols,
        quants,
        scales,
        mins: Vec::new(),
    })
}

/// Encodes a row-major `rows × cols` f32 matrix as the bytes a `.mllm`
/// tensor of type `ty` holds. For f16, values beyond the f16 range are an
/// error rather than infinities.
pub fn encode(ty: TensorType, x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>, QuantError> {
    if rows.checked_mul(cols) != Some(x.len()) {
        return Err(QuantError::Layout(format!(
            "{} values are not a {rows} × {cols} matrix",
            x.len()
        )));
    }
    check_finite(x)?;
    match ty {
        TensorType::F32 => Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect()),
        TensorType::F16 => {
            let mut out = Vec::with_capacity(x.len() * 2);
            for (i, &v) in x.iter().enumerate() {
                let h = f16::from_f32(v);
                if h.is_infinite() {
                    return Err(QuantError::OutOfRange {
                        index: i,
                        max_abs: v.abs(),
                    });
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            Ok(out)
        }
        _ => Ok(QuantizedWeights::quantize(ty, x, rows, cols)?.to_le_bytes()),
    }
}

/// Quantizes whole blocks of 32 activations to int8, the scalar twin of
/// every tier's `quantize_q8`: per block `d = max|x| / 127`,
/// `q = round_ties_even(x · (1 / d))` clamped to ±127 (a zero block gets
/// `d = 0` and zeros), and the sum of the block's quants.
///
/// A NaN or infinite value makes the block's scale NaN, so the outputs that
/// use it are NaN: the error propagates instead of turning into plausible
/// numbers.
///
/// # Panics
/// When the lengths do not agree (`x.len() = 32 · quants.len()`).
pub fn quantize_q8_blocks(x: &[f32], quants: &mut [BlockQ8], scales: &mut [f32], sums: &mut [i32]) {
    assert!(
        x.len() == quants.len() * QK && scales.len() == quants.len() && sums.len() == quants.len(),
        "quantize_q8_blocks: lengths"
    );
    for (((xb, q), s), sum) in x.chunks_exact(QK).zip(quants).zip(scales).zip(sums) {
        let amax = abs_max(xb);
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut total = 0i32;
        for (qi, &v) in q.qs.iter_mut().zip(xb) {
            // `as` saturates and maps NaN to 0; the NaN scale carries it.
            *qi = (v * id).round_ties_even().clamp(-127.0, 127.0) as i8;
            total += *qi as i32;
        }
        *s = if amax.is_finite() { d } else { f32::NAN };
        *sum = total;
    }
}

/// `max |x|`, NaN if any value is NaN (a fold that keeps NaN, which
/// `f32::max` would drop).
pub(crate) fn abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| {
        if v.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(v.abs())
        }
    })
}

/// Activations `(n, cols)` quantized to int8 per block of 32 with an f32
/// scale `max|x| / 127` (round to nearest), for the integer kernels.
///
/// A NaN or infinite activation makes its block's scale NaN, so the
/// outputs that use the block are NaN: the error propagates instead of
/// turning into plausible numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Q8Activations {
    n: usize,
    cols: usize,
    quants: Vec<BlockQ8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    layouts: LayoutCache,
}

/// f32 activations `x (n, cols)`, row-major by token, as the f32 matrix
/// kernels take them: a borrowed view plus the kernels' own arrangements of
/// it (see [`Q8Activations::layout`]), so that a kernel that repacks its
/// input (the AMX tier's bf16 tiles) does it once per input, not once per
/// pool task or per matrix.
#[derive(Debug)]
pub struct F32Activations<'a> {
    x: &'a [f32],
    n: usize,
    cols: usize,
    layouts: LayoutCache,
}

impl<'a> F32Activations<'a> {
    /// A view of `x (n, cols)`.
    ///
    /// # Panics
    /// When `x` is not `n × cols`.
    pub fn new(x: &'a [f32], n: usize, cols: usize) -> F32Activations<'a> {
        assert_eq!(
            Some(x.len()),
            n.checked_mul(cols),
            "activations: x is not (n, cols)"
        );
        F32Activations {
            x,
            n,
            cols,
            layouts: LayoutCache::default(),
        }
    }

    /// The values, `(n, cols)` row-major.
    pub fn data(&self) -> &'a [f32] {
        self.x
    }

    /// Tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// As [`Q8Activations::layout`].
    pub fn layout<T: Any + Send + Sync>(&self, slot: usize, build: impl FnOnce() -> T) -> &T {
        self.layouts.get(slot, build)
    }
}

/// Kernels' own arrangements of one set of activations, built once (by the
/// first pool task that needs it) and shared by every task and every matrix
/// that takes these activations. Not part of the value: equal always.
#[derive(Clone, Default)]
struct LayoutCache([OnceLock<Arc<dyn Any + Send + Sync>>; LayoutCache::SLOTS]);

impl LayoutCache {
    const SLOTS: usize = 5;

    /// The arrangement in `slot`, built by `build` on first use.
    fn get<T: Any + Send + Sync>(&self, slot: usize, build: impl FnOnce() -> T) -> &T {
        self.0[slot]
            .get_or_init(|| Arc::new(build()))
            .downcast_ref::<T>()
            .expect("layout: the slot holds another type")
    }
}

impl fmt::Debug for LayoutCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayoutCache")
    }
}

impl PartialEq for LayoutCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Q8Activations {
    /// Quantizes `x (n, cols)` on the active tier (every tier gives the
    /// same bits).
    ///
    /// # Panics
    /// When `cols` is not a multiple of 32 or `x` is not `n × cols`.
    pub fn quantize(x: &[f32], n: usize, cols: usize) -> Q8Activations {
        let mut a = Q8Activations {
            n: 0,
            cols,
            quants: Vec::new(),
            scales: Vec::new(),
            sums: Vec::new(),
            layouts: LayoutCache::default(),
        };
        a.requantize_with(crate::dispatch::kernels(), x, n, cols);
        a
    }

    /// Quantizes `x (n, cols)` into this buffer, reusing its memory, with
    /// the kernel of tier `k`.
    ///
    /// # Panics
    /// When `cols` is not a multiple of 32 or `x` is not `n × cols`.
    pub fn requantize_with(&mut self, k: &Kernels, x: &[f32], n: usize, cols: usize) {
        assert_eq!(
            cols % QK,
            0,
            "Q8Activations: cols must be a multiple of {QK}"
        );
        assert_eq!(x.len(), n * cols, "Q8Activations: x is not (n, cols)");
        let nblocks = x.len() / QK;
        self.n = n;
        self.cols = cols;
        self.quants.resize(nblocks, BlockQ8 { qs: [0; QK] });
        self.scales.resize(nblocks, 0.0);
        self.sums.resize(nblocks, 0);
        (k.quantize_q8)(x, &mut self.quants, &mut self.scales, &mut self.sums);
        self.layouts = LayoutCache::default();
    }

    /// The arrangement `build` makes of these activations, built on first
    /// use and kept until they are quantized again: a kernel that reorders
    /// activations does it once per matrix input, not once per task.
    /// `slot` (below 4) names the arrangement; one slot holds one type.
    ///
    /// # Panics
    /// When `slot` is out of range or already holds another type.
    pub fn layout<T: Any + Send + Sync>(&self, slot: usize, build: impl FnOnce() -> T) -> &T {
        self.layouts.get(slot, build)
    }

    /// Tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Token `t`'s blocks.
    pub fn row(&self, t: usize) -> Q8Row<'_> {
        let nb = self.cols / QK;
        let b = t * nb..(t + 1) * nb;
        Q8Row {
            quants: &self.quants[b.clone()],
            scales: &self.scales[b.clone()],
            sums: &self.sums[b],
        }
    }

    /// The values the quantized activations stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.n * self.cols);
        for (q, &d) in self.quants.iter().zip(&self.scales) {
            out.extend(q.qs.iter().map(|&v| d * v as f32));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_and_names_round_trip() {
        for t in TensorType::ALL {
            assert_eq!(TensorType::from_id(t.id()), Some(t));
            assert_eq!(TensorType::from_name(t.name()), Some(t));
        }
        assert_eq!(TensorType::from_id(7), None);
        assert_eq!(TensorType::from_name("Q4"), None);
    }

    #[test]
    fn byte_len_matches_bits_per_weight_and_checks_overflow() {
        for t in TensorType::ALL {
            let bytes = t.byte_len(3, 64).unwrap();
            assert_eq!(bytes as f64 * 8.0, t.bits_per_weight() * 3.0 * 64.0, "{t}");
        }
        assert_eq!(TensorType::Q4.byte_len(1, 33), None);
        assert_eq!(TensorType::F32.byte_len(1, 33), Some(132));
        assert_eq!(TensorType::F32.byte_len(u64::MAX / 2, 3), None);
        assert_eq!(TensorType::F32.byte_len(u64::MAX / 4, 2), None);
        // The element count fits, the bytes (34 per 32 elements) do not.
        assert_eq!(TensorType::Q8.byte_len(u64::MAX / 32, 32), None);
        assert!(TensorType::Q4m.byte_len(u64::MAX / 32, 32).is_some());
    }

    #[test]
    fn activation_layouts_are_built_once_and_dropped_on_requantize() {
        let k = &crate::dispatch::SCALAR;
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut a = Q8Activations::quantize(&x, 2, 32);
        let builds = std::cell::Cell::new(0);
        let first = *a.layout(1, || {
            builds.set(builds.get() + 1);
            a.row(1).sums[0]
        });
        assert_eq!(*a.layout(1, || -> i32 { unreachable!() }), first);
        assert_eq!(builds.get(), 1);
        let y: Vec<f32> = x.iter().map(|v| -v).collect();
        a.requantize_with(k, &y, 2, 32);
        assert_eq!(*a.layout(1, || a.row(1).sums[0]), -first);
        assert_eq!(a, Q8Activations::quantize(&y, 2, 32));
    }

    #[test]
    fn nibble_pack_order() {
        let n: [u8; 32] = std::array::from_fn(|i| (i % 16) as u8);
        let b = BlockQ4::pack(&n);
        assert_eq!(b.qs[0], 0x00);
        assert_eq!(b.qs[1], 0x11);
        // Element 3 low, element 19 (= 3 mod 16) high.
        assert_eq!(b.qs[3] & 0x0F, 3);
        assert_eq!(b.qs[3] >> 4, 3);
        for (i, &v) in n.iter().enumerate() {
            assert_eq!(b.get(i), v);
        }
        let m: [u8; 32] = std::array::from_fn(|i| if i < 16 { 1 } else { 14 });
        assert!(BlockQ4::pack(&m).qs.iter().all(|&b| b == 0xE1));
    }
}
