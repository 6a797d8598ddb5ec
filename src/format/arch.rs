//! The tensors an architecture needs, and the check that a file has
//! exactly those, with the right shapes and types.

use super::metadata::Metadata;
use super::TensorInfo;
use crate::config::ModelConfig;
use microllm_kernels::quant::TensorType;
use std::collections::HashMap;

/// What a tensor is for, which decides the types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An RMSNorm weight: always f32.
    Norm,
    /// A weight matrix `(out, in)` (or the embedding table): the type the
    /// quantization recipe names.
    Matrix,
}

/// One tensor the architecture needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    /// Hugging Face name.
    pub name: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// What the tensor is for.
    pub role: Role,
}

/// Every tensor a Llama-family model with `cfg` needs, in forward-pass
/// order (the order a writer should store them in, so that a first pass
/// reads the file front to back). `cfg` must have passed
/// [`ModelConfig::validate`] (sizes bounded, so no product overflows).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<ExpectedTensor> {
    let (dim, hidden, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
    let t = |name: String, shape: Vec<usize>, role| ExpectedTensor { name, shape, role };
    let mut v = vec![t(
        "model.embed_tokens.weight".into(),
        vec![vocab, dim],
        Role::Matrix,
    )];
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}.");
        v.extend([
            t(format!("{p}input_layernorm.weight"), vec![dim], Role::Norm),
            t(
                format!("{p}self_attn.q_proj.weight"),
                vec![q_dim, dim],
                Role::Matrix,
            ),
            t(
                format!("{p}self_attn.k_proj.weight"),
                vec![kv_dim, dim],
                Role::Matrix,
            ),
            t(
                format!("{p}self_attn.v_proj.weight"),
                vec![kv_dim, dim],
                Role::Matrix,
            ),
            t(
                format!("{p}self_attn.o_proj.weight"),
                vec![dim, q_dim],
                Role::Matrix,
            ),
            t(
                format!("{p}post_attention_layernorm.weight"),
                vec![dim],
                Role::Norm,
            ),
            t(
                format!("{p}mlp.gate_proj.weight"),
                vec![hidden, dim],
                Role::Matrix,
            ),
            t(
                format!("{p}mlp.up_proj.weight"),
                vec![hidden, dim],
                Role::Matrix,
            ),
            t(
                format!("{p}mlp.down_proj.weight"),
                vec![dim, hidden],
                Role::Matrix,
            ),
        ]);
    }
    v.push(t("model.norm.weight".into(), vec![dim], Role::Norm));
    if !cfg.tie_word_embeddings {
        v.push(t("lm_head.weight".into(), vec![vocab, dim], Role::Matrix));
    }
    v
}

/// Checks that `tensors` are exactly those `meta.config` needs, with their
/// shapes, norms in f32 and matrices in the recipe's type. The message
/// says what is wrong.
pub(crate) fn check_tensors(meta: &Metadata, tensors: &[TensorInfo]) -> Result<(), String> {
    let cfg = &meta.config;
    let expected = expected_tensors(cfg);
    let by_name: HashMap<&str, &ExpectedTensor> =
        expected.iter().map(|e| (e.name.as_str(), e)).collect();
    for t in tensors {
        let Some(e) = by_name.get(t.name.as_str()) else {
            return Err(format!(
                "unknown tensor '{}' for architecture {}{}",
                t.name,
                cfg.architecture,
                if t.name == "lm_head.weight" {
                    " with tie_word_embeddings"
                } else {
                    ""
                }
            ));
        };
        if t.shape != e.shape {
            return Err(format!(
                "tensor '{}' has shape {:?}, the config implies {:?}",
                t.name, t.shape, e.shape
            ));
        }
        let want = match e.role {
            Role::Norm => TensorType::F32,
            Role::Matrix => meta.quantization.type_for(&t.name),
        };
        if t.ty != want {
            let why = match e.role {
                Role::Norm => "norms are f32",
                Role::Matrix => "the quantization recipe says so",
            };
            return Err(format!(
                "tensor '{}' is {}, expected {want} ({why})",
                t.name, t.ty
            ));
        }
    }
    if tensors.len() < expected.len() {
        let present: std::collections::HashSet<&str> =
            tensors.iter().map(|t| t.name.as_str()).collect();
        let missing: Vec<&str> = expected
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| !present.contains(n))
            .collect();
        let more = if missing.len() > 3 {
            format!(" and {} more", missing.len() - 3)
        } else {
            String::new()
        };
        return Err(format!(
            "missing tensor(s) {}{more}",
            missing[..missing.len().min(3)].join(", ")
        ));
    }
    for name in meta.quantization.overrides.keys() {
        if by_name
            .get(name.as_str())
            .is_none_or(|e| e.role != Role::Matrix)
        {
            return Err(format!(
                "quantization override for '{name}', which is not a weight matrix of this model"
            ));
        }
    }
    Ok(())
}
