//! LoRA adapters in the Hugging Face PEFT format: read, checked against a
//! model, and applied either merged into private copies of the targeted
//! weights at load ([`Model::with_lora_merged`]) or unmerged at run time
//! ([`LoraSet`], a [`LinearHook`] that a [`crate::Session`] attaches).
//!
//! An adapter is a folder with `adapter_config.json` and
//! `adapter_model.safetensors`. For a projection `W (out, in)` it holds
//! `lora_A (r, in)` and `lora_B (out, r)`, and the adapted layer computes
//! `y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ`, that is `W' = W + scale · B·A`, with
//!
//! - `scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`;
//! - `r` and `lora_alpha` overridden per module by `rank_pattern` and
//!   `alpha_pattern`: the first key (in file order) for which the module
//!   name (`model.layers.3.self_attn.q_proj`) matches the regular
//!   expression `^(.*\.)?(KEY)$`, as PEFT's `get_pattern_key` does. A plain
//!   key like `q_proj` or `layers.3.self_attn.q_proj` therefore matches
//!   every module name ending with it at a `.` boundary;
//! - times the user's scale given when the adapter is attached or merged.
//!
//! `target_modules` is a list (a module matches when its name equals an
//! entry or ends with `.` + entry), a regular expression string that must
//! match the whole name, or `"all-linear"`; `layers_to_transform` and
//! `exclude_modules` narrow it as in PEFT. Every weight in the file must
//! belong to a targeted module, every list entry must name a module of the
//! model, and the rank of each `lora_A` must be the one the config gives.
//! Regular expressions are Rust `regex` syntax, which agrees with Python's
//! `re` on the patterns adapters use (no look-around, no backreferences).
//!
//! `fan_in_fan_out` describes base layers stored `(in, out)` (GPT-2's
//! `Conv1D`); Llama's projections are `nn.Linear`, for which PEFT warns and
//! sets it to false, so it is accepted and changes nothing (`lora_A` and
//! `lora_B` have the same shapes either way).
//!
//! Not supported, each an error naming the key: DoRA (`use_dora`,
//! `lora_magnitude_vector`), `bias` other than `"none"` and `lora_bias`,
//! `modules_to_save`, `layer_replication`, `trainable_token_indices`,
//! adapters on the embedding or output head (`lora_embedding_A`,
//! `lm_head`), other PEFT methods (`peft_type` not `LORA`).

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{LinearHook, Model, Proj};
use crate::safetensors::SafetensorsFile;
use crate::tensor::Tensor;
use microllm_kernels::f32 as k;
use microllm_kernels::quant::TensorType;
use rayon::prelude::*;
use regex_automata::meta::Regex;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The config file of a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// `target_modules` / `exclude_modules`: a list of names or one regular
/// expression.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    /// Module names or name suffixes (`q_proj`, `layers.0.mlp.up_proj`).
    List(Vec<String>),
    /// A regular expression matching whole module names, or `"all-linear"`.
    Regex(String),
}

/// `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LayerList {
    /// A single layer.
    One(usize),
    /// Several layers.
    Many(Vec<usize>),
}

impl LayerList {
    fn contains(&self, layer: usize) -> bool {
        match self {
            LayerList::One(l) => *l == layer,
            LayerList::Many(v) => v.contains(&layer),
        }
    }
}

/// A JSON object whose key order matters (`rank_pattern`, `alpha_pattern`:
/// the first matching key wins).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((key, value)) = m.next_entry::<String, V>()? {
                    v.push((key, value));
                }
                Ok(OrderedMap(v))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// The parts of a PEFT `adapter_config.json` that microllm reads; other
/// keys (`lora_dropout`, `task_type`, `inference_mode`...) are ignored.
/// Defaults are PEFT's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// The PEFT method; only `LORA` is supported.
    pub peft_type: Option<String>,
    /// Rank of every module without a `rank_pattern` entry.
    pub r: i64,
    /// Alpha of every module without an `alpha_pattern` entry.
    pub lora_alpha: f64,
    /// Which modules carry an adapter (`None`: the file decides).
    pub target_modules: Option<ModuleSelector>,
    /// Modules excluded from `target_modules`.
    pub exclude_modules: Option<ModuleSelector>,
    /// Only these layers carry an adapter.
    pub layers_to_transform: Option<LayerList>,
    /// Rank-stabilised scaling: `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Per-module ranks (module-name pattern → r).
    pub rank_pattern: Option<OrderedMap<i64>>,
    /// Per-module alphas (module-name pattern → alpha).
    pub alpha_pattern: Option<OrderedMap<f64>>,
    /// Base weights stored `(in, out)`; no effect on Llama's `nn.Linear`.
    pub fan_in_fan_out: bool,
    /// Which biases were trained; only `"none"` is supported.
    pub bias: String,
    /// Whole modules trained and saved besides the adapter; unsupported.
    pub modules_to_save: Option<Vec<String>>,
    /// The model the adapter was trained on (informative: names vary).
    pub base_model_name_or_path: Option<String>,
    /// DoRA; unsupported.
    pub use_dora: bool,
    /// A bias on `lora_B`; unsupported.
    pub lora_bias: bool,
    /// Layer duplication; unsupported.
    pub layer_replication: Option<serde_json::Value>,
    /// Trainable embedding rows; unsupported.
    pub trainable_token_indices: Option<serde_json::Value>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            peft_type: None,
            r: 8,
            lora_alpha: 8.0,
            target_modules: None,
            exclude_modules: None,
            layers_to_transform: None,
            use_rslora: false,
            rank_pattern: None,
            alpha_pattern: None,
            fan_in_fan_out: false,
            bias: "none".into(),
            modules_to_save: None,
            base_model_name_or_path: None,
            use_dora: false,
            lora_bias: false,
            layer_replication: None,
            trainable_token_indices: None,
        }
    }
}

