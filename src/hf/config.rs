//! `config.json`, `generation_config.json` and `tokenizer_config.json`.
//!
//! Each reader takes the JSON text and the path it came from, so that every
//! error names the file and the key. Defaults follow `transformers`'
//! `LlamaConfig` where a key may legitimately be absent.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::safetensors::{json_kind, parse_json_object};
use crate::source::GenerationDefaults;
use serde_json::{Map, Value};
use std::path::Path;

/// Parses a JSON file that must hold an object, rejecting repeated keys.
pub(crate) fn parse_object(text: &str, path: &Path) -> Result<Map<String, Value>> {
    let entries =
        parse_json_object(text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    Ok(entries.into_iter().collect())
}

/// Typed access to the keys of one JSON object, with errors that name the
/// file and the key.
pub(crate) struct Keys<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    /// Prefix for key names in errors ("rope_scaling." for nested objects).
    prefix: &'a str,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(obj: &'a Map<String, Value>, path: &'a Path) -> Self {
        Keys {
            obj,
            path,
            prefix: "",
        }
    }

    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("'{}{key}' {msg}", self.prefix))
    }

    /// The value of `key`, treating JSON `null` like an absent key (Python
    /// configs write `None` defaults as null).
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str) -> Result<&'a Value> {
        self.get(key)
            .ok_or_else(|| Error::format(self.path, format!("missing key '{}{key}'", self.prefix)))
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> Error {
        self.err(
            key,
            format!("must be {want}, got {} ({got})", json_kind(got)),
        )
    }

    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
            })
            .transpose()
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.required(key)?;
        self.opt_usize(key).map(|v| v.unwrap_or_default())
    }

    pub(crate) fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| self.wrong_type(key, "a finite number", v))
            })
            .transpose()
    }

    pub(crate) fn f32(&self, key: &str) -> Result<f32> {
        self.required(key)?;
        self.opt_f32(key).map(|v| v.unwrap_or_default())
    }

    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.wrong_type(key, "true or false", v))
            })
            .transpose()
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.wrong_type(key, "a string", v))
            })
            .transpose()
    }

    /// A token id: must fit in u32.
    pub(crate) fn opt_token_id(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| self.token_id(key, v)).transpose()
    }

    fn token_id(&self, key: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.wrong_type(key, "a token id (integer below 2^32)", v))
    }

    /// A token id or a list of them (`eos_token_id` is either); `None` if
    /// absent or null.
    pub(crate) fn opt_token_ids(&self, key: &str) -> Result<Option<Vec<u32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| self.token_id(key, v))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => self.token_id(key, v).map(|id| Some(vec![id])),
        }
    }
}

