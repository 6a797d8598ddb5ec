//! The JSON metadata section: schema (serde) and its checks.
//!
//! Field names follow Hugging Face `config.json` where it has one; see
//! `docs/format.md`, section 3, for an example. Unknown keys are errors.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::source::GenerationDefaults;
use crate::tokenizer::TokenizerParts;
use microllm_kernels::quant::TensorType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Everything in a `.mllm` file except the tokenizer text and the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Architecture and hyperparameters.
    #[serde(with = "config_json")]
    pub config: ModelConfig,
    /// How to read the tokenizer section.
    pub tokenizer: TokenizerInfo,
    /// Jinja chat template, if the model has one.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Sampling defaults the model's authors suggest.
    #[serde(default, with = "generation_json")]
    pub generation: GenerationDefaults,
    /// Which type each weight matrix was stored as, and by which quantizer.
    pub quantization: Recipe,
    /// What the file was made from, and how.
    pub provenance: Provenance,
}

/// Describes the tokenizer section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerInfo {
    /// How the tokenizer section is encoded.
    pub kind: TokenizerKind,
}

/// What the tokenizer section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// The text of a Hugging Face `tokenizer.json`.
    HfJson,
    /// JSON `{"tokens", "merges", "token_types", "pre"}`: the pieces a GGUF
    /// file stores ([`TokenizerParts`]).
    GgufParts,
    /// The built tokenizer in binary ([`Tokenizer::to_binary`]): loads in
    /// 1–2 ms where the two JSON kinds take 30–60 ms to parse and build.
    /// What `microllm convert` writes.
    ///
    /// [`Tokenizer::to_binary`]: crate::Tokenizer::to_binary
    #[serde(rename = "microllm-bpe")]
    Binary,
}

impl TokenizerKind {
    /// True for the kinds whose section is UTF-8 text (JSON).
    pub fn is_text(self) -> bool {
        match self {
            TokenizerKind::HfJson | TokenizerKind::GgufParts => true,
            TokenizerKind::Binary => false,
        }
    }
}

/// The quantization recipe: the type of every weight matrix (norms are
/// always f32 and not part of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Quantizer name and version, e.g. "microllm-mse-v1".
    pub method: String,
    /// Type of every matrix not in `overrides`.
    #[serde(with = "type_name")]
    pub default_type: TensorType,
    /// Per-tensor exceptions, by tensor name.
    #[serde(default, with = "type_map")]
    pub overrides: BTreeMap<String, TensorType>,
}

impl Recipe {
    /// The type the recipe gives the matrix `name`.
    pub fn type_for(&self, name: &str) -> TensorType {
        self.overrides
            .get(name)
            .copied()
            .unwrap_or(self.default_type)
    }
}

/// Where the file came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Name and version of the program that wrote the file.
    pub tool: String,
    /// The files it was made from (at least one).
    pub sources: Vec<SourceFile>,
    /// The pruning applied, as a JSON object, or `None`.
    #[serde(default)]
    pub pruning: Option<serde_json::Value>,
    /// LoRA adapters merged into the weights.
    #[serde(default)]
    pub lora: Vec<LoraInfo>,
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// File name (not a full path, which would leak the converter's disk layout).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, 64 lowercase hex digits.
    pub sha256: String,
}

/// A LoRA adapter merged into the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraInfo {
    /// The adapter file.
    pub source: SourceFile,
    /// The factor the adapter's product was multiplied by (the user's
    /// scale; the adapter's own `lora_alpha / r` comes on top).
    pub scale: f32,
    /// The adapter folder's name (absent in files written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The adapter's `r` from `adapter_config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<u32>,
    /// The adapter's `lora_alpha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
}

impl Metadata {
    /// Checks what serde cannot: the config's internal consistency
    /// ([`ModelConfig::validate`]), value ranges, digests. `path` names the
    /// file in the error.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::format(path, format!("metadata: {msg}")));
        self.config.validate(path)?;
        match &self.config.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) if !(factor.is_finite() && *factor > 0.0) => {
                return bad(format!("rope_scaling factor {factor} must be positive"));
            }
            Some(RopeScaling::Linear { .. }) => {}
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let ok = [factor, low_freq_factor, high_freq_factor]
                    .iter()
                    .all(|v| v.is_finite() && **v > 0.0)
                    && low_freq_factor < high_freq_factor
                    && *original_max_position_embeddings > 0;
                if !ok {
                    return bad(format!(
                        "llama3 rope_scaling needs positive factors with low_freq_factor < high_freq_factor \
                         and original_max_position_embeddings > 0 (got {factor}, {low_freq_factor}, \
                         {high_freq_factor}, {original_max_position_embeddings})"
                    ));
                }
            }
        }
        let g = &self.generation;
        if let Some(t) = g.temperature.filter(|t| !(t.is_finite() && *t >= 0.0)) {
            return bad(format!(
                "generation temperature {t} must be finite and non-negative"
            ));
        }
        if g.top_k == Some(0) {
            return bad("generation top_k must be at least 1".into());
        }
        if let Some(p) = g.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return bad(format!("generation top_p {p} must be in (0, 1]"));
        }
        if let Some(r) = g
            .repetition_penalty
            .filter(|r| !(r.is_finite() && *r > 0.0))
        {
            return bad(format!(
                "generation repetition_penalty {r} must be positive"
            ));
        }
        if self.quantization.method.is_empty() {
            return bad("quantization method is empty".into());
        }
        let p = &self.provenance;
        if p.tool.is_empty() {
            return bad("provenance tool is empty".into());
        }
        if p.sources.is_empty() {
            return bad("provenance lists no source file".into());
        }
        if p.pruning.as_ref().is_some_and(|v| !v.is_object()) {
            return bad("provenance pruning must be an object or null".into());
        }
        for lora in &p.lora {
            if !lora.scale.is_finite() {
                return bad(format!(
                    "LoRA '{}' has scale {}",
                    lora.source.name, lora.scale
                ));
            }
        }
        for s in p.sources.iter().chain(p.lora.iter().map(|l| &l.source)) {
            if s.name.is_empty() {
                return bad("a provenance source has an empty name".into());
            }
            let hex = s.sha256.len() == 64
                && s.sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !hex {
                return bad(format!(
                    "sha256 of '{}' is not 64 lowercase hex digits: '{}'",
                    s.name, s.sha256
                ));
            }
        }
        Ok(())
    }
}