/// One adapted projection: `lora_A (rank, in)`, `lora_B (out, rank)`.
pub struct LoraModule {
    /// The transformer block.
    pub layer: usize,
    /// The projection in it.
    pub proj: Proj,
    /// r of this module (after `rank_pattern`).
    pub rank: usize,
    /// alpha of this module (after `alpha_pattern`).
    pub alpha: f64,
    /// `alpha / rank`, or `alpha / sqrt(rank)` with `use_rslora`.
    pub scale: f32,
    /// Input features (columns of the base weight).
    pub in_features: usize,
    /// Output features (rows of the base weight).
    pub out_features: usize,
    /// Name of the `lora_A` tensor in the file.
    pub a_key: String,
    /// Name of the `lora_B` tensor in the file.
    pub b_key: String,
    /// lora_A: (rank, in_features)
    a: Vec<f32>,
    /// lora_B: (out_features, rank)
    b: Vec<f32>,
}

impl std::fmt::Debug for LoraModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraModule")
            .field("layer", &self.layer)
            .field("proj", &self.proj)
            .field("rank", &self.rank)
            .field("alpha", &self.alpha)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl LoraModule {
    /// lora_A: (rank, in_features), row-major f32.
    pub fn a(&self) -> &[f32] {
        &self.a
    }

    /// lora_B: (out_features, rank), row-major f32.
    pub fn b(&self) -> &[f32] {
        &self.b
    }

    /// `row += scale · (B·A)[r]`: row `r` of the delta.
    fn add_delta_row(&self, r: usize, row: &mut [f32], scale: f32) {
        let (rank, cols) = (self.rank, self.in_features);
        for (j, &b) in self.b[r * rank..(r + 1) * rank].iter().enumerate() {
            let c = scale * b;
            if c != 0.0 {
                axpy(row, c, &self.a[j * cols..(j + 1) * cols]);
            }
        }
    }

    /// `values (out, in) += scale · B·A`, in parallel over rows.
    pub fn add_delta(&self, values: &mut [f32], scale: f32) {
        values
            .par_chunks_exact_mut(self.in_features)
            .enumerate()
            .for_each(|(r, row)| self.add_delta_row(r, row, scale));
    }
}

/// `y += c · x`. The same sums everywhere (a multiply, then an add: never
/// fused), eight lanes wide where the CPU has AVX.
fn axpy(y: &mut [f32], c: f32, x: &[f32]) {
    fn plain(y: &mut [f32], c: f32, x: &[f32]) {
        for (w, &a) in y.iter_mut().zip(x) {
            *w += c * a;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn avx(y: &mut [f32], c: f32, x: &[f32]) {
            plain(y, c, x)
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            return unsafe { avx(y, c, x) };
        }
    }
    plain(y, c, x)
}

/// A PEFT LoRA adapter read into memory (f32): its config and one
/// [`LoraModule`] per adapted projection. Share it between sessions with an
/// `Arc`; it takes [`LoraAdapter::bytes`] of memory and nothing else.
pub struct LoraAdapter {
    dir: PathBuf,
    config: LoraConfig,
    /// Sorted by (layer, proj).
    modules: Vec<LoraModule>,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("dir", &self.dir)
            .field("r", &self.config.r)
            .field("lora_alpha", &self.config.lora_alpha)
            .field("modules", &self.modules.len())
            .finish_non_exhaustive()
    }
}

/// Which half of a LoRA pair a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    A,
    B,
}

/// `^(?:pattern)$`, compiled; `what` names the pattern in the error.
fn full_regex(pattern: &str, file: &Path, what: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        Error::format(
            file,
            format!("{what}: '{pattern}' is not a valid regular expression: {e}"),
        )
    })
}

/// PEFT's module selection: does `sel` pick module `name`?
fn selects(sel: &ModuleSelector, name: &str, file: &Path, what: &str) -> Result<bool> {
    Ok(match sel {
        ModuleSelector::Regex(s) if s == "all-linear" => true,
        ModuleSelector::Regex(s) => full_regex(s, file, what)?.is_match(name),
        ModuleSelector::List(v) => v
            .iter()
            .any(|t| name == t || name.ends_with(&format!(".{t}"))),
    })
}

/// PEFT's `get_pattern_key`: the value of the first key for which `name`
/// matches `^(.*\.)?(KEY)$`.
fn pattern_value<V: Copy>(
    pattern: &Option<OrderedMap<V>>,
    name: &str,
    file: &Path,
    what: &str,
) -> Result<Option<(String, V)>> {
    for (key, v) in pattern.iter().flat_map(|p| &p.0) {
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
            Error::format(
                file,
                format!("{what} key '{key}' is not a valid regular expression: {e}"),
            )
        })?;
        if re.is_match(name) {
            return Ok(Some((key.clone(), *v)));
        }
    }
    Ok(None)
}

