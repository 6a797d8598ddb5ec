//! microllm: a pure-Rust inference engine for small language models.
//!
//! Data flow: file bytes → tensor views → kernels → logits.
//!
//! ```no_run
//! use microllm::{Control, GenerateOptions, Model, Session};
//! use std::sync::Arc;
//!
//! let model = Arc::new(Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf")?);
//! let mut session = Session::new(model);
//! session.generate("The capital of France is", &GenerateOptions::default(), |ev| {
//!     print!("{}", ev.text);
//!     Control::Continue
//! })?;
//! # Ok::<(), microllm::Error>(())
//! ```

#![warn(missing_docs)]

pub mod chat;
pub mod config;
pub mod convert;
pub mod error;
pub mod format;
pub mod gguf;
pub mod hf;
pub mod lora;
pub mod model;
pub mod perplexity;
pub mod prune;
pub mod safetensors;
pub mod sampler;
pub mod session;
pub mod source;
pub mod tensor;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use lora::{LoraAdapter, LoraSet};
/// The kernel tier in use (`MICROLLM_ISA` forces one).
pub use microllm_kernels::dispatch;
/// The thread pool the forward pass runs on (`pool::set_threads`).
pub use microllm_kernels::pool;
pub use model::{Activations, KvCache, LinearHook, Logits, Model, Proj};
pub use perplexity::{perplexity, PerplexityReport};
pub use sampler::{Sampler, SamplerConfig};
pub use session::{Control, FinishReason, GenerateOptions, Generation, Session, TokenEvent};
pub use tensor::Tensor;
pub use tokenizer::{StreamDecoder, Tokenizer};
