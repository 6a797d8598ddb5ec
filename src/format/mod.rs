//! The `.mllm` model file: one file with config, tokenizer, chat template,
//! provenance and (quantized) tensors, opened by memory-mapping it (or,
//! where the system offers huge pages, reading it into them: [`Residency`])
//! and handing out slices of it. The byte layout and the reasons for it
//! are in `docs/format.md`.
//!
//! ```no_run
//! use microllm::format::MllmFile;
//!
//! let file = MllmFile::open("smollm2-135m.q4.mllm")?;
//! println!("{} layers", file.metadata().config.n_layers);
//! let wq = file.tensor("model.layers.0.self_attn.q_proj.weight").unwrap();
//! let weights = wq.weights()?; // typed planes for the kernels, no copy
//! # Ok::<(), microllm::Error>(())
//! ```

mod arch;
mod load;
mod metadata;
mod reader;
mod writer;

pub use arch::{expected_tensors, ExpectedTensor, Role};
pub use load::{load, MllmTensors};
pub use metadata::{
    encode_tokenizer_parts, LoraInfo, Metadata, Provenance, Recipe, SourceFile, TokenizerInfo,
    TokenizerKind,
};
pub use microllm_kernels::quant::TensorType;
pub use reader::{default_residency, set_default_residency, MllmFile, Residency, TensorView};
pub use writer::MllmWriter;

/// The first four bytes of every `.mllm` file.
pub const MAGIC: [u8; 4] = *b"MLLM";
/// The format version this build writes, and the newest it reads.
/// Version 2 changed the `q4s24` block (3-bit pair codes); version 1 files
/// without `q4s24` tensors are read unchanged.
pub const VERSION: u32 = 2;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 128;
/// Alignment of the data section and of every tensor in it.
pub const ALIGN: usize = 64;
/// Bytes of one tensor-table record.
pub const RECORD_LEN: usize = 64;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;

/// One entry of the tensor table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Hugging Face name.
    pub name: String,
    /// Element type.
    pub ty: TensorType,
    /// Dimensions, outermost first (`[out, in]` for a weight matrix).
    pub shape: Vec<usize>,
    /// Byte offset in the file (a multiple of 64).
    pub offset: usize,
    /// Byte length, as `ty` and `shape` imply.
    pub len: usize,
}

impl TensorInfo {
    /// Product of all dimensions but the last (1 for a vector).
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)]
            .iter()
            .product()
    }

    /// The last dimension (the one quantization blocks run along).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
}

/// Rounds `n` up to a multiple of [`ALIGN`]; `None` on overflow.
fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN as u64 - 1)
        .map(|v| v / ALIGN as u64 * ALIGN as u64)
}

/// An offset and a length within the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Section {
    offset: u64,
    len: u64,
}

/// The fixed header, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    version: u32,
    flags: u32,
    header_len: u32,
    file_len: u64,
    metadata: Section,
    tokenizer: Section,
    table: Section,
    data: Section,
}

impl Header {
    /// The 128 header bytes.
    fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.header_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        let sections = [self.metadata, self.tokenizer, self.table, self.data];
        for (i, s) in sections.iter().enumerate() {
            let at = 24 + 16 * i;
            b[at..at + 8].copy_from_slice(&s.offset.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&s.len.to_le_bytes());
        }
        b
    }
}

/// Little-endian u32 at `at`, if in bounds.
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// Little-endian u64 at `at`, if in bounds.
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}
