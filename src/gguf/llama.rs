//! From a GGUF file of a llama.cpp "llama" model to [`ModelParts`]:
//! hyperparameters from `llama.*` keys, tokenizer pieces from
//! `tokenizer.ggml.*`, and the tensors under Hugging Face names in Hugging
//! Face layout.
//!
//! The tensor mapping follows `gguf_to_hf.py` (the converter that made the
//! reference checkpoint): names are translated with the table below, and the
//! rows of the q and k projections are put back in Hugging Face order.
//! llama.cpp's converter permutes them so that RoPE rotates adjacent pairs
//! `(2i, 2i + 1)` instead of Hugging Face's `(i, i + head_dim / 2)`:
//!
//! ```text
//! gguf = hf.reshape(n_head, 2, head_dim / 2, in).swapaxes(1, 2)
//! hf   = gguf.reshape(n_head, head_dim / 2, 2, in).swapaxes(1, 2)   (inverse)
//! ```
//!
//! Tensors whose names are not in the table are still listed, under their
//! GGUF name, so that an extra tensor does not stop a model from loading.

use super::quants;
use super::reader::{GgufFile, GgufHeader, MetadataArray, TensorInfo};
use super::types::GgmlType;
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::source::{GenerationDefaults, ModelParts, SourceFormat, TensorSource};
use crate::tensor::Tensor;
use crate::tokenizer::{Tokenizer, TokenizerParts};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Reads a Llama-family GGUF file into [`ModelParts`].
pub fn load(path: &Path) -> Result<ModelParts> {
    let file = GgufFile::open(path)?;
    let header = file.header();
    let config = llama_config(header)?;
    let parts = tokenizer_parts(header)?;
    let chat_template = header
        .get_str("tokenizer.chat_template")?
        .map(str::to_owned);
    let tensors = GgufTensors::new(file, &config)?;
    let tokenizer = Tokenizer::from_gguf_parts(parts, path)?;
    Ok(ModelParts {
        config,
        tokenizer,
        chat_template,
        generation: GenerationDefaults::default(),
        tensors: Box::new(tensors),
        path: path.to_path_buf(),
        format: SourceFormat::Gguf,
    })
}

fn missing(header: &GgufHeader, key: &str) -> Error {
    Error::format(
        header.path(),
        format!("missing required metadata key '{key}'"),
    )
}

fn required_usize(header: &GgufHeader, key: &str) -> Result<usize> {
    header.get_usize(key)?.ok_or_else(|| missing(header, key))
}

fn token_id(header: &GgufHeader, key: &str) -> Result<Option<u32>> {
    match header.get_usize(key)? {
        None => Ok(None),
        Some(id) => u32::try_from(id).map(Some).map_err(|_| {
            Error::format(
                header.path(),
                format!("{key} = {id} is not a valid token id"),
            )
        }),
    }
}

/// Fails unless `general.architecture` is "llama".
pub fn check_llama_architecture(header: &GgufHeader) -> Result<()> {
    let key = "general.architecture";
    match header.get_str(key)? {
        Some("llama") => Ok(()),
        Some(other) => Err(Error::format(
            header.path(),
            format!("unsupported architecture '{other}' (supported: llama)"),
        )),
        None => Err(missing(header, key)),
    }
}