/// Appends the ids of `more` not already in `ids`, keeping first-seen order.
pub(crate) fn merge_ids(ids: &mut Vec<u32>, more: impl IntoIterator<Item = u32>) {
    for id in more {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

/// The architecture `transformers` calls a Llama causal LM.
const LLAMA_ARCH: &str = "LlamaForCausalLM";

/// Reads the hyperparameters of a `config.json` whose text is `text`; `path`
/// names the file in errors. The result has passed [`ModelConfig::validate`].
pub fn parse_config(text: &str, path: &Path) -> Result<ModelConfig> {
    let obj = parse_object(text, path)?;
    let k = Keys::new(&obj, path);
    let bad = |msg: String| Err(Error::format(path, msg));

    // Architecture: `model_type` is what transformers dispatches on;
    // `architectures` names the head. Either may be missing in hand-written
    // configs, but what is present must say Llama with a causal-LM head.
    let model_type = k.opt_str("model_type")?;
    if let Some(t) = model_type {
        if t != "llama" {
            return bad(format!("unsupported architecture '{t}' (supported: llama)"));
        }
    }
    let archs = match k.get("architectures") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| k.wrong_type("architectures", "a list of strings", v))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(v) => return Err(k.wrong_type("architectures", "a list of strings", v)),
    };
    if !archs.is_empty() && !archs.contains(&LLAMA_ARCH) {
        return bad(format!(
            "unsupported architecture '{}' (supported: {LLAMA_ARCH})",
            archs.join(", ")
        ));
    }
    if model_type.is_none() && archs.is_empty() {
        return bad(
            "missing key 'model_type' (and no 'architectures'): cannot tell the architecture"
                .into(),
        );
    }

    // Features the forward pass does not implement: refuse rather than
    // compute something subtly different.
    for key in ["attention_bias", "mlp_bias"] {
        if k.opt_bool(key)? == Some(true) {
            return bad(format!(
                "'{key}: true' is not supported (bias terms in the projections)"
            ));
        }
    }
    if let Some(act) = k.opt_str("hidden_act")? {
        if act != "silu" {
            return bad(format!("unsupported hidden_act '{act}' (supported: silu)"));
        }
    }
    if k.get("quantization_config").is_some() {
        return bad("quantized checkpoints ('quantization_config') are not supported".into());
    }

    let hidden_size = k.usize("hidden_size")?;
    let n_heads = k.usize("num_attention_heads")?;
    // transformers: num_key_value_heads = num_attention_heads when absent,
    // head_dim = hidden_size // num_attention_heads when absent.
    let n_kv_heads = k.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match k.opt_usize("head_dim")? {
        Some(d) => d,
        None if n_heads == 0 => return bad("num_attention_heads must be positive".into()),
        None => hidden_size / n_heads,
    };

    // transformers v5 moves rope_theta and the scaling into one
    // `rope_parameters` object; older configs have them at the top level.
    let rope_params = match k.get("rope_parameters") {
        None => None,
        Some(Value::Object(o)) => Some(o),
        Some(v) => return Err(k.wrong_type("rope_parameters", "an object", v)),
    };
    let mut rope_theta = k.opt_f32("rope_theta")?;
    let mut rope_scaling = match k.get("rope_scaling") {
        None => None,
        Some(Value::Object(o)) => parse_rope_scaling(
            &Keys {
                obj: o,
                path,
                prefix: "rope_scaling.",
            },
            false,
        )?,
        Some(v) => return Err(k.wrong_type("rope_scaling", "an object or null", v)),
    };
    if let Some(p) = rope_params {
        let pk = Keys {
            obj: p,
            path,
            prefix: "rope_parameters.",
        };
        rope_theta = rope_theta.or(pk.opt_f32("rope_theta")?);
        if rope_scaling.is_none() {
            rope_scaling = parse_rope_scaling(&pk, true)?;
        }
    }

    let config = ModelConfig {
        architecture: "llama".into(),
        vocab_size: k.usize("vocab_size")?,
        hidden_size,
        intermediate_size: k.usize("intermediate_size")?,
        n_layers: k.usize("num_hidden_layers")?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_seq_len: k.usize("max_position_embeddings")?,
        rms_norm_eps: k.f32("rms_norm_eps")?,
        rope_theta: rope_theta.unwrap_or(10000.0),
        rope_scaling,
        // LlamaConfig's default is False (unlike PretrainedConfig's True).
        tie_word_embeddings: k.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        // LlamaConfig defaults bos/eos to 1/2 when the keys are absent; an
        // explicit null means "none" and is kept as such.
        bos_token_id: match obj.get("bos_token_id") {
            None => Some(1),
            Some(_) => k.opt_token_id("bos_token_id")?,
        },
        eos_token_ids: match obj.get("eos_token_id") {
            None => vec![2],
            Some(_) => {
                let mut ids = Vec::new();
                merge_ids(
                    &mut ids,
                    k.opt_token_ids("eos_token_id")?.unwrap_or_default(),
                );
                ids
            }
        },
    };
    config.validate(path)?;
    Ok(config)
}

/// `rope_scaling` (or v5 `rope_parameters`): `None` for no scaling.
/// A `rope_parameters` object without a type only carries `rope_theta`, so
/// `untyped_is_default` accepts it; a `rope_scaling` object must say what
/// scaling it is.
fn parse_rope_scaling(k: &Keys, untyped_is_default: bool) -> Result<Option<RopeScaling>> {
    // Older configs say "type", newer ones "rope_type".
    let kind = match k.opt_str("rope_type")? {
        Some(t) => t,
        None => match k.opt_str("type")? {
            Some(t) => t,
            None if untyped_is_default => "default",
            None => return Err(k.err("rope_type", "is missing (rope scaling needs a type)")),
        },
    };
    let positive = |key: &str| -> Result<f32> {
        let v = k.f32(key)?;
        if v > 0.0 {
            Ok(v)
        } else {
            Err(k.err(key, format!("must be positive, got {v}")))
        }
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: positive("factor")?,
        })),
        "llama3" => {
            let low = positive("low_freq_factor")?;
            let high = positive("high_freq_factor")?;
            // The llama3 formula divides by (high - low).
            if high <= low {
                return Err(k.err(
                    "high_freq_factor",
                    format!("({high}) must be greater than low_freq_factor ({low})"),
                ));
            }
            let original = k.usize("original_max_position_embeddings")?;
            if original == 0 {
                return Err(k.err("original_max_position_embeddings", "must be positive"));
            }
            Ok(Some(RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            }))
        }
        other => Err(Error::format(
            k.path,
            format!("unsupported rope scaling type '{other}' (supported: linear, llama3)"),
        )),
    }
}

