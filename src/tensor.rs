//! Weights in memory: either owned f32 values or a view into a mapped file.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::path::Path;
use std::sync::Arc;

/// Where a tensor's values live.
#[derive(Debug)]
enum Storage {
    /// Values converted at load time (dequantized, widened from f16/bf16).
    Owned(Vec<f32>),
    /// Little-endian f32 values used in place from a mapped file.
    Mapped {
        map: Arc<Mmap>,
        /// Byte offset of the first value; a multiple of 4.
        offset: usize,
        /// Number of f32 values.
        len: usize,
    },
}

/// A dense row-major f32 tensor. A weight matrix of shape `[out, in]` stores
/// row `o` (the weights of output `o`) at `data()[o * in..(o + 1) * in]`,
/// the layout of a PyTorch `nn.Linear` weight.
#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

/// Product of the dimensions, or `None` on overflow.
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl Tensor {
    /// Takes ownership of `data`; its length must match `shape`.
    pub fn from_vec(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        match checked_numel(&shape) {
            Some(n) if n == data.len() => Ok(Tensor {
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
        let len = checked_numel(&shape)
            .ok_or_else(|| Error::format(path, format!("tensor shape {shape:?} overflows")))?;
        let end = len
            .checked_mul(4)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| Error::format(path, format!("tensor shape {shape:?} overflows")))?;
        if end > map.len() {
            return Err(Error::format(
                path,
                format!(
                    "tensor data [{offset}, {end}) runs past the end of the file ({} bytes)",
                    map.len()
                ),
            ));
        }
        // In-place use needs f32 alignment and a little-endian host; otherwise copy.
        let aligned = (map.as_ptr() as usize + offset) % std::mem::align_of::<f32>() == 0;
        if !aligned || cfg!(target_endian = "big") {
            let data = map[offset..end]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            return Tensor::from_vec(shape, data);
        }
        Ok(Tensor {
            shape,
            storage: Storage::Mapped { map, offset, len },
        })
    }

    /// The dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.data().len()
    }

    /// True when the values are read in place from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => {
                // The constructor checked bounds and alignment, so the cast
                // cannot fail; bytemuck re-checks both anyway.
                bytemuck::cast_slice(&map[*offset..*offset + *len * 4])
            }
        }
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