/// `model.layers.{l}.{proj}` → (l, proj).
fn parse_module(module: &str) -> Option<(usize, Proj)> {
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, path) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    Proj::ALL
        .into_iter()
        .find(|p| p.hf_name() == path)
        .map(|p| (layer, p))
}

/// The module name of projection `p` in layer `l`.
fn module_name(l: usize, p: Proj) -> String {
    format!("model.layers.{l}.{}", p.hf_name())
}

/// `(out, in)` of projection `p` in a model with config `cfg`.
pub fn proj_shape(cfg: &ModelConfig, p: Proj) -> (usize, usize) {
    let (dim, hidden, q, kv) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    match p {
        Proj::Q => (q, dim),
        Proj::K | Proj::V => (kv, dim),
        Proj::O => (dim, q),
        Proj::Gate | Proj::Up => (hidden, dim),
        Proj::Down => (dim, hidden),
    }
}

/// Splits a safetensors key into its module name and half, or says why it
/// is not a LoRA weight microllm can apply.
fn parse_key(key: &str) -> std::result::Result<(String, Half, Option<String>), String> {
    let k = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (marker, what) in [
        (".lora_embedding_A", "LoRA on an embedding"),
        (".lora_embedding_B", "LoRA on an embedding"),
        (".lora_magnitude_vector", "DoRA (lora_magnitude_vector)"),
    ] {
        if k.contains(marker) {
            return Err(format!("{what} is not supported"));
        }
    }
    for (marker, half) in [(".lora_A.", Half::A), (".lora_B.", Half::B)] {
        if let Some(i) = k.find(marker) {
            let module = &k[..i];
            let tail = &k[i + marker.len()..];
            let adapter_name = match tail {
                "weight" => None,
                "bias" => return Err("a bias on lora_B (lora_bias) is not supported".into()),
                t => match t.strip_suffix(".weight") {
                    Some(name) if !name.contains('.') => Some(name.to_string()),
                    _ => return Err(format!("unexpected suffix '{tail}'")),
                },
            };
            return Ok((module.to_string(), half, adapter_name));
        }
    }
    Err("not a LoRA weight (expected …lora_A.weight or …lora_B.weight; full modules_to_save copies are not supported)".into())
}

