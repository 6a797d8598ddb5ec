//! Model hyperparameters, whatever file they came from.

use crate::error::{Error, Result};
use std::path::Path;

/// RoPE frequency scaling (Llama 3 style and linear), as in `rope_scaling`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// Positions are divided by this.
        factor: f32,
    },
    /// Llama 3.x's frequency-dependent scaling.
    Llama3 {
        /// How much longer the context is than the original.
        factor: f32,
        /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
        low_freq_factor: f32,
        /// Wavelengths shorter than `original / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was first trained for.
        original_max_position_embeddings: usize,
    },
}

/// Hyperparameters of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the source spells it, lower case ("llama").
    pub architecture: String,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Model width (`dim`).
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when < n_heads).
    pub n_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Longest context the model was trained for.
    pub max_seq_len: usize,
    /// Added to the mean square in RMSNorm.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE scaling for longer contexts, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Output head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Generation stops at any of these.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Checks the relations between the numbers that the forward pass relies
    /// on; `path` names the file they came from in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::format(path, msg));
        if self.architecture != "llama" {
            return bad(format!(
                "unsupported architecture '{}' (supported: llama)",
                self.architecture
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.n_layers),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_seq_len),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
            // Bounds that keep every product of two sizes far from overflow.
            if v > 1 << 24 {
                return bad(format!("{name} = {v} is implausibly large"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!("rms_norm_eps ({}) is invalid", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta ({}) is invalid", self.rope_theta));
        }
        for &id in self.eos_token_ids.iter().chain(self.bos_token_id.iter()) {
            if id as usize >= self.vocab_size {
                return bad(format!(
                    "special token id {id} is outside the vocabulary ({})",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// `n_heads * head_dim`: width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// `n_kv_heads * head_dim`: width of the key and value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