/// Builds and validates the [`ModelConfig`] of a llama GGUF from its
/// `llama.*` and `tokenizer.ggml.*` keys and its tensor list.
pub fn llama_config(header: &GgufHeader) -> Result<ModelConfig> {
    check_llama_architecture(header)?;
    let path = header.path();
    let bad = |msg: String| Error::format(path, msg);

    let n_layers = required_usize(header, "llama.block_count")?;
    let hidden_size = required_usize(header, "llama.embedding_length")?;
    let intermediate_size = required_usize(header, "llama.feed_forward_length")?;
    let n_heads = required_usize(header, "llama.attention.head_count")?;
    let n_kv_heads = header
        .get_usize("llama.attention.head_count_kv")?
        .unwrap_or(n_heads);
    let max_seq_len = required_usize(header, "llama.context_length")?;
    let rope_theta = header.get_f32("llama.rope.freq_base")?.unwrap_or(10000.0);
    let eps_key = "llama.attention.layer_norm_rms_epsilon";
    let rms_norm_eps = header
        .get_f32(eps_key)?
        .ok_or_else(|| missing(header, eps_key))?;

    let head_dim = match header.get_usize("llama.attention.key_length")? {
        Some(d) => d,
        None => {
            if n_heads == 0 || hidden_size % n_heads != 0 {
                return Err(bad(format!(
                    "embedding_length {hidden_size} is not a multiple of head_count {n_heads}"
                )));
            }
            hidden_size / n_heads
        }
    };
    if let Some(v) = header.get_usize("llama.attention.value_length")? {
        if v != head_dim {
            return Err(bad(format!(
                "attention.value_length {v} differs from the key length {head_dim} (not supported)"
            )));
        }
    }
    if let Some(rope_dim) = header.get_usize("llama.rope.dimension_count")? {
        if rope_dim != head_dim {
            return Err(bad(format!(
                "rope.dimension_count {rope_dim} differs from head_dim {head_dim} (partial RoPE is not supported)"
            )));
        }
    }

    let n_tokens = header
        .get_array("tokenizer.ggml.tokens")?
        .map(MetadataArray::len);
    let vocab_size = match (header.get_usize("llama.vocab_size")?, n_tokens) {
        (Some(v), Some(n)) if n > v => {
            return Err(bad(format!(
                "the tokenizer has {n} tokens, more than llama.vocab_size {v}"
            )))
        }
        (Some(v), _) => v,
        (None, Some(n)) => n,
        (None, None) => return Err(missing(header, "tokenizer.ggml.tokens")),
    };

    let rope_scaling = rope_scaling(header)?;

    let bos_token_id = token_id(header, "tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids: Vec<u32> = token_id(header, "tokenizer.ggml.eos_token_id")?
        .into_iter()
        .collect();
    if let Some(eot) = token_id(header, "tokenizer.ggml.eot_token_id")? {
        if !eos_token_ids.contains(&eot) {
            eos_token_ids.push(eot);
        }
    }

    let config = ModelConfig {
        architecture: "llama".to_owned(),
        vocab_size,
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        max_seq_len,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        tie_word_embeddings: header.tensor("output.weight").is_none(),
        bos_token_id,
        eos_token_ids,
    };
    config.validate(path)?;
    Ok(config)
}

/// RoPE scaling from `llama.rope.scaling.*` (or the older
/// `llama.rope.scale_linear`). Only linear scaling is supported; anything
/// else is an error rather than a silently different model.
fn rope_scaling(header: &GgufHeader) -> Result<Option<RopeScaling>> {
    let path = header.path();
    // Llama 3.x GGUFs carry their frequency scaling as a tensor of
    // per-frequency factors instead of keys.
    if header.tensor("rope_freqs.weight").is_some() {
        return Err(Error::format(
            path,
            "RoPE frequency factors (tensor 'rope_freqs.weight', Llama 3 style scaling) are not supported",
        ));
    }
    let linear = |factor: f32, key: &str| {
        if factor.is_finite() && factor > 0.0 {
            Ok(Some(RopeScaling::Linear { factor }))
        } else {
            Err(Error::format(path, format!("{key} = {factor} is invalid")))
        }
    };
    match header.get_str("llama.rope.scaling.type")? {
        Some("linear") => {
            let key = "llama.rope.scaling.factor";
            let factor = header.get_f32(key)?.ok_or_else(|| missing(header, key))?;
            linear(factor, key)
        }
        Some(other) if other != "none" => Err(Error::format(
            path,
            format!("unsupported RoPE scaling type '{other}' (supported: none, linear)"),
        )),
        _ => match header.get_f32("llama.rope.scale_linear")? {
            Some(f) if f != 1.0 => linear(f, "llama.rope.scale_linear"),
            _ => Ok(None),
        },
    }
}

/// The tokenizer pieces stored in `tokenizer.ggml.*`. Requires a byte-level
/// BPE tokenizer (`tokenizer.ggml.model == "gpt2"`). Token types default to
/// 1 (normal) when absent; `pre` defaults to "default".
pub fn tokenizer_parts(header: &GgufHeader) -> Result<TokenizerParts> {
    let path = header.path();
    let model_key = "tokenizer.ggml.model";
    match header.get_str(model_key)? {
        Some("gpt2") => {}
        Some(other) => {
            return Err(Error::format(
                path,
                format!("unsupported tokenizer model '{other}' (supported: gpt2, byte-level BPE)"),
            ))
        }
        None => return Err(missing(header, model_key)),
    }
    let tokens_key = "tokenizer.ggml.tokens";
    let tokens = header
        .get_string_array(tokens_key)?
        .ok_or_else(|| missing(header, tokens_key))?;
    if tokens.is_empty() {
        return Err(Error::format(path, format!("{tokens_key} is empty")));
    }
    let merges_key = "tokenizer.ggml.merges";
    let merges = header
        .get_string_array(merges_key)?
        .ok_or_else(|| missing(header, merges_key))?;
    let types_key = "tokenizer.ggml.token_type";
    let token_types = match header.get_array(types_key)? {
        None => vec![1; tokens.len()],
        Some(a) => {
            let types: Option<Vec<i32>> = a.to_i64_vec().and_then(|v| {
                v.into_iter()
                    .map(|t| i32::try_from(t).ok())
                    .collect::<Option<Vec<i32>>>()
            });
            let types = types.ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "{types_key} must be an array of 32-bit integers, got an array of {}",
                        a.element_type()
                    ),
                )
            })?;
            if types.len() != tokens.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "{types_key} has {} entries but there are {} tokens",
                        types.len(),
                        tokens.len()
                    ),
                ));
            }
            types
        }
    };
    let pre = header
        .get_str("tokenizer.ggml.pre")?
        .unwrap_or("default")
        .to_owned();
    Ok(TokenizerParts {
        tokens: tokens.to_vec(),
        merges: merges.to_vec(),
        token_types,
        pre,
    })
}