impl LoraAdapter {
    /// Reads a PEFT adapter folder (`adapter_config.json` and
    /// `adapter_model.safetensors`), checks the config and that every
    /// tensor is a LoRA half of one of the seven Llama projections with the
    /// rank the config gives. Tensors may be f32, f16 or bf16; they are kept
    /// as f32. Whether it fits a given model is [`LoraAdapter::validate`].
    pub fn load(dir: impl AsRef<Path>) -> Result<LoraAdapter> {
        let dir = dir.as_ref();
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: LoraConfig = serde_json::from_str(&text)
            .map_err(|e| Error::format(&cfg_path, format!("not a PEFT LoRA config: {e}")))?;
        check_config(&config, &cfg_path)?;

        let w_path = dir.join(WEIGHTS_FILE);
        if !w_path.exists() {
            let bin = dir.join("adapter_model.bin");
            let hint = if bin.exists() {
                " (adapter_model.bin is a pickle: save the adapter with safe_serialization=True)"
            } else {
                ""
            };
            return Err(Error::format(
                dir,
                format!("no {WEIGHTS_FILE} in the adapter folder{hint}"),
            ));
        }
        let file = SafetensorsFile::open(&w_path)?;
        let bad = |key: &str, msg: String| Error::format(&w_path, format!("key '{key}': {msg}"));

        // (layer, proj) → [A key, B key]
        let mut pairs: BTreeMap<(usize, Proj), [Option<String>; 2]> = BTreeMap::new();
        let mut adapter_names: Vec<Option<String>> = Vec::new();
        for info in file.tensors() {
            let key = info.name.as_str();
            let (module, half, name) = parse_key(key).map_err(|m| bad(key, m))?;
            let (layer, proj) = parse_module(&module).ok_or_else(|| {
                bad(
                    key,
                    format!(
                        "LoRA on module '{module}' is not supported: only the seven projections \
                         of a Llama block (model.layers.N.self_attn.{{q,k,v,o}}_proj, \
                         model.layers.N.mlp.{{gate,up,down}}_proj)"
                    ),
                )
            })?;
            if !adapter_names.contains(&name) {
                adapter_names.push(name);
            }
            if adapter_names.len() > 1 {
                return Err(bad(
                    key,
                    format!(
                        "the file holds several adapters ({:?}); save one per folder",
                        adapter_names
                    ),
                ));
            }
            if let Some(sel) = &config.target_modules {
                if !selects(sel, &module, &cfg_path, "target_modules")? {
                    return Err(bad(
                        key,
                        format!("module '{module}' is not in target_modules of {CONFIG_FILE}"),
                    ));
                }
            }
            if let Some(sel) = &config.exclude_modules {
                if selects(sel, &module, &cfg_path, "exclude_modules")? {
                    return Err(bad(
                        key,
                        format!("module '{module}' is in exclude_modules of {CONFIG_FILE}"),
                    ));
                }
            }
            if let Some(layers) = &config.layers_to_transform {
                if !layers.contains(layer) {
                    return Err(bad(
                        key,
                        format!("layer {layer} is not in layers_to_transform of {CONFIG_FILE}"),
                    ));
                }
            }
            let slot = &mut pairs.entry((layer, proj)).or_default()[half as usize];
            if let Some(prev) = slot {
                return Err(bad(key, format!("module '{module}' already has '{prev}'")));
            }
            *slot = Some(key.to_string());
        }
        if pairs.is_empty() {
            return Err(Error::format(&w_path, "no LoRA weights in the file"));
        }

        let mut modules = Vec::with_capacity(pairs.len());
        for ((layer, proj), [a_key, b_key]) in pairs {
            let module = module_name(layer, proj);
            let (a_key, b_key) = match (a_key, b_key) {
                (Some(a), Some(b)) => (a, b),
                (Some(a), None) => return Err(bad(&a, "lora_B of this module is missing".into())),
                (None, Some(b)) => return Err(bad(&b, "lora_A of this module is missing".into())),
                (None, None) => unreachable!("a pair has at least one key"),
            };
            let a_shape = &file.get(&a_key).expect("listed").shape;
            let b_shape = &file.get(&b_key).expect("listed").shape;
            let (rank, in_features) = match a_shape[..] {
                [r, i] => (r, i),
                _ => return Err(bad(&a_key, format!("shape {a_shape:?} is not (r, in)"))),
            };
            let out_features = match b_shape[..] {
                [o, r] if r == rank => o,
                _ => {
                    return Err(bad(
                        &b_key,
                        format!(
                        "shape {b_shape:?} is not (out, r) with r = {rank} from lora_A {a_shape:?}"
                    ),
                    ))
                }
            };
            if rank == 0 {
                return Err(bad(&a_key, "rank 0 (r must be at least 1)".into()));
            }
            let (want_r, r_from) =
                match pattern_value(&config.rank_pattern, &module, &cfg_path, "rank_pattern")? {
                    Some((k, r)) => (r, format!("rank_pattern['{k}'] = {r}")),
                    None => (config.r, format!("r = {}", config.r)),
                };
            if want_r != rank as i64 {
                return Err(bad(
                    &a_key,
                    format!("rank {rank} (shape {a_shape:?}) but {CONFIG_FILE} gives {r_from} for '{module}'"),
                ));
            }
            let alpha = pattern_value(&config.alpha_pattern, &module, &cfg_path, "alpha_pattern")?
                .map_or(config.lora_alpha, |(_, a)| a);
            let scale = if config.use_rslora {
                alpha / (rank as f64).sqrt()
            } else {
                alpha / rank as f64
            } as f32;
            let read = |key: &str| -> Result<Vec<f32>> {
                let t = file.load_f32(key)?;
                let v = t.data().to_vec();
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(bad(
                        key,
                        format!("value {} at index {i} is not finite", v[i]),
                    ));
                }
                Ok(v)
            };
            modules.push(LoraModule {
                layer,
                proj,
                rank,
                alpha,
                scale,
                in_features,
                out_features,
                a: read(&a_key)?,
                b: read(&b_key)?,
                a_key,
                b_key,
            });
        }
        Ok(LoraAdapter {
            dir: dir.to_path_buf(),
            config,
            modules,
        })
    }

    /// The folder it was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `adapter_model.safetensors`.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// The parsed `adapter_config.json`.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapted projections, sorted by layer and projection.
    pub fn modules(&self) -> &[LoraModule] {
        &self.modules
    }

    /// The module adapting projection `proj` of layer `layer`, if any.
    pub fn module(&self, layer: usize, proj: Proj) -> Option<&LoraModule> {
        self.modules
            .binary_search_by_key(&(layer, proj), |m| (m.layer, m.proj))
            .ok()
            .map(|i| &self.modules[i])
    }

    /// The model the adapter was trained on, as its config names it.
    pub fn base_model(&self) -> Option<&str> {
        self.config.base_model_name_or_path.as_deref()
    }

    /// Memory the adapter's weights take (f32 A and B matrices).
    pub fn bytes(&self) -> usize {
        self.modules
            .iter()
            .map(|m| (m.a.len() + m.b.len()) * 4)
            .sum()
    }

    /// Checks that the adapter fits a model with config `cfg`: every
    /// `target_modules` entry names a projection of it, every adapted
    /// layer exists, and `lora_A` is `(r, in)` and `lora_B` `(out, r)` for
    /// the projection's `(out, in)`. The error names the key.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let cfg_path = self.dir.join(CONFIG_FILE);
        let w_path = self.weights_path();
        if let Some(sel) = &self.config.target_modules {
            let names: Vec<String> = (0..cfg.n_layers)
                .flat_map(|l| Proj::ALL.map(|p| module_name(l, p)))
                .collect();
            let entries = match sel {
                ModuleSelector::List(v) => v
                    .iter()
                    .map(|t| ModuleSelector::List(vec![t.clone()]))
                    .collect(),
                ModuleSelector::Regex(_) => vec![sel.clone()],
            };
            for e in entries {
                let mut hit = false;
                for n in &names {
                    if selects(&e, n, &cfg_path, "target_modules")? {
                        hit = true;
                        break;
                    }
                }
                if !hit {
                    let what = match &e {
                        ModuleSelector::List(v) => format!("'{}'", v[0]),
                        ModuleSelector::Regex(s) => format!("regex '{s}'"),
                    };
                    return Err(Error::format(
                        &cfg_path,
                        format!(
                            "target_modules {what} names no module of this model (a {} with {} layers: \
                             q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj); \
                             is the adapter for another architecture?",
                            cfg.architecture, cfg.n_layers
                        ),
                    ));
                }
            }
        }
        for m in &self.modules {
            let other = self
                .base_model()
                .map(|b| format!(" (trained on '{b}')"))
                .unwrap_or_default();
            if m.layer >= cfg.n_layers {
                return Err(Error::format(
                    &w_path,
                    format!(
                        "key '{}': layer {} but the model has {} layers; another base model{other}?",
                        m.a_key, m.layer, cfg.n_layers
                    ),
                ));
            }
            let (out, inp) = proj_shape(cfg, m.proj);
            if m.in_features != inp {
                return Err(Error::format(
                    &w_path,
                    format!(
                        "key '{}': shape [{}, {}] does not fit {} of shape [{out}, {inp}] \
                         (lora_A must be [r, {inp}]); another base model{other}?",
                        m.a_key,
                        m.rank,
                        m.in_features,
                        m.proj.tensor_name(m.layer)
                    ),
                ));
            }
            if m.out_features != out {
                return Err(Error::format(
                    &w_path,
                    format!(
                        "key '{}': shape [{}, {}] does not fit {} of shape [{out}, {inp}] \
                         (lora_B must be [{out}, r]); another base model{other}?",
                        m.b_key,
                        m.out_features,
                        m.rank,
                        m.proj.tensor_name(m.layer)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Adds `scale ·` this adapter's delta to the f32 values of tensor
    /// `name` (`model.layers.3.mlp.up_proj.weight`), if it adapts it.
    /// Returns whether it did.
    pub fn merge_into(&self, name: &str, values: &mut [f32], scale: f32) -> bool {
        let Some((layer, proj)) = name.strip_suffix(".weight").and_then(parse_module) else {
            return false;
        };
        match self.module(layer, proj) {
            Some(m) if scale != 0.0 && values.len() == m.in_features * m.out_features => {
                m.add_delta(values, scale * m.scale);
                true
            }
            _ => false,
        }
    }
}

/// The config checks that need no model.
fn check_config(c: &LoraConfig, path: &Path) -> Result<()> {
    let bad = |key: &str, msg: &str| Err(Error::format(path, format!("{key}: {msg}")));
    if let Some(t) = c.peft_type.as_deref().filter(|t| *t != "LORA") {
        return bad("peft_type", &format!("'{t}' is not supported (only LORA)"));
    }
    if c.r <= 0 {
        return bad("r", &format!("{} (must be at least 1)", c.r));
    }
    if !c.lora_alpha.is_finite() {
        return bad("lora_alpha", &format!("{} is not finite", c.lora_alpha));
    }
    for (k, r) in c.rank_pattern.iter().flat_map(|p| &p.0) {
        if *r <= 0 {
            return bad(
                &format!("rank_pattern['{k}']"),
                &format!("{r} (must be at least 1)"),
            );
        }
    }
    for (k, a) in c.alpha_pattern.iter().flat_map(|p| &p.0) {
        if !a.is_finite() {
            return bad(
                &format!("alpha_pattern['{k}']"),
                &format!("{a} is not finite"),
            );
        }
    }
    if c.use_dora {
        return bad("use_dora", "DoRA adapters are not supported");
    }
    if c.bias != "none" {
        return bad(
            "bias",
            &format!(
                "'{}' is not supported (only \"none\": trained biases are not applied)",
                c.bias
            ),
        );
    }
    if c.lora_bias {
        return bad("lora_bias", "a bias on lora_B is not supported");
    }
    if let Some(m) = c.modules_to_save.as_ref().filter(|m| !m.is_empty()) {
        return bad(
            "modules_to_save",
            &format!("{m:?}: fully trained module copies are not supported"),
        );
    }
    if c.layer_replication.as_ref().is_some_and(|v| !v.is_null()) {
        return bad("layer_replication", "not supported");
    }
    if c.trainable_token_indices
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return bad("trainable_token_indices", "not supported");
    }
    Ok(())
}

/// Splits a command-line `DIR[:SCALE]`: the part after the last `:` is the
/// scale when it parses as a number (so a path containing `:` still works),
/// else the whole text is the folder and the scale is 1.
pub fn parse_lora_arg(arg: &str) -> Result<(PathBuf, f32)> {
    let (dir, scale) = match arg.rsplit_once(':') {
        Some((dir, s)) => match s.trim().parse::<f32>() {
            Ok(v) => (dir, v),
            Err(_) => (arg, 1.0),
        },
        None => (arg, 1.0),
    };
    if dir.is_empty() {
        return Err(Error::invalid(format!(
            "--lora '{arg}': no adapter folder (use DIR or DIR:SCALE)"
        )));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(format!(
            "--lora '{arg}': scale {scale} is not finite"
        )));
    }
    Ok((PathBuf::from(dir), scale))
}

fn check_scale(adapter: &LoraAdapter, scale: f32) -> Result<()> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "LoRA {}: scale {scale} is not finite",
            adapter.dir.display()
        )))
    }
}