/// An f32 as the JSON number of its shortest decimal form (`0.00001`, not
/// `9.99999974737875e-6`), which reads back as the same f32.
fn f32_json(v: f32) -> Value {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The `config.json` of a model with hyperparameters `cfg` (a Llama
/// architecture, as [`parse_config`] reads it back), for writing a model
/// from a GGUF or `.mllm` file as a Hugging Face folder.
pub fn config_json(cfg: &ModelConfig) -> Value {
    let rope_scaling = match &cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => {
            serde_json::json!({"rope_type": "linear", "factor": f32_json(*factor)})
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => serde_json::json!({
            "rope_type": "llama3",
            "factor": f32_json(*factor),
            "low_freq_factor": f32_json(*low_freq_factor),
            "high_freq_factor": f32_json(*high_freq_factor),
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
    };
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": f32_json(cfg.rms_norm_eps),
        "rope_theta": f32_json(cfg.rope_theta),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": match cfg.eos_token_ids.as_slice() {
            [one] => serde_json::json!(one),
            ids => serde_json::json!(ids),
        },
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
    })
}

/// The `generation_config.json` of a model: its end-of-sequence ids and
/// the sampling defaults it suggests.
pub fn generation_config_json(cfg: &ModelConfig, defaults: &GenerationDefaults) -> Value {
    let mut g = Map::new();
    g.insert("bos_token_id".into(), serde_json::json!(cfg.bos_token_id));
    g.insert("eos_token_id".into(), serde_json::json!(cfg.eos_token_ids));
    let opt = |v: Option<f32>| v.map(f32_json);
    for (key, v) in [
        ("temperature", opt(defaults.temperature)),
        ("top_k", defaults.top_k.map(|k| serde_json::json!(k))),
        ("top_p", opt(defaults.top_p)),
        ("repetition_penalty", opt(defaults.repetition_penalty)),
    ] {
        if let Some(v) = v {
            g.insert(key.into(), v);
        }
    }
    if defaults.temperature.is_some_and(|t| t > 0.0) {
        g.insert("do_sample".into(), Value::Bool(true));
    }
    Value::Object(g)
}

/// What `generation_config.json` contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Suggested sampling settings.
    pub defaults: GenerationDefaults,
    /// Extra end-of-sequence ids (`eos_token_id`, an int or a list).
    pub eos_token_ids: Vec<u32>,
}

/// Reads a `generation_config.json` whose text is `text`; `path` names the
/// file in errors. Values are checked for sanity (e.g. `top_p` in (0, 1]).
pub fn parse_generation_config(text: &str, path: &Path) -> Result<GenerationConfig> {
    let obj = parse_object(text, path)?;
    let k = Keys::new(&obj, path);
    let check = |key: &str, v: Option<f32>, ok: fn(f32) -> bool, want: &str| match v {
        Some(x) if !ok(x) => Err(k.err(key, format!("must be {want}, got {x}"))),
        _ => Ok(v),
    };
    let defaults = GenerationDefaults {
        temperature: check(
            "temperature",
            k.opt_f32("temperature")?,
            |x| x >= 0.0,
            "≥ 0",
        )?,
        // transformers treats top_k = 0 as "no top-k"; passed through as is.
        top_k: k.opt_usize("top_k")?,
        top_p: check(
            "top_p",
            k.opt_f32("top_p")?,
            |x| x > 0.0 && x <= 1.0,
            "in (0, 1]",
        )?,
        repetition_penalty: check(
            "repetition_penalty",
            k.opt_f32("repetition_penalty")?,
            |x| x > 0.0,
            "positive",
        )?,
    };
    let mut eos_token_ids = Vec::new();
    merge_ids(
        &mut eos_token_ids,
        k.opt_token_ids("eos_token_id")?.unwrap_or_default(),
    );
    Ok(GenerationConfig {
        defaults,
        eos_token_ids,
    })
}

