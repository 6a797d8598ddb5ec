//! Weights in memory: owned f32 values, or a view into mapped (or aligned
//! owned) bytes in the layout of the element type.

use crate::error::{Error, Result};
use memmap2::Mmap;
use microllm_kernels::quant::{Planes, TensorType, WeightsRef};
use std::path::Path;
use std::sync::Arc;

/// Bytes that tensors can be views into (a mapped file), shared by every
/// tensor of that file and kept alive as long as any of them is.
pub trait Backing: Send + Sync + std::fmt::Debug {
    /// All bytes of the file.
    fn bytes(&self) -> &[u8];
}

impl Backing for Mmap {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// Where a tensor's values live.
#[derive(Debug)]
enum Storage {
    /// f32 values converted at load time (dequantized, widened from f16/bf16).
    Owned(Vec<f32>),
    /// `len` bytes at `offset` in a shared file, in the layout of the
    /// tensor's type, used in place.
    InFile {
        backing: Arc<dyn Backing>,
        offset: usize,
        len: usize,
    },
}

/// A row-major tensor. A weight matrix of shape `[out, in]` stores row `o`
/// (the weights of output `o`) first, the layout of a PyTorch `nn.Linear`
/// weight; quantized types cut each row into blocks of 32 (see
/// `docs/format.md`).
#[derive(Debug)]
pub struct Tensor {
    ty: TensorType,
    shape: Vec<usize>,
    storage: Storage,
}

/// Product of the dimensions, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `(rows, cols)` of a shape: all dimensions but the last, and the last.
fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape.split_last() {
        Some((&cols, rest)) => (rest.iter().product(), cols),
        None => (1, 1),
    }
}

impl Tensor {
    /// Takes ownership of `data`; its length must match `shape`.
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        match checked_numel(&shape) {
            Some(n) if n == data.len() => Ok(Tensor {
                ty: TensorType::F32,
                shape,
                storage: Storage::Owned(data),
            }),
            _ => Err(Error::invalid(format!(
                "tensor of shape {shape:?} cannot hold {} values",
                data.len()
            ))),
        }
    }

    /// A view of `numel(shape)` little-endian f32 values at `offset` in `map`,
    /// used in place. `path` names the mapped file in errors.
    pub fn mapped(map: Arc<Mmap>, offset: usize, shape: Vec<usize>, path: &Path) -> Result<Self> {
        Tensor::in_file(map, TensorType::F32, offset, shape, path)
    }

    /// A view of a tensor of type `ty` stored at `offset` in `backing`, in
    /// the layout of its type, used in place. Bounds, length and alignment
    /// are checked here, once; an unaligned f32 tensor is copied instead.
    pub fn in_file(
        backing: Arc<dyn Backing>,
        ty: TensorType,
        offset: usize,
        shape: Vec<usize>,
        path: &Path,
    ) -> Result<Self> {
        let overflow = || Error::format(path, format!("tensor shape {shape:?} overflows"));
        checked_numel(&shape).ok_or_else(overflow)?;
        let (rows, cols) = rows_cols(&shape);
        let len = ty
            .byte_len(rows as u64, cols as u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("{ty} cannot hold a tensor of shape {shape:?}"),
                )
            })?;
        let bytes = backing.bytes();
        let end = offset.checked_add(len).ok_or_else(overflow)?;
        if end > bytes.len() {
            return Err(Error::format(
                path,
                format!(
                    "tensor data [{offset}, {end}) runs past the end of the file ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        let view = &bytes[offset..end];
        if WeightsRef::from_le_bytes(ty, view, rows, cols).is_err() {
            // Only alignment can still fail: copy f32 values, refuse the rest.
            if ty == TensorType::F32 {
                let data = view
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                return Tensor::from_vec(shape, data);
            }
            return Err(Error::format(
                path,
                format!("{ty} tensor at offset {offset} is misaligned"),
            ));
        }
        Ok(Tensor {
            ty,
            shape,
            storage: Storage::InFile {
                backing,
                offset,
                len,
            },
        })
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.ty
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the values take, in the tensor's type.
    pub fn byte_len(&self) -> usize {
        let (rows, cols) = rows_cols(&self.shape);
        // Fits: a tensor of this size exists in memory.
        self.ty.byte_len(rows as u64, cols as u64).unwrap_or(0) as usize
    }

    /// True when the values are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::InFile { .. })
    }

    /// The values of an f32 tensor, row-major.
    ///
    /// # Panics
    /// If the tensor is not f32; loaders check types (norms are always f32).
    pub fn data(&self) -> &[f32] {
        match self.weights().planes() {
            Planes::F32(v) => v,
            _ => panic!("Tensor::data on a {} tensor", self.ty),
        }
    }

    /// The tensor as a `(rows, cols)` matrix in its own type, for the
    /// kernels (`rows` = all dimensions but the last).
    pub fn weights(&self) -> WeightsRef<'_> {
        let (rows, cols) = rows_cols(&self.shape);
        let view = match &self.storage {
            Storage::Owned(v) => WeightsRef::new(rows, cols, Planes::F32(v)),
            Storage::InFile {
                backing,
                offset,
                len,
            } => WeightsRef::from_le_bytes(
                self.ty,
                &backing.bytes()[*offset..*offset + *len],
                rows,
                cols,
            ),
        };
        // Every constructor checked exactly this view.
        view.expect("tensor layout checked at construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn map_bytes(bytes: &[u8]) -> Arc<Mmap> {
        let mut f = tempfile_in_target();
        f.1.write_all(bytes).unwrap();
        let file = std::fs::File::open(&f.0).unwrap();
        // SAFETY: the file is private to this test and not modified while mapped.
        Arc::new(unsafe { Mmap::map(&file) }.unwrap())
    }

    fn tempfile_in_target() -> (std::path::PathBuf, std::fs::File) {
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "microllm-tensor-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::File::create(&path).unwrap();
        (path, f)
    }

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor::from_vec(vec![2, 3], vec![0.0; 6]).is_ok());
        assert!(Tensor::from_vec(vec![2, 3], vec![0.0; 5]).is_err());
        assert!(Tensor::from_vec(vec![usize::MAX, 2], vec![]).is_err());
    }

    #[test]
    fn mapped_reads_values_and_checks_bounds() {
        let vals = [1.0f32, -2.5, 3.25, 4.0];
        let mut bytes = vec![0u8; 4];
        for v in vals {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let map = map_bytes(&bytes);
        let p = Path::new("t.bin");
        let t = Tensor::mapped(map.clone(), 4, vec![2, 2], p).unwrap();
        assert_eq!(t.data(), &vals);
        assert!(t.is_mapped());
        // Unaligned offset falls back to a copy with the same values.
        let mut shifted = vec![0u8; 1];
        shifted.extend_from_slice(&bytes[4..]);
        let t2 = Tensor::mapped(map_bytes(&shifted), 1, vec![4], p).unwrap();
        assert_eq!(t2.data(), &vals);
        assert!(Tensor::mapped(map.clone(), 8, vec![2, 2], p).is_err());
        assert!(Tensor::mapped(map, 4, vec![usize::MAX / 2, 2], p).is_err());
    }
}