/// Adapters applied unmerged: for every adapted projection the model's own
/// product gets `scale · (x·Aᵀ)·Bᵀ` added in f32 ([`LinearHook`]). Several
/// adapters may be attached at once; their deltas add up. Adapters with
/// scale 0 are skipped, so an all-zero set gives the base model's logits
/// bit for bit.
#[derive(Debug, Default, Clone)]
pub struct LoraSet {
    attached: Vec<(Arc<LoraAdapter>, f32)>,
    /// slot (layer · 7 + proj) → (adapter, module, adapter scale × user scale)
    index: Vec<Vec<(usize, usize, f32)>>,
}

impl LoraSet {
    /// No adapters.
    pub fn new() -> LoraSet {
        LoraSet::default()
    }

    /// Attaches `adapter` with `scale` (multiplying its own alpha/r), after
    /// checking it against `cfg`; an adapter already attached (the same
    /// `Arc`) gets the new scale. Returns whether anything changed.
    pub fn attach(
        &mut self,
        adapter: Arc<LoraAdapter>,
        scale: f32,
        cfg: &ModelConfig,
    ) -> Result<bool> {
        check_scale(&adapter, scale)?;
        adapter.validate(cfg)?;
        match self
            .attached
            .iter_mut()
            .find(|(a, _)| Arc::ptr_eq(a, &adapter))
        {
            Some((_, s)) if *s == scale => return Ok(false),
            Some((_, s)) => *s = scale,
            None => self.attached.push((adapter, scale)),
        }
        self.rebuild();
        Ok(true)
    }