/// The tokenizer section of kind [`TokenizerKind::GgufParts`] for `parts`.
pub fn encode_tokenizer_parts(parts: &TokenizerParts) -> Vec<u8> {
    let json = PartsJson {
        tokens: parts.tokens.clone(),
        merges: parts.merges.clone(),
        token_types: parts.token_types.clone(),
        pre: parts.pre.clone(),
    };
    serde_json::to_vec(&json).expect("strings and integers always serialize")
}

/// Reads a tokenizer section of kind [`TokenizerKind::GgufParts`].
pub(crate) fn decode_tokenizer_parts(text: &str) -> std::result::Result<TokenizerParts, String> {
    let p: PartsJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !p.token_types.is_empty() && p.token_types.len() != p.tokens.len() {
        return Err(format!(
            "{} token types for {} tokens",
            p.token_types.len(),
            p.tokens.len()
        ));
    }
    Ok(TokenizerParts {
        tokens: p.tokens,
        merges: p.merges,
        token_types: p.token_types,
        pre: p.pre,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartsJson {
    tokens: Vec<String>,
    #[serde(default)]
    merges: Vec<String>,
    #[serde(default)]
    token_types: Vec<i32>,
    #[serde(default)]
    pre: String,
}

/// `ModelConfig` in JSON with Hugging Face `config.json` names.
mod config_json {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ConfigJson {
        architecture: String,
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        head_dim: usize,
        max_position_embeddings: usize,
        rms_norm_eps: f32,
        rope_theta: f32,
        #[serde(default)]
        rope_scaling: Option<RopeScalingJson>,
        tie_word_embeddings: bool,
        #[serde(default)]
        bos_token_id: Option<u32>,
        eos_token_ids: Vec<u32>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "rope_type", rename_all = "lowercase", deny_unknown_fields)]
    enum RopeScalingJson {
        Linear {
            factor: f32,
        },
        Llama3 {
            factor: f32,
            low_freq_factor: f32,
            high_freq_factor: f32,
            original_max_position_embeddings: usize,
        },
    }

    pub fn serialize<S: Serializer>(c: &ModelConfig, s: S) -> std::result::Result<S::Ok, S::Error> {
        let rope_scaling = c.rope_scaling.as_ref().map(|r| match *r {
            RopeScaling::Linear { factor } => RopeScalingJson::Linear { factor },
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => RopeScalingJson::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            },
        });
        ConfigJson {
            architecture: c.architecture.clone(),
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.n_layers,
            num_attention_heads: c.n_heads,
            num_key_value_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            max_position_embeddings: c.max_seq_len,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            rope_scaling,
            tie_word_embeddings: c.tie_word_embeddings,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_ids.clone(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<ModelConfig, D::Error> {
        let c = ConfigJson::deserialize(d)?;
        let rope_scaling = c.rope_scaling.map(|r| match r {
            RopeScalingJson::Linear { factor } => RopeScaling::Linear { factor },
            RopeScalingJson::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            },
        });
        Ok(ModelConfig {
            architecture: c.architecture,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            n_layers: c.num_hidden_layers,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            max_seq_len: c.max_position_embeddings,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta: c.rope_theta,
            rope_scaling,
            tie_word_embeddings: c.tie_word_embeddings,
            bos_token_id: c.bos_token_id,
            eos_token_ids: c.eos_token_ids,
        })
    }
}

/// `GenerationDefaults` in JSON; every field optional.
mod generation_json {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GenerationJson {
        #[serde(default)]
        temperature: Option<f32>,
        #[serde(default)]
        top_k: Option<usize>,
        #[serde(default)]
        top_p: Option<f32>,
        #[serde(default)]
        repetition_penalty: Option<f32>,
    }

    pub fn serialize<S: Serializer>(
        g: &GenerationDefaults,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        GenerationJson {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<GenerationDefaults, D::Error> {
        let g = GenerationJson::deserialize(d)?;
        Ok(GenerationDefaults {
            temperature: g.temperature,
            top_k: g.top_k,
            top_p: g.top_p,
            repetition_penalty: g.repetition_penalty,
        })
    }
}

/// A [`TensorType`] as its name ("q4m").
mod type_name {
    use super::*;
    use serde::de::Error as _;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &TensorType, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(t.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<TensorType, D::Error> {
        let name = String::deserialize(d)?;
        parse(&name).map_err(D::Error::custom)
    }

    pub fn parse(name: &str) -> std::result::Result<TensorType, String> {
        TensorType::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = TensorType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown tensor type '{name}' (known: {})", known.join(", "))
        })
    }
}

/// A name → [`TensorType`] map with types as names.
mod type_map {
    use super::*;
    use serde::de::Error as _;
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, TensorType>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            map.serialize_entry(k, v.name())?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<BTreeMap<String, TensorType>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| Ok((k, super::type_name::parse(&v).map_err(D::Error::custom)?)))
            .collect()
    }
}
