//! microllm: a pure-Rust inference engine for small language models.
//!
//! Data flow: file bytes → tensor views → kernels → logits.

pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod safetensors;
pub mod sampler;
pub mod source;
pub mod tensor;
pub mod tokenizer;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use tensor::Tensor;
pub use tokenizer::Tokenizer;