    /// Detaches `adapter`; returns whether it was attached.
    pub fn detach(&mut self, adapter: &Arc<LoraAdapter>) -> bool {
        let before = self.attached.len();
        self.attached.retain(|(a, _)| !Arc::ptr_eq(a, adapter));
        let changed = self.attached.len() != before;
        if changed {
            self.rebuild();
        }
        changed
    }

    /// Changes the scale of an attached adapter; returns whether it changed.
    pub fn set_scale(&mut self, adapter: &Arc<LoraAdapter>, scale: f32) -> Result<bool> {
        check_scale(adapter, scale)?;
        let (_, s) = self
            .attached
            .iter_mut()
            .find(|(a, _)| Arc::ptr_eq(a, adapter))
            .ok_or_else(|| {
                Error::invalid(format!("LoRA {} is not attached", adapter.dir.display()))
            })?;
        if *s == scale {
            return Ok(false);
        }
        *s = scale;
        self.rebuild();
        Ok(true)
    }

    /// Detaches every adapter; returns whether any was attached.
    pub fn clear(&mut self) -> bool {
        let changed = !self.attached.is_empty();
        self.attached.clear();
        self.index.clear();
        changed
    }

    /// The attached adapters and their scales, in attach order.
    pub fn adapters(&self) -> &[(Arc<LoraAdapter>, f32)] {
        &self.attached
    }

    /// True when no attached adapter changes anything (none, or all at scale 0).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Itself as a hook for [`Model::forward_with`], or `None` when it
    /// would change nothing (so the forward pass is exactly the base's).
    pub fn hook(&self) -> Option<&dyn LinearHook> {
        if self.is_empty() {
            None
        } else {
            Some(self)
        }
    }

    fn rebuild(&mut self) {
        self.index.clear();
        for (ai, (a, s)) in self.attached.iter().enumerate() {
            if *s == 0.0 {
                continue;
            }
            for (mi, m) in a.modules.iter().enumerate() {
                let slot = m.layer * Proj::ALL.len() + m.proj as usize;
                if self.index.len() <= slot {
                    self.index.resize(slot + 1, Vec::new());
                }
                self.index[slot].push((ai, mi, s * m.scale));
            }
        }
    }
}

impl LinearHook for LoraSet {
    fn linear(&self, layer: usize, proj: Proj, x: &[f32], n: usize, out: &mut [f32]) {
        let Some(list) = self.index.get(layer * Proj::ALL.len() + proj as usize) else {
            return;
        };
        for &(ai, mi, scale) in list {
            let m = &self.attached[ai].0.modules[mi];
            let (r, cols, rows) = (m.rank, m.in_features, m.out_features);
            // t (n, r) = scale · x (n, in) · Aᵀ; out (n, out) += t · Bᵀ.
            let mut t = vec![0.0f32; n * r];
            k::matmul(&mut t, x, &m.a, n, cols, r);
            for v in &mut t {
                *v *= scale;
            }
            let mut d = vec![0.0f32; n * rows];
            k::matmul(&mut d, &t, &m.b, n, r, rows);
            k::add_inplace(out, &d);
        }
    }
}

/// Rows handed to one rayon task when merging into a q8 tensor.
const MERGE_ROWS: usize = 16;

/// Round half away from zero (`f32::round`) for `|y| < 2^23`, without the
/// libm call that keeps `round` from vectorising: truncation is exact and
/// so is `y - trunc(y)`.
#[inline]
fn round_half_away(y: f32) -> f32 {
    let t = y as i32 as f32;
    let f = y - t;
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// One row into q8 blocks, byte for byte what
/// `microllm_kernels::quant::q8::quantize_row` writes (d = max|x|/127 in
/// f16, bumped one step if rounding left max|x|/d above 127.5; q = round(x/d)),
/// a few times faster. `false` when a block's scale leaves the f16 range or a
/// value is not finite.
fn q8_row(x: &[f32], quants: &mut [u8], scales: &mut [half::f16]) -> bool {
    use half::f16;
    for ((xb, q), s) in x
        .chunks_exact(32)
        .zip(quants.chunks_exact_mut(32))
        .zip(scales)
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if !amax.is_finite() || xb.iter().any(|v| v.is_nan()) {
            return false;
        }
        let d = if amax == 0.0 {
            f16::ZERO
        } else {
            let mut d = f16::from_f32(amax / 127.0);
            if d.is_finite() && amax / d.to_f32() > 127.5 {
                d = f16::from_bits(d.to_bits() + 1);
            }
            if !d.is_finite() {
                return false;
            }
            d
        };
        let df = d.to_f32();
        for (qi, &v) in q.iter_mut().zip(xb) {
            *qi = if df == 0.0 {
                0
            } else {
                round_half_away(v / df).clamp(-127.0, 127.0) as i8 as u8
            };
        }
        *s = d;
    }
    true
}

