//! Sampling (placeholder until the real sampler lands).
use crate::error::Result;

/// Sampling settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

/// Picks the next token.
#[derive(Debug, Clone)]
pub struct Sampler {
    _cfg: SamplerConfig,
}

impl Sampler {
    /// A sampler with these settings.
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        Ok(Sampler { _cfg: cfg })
    }
    /// Greedy placeholder.
    pub fn sample(&mut self, logits: &[f32], _history: &[u32]) -> u32 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best as u32
    }
}