/// The Hugging Face `LlamaForCausalLM` name of a llama.cpp tensor name, or
/// `None` for a name outside the table (as in `gguf_to_hf.py`).
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let global = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = global {
        return Some(name.to_owned());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layer: usize = layer.parse().ok()?;
    let hf = match suffix {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.bias" => "self_attn.o_proj.bias",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's q/k row permutation of a tensor of `w.len() / cols`
/// rows of `cols` values made of `n_head` heads: Hugging Face row
/// `h * head_dim + a * head_dim / 2 + i` is GGUF row `h * head_dim + 2 * i + a`.
/// `None` if the rows do not split into heads of even size.
pub fn unpermute_qk_rows(w: &[f32], n_head: usize, cols: usize) -> Option<Vec<f32>> {
    if n_head == 0 || cols == 0 || !w.len().is_multiple_of(cols) {
        return None;
    }
    let rows = w.len() / cols;
    if !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return None;
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for a in 0..2 {
            for i in 0..half {
                let src = (h * head_dim + 2 * i + a) * cols;
                out.extend_from_slice(w.get(src..src + cols)?);
            }
        }
    }
    Some(out)
}

/// The tensors of a llama GGUF file under Hugging Face names.
#[derive(Debug)]
pub struct GgufTensors {
    file: GgufFile,
    /// Names in file order: Hugging Face names, or GGUF names for tensors
    /// outside the mapping table.
    names: Vec<String>,
    /// Name → index into `file.tensors()`.
    index: HashMap<String, usize>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl GgufTensors {
    /// Indexes the tensors of `file`; `config` gives the head counts needed
    /// to undo the q/k permutation. Fails if two tensors end up with the
    /// same name.
    pub fn new(file: GgufFile, config: &ModelConfig) -> Result<GgufTensors> {
        let mut names = Vec::with_capacity(file.tensors().len());
        let mut index = HashMap::with_capacity(file.tensors().len());
        for (i, t) in file.tensors().iter().enumerate() {
            let name = hf_tensor_name(&t.name).unwrap_or_else(|| t.name.clone());
            if index.insert(name.clone(), i).is_some() {
                return Err(Error::format(
                    file.path(),
                    format!(
                        "two tensors map to the name '{name}' (second: '{}')",
                        t.name
                    ),
                ));
            }
            names.push(name);
        }
        Ok(GgufTensors {
            file,
            names,
            index,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The directory entry behind a (Hugging Face) tensor name.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.file.tensors()[i])
    }

    /// Number of heads whose rows were permuted, for q and k projections.
    fn permuted_heads(&self, name: &str) -> Option<usize> {
        let is = |proj: &str| {
            name.ends_with(&format!("self_attn.{proj}.weight"))
                || name.ends_with(&format!("self_attn.{proj}.bias"))
        };
        if !name.starts_with("model.layers.") {
            None
        } else if is("q_proj") {
            Some(self.n_heads)
        } else if is("k_proj") {
            Some(self.n_kv_heads)
        } else {
            None
        }
    }
}

impl TensorSource for GgufTensors {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(TensorInfo::shape)
    }

    fn load_f32(&self, name: &str) -> Result<Tensor> {
        let path = self.file.path();
        let info = self
            .info(name)
            .ok_or_else(|| Error::format(path, format!("no tensor named '{name}'")))?;
        let bad =
            |msg: String| Error::format(path, format!("tensor '{name}' ('{}'): {msg}", info.name));
        let shape = info.shape();
        let heads = self.permuted_heads(name);
        if heads.is_none() && info.ggml_type == GgmlType::F32 {
            // Used in place (Tensor::mapped copies if the offset is unaligned).
            return Tensor::mapped(Arc::clone(self.file.map()), info.offset, shape, path);
        }
        if !quants::is_supported(info.ggml_type) {
            // Before allocating the output.
            return Err(bad(
                quants::QuantError::Unsupported(info.ggml_type).to_string()
            ));
        }
        let bytes = self.file.tensor_bytes(info)?;
        let mut values = vec![0.0f32; info.n_elements()];
        quants::dequantize(info.ggml_type, bytes, &mut values).map_err(|e| bad(e.to_string()))?;
        if let Some(n_head) = heads {
            let rows = shape.first().copied().unwrap_or(0);
            if rows != n_head * self.head_dim {
                return Err(bad(format!(
                    "has {rows} rows, expected {n_head} heads × head_dim {}",
                    self.head_dim
                )));
            }
            let cols = shape.iter().skip(1).product();
            values = unpermute_qk_rows(&values, n_head, cols)
                .ok_or_else(|| bad(format!("cannot split shape {shape:?} into {n_head} heads")))?;
        }
        Tensor::from_vec(shape, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_like_gguf_to_hf() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.12.attn_k.bias",
                "model.layers.12.self_attn.k_proj.bias",
            ),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "blk.3.attn_norm.weight",
                "model.layers.3.input_layernorm.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
            ("blk.07.ffn_up.weight", "model.layers.7.mlp.up_proj.weight"),
        ];
        for (g, h) in cases {
            assert_eq!(hf_tensor_name(g).as_deref(), Some(h), "{g}");
        }
        for g in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk..attn_q.weight",
            "blk.-1.attn_q.weight",
            "blk.1.attn_qkv.weight",
            "blk.99999999999999999999999.attn_q.weight",
        ] {
            assert_eq!(hf_tensor_name(g), None, "{g}");
        }
    }

    /// llama.cpp's forward permutation, written directly from its numpy form
    /// `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`.
    fn permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
        let rows = w.len() / cols;
        let hd = rows / n_head;
        let mut out = vec![0.0; w.len()];
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for a in 0..2 {
                    // Output index (h, i, a) reads input index (h, a, i).
                    let dst = h * hd + i * 2 + a;
                    let src = h * hd + a * (hd / 2) + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_permute() {
        for (n_head, hd, cols) in [(1, 2, 1), (3, 8, 5), (2, 4, 1), (4, 16, 3)] {
            let w: Vec<f32> = (0..n_head * hd * cols).map(|x| x as f32).collect();
            let back = unpermute_qk_rows(&permute(&w, n_head, cols), n_head, cols).unwrap();
            assert_eq!(back, w);
        }
        // One head of head_dim 4: Hugging Face rows 0, 1, 2, 3 are GGUF rows 0, 2, 1, 3.
        assert_eq!(
            unpermute_qk_rows(&[10.0, 11.0, 12.0, 13.0], 1, 1).unwrap(),
            vec![10.0, 12.0, 11.0, 13.0]
        );
        assert_eq!(unpermute_qk_rows(&[0.0; 6], 2, 1), None); // head_dim 3 is odd
        assert_eq!(unpermute_qk_rows(&[0.0; 6], 4, 1), None); // 6 rows, 4 heads
        assert_eq!(unpermute_qk_rows(&[0.0; 6], 0, 1), None);
    }
}