/// [`merged_copy`] for a q8 tensor, one row at a time (dequantize, add the
/// deltas, quantize) so that no f32 copy of the matrix is ever made.
fn merged_q8(t: &Tensor, deltas: &[(&LoraModule, f32)], name: &str) -> Result<Tensor> {
    let w = t.weights();
    let (rows, cols) = (w.rows(), w.cols());
    let nb = cols / 32;
    let mut bytes = vec![0u8; rows * cols + rows * nb * 2];
    let (quants, scale_bytes) = bytes.split_at_mut(rows * cols);
    let mut scales = vec![half::f16::ZERO; rows * nb];
    let bad_row = quants
        .par_chunks_mut(MERGE_ROWS * cols)
        .zip(scales.par_chunks_mut(MERGE_ROWS * nb))
        .enumerate()
        .map(|(c, (q, s))| {
            let mut row = vec![0.0f32; cols];
            for (i, (qr, sr)) in q.chunks_mut(cols).zip(s.chunks_mut(nb)).enumerate() {
                let r = c * MERGE_ROWS + i;
                w.dequantize_row(r, &mut row);
                for (m, sc) in deltas {
                    m.add_delta_row(r, &mut row, *sc);
                }
                if !q8_row(&row, qr, sr) {
                    return Some(r);
                }
            }
            None
        })
        .find_any(|r| r.is_some())
        .flatten();
    if let Some(r) = bad_row {
        return Err(Error::invalid(format!(
            "merging LoRA into '{name}': row {r} is out of the q8 range (not finite or too large)"
        )));
    }
    for (dst, s) in scale_bytes.chunks_exact_mut(2).zip(&scales) {
        dst.copy_from_slice(&s.to_le_bytes());
    }
    crate::convert::tensor_from_bytes(TensorType::Q8, t.shape().to_vec(), &bytes)
}

/// A private copy of `t` with `Σ scale · B·A` added, in `t`'s own type.
fn merged_copy(t: &Tensor, deltas: &[(&LoraModule, f32)], name: &str) -> Result<Tensor> {
    if t.ty() == TensorType::Q8 {
        return merged_q8(t, deltas, name);
    }
    let w = t.weights();
    let mut values = w.dequantize();
    for (m, s) in deltas {
        m.add_delta(&mut values, *s);
    }
    let merged = Tensor::from_vec(t.shape().to_vec(), values)?;
    if t.ty() == TensorType::F32 {
        return Ok(merged);
    }
    crate::convert::quantize_tensor(&merged, t.ty())
        .map(|(q, _)| q)
        .map_err(|e| Error::invalid(format!("merging LoRA into '{name}': {e}")))
}

impl Model {
    /// The model with `adapters` merged in at their scales: each targeted
    /// projection becomes a private copy `W + Σ scale · (alpha/r) · B·A`,
    /// re-encoded in its own type (q8 stays q8); every other tensor stays
    /// where it was (in the file's map). Adapters at scale 0 are skipped,
    /// so the result is then bit for bit the base. The time it takes is
    /// added to [`Model::load_time`].
    pub fn with_lora_merged(mut self, adapters: &[(&LoraAdapter, f32)]) -> Result<Model> {
        let start = Instant::now();
        let mut jobs: BTreeMap<(usize, Proj), Vec<(&LoraModule, f32)>> = BTreeMap::new();
        for (a, s) in adapters {
            check_scale(a, *s)?;
            a.validate(self.config())?;
            if *s == 0.0 {
                continue;
            }
            for m in &a.modules {
                jobs.entry((m.layer, m.proj))
                    .or_default()
                    .push((m, s * m.scale));
            }
        }
        let jobs: Vec<_> = jobs.into_iter().collect();
        let layers = &self.weights().layers;
        let merged = jobs
            .par_iter()
            .map(|((l, p), deltas)| {
                merged_copy(layers[*l].proj(*p), deltas, &p.tensor_name(*l)).map(|t| ((*l, *p), t))
            })
            .collect::<Result<Vec<_>>>()?;
        let w = self.weights_mut();
        for ((l, p), t) in merged {
            *w.layers[l].proj_mut(p) = t;
        }
        self.add_load_time(start.elapsed());
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_q8_rows_are_the_kernels_bytes() {
        use microllm_kernels::quant::encode;
        let cols = 128;
        let mut x: Vec<f32> = (0..cols * 6)
            .map(|i| ((i as f32 * 0.7368).sin() * 3.1) * (1.0 + (i % 7) as f32))
            .collect();
        // Ties at ±k.5 steps, zeros, a zero block, tiny (subnormal-scale) and huge blocks.
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5 * (127.0 / 16.0) / 127.0 * 2.0;
        }
        for v in &mut x[32..64] {
            *v = 0.0;
        }
        for (i, v) in x[64..96].iter_mut().enumerate() {
            *v = (i as f32 - 10.0) * 1e-7;
        }
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = (i as f32 - 3.0) * 250.0;
        }
        for (i, v) in x[128..256].iter_mut().enumerate() {
            *v = (i as f32 - 64.0) + 0.5;
        }
        let rows = x.len() / cols;
        let want = encode(TensorType::Q8, &x, rows, cols).unwrap();
        let nb = cols / 32;
        let mut q = vec![0u8; rows * cols];
        let mut s = vec![half::f16::ZERO; rows * nb];
        for r in 0..rows {
            assert!(q8_row(
                &x[r * cols..(r + 1) * cols],
                &mut q[r * cols..(r + 1) * cols],
                &mut s[r * nb..(r + 1) * nb]
            ));
        }
        let mut got = q;
        for v in &s {
            got.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(got, want);
        let mut bad = x[..32].to_vec();
        bad[3] = f32::NAN;
        assert!(!q8_row(&bad, &mut [0u8; 32], &mut [half::f16::ZERO]));
        for y in [0.5f32, -0.5, 1.5, -2.5, 0.49999997, 126.5, -127.49, 3.0] {
            assert_eq!(round_half_away(y), y.round(), "{y}");
        }
    }