/// What `tokenizer_config.json` contributes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The Jinja chat template (`chat_template`; for a list of named
    /// templates, the one called "default").
    pub chat_template: Option<String>,
    /// The end-of-sequence token's text (`eos_token`), to be mapped to an id
    /// by the tokenizer.
    pub eos_token: Option<String>,
}

/// Reads a `tokenizer_config.json` whose text is `text`; `path` names the
/// file in errors.
pub fn parse_tokenizer_config(text: &str, path: &Path) -> Result<TokenizerConfig> {
    let obj = parse_object(text, path)?;
    let k = Keys::new(&obj, path);
    let chat_template = match k.get("chat_template") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        // transformers' multi-template form: [{"name": ..., "template": ...}].
        Some(Value::Array(list)) => {
            let mut default = None;
            for item in list {
                let named = item
                    .as_object()
                    .and_then(|o| Some((o.get("name")?.as_str()?, o.get("template")?.as_str()?)));
                let Some((name, template)) = named else {
                    return Err(k.err(
                        "chat_template",
                        "list entries must be {\"name\": string, \"template\": string}",
                    ));
                };
                if name == "default" {
                    default = Some(template.to_owned());
                }
            }
            default
        }
        Some(v) => {
            return Err(k.wrong_type("chat_template", "a string or a list of named templates", v))
        }
    };
    // A special token is written either as its text or, by older
    // transformers, as a serialized AddedToken {"content": ..., ...}.
    let eos_token = match k.get("eos_token") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v @ Value::Object(o)) => Some(
            o.get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| k.wrong_type("eos_token", "a string or {\"content\": string}", v))?
                .to_owned(),
        ),
        Some(v) => return Err(k.wrong_type("eos_token", "a string or {\"content\": string}", v)),
    };
    Ok(TokenizerConfig {
        chat_template,
        eos_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "attention_bias": false, "mlp_bias": false, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "hidden_size": 576, "head_dim": 64,
        "intermediate_size": 1536, "max_position_embeddings": 8192,
        "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
        "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 100000.0,
        "tie_word_embeddings": true, "torch_dtype": "float32", "vocab_size": 49152
    }"#;

    fn p() -> &'static Path {
        Path::new("m/config.json")
    }

    /// SMOL with `edit` applied to its object.
    fn with(edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut v: Map<String, Value> = serde_json::from_str(SMOL).unwrap();
        edit(&mut v);
        serde_json::to_string(&v).unwrap()
    }

    fn err(text: &str) -> String {
        parse_config(text, p()).unwrap_err().to_string()
    }

    /// `config_json` reads back as the same hyperparameters, for SmolLM2's
    /// and for variants with every rope scaling, no bos, several eos ids
    /// and untied embeddings; its numbers are the short decimal forms.
    #[test]
    fn written_config_reads_back_the_same() {
        let smol = parse_config(SMOL, p()).unwrap();
        let mut variants = vec![smol.clone()];
        let mut v = smol.clone();
        v.rope_scaling = Some(RopeScaling::Linear { factor: 2.5 });
        v.bos_token_id = None;
        v.eos_token_ids = vec![2, 0];
        variants.push(v);
        let mut v = smol.clone();
        v.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        v.tie_word_embeddings = false;
        v.rms_norm_eps = 1e-6;
        variants.push(v);
        for cfg in variants {
            let text = serde_json::to_string(&config_json(&cfg)).unwrap();
            assert_eq!(parse_config(&text, p()).unwrap(), cfg, "{text}");
        }
        let text = serde_json::to_string(&config_json(&smol)).unwrap();
        assert!(text.contains("\"rms_norm_eps\":0.00001,"), "{text}");
    }

    #[test]
    fn written_generation_config_reads_back_the_same() {
        let cfg = parse_config(SMOL, p()).unwrap();
        let path = Path::new("m/generation_config.json");
        for defaults in [
            GenerationDefaults::default(),
            GenerationDefaults {
                temperature: Some(0.2),
                top_k: Some(50),
                top_p: Some(0.9),
                repetition_penalty: Some(1.1),
            },
        ] {
            let text = serde_json::to_string(&generation_config_json(&cfg, &defaults)).unwrap();
            let g = parse_generation_config(&text, path).unwrap();
            assert_eq!(g.defaults, defaults, "{text}");
            assert_eq!(g.eos_token_ids, cfg.eos_token_ids, "{text}");
        }
    }

    #[test]
    fn parses_smollm2() {
        let c = parse_config(SMOL, p()).unwrap();
        assert_eq!(c.architecture, "llama");
        assert_eq!(
            (c.n_layers, c.hidden_size, c.intermediate_size),
            (30, 576, 1536)
        );
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (9, 3, 64));
        assert_eq!((c.vocab_size, c.max_seq_len), (49152, 8192));
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_scaling, None);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn applies_llama_defaults() {
        let text = with(|o| {
            for key in [
                "num_key_value_heads",
                "head_dim",
                "rope_theta",
                "tie_word_embeddings",
                "bos_token_id",
                "eos_token_id",
            ] {
                o.remove(key);
            }
        });
        let c = parse_config(&text, p()).unwrap();
        assert_eq!(c.n_kv_heads, 9);
        assert_eq!(c.head_dim, 576 / 9);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.bos_token_id, Some(1));
        assert_eq!(c.eos_token_ids, vec![2]);
        // Explicit nulls: defaults for sizes, "none" for special tokens.
        let text = with(|o| {
            o.insert("num_key_value_heads".into(), Value::Null);
            o.insert("bos_token_id".into(), Value::Null);
            o.insert("eos_token_id".into(), Value::Null);
        });
        let c = parse_config(&text, p()).unwrap();
        assert_eq!(c.n_kv_heads, 9);
        assert_eq!(c.bos_token_id, None);
        assert!(c.eos_token_ids.is_empty());
    }

    #[test]
    fn eos_list_is_deduplicated() {
        let c = parse_config(
            &with(|o| {
                o.insert("eos_token_id".into(), serde_json::json!([2, 0, 2]));
            }),
            p(),
        )
        .unwrap();
        assert_eq!(c.eos_token_ids, vec![2, 0]);
    }

    #[test]
    fn reads_rope_scaling() {
        let linear = with(|o| {
            o.insert(
                "rope_scaling".into(),
                serde_json::json!({"type": "linear", "factor": 2.0}),
            );
        });
        assert_eq!(
            parse_config(&linear, p()).unwrap().rope_scaling,
            Some(RopeScaling::Linear { factor: 2.0 })
        );
        let llama3 = with(|o| {
            o.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
            );
        });
        assert_eq!(
            parse_config(&llama3, p()).unwrap().rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192
            })
        );
        let v5 = with(|o| {
            o.remove("rope_theta");
            o.remove("rope_scaling");
            o.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "default", "rope_theta": 500000.0}),
            );
        });
        let c = parse_config(&v5, p()).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (500000.0, None));
        let v5_untyped = with(|o| {
            o.remove("rope_theta");
            o.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_theta": 250000.0}),
            );
        });
        let c = parse_config(&v5_untyped, p()).unwrap();
        assert_eq!((c.rope_theta, c.rope_scaling), (250000.0, None));
        let v5_linear = with(|o| {
            o.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "linear", "factor": 4.0}),
            );
        });
        let c = parse_config(&v5_linear, p()).unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_scaling),
            (100000.0, Some(RopeScaling::Linear { factor: 4.0 }))
        );
        let untyped = with(|o| {
            o.insert("rope_scaling".into(), serde_json::json!({"factor": 4.0}));
        });
        assert_eq!(
            err(&untyped),
            "m/config.json: 'rope_scaling.rope_type' is missing (rope scaling needs a type)"
        );

        let yarn = with(|o| {
            o.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            );
        });
        assert_eq!(
            err(&yarn),
            "m/config.json: unsupported rope scaling type 'yarn' (supported: linear, llama3)"
        );
        let no_factor = with(|o| {
            o.insert("rope_scaling".into(), serde_json::json!({"type": "linear"}));
        });
        assert_eq!(
            err(&no_factor),
            "m/config.json: missing key 'rope_scaling.factor'"
        );
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let mistral = with(|o| {
            o.insert("model_type".into(), "mistral".into());
        });
        assert_eq!(
            err(&mistral),
            "m/config.json: unsupported architecture 'mistral' (supported: llama)"
        );
        let head = with(|o| {
            o.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForSequenceClassification"]),
            );
        });
        assert_eq!(
            err(&head),
            "m/config.json: unsupported architecture 'LlamaForSequenceClassification' (supported: LlamaForCausalLM)"
        );
        let bias = with(|o| {
            o.insert("attention_bias".into(), true.into());
        });
        assert!(err(&bias).contains("'attention_bias: true' is not supported"));
        let bias = with(|o| {
            o.insert("mlp_bias".into(), true.into());
        });
        assert!(err(&bias).contains("'mlp_bias: true' is not supported"));
        let act = with(|o| {
            o.insert("hidden_act".into(), "gelu".into());
        });
        assert!(err(&act).contains("unsupported hidden_act 'gelu'"));
        let quant = with(|o| {
            o.insert("quantization_config".into(), serde_json::json!({"bits": 4}));
        });
        assert!(
            err(&quant).contains("quantized checkpoints ('quantization_config') are not supported")
        );
    }

    #[test]
    fn names_missing_and_mistyped_keys() {
        for key in [
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "max_position_embeddings",
            "rms_norm_eps",
        ] {
            let text = with(|o| {
                o.remove(key);
            });
            assert_eq!(err(&text), format!("m/config.json: missing key '{key}'"));
        }
        let text = with(|o| {
            o.insert("hidden_size".into(), "576".into());
        });
        assert_eq!(
            err(&text),
            "m/config.json: 'hidden_size' must be a non-negative integer, got a string (\"576\")"
        );
        let text = with(|o| {
            o.insert("num_hidden_layers".into(), (-1).into());
        });
        assert!(err(&text).contains("'num_hidden_layers' must be a non-negative integer"));
        let text = with(|o| {
            o.insert("eos_token_id".into(), serde_json::json!([2, "x"]));
        });
        assert!(err(&text).contains("'eos_token_id' must be a token id"));
        assert!(err("{").starts_with("m/config.json: not valid JSON"));
        assert!(err("[1]").starts_with("m/config.json: not valid JSON"));
        // validate() runs: 9 heads are not a multiple of 4 kv heads.
        let text = with(|o| {
            o.insert("num_key_value_heads".into(), 4.into());
        });
        assert!(err(&text).contains("not a multiple of num_key_value_heads"));
    }

    #[test]
    fn generation_config() {
        let path = Path::new("m/generation_config.json");
        let g = parse_generation_config(
            r#"{"eos_token_id": [2, 7, 2], "temperature": 0.6, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1, "do_sample": true}"#,
            path,
        )
        .unwrap();
        assert_eq!(g.eos_token_ids, vec![2, 7]);
        assert_eq!(
            g.defaults,
            GenerationDefaults {
                temperature: Some(0.6),
                top_k: Some(50),
                top_p: Some(0.9),
                repetition_penalty: Some(1.1)
            }
        );
        let g = parse_generation_config(r#"{"bos_token_id": 1, "eos_token_id": 2}"#, path).unwrap();
        assert_eq!(
            (g.eos_token_ids, g.defaults),
            (vec![2], GenerationDefaults::default())
        );
        let e = parse_generation_config(r#"{"top_p": 1.5}"#, path)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "m/generation_config.json: 'top_p' must be in (0, 1], got 1.5"
        );
        let e = parse_generation_config(r#"{"temperature": "hot"}"#, path)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m/generation_config.json: 'temperature' must be a finite number"));
    }

    #[test]
    fn tokenizer_config() {
        let path = Path::new("m/tokenizer_config.json");
        let t = parse_tokenizer_config(
            r#"{"chat_template": "{{ x }}", "eos_token": "<|im_end|>"}"#,
            path,
        )
        .unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
        assert_eq!(t.eos_token.as_deref(), Some("<|im_end|>"));
        let t = parse_tokenizer_config(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
                "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false}}"#,
            path,
        )
        .unwrap();
        assert_eq!(t.chat_template.as_deref(), Some("D"));
        assert_eq!(t.eos_token.as_deref(), Some("</s>"));
        let t = parse_tokenizer_config(
            r#"{"chat_template": [{"name": "rag", "template": "R"}]}"#,
            path,
        )
        .unwrap();
        assert_eq!(t, TokenizerConfig::default());
        let e = parse_tokenizer_config(r#"{"chat_template": 3}"#, path)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("m/tokenizer_config.json: 'chat_template' must be a string"));
    }
}
