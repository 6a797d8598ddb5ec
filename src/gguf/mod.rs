//! GGUF files (llama.cpp's model format): a reader for the container, ggml
//! dequantization, and the mapping of a "llama" model to
//! [`ModelParts`](crate::source::ModelParts).
//!
//! - [`GgufFile::open`] / [`parse`]: header, metadata and tensor directory,
//!   all validated against the file size (never panics on any input).
//! - [`quants::dequantize`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K
//!   and Q6_K to f32, bit-exact with ggml and `gguf.quants.dequantize`.
//! - [`load`]: a llama GGUF as `ModelParts`, tensors under Hugging Face
//!   names and in Hugging Face row order ([`GgufTensors`]); the pieces
//!   ([`llama_config`], [`tokenizer_parts`]) are public for tools and tests.
#![warn(missing_docs)]

mod llama;
pub mod quants;
mod reader;
mod types;

pub use llama::{
    check_llama_architecture, hf_tensor_name, llama_config, load, tokenizer_parts,
    unpermute_qk_rows, GgufTensors,
};
pub use reader::{
    parse, GgufFile, GgufHeader, MetadataArray, MetadataValue, TensorInfo, ValueType,
    DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS,
};
pub use types::GgmlType;