    #[test]
    fn lora_arg_splits_on_last_colon_only_before_a_number() {
        let p = |s: &str| parse_lora_arg(s).unwrap();
        assert_eq!(p("ad"), (PathBuf::from("ad"), 1.0));
        assert_eq!(p("ad:0.5"), (PathBuf::from("ad"), 0.5));
        assert_eq!(p("a:b/ad:2"), (PathBuf::from("a:b/ad"), 2.0));
        assert_eq!(p("a:b/ad"), (PathBuf::from("a:b/ad"), 1.0));
        assert_eq!(p("ad:-1.5"), (PathBuf::from("ad"), -1.5));
        assert!(parse_lora_arg(":1").is_err());
        assert!(parse_lora_arg("ad:inf").is_err());
        assert!(parse_lora_arg("ad:NaN").is_err());
    }

    #[test]
    fn keys_with_and_without_adapter_name() {
        let (m, h, n) =
            parse_key("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight").unwrap();
        assert_eq!(
            (m.as_str(), h, n),
            ("model.layers.7.self_attn.q_proj", Half::A, None)
        );
        let (m, h, n) =
            parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight")
                .unwrap();
        assert_eq!(
            (m.as_str(), h, n.as_deref()),
            ("model.layers.0.mlp.down_proj", Half::B, Some("default"))
        );
        assert_eq!(parse_module(&m), Some((0, Proj::Down)));
        assert!(parse_key("base_model.model.model.embed_tokens.lora_embedding_A").is_err());
        assert!(parse_key(
            "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
        )
        .is_err());
        assert!(parse_key("base_model.model.lm_head.weight").is_err());
        assert_eq!(parse_module("model.layers.0.self_attn.c_attn"), None);
        assert_eq!(parse_module("lm_head"), None);
    }

    #[test]
    fn pattern_keys_match_like_peft() {
        let p = Path::new("cfg");
        let pat = Some(OrderedMap(vec![
            ("q_proj".to_string(), 2i64),
            ("layers.1.mlp.down_proj".to_string(), 6),
            (r"layers\.0\.mlp\.(gate|up)_proj".to_string(), 3),
            (".*_proj".to_string(), 9),
        ]));
        let get = |n: &str| {
            pattern_value(&pat, n, p, "rank_pattern")
                .unwrap()
                .map(|v| v.1)
        };
        assert_eq!(get("model.layers.0.self_attn.q_proj"), Some(2));
        assert_eq!(get("model.layers.1.mlp.down_proj"), Some(6));
        assert_eq!(get("model.layers.11.mlp.down_proj"), Some(9)); // not layers.1: boundary
        assert_eq!(get("model.layers.0.mlp.up_proj"), Some(3));
        assert_eq!(get("model.layers.1.mlp.up_proj"), Some(9));
        // A key must follow a '.' (or be the whole name): "k_proj" does not
        // end with ".proj".
        let only = Some(OrderedMap(vec![("proj".to_string(), 1i64)]));
        assert_eq!(
            pattern_value(&only, "model.layers.0.self_attn.k_proj", p, "x").unwrap(),
            None
        );
        let broken = Some(OrderedMap(vec![("q_proj(".to_string(), 1i64)]));
        assert!(pattern_value(&broken, "a.q_proj", p, "rank_pattern").is_err());
    }

    #[test]
    fn target_selection_like_peft() {
        let p = Path::new("cfg");
        let list = ModuleSelector::List(vec!["q_proj".into(), "layers.1.mlp.up_proj".into()]);
        assert!(selects(&list, "model.layers.0.self_attn.q_proj", p, "t").unwrap());
        assert!(selects(&list, "model.layers.1.mlp.up_proj", p, "t").unwrap());
        assert!(!selects(&list, "model.layers.11.mlp.up_proj", p, "t").unwrap());
        assert!(!selects(&list, "model.layers.0.self_attn.k_proj", p, "t").unwrap());
        let re = ModuleSelector::Regex(r".*\.(q|v)_proj".into());
        assert!(selects(&re, "model.layers.0.self_attn.v_proj", p, "t").unwrap());
        assert!(!selects(&re, "model.layers.0.self_attn.o_proj", p, "t").unwrap());
        let all = ModuleSelector::Regex("all-linear".into());
        assert!(selects(&all, "model.layers.0.mlp.down_proj", p, "t").unwrap());
    }
}
