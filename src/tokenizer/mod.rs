//! Byte-level BPE tokenizer (placeholder: the real tokenizer replaces this file).
use crate::error::{Error, Result};
use std::path::Path;

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    _private: (),
}

/// The pieces a GGUF file stores its tokenizer as.
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    /// `tokenizer.ggml.tokens`: token strings in GPT-2 byte-to-unicode form.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: "a b" pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.pre`: pre-tokenizer name ("smollm", "gpt-2", "default", ...).
    pub pre: String,
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        Err(Error::format(path, "tokenizer not built yet"))
    }
    /// Builds the tokenizer from GGUF metadata; `path` names the file in errors.
    pub fn from_gguf_parts(_parts: TokenizerParts, path: &Path) -> Result<Tokenizer> {
        Err(Error::format(path, "tokenizer not built yet"))
    }
    /// Token ids of `text`: special tokens written in the text are recognised, none are added.
    pub fn encode(&self, _text: &str) -> Vec<u32> {
        Vec::new()
    }
    /// Raw bytes of one token (special tokens as their text), `None` if out of range.
    pub fn token_bytes(&self, _id: u32) -> Option<&[u8]> {
        None
    }
    /// Decodes ids to text, replacing invalid UTF-8.
    pub fn decode(&self, _ids: &[u32]) -> String {
        String::new()
    }
    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        0
    }
    /// Id of a token by its string (as written in the vocabulary, or a special token's content).
    pub fn token_to_id(&self, _token: &str) -> Option<u32> {
        None
    }
    /// The vocabulary string of an id.
    pub fn id_to_token(&self, _id: u32) -> Option<&str> {
        None
    }
    /// True for control/special tokens.
    pub fn is_special(&self, _id: u32) -> bool {
        false
    }
}

/// Streaming decoder placeholder.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a token; returns complete text.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.token_bytes(id).unwrap_or(&[]));
        String::new()
    }
    /// Flushes.
    pub fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned()
    }
}
