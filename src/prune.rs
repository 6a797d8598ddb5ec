//! Pruning: removing the weights of the linear layers that matter least.
//!
//! - Scores ([`Method`]): `magnitude` (`|w|`) or `wanda` (`|w_ij| · ‖x_j‖₂`,
//!   the L2 norm of input channel `j`'s activations over calibration text,
//!   collected by running the model with a [`LinearHook`]; Sun et al. 2023).
//! - Which weights compete ([`Pattern`], [`Scope`]): unstructured per output
//!   row (the default: exactly `round(sparsity · cols)` removed from every
//!   row), unstructured per whole matrix (one threshold: the variant that
//!   makes magnitude pruning collapse on language models), or N:M (in every
//!   M consecutive inputs of a row, the N of largest score are kept).
//! - Which matrices ([`LayerSpec`]): by default the seven projections of
//!   every layer; embeddings, the output head and norms are never pruned.
//!
//! Ties in score are broken by position (the lower index is removed
//! first), so a mask is a pure function of the scores.
//!
//! Pruned weights become exact zeros. [`PrunedSource`] applies pruning to
//! any [`TensorSource`] when tensors are loaded; [`write_hf_folder`] and
//! [`write_mllm`] write the result (the latter storing 2:4-pruned
//! matrices in the sparse types `q4s24`/`q8s24` the kernels exploit).

use crate::config::ModelConfig;
use crate::convert::{describe_file, quantize_tensor, relative_rmse, TensorReport};
use crate::error::{Error, Result};
use crate::format::{
    expected_tensors, Metadata, MllmWriter, Provenance, Recipe, Role, TokenizerInfo, TokenizerKind,
};
use crate::model::{LinearHook, Logits, Model, Proj};
use crate::safetensors::Dtype;
use crate::source::{ModelParts, SourceFormat, TensorSource};
use crate::tensor::Tensor;
use microllm_kernels::quant::{sparse, TensorType};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How weights are scored; the lowest scores are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `|w|`.
    Magnitude,
    /// `|w_ij| · ‖x_j‖₂` over calibration text (activation-aware).
    Wanda,
}

impl Method {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
        }
    }

    /// Parses "magnitude" or "wanda".
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "magnitude" => Ok(Method::Magnitude),
            "wanda" => Ok(Method::Wanda),
            _ => Err(Error::invalid(format!(
                "unknown pruning method '{s}' (use magnitude or wanda)"
            ))),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of the sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Any weights, `sparsity` of them, compared within each [`Scope`].
    Unstructured,
    /// `n` kept in every `m` consecutive inputs of a row.
    NofM {
        /// Kept per group.
        n: usize,
        /// Group length.
        m: usize,
    },
}

impl Pattern {
    /// Parses "unstructured" or "N:M" (e.g. "2:4"). N > M, N = 0 or M = 0
    /// is an error.
    pub fn parse(s: &str) -> Result<Pattern> {
        if s == "unstructured" {
            return Ok(Pattern::Unstructured);
        }
        let bad = || {
            Error::invalid(format!(
                "unknown sparsity pattern '{s}' (use unstructured or N:M such as 2:4 or 4:8)"
            ))
        };
        let (n, m) = s.split_once(':').ok_or_else(bad)?;
        let (n, m): (usize, usize) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n == 0 {
            return Err(Error::invalid(format!(
                "pattern {s}: N and M must be at least 1"
            )));
        }
        if n > m {
            return Err(Error::invalid(format!(
                "pattern {s}: N ({n}) cannot exceed M ({m}): N of every M weights are kept"
            )));
        }
        Ok(Pattern::NofM { n, m })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Unstructured => f.write_str("unstructured"),
            Pattern::NofM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// Which weights compete for removal in unstructured pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each output row loses exactly `round(sparsity · cols)` weights.
    Row,
    /// One threshold for the whole matrix.
    Matrix,
}

impl Scope {
    /// Parses "row" or "matrix".
    pub fn parse(s: &str) -> Result<Scope> {
        match s {
            "row" => Ok(Scope::Row),
            "matrix" => Ok(Scope::Matrix),
            _ => Err(Error::invalid(format!(
                "unknown pruning scope '{s}' (use row or matrix)"
            ))),
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Row => "row",
            Scope::Matrix => "matrix",
        }
    }
}

/// Which linear layers are pruned: a comma-separated list of projection
/// names and layer indices.
///
/// - Projections: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
///   `up_proj`, `down_proj`, and the groups `attn` (the first four) and
///   `mlp` (the last three). None given: all seven.
/// - Layers: an index `7` or an inclusive range `0-14`. None given: all.
/// - `all`: everything (the default).
///
/// A matrix is pruned when both its projection and its layer are selected:
/// `mlp,0-14` prunes the MLP of the first 15 layers. Embeddings, the
/// output head and norms are never pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    projs: BTreeSet<Proj>,
    layers: Option<Vec<(usize, usize)>>,
    text: String,
}

impl Default for LayerSpec {
    fn default() -> Self {
        LayerSpec {
            projs: Proj::ALL.into_iter().collect(),
            layers: None,
            text: "all".into(),
        }
    }
}

/// The names `--layers` accepts besides indices, for error messages.
const LAYER_WORDS: &str =
    "all, attn, mlp, q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, N or N-M";

impl LayerSpec {
    /// Parses the list; an unknown name is an error listing the valid ones.
    pub fn parse(s: &str) -> Result<LayerSpec> {
        let mut projs = BTreeSet::new();
        let mut layers: Vec<(usize, usize)> = Vec::new();
        let mut all = false;
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(Error::invalid(format!(
                    "--layers '{s}': empty item (valid: {LAYER_WORDS})"
                )));
            }
            match item {
                "all" => all = true,
                "attn" => projs.extend([Proj::Q, Proj::K, Proj::V, Proj::O]),
                "mlp" => projs.extend([Proj::Gate, Proj::Up, Proj::Down]),
                _ => {
                    if let Some(p) = Proj::ALL.into_iter().find(|p| p.short_name() == item) {
                        projs.insert(p);
                    } else if let Some(range) = parse_range(item) {
                        layers.push(range);
                    } else {
                        return Err(Error::invalid(format!(
                            "--layers: unknown layer name '{item}' (valid: {LAYER_WORDS})"
                        )));
                    }
                }
            }
        }
        if all || projs.is_empty() {
            projs.extend(Proj::ALL);
        }
        Ok(LayerSpec {
            projs,
            layers: (!all && !layers.is_empty()).then_some(layers),
            text: s.to_string(),
        })
    }

    /// True when projection `p` of layer `layer` is pruned.
    pub fn selects(&self, layer: usize, p: Proj) -> bool {
        self.projs.contains(&p)
            && self
                .layers
                .as_ref()
                .is_none_or(|r| r.iter().any(|&(a, b)| (a..=b).contains(&layer)))
    }

    /// Checks the layer indices against a model with `n_layers` layers.
    pub fn check(&self, n_layers: usize) -> Result<()> {
        for &(a, b) in self.layers.iter().flatten() {
            if b >= n_layers {
                return Err(Error::invalid(format!(
                    "--layers: layer {} does not exist (the model has layers 0-{})",
                    if a >= n_layers { a } else { b },
                    n_layers.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_range(s: &str) -> Option<(usize, usize)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
        None => s.parse().ok().map(|a| (a, a)),
    }
}

/// Everything that defines a pruning, checked by [`PruneOptions::validate`]
/// before any work starts.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneOptions {
    /// How weights are scored.
    pub method: Method,
    /// Fraction of the selected weights removed, in `[0, 1)`. For N:M
    /// patterns it is `1 − N/M` and may be left `None`.
    pub sparsity: Option<f32>,
    /// Unstructured or N:M.
    pub pattern: Pattern,
    /// For unstructured: per row (default) or per matrix.
    pub scope: Scope,
    /// Which linear layers.
    pub layers: LayerSpec,
    /// Calibration tokens for Wanda (the text must have at least this many).
    pub calib_tokens: usize,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            method: Method::Magnitude,
            sparsity: Some(0.5),
            pattern: Pattern::Unstructured,
            scope: Scope::Row,
            layers: LayerSpec::default(),
            calib_tokens: 2048,
        }
    }
}

/// Fewest calibration tokens Wanda accepts.
pub const MIN_CALIB_TOKENS: usize = 16;

impl PruneOptions {
    /// Checks the options on their own: sparsity in `[0, 1)`, consistent
    /// with an N:M pattern, enough calibration tokens asked for Wanda.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.sparsity {
            if !(0.0..1.0).contains(&s) {
                return Err(Error::invalid(format!(
                    "--sparsity {s} is outside [0, 1): it is the fraction of weights removed"
                )));
            }
        }
        match self.pattern {
            Pattern::Unstructured if self.sparsity.is_none() => {
                return Err(Error::invalid(
                    "unstructured pruning needs --sparsity (a fraction in [0, 1))",
                ))
            }
            Pattern::NofM { n, m } => {
                let implied = 1.0 - n as f32 / m as f32;
                if let Some(s) = self.sparsity {
                    if (s - implied).abs() > 1e-6 {
                        return Err(Error::invalid(format!(
                            "--pattern {n}:{m} removes exactly {implied} of the weights; --sparsity {s} contradicts it (leave it out)"
                        )));
                    }
                }
                if self.scope == Scope::Matrix {
                    return Err(Error::invalid(
                        "--scope matrix applies to unstructured pruning only; N:M compares within each group",
                    ));
                }
            }
            _ => {}
        }
        if self.method == Method::Wanda && self.calib_tokens < MIN_CALIB_TOKENS {
            return Err(Error::invalid(format!(
                "--calib-tokens {} is too few for Wanda (at least {MIN_CALIB_TOKENS})",
                self.calib_tokens
            )));
        }
        Ok(())
    }

    /// The fraction of selected weights removed.
    pub fn effective_sparsity(&self) -> f32 {
        match self.pattern {
            Pattern::NofM { n, m } => 1.0 - n as f32 / m as f32,
            Pattern::Unstructured => self.sparsity.unwrap_or(0.0),
        }
    }

    /// Checks the options against a model: layer indices exist, and N:M
    /// groups divide every selected matrix's rows.
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<()> {
        self.validate()?;
        self.layers.check(cfg.n_layers)?;
        if let Pattern::NofM { n, m } = self.pattern {
            for (l, p) in selected(cfg, &self.layers) {
                let cols = proj_shape(cfg, p)[1];
                if !cols.is_multiple_of(m) {
                    return Err(Error::invalid(format!(
                        "--pattern {n}:{m}: {} has {cols} inputs, not a multiple of {m}",
                        p.tensor_name(l)
                    )));
                }
            }
        }
        Ok(())
    }

    /// The options as the JSON object recorded in a file's provenance.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "method": self.method.name(),
            "sparsity": self.effective_sparsity(),
            "pattern": self.pattern.to_string(),
            "layers": self.layers.as_str(),
        });
        if self.pattern == Pattern::Unstructured {
            v["scope"] = self.scope.name().into();
        }
        if self.method == Method::Wanda {
            v["calib_tokens"] = self.calib_tokens.into();
        }
        v
    }

    /// Parses the quick-try form `METHOD:SPARSITY[:PATTERN]` of
    /// `microllm run --prune` (e.g. `magnitude:0.3`, `magnitude:0.5:2:4`).
    pub fn parse_quick(s: &str) -> Result<PruneOptions> {
        let mut parts = s.splitn(3, ':');
        let method = Method::parse(parts.next().unwrap_or(""))?;
        let sparsity: f32 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(|| {
            Error::invalid(format!(
                "--prune '{s}': expected METHOD:SPARSITY[:PATTERN], e.g. magnitude:0.3"
            ))
        })?;
        let pattern = match parts.next() {
            Some(p) => Pattern::parse(p)?,
            None => Pattern::Unstructured,
        };
        let opts = PruneOptions {
            method,
            sparsity: Some(sparsity),
            pattern,
            ..PruneOptions::default()
        };
        if method == Method::Wanda {
            return Err(Error::invalid(
                "--prune wanda needs calibration text: use `microllm prune --method wanda --calib TEXT`",
            ));
        }
        opts.validate()?;
        Ok(opts)
    }
}

/// `(rows, cols)` of projection `p` in a model with config `cfg`.
pub fn proj_shape(cfg: &ModelConfig, p: Proj) -> [usize; 2] {
    let (dim, hidden, q, kv) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.q_dim(),
        cfg.kv_dim(),
    );
    match p {
        Proj::Q => [q, dim],
        Proj::K | Proj::V => [kv, dim],
        Proj::O => [dim, q],
        Proj::Gate | Proj::Up => [hidden, dim],
        Proj::Down => [dim, hidden],
    }
}

/// Every `(layer, projection)` the spec selects.
pub fn selected(cfg: &ModelConfig, spec: &LayerSpec) -> Vec<(usize, Proj)> {
    (0..cfg.n_layers)
        .flat_map(|l| Proj::ALL.into_iter().map(move |p| (l, p)))
        .filter(|&(l, p)| spec.selects(l, p))
        .collect()
}

/// `(layer, projection)` of a tensor name, if it is a projection weight.
pub fn parse_proj_name(name: &str) -> Option<(usize, Proj)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let module = rest.strip_suffix(".weight")?;
    Proj::ALL
        .into_iter()
        .find(|p| p.hf_name() == module)
        .map(|p| (l, p))
}

// ---------------------------------------------------------------------------
// Scores and masks

/// Scores of a `rows × cols` matrix: `|w|`, times `norms[col]` when given
/// (Wanda).
pub fn scores(w: &[f32], cols: usize, norms: Option<&[f32]>) -> Vec<f32> {
    match norms {
        None => w.iter().map(|v| v.abs()).collect(),
        Some(n) => {
            assert_eq!(n.len(), cols, "scores: one norm per input column");
            w.chunks_exact(cols)
                .flat_map(|row| row.iter().zip(n).map(|(v, s)| v.abs() * s))
                .collect()
        }
    }
}

/// Removes the `k` lowest of `idx` (by score, then index) and marks them.
fn remove_lowest(scores: &[f32], idx: &mut [usize], k: usize, removed: &mut [bool]) {
    if k == 0 {
        return;
    }
    let cmp = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    for &i in &idx[..k.min(idx.len())] {
        removed[i] = true;
    }
}

/// Which weights of a `rows × cols` matrix to remove (true = removed),
/// given their scores. Unstructured: `round(sparsity · cols)` per row
/// ([`Scope::Row`]) or `round(sparsity · rows · cols)` in the matrix; N:M:
/// `m − n` in every `m` consecutive inputs (`cols` must be a multiple of
/// `m`). Ties go by position, lower index removed first.
pub fn mask(
    scores: &[f32],
    rows: usize,
    cols: usize,
    pattern: Pattern,
    scope: Scope,
    sparsity: f32,
) -> Vec<bool> {
    assert_eq!(
        scores.len(),
        rows * cols,
        "mask: scores are not rows × cols"
    );
    let mut removed = vec![false; scores.len()];
    match (pattern, scope) {
        (Pattern::NofM { n, m }, _) => {
            assert!(m > 0 && n <= m && cols.is_multiple_of(m), "mask: bad N:M");
            let mut idx = Vec::with_capacity(m);
            for g in (0..scores.len()).step_by(m) {
                idx.clear();
                idx.extend(g..g + m);
                remove_lowest(scores, &mut idx, m - n, &mut removed);
            }
        }
        (Pattern::Unstructured, Scope::Row) => {
            let k = ((sparsity as f64) * cols as f64).round() as usize;
            let mut idx = Vec::with_capacity(cols);
            for r in 0..rows {
                idx.clear();
                idx.extend(r * cols..(r + 1) * cols);
                remove_lowest(scores, &mut idx, k.min(cols), &mut removed);
            }
        }
        (Pattern::Unstructured, Scope::Matrix) => {
            let numel = scores.len();
            let k = ((sparsity as f64) * numel as f64).round() as usize;
            let mut idx: Vec<usize> = (0..numel).collect();
            remove_lowest(scores, &mut idx, k.min(numel), &mut removed);
        }
    }
    removed
}

/// Prunes a `rows × cols` matrix in place (pruned weights set to 0) and
/// returns how many were removed. `norms` (one per input column) makes it
/// Wanda, else magnitude.
pub fn prune_matrix(
    w: &mut [f32],
    rows: usize,
    cols: usize,
    opts: &PruneOptions,
    norms: Option<&[f32]>,
) -> usize {
    let s = scores(w, cols, norms);
    let m = mask(
        &s,
        rows,
        cols,
        opts.pattern,
        opts.scope,
        opts.effective_sparsity(),
    );
    let mut count = 0;
    for (v, r) in w.iter_mut().zip(m) {
        if r {
            *v = 0.0;
            count += 1;
        }
    }
    count
}

// ---------------------------------------------------------------------------
// Wanda calibration

/// Per input channel of every linear layer, the L2 norm of its activations
/// over the calibration tokens: what Wanda multiplies `|w|` by.
#[derive(Debug, Clone, Default)]
pub struct ActivationNorms {
    norms: BTreeMap<(usize, Proj), Vec<f32>>,
    tokens: usize,
}

impl ActivationNorms {
    /// The norms of projection `p`'s inputs in layer `layer`.
    pub fn get(&self, layer: usize, p: Proj) -> Option<&[f32]> {
        self.norms.get(&(layer, p)).map(Vec::as_slice)
    }

    /// Tokens the norms were collected over.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// A [`LinearHook`] summing `x²` per input channel of every projection.
struct NormCollector {
    /// `[layer · 7 + proj]`: Σ x² per input channel.
    sums: Vec<Mutex<Vec<f64>>>,
}

fn proj_index(p: Proj) -> usize {
    Proj::ALL.iter().position(|&q| q == p).unwrap_or(0)
}

impl LinearHook for NormCollector {
    fn linear(&self, layer: usize, proj: Proj, x: &[f32], n: usize, _out: &mut [f32]) {
        if n == 0 {
            return;
        }
        let cols = x.len() / n;
        let Some(slot) = self.sums.get(layer * 7 + proj_index(proj)) else {
            return;
        };
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() != cols {
            *s = vec![0.0; cols];
        }
        for row in x.chunks_exact(cols) {
            for (a, &v) in s.iter_mut().zip(row) {
                *a += (v as f64) * (v as f64);
            }
        }
    }
}

/// The first `n` tokens of `text`, or a clear error when it has fewer.
pub fn calibration_tokens(
    model_tokenizer: &crate::Tokenizer,
    text: &str,
    n: usize,
) -> Result<Vec<u32>> {
    let tokens = model_tokenizer.encode(text);
    if tokens.len() < n {
        return Err(Error::invalid(format!(
            "the calibration text has {} tokens; --calib-tokens asks for {n} (give a longer text or fewer tokens)",
            tokens.len()
        )));
    }
    Ok(tokens[..n].to_vec())
}

/// Runs `model` over `tokens` in windows of up to `window` tokens (each
/// from an empty context) and collects the input norms of every linear
/// layer. `on_window(done, total)` reports progress.
pub fn collect_norms(
    model: &Model,
    tokens: &[u32],
    window: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<ActivationNorms> {
    let cfg = model.config();
    let window = window.clamp(1, cfg.max_seq_len);
    if tokens.is_empty() {
        return Err(Error::invalid("no calibration tokens"));
    }
    let collector = NormCollector {
        sums: (0..cfg.n_layers * 7)
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
    };
    let chunks: Vec<&[u32]> = tokens.chunks(window).collect();
    for (i, c) in chunks.iter().enumerate() {
        let mut cache = model.new_cache(c.len());
        model.forward_with(c, &mut cache, Logits::Last, Some(&collector))?;
        on_window(i + 1, chunks.len());
    }
    let mut norms = BTreeMap::new();
    for (i, s) in collector.sums.into_iter().enumerate() {
        let s = s.into_inner().unwrap_or_else(|e| e.into_inner());
        let v: Vec<f32> = s.iter().map(|&a| a.sqrt() as f32).collect();
        norms.insert((i / 7, Proj::ALL[i % 7]), v);
    }
    Ok(ActivationNorms {
        norms,
        tokens: tokens.len(),
    })
}

// ---------------------------------------------------------------------------
// Pruning a source

/// The tensors of another source with pruning applied at load time: each
/// selected projection is loaded as f32, pruned, and (if the source stored
/// it quantized) quantized again to its type, or to the 2:4 sparse type
/// of that quantization for a 2:4 pattern. Every pruned tensor is a
/// private copy.
pub struct PrunedSource {
    inner: Box<dyn TensorSource>,
    opts: PruneOptions,
    norms: Option<Arc<ActivationNorms>>,
}

impl PrunedSource {
    /// Prunes tensor `name` if it is selected: `Some(f32 tensor)`, else `None`.
    pub fn pruned_f32(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((l, p)) = parse_proj_name(name).filter(|&(l, p)| self.opts.layers.selects(l, p))
        else {
            return Ok(None);
        };
        let t = self.inner.load_f32(name)?;
        let (rows, cols) = match t.shape() {
            [r, c] => (*r, *c),
            s => {
                return Err(Error::invalid(format!(
                    "tensor '{name}' has shape {s:?}, not a matrix"
                )))
            }
        };
        let norms = match (&self.norms, self.opts.method) {
            (Some(n), Method::Wanda) => Some(n.get(l, p).ok_or_else(|| {
                Error::invalid(format!("no calibration statistics for '{name}'"))
            })?),
            (None, Method::Wanda) => {
                return Err(Error::invalid("Wanda pruning needs calibration statistics"))
            }
            _ => None,
        };
        if let Some(n) = norms {
            if n.len() != cols {
                return Err(Error::invalid(format!(
                    "calibration statistics for '{name}' have {} channels, the matrix {cols}",
                    n.len()
                )));
            }
        }
        let mut w = t.data().to_vec();
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "tensor '{name}': element {i} is {}; cannot prune non-finite weights",
                w[i]
            )));
        }
        prune_matrix(&mut w, rows, cols, &self.opts, norms);
        Tensor::from_vec(vec![rows, cols], w).map(Some)
    }
}

impl TensorSource for PrunedSource {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.inner.shape(name)
    }
    fn load_f32(&self, name: &str) -> Result<Tensor> {
        match self.pruned_f32(name)? {
            Some(t) => Ok(t),
            None => self.inner.load_f32(name),
        }
    }
    fn load(&self, name: &str) -> Result<Tensor> {
        let Some(t) = self.pruned_f32(name)? else {
            return self.inner.load(name);
        };
        let stored = self.inner.load(name)?.ty();
        if stored == TensorType::F32 {
            return Ok(t);
        }
        let ty = storage_type(stored, &self.opts, t.shape()[1], true);
        quantize_tensor(&t, ty)
            .map(|(q, _)| q)
            .map_err(|e| Error::invalid(format!("tensor '{name}': {e}")))
    }
}

/// The type a pruned matrix of `cols` inputs is stored as, given the
/// recipe's type `ty`: its 2:4 sparse twin when the pattern is 2:4, the
/// type has one, `cols` is a multiple of 64 and `sparse_storage` is on.
pub fn storage_type(
    ty: TensorType,
    opts: &PruneOptions,
    cols: usize,
    sparse_storage: bool,
) -> TensorType {
    let dense = ty.dense();
    match (opts.pattern, dense.sparse_2_4()) {
        (Pattern::NofM { n: 2, m: 4 }, Some(s))
            if sparse_storage && cols.is_multiple_of(sparse::SK) =>
        {
            s
        }
        _ => dense,
    }
}

impl ModelParts {
    /// The same model with `opts` applied when tensors are loaded (see
    /// [`PrunedSource`]). Checks the options against the config first.
    /// Wanda needs `norms` ([`collect_norms`]).
    pub fn pruned(
        self,
        opts: PruneOptions,
        norms: Option<Arc<ActivationNorms>>,
    ) -> Result<ModelParts> {
        opts.check_model(&self.config)?;
        if opts.method == Method::Wanda && norms.is_none() {
            return Err(Error::invalid("Wanda pruning needs calibration statistics"));
        }
        Ok(ModelParts {
            tensors: Box::new(PrunedSource {
                inner: self.tensors,
                opts,
                norms,
            }),
            ..self
        })
    }
}

/// Achieved sparsity of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSparsity {
    /// Hugging Face name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Exact zeros after pruning (pruned or zero before).
    pub zeros: usize,
    /// Values.
    pub numel: usize,
    /// Whether it was selected for pruning.
    pub pruned: bool,
}

impl TensorSparsity {
    fn of(name: &str, t: &Tensor, pruned: bool) -> TensorSparsity {
        let zeros = t.data().iter().filter(|v| **v == 0.0).count();
        TensorSparsity {
            name: name.to_string(),
            shape: t.shape().to_vec(),
            zeros,
            numel: t.numel(),
            pruned,
        }
    }

    /// `zeros / numel`.
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.numel.max(1) as f64
    }
}

/// Overall sparsity of the pruned tensors, and of all weights.
pub fn overall(tensors: &[TensorSparsity]) -> (f64, f64) {
    let (mut pz, mut pn, mut az, mut an) = (0usize, 0usize, 0usize, 0usize);
    for t in tensors {
        if t.pruned {
            pz += t.zeros;
            pn += t.numel;
        }
        az += t.zeros;
        an += t.numel;
    }
    (pz as f64 / pn.max(1) as f64, az as f64 / an.max(1) as f64)
}

/// Element type of the tensors of a Hugging Face folder written by
/// [`write_hf_folder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderDtype {
    /// Holds any source's values exactly (a quantized source dequantized).
    F32,
    /// Half the size; rounds to nearest.
    F16,
    /// Half the size; rounds to nearest (what most checkpoints on the hub
    /// are, so exact for them).
    BF16,
}

impl FolderDtype {
    /// `f32`, `f16`, `bf16`, or `auto` (`None`: [`FolderDtype::of_source`]).
    pub fn parse(s: &str) -> Result<Option<FolderDtype>> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(None),
            "f32" | "float32" => Ok(Some(FolderDtype::F32)),
            "f16" | "float16" => Ok(Some(FolderDtype::F16)),
            "bf16" | "bfloat16" => Ok(Some(FolderDtype::BF16)),
            _ => Err(Error::invalid(format!(
                "unknown folder dtype '{s}' (expected auto, f32, f16 or bf16)"
            ))),
        }
    }

    /// The source's own type for a Hugging Face folder whose token
    /// embedding is F16 or BF16 (a pruned copy the size of the original),
    /// else F32 (GGUF and `.mllm` sources are quantized: f32 holds their
    /// values exactly).
    pub fn of_source(parts: &ModelParts) -> Result<FolderDtype> {
        if parts.format != SourceFormat::HfFolder {
            return Ok(FolderDtype::F32);
        }
        let w = crate::hf::open_weights(&parts.path)?;
        let name = "model.embed_tokens.weight";
        let dtype = w.file_of(name).and_then(|f| f.get(name)).map(|t| t.dtype);
        Ok(match dtype {
            Some(Dtype::F16) => FolderDtype::F16,
            Some(Dtype::BF16) => FolderDtype::BF16,
            _ => FolderDtype::F32,
        })
    }

    /// The safetensors type written.
    pub fn dtype(self) -> Dtype {
        match self {
            FolderDtype::F32 => Dtype::F32,
            FolderDtype::F16 => Dtype::F16,
            FolderDtype::BF16 => Dtype::BF16,
        }
    }

    /// The safetensors header's name ("F32", "F16", "BF16").
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// config.json's `torch_dtype`.
    fn torch(self) -> &'static str {
        match self {
            FolderDtype::F32 => "float32",
            FolderDtype::F16 => "float16",
            FolderDtype::BF16 => "bfloat16",
        }
    }

    /// Appends `v` as little-endian values of this type.
    fn extend(self, buf: &mut Vec<u8>, v: &[f32]) {
        match self {
            FolderDtype::F32 => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            FolderDtype::F16 => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
            FolderDtype::BF16 => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        }
    }
}

/// Files of a Hugging Face folder copied unchanged into a pruned one.
fn is_side_file(name: &str) -> bool {
    (name.ends_with(".json") || name.ends_with(".jinja") || name.ends_with(".txt"))
        && name != crate::hf::INDEX_FILE
}

/// Writes the pruned model as a Hugging Face folder: every tensor (same
/// names and shapes) in one `model.safetensors` of type `dtype` (a
/// quantized source's values dequantized), beside the config and
/// tokenizer files. From a
/// Hugging Face folder those are copied (with its other JSON files); from
/// a GGUF or `.mllm` file they are written: `config.json`,
/// `generation_config.json`, `tokenizer.json` ([`Tokenizer::to_hf_json`])
/// and `tokenizer_config.json` (the chat template).
/// `opts` are the options `parts` were pruned with (the report marks the
/// tensors they select). `on_tensor(done, total, name)` reports progress.
///
/// [`Tokenizer::to_hf_json`]: crate::tokenizer::Tokenizer::to_hf_json
pub fn write_hf_folder(
    parts: &ModelParts,
    out: &Path,
    opts: &PruneOptions,
    dtype: FolderDtype,
    mut on_tensor: impl FnMut(usize, usize, &str),
) -> Result<Vec<TensorSparsity>> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let src = &parts.path;
    if parts.format == SourceFormat::HfFolder {
        for e in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
            let p = e.map_err(|e| Error::io(src, e))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if p.is_file() && is_side_file(name) {
                std::fs::copy(&p, out.join(name)).map_err(|e| Error::io(&p, e))?;
            }
        }
    } else {
        write_side_files(parts, out, dtype)?;
    }
    let mut names = parts.tensors.names();
    names.sort();
    // Header first: every shape is known without loading anything.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "pruned_by": format!("microllm {}", env!("CARGO_PKG_VERSION"))}),
    );
    let mut offset = 0usize;
    for n in &names {
        let shape = parts
            .tensors
            .shape(n)
            .ok_or_else(|| Error::format(src, format!("no shape for '{n}'")))?;
        let bytes = shape.iter().product::<usize>() * dtype.dtype().size();
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::invalid(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let path = out.join(crate::hf::SINGLE_FILE);
    let tmp = out.join(".model.safetensors.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| Error::io(&tmp, e);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    let mut report = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let t = parts.tensors.load_f32(n)?;
        let pruned = parse_proj_name(n).is_some_and(|(l, p)| opts.layers.selects(l, p));
        let mut buf = Vec::with_capacity(t.numel() * dtype.dtype().size());
        dtype.extend(&mut buf, t.data());
        w.write_all(&buf).map_err(io)?;
        report.push(TensorSparsity::of(n, &t, pruned));
        on_tensor(i + 1, names.len(), n);
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(report)
}

/// The config and tokenizer files of a Hugging Face folder for a model
/// read from a GGUF or `.mllm` file.
fn write_side_files(parts: &ModelParts, out: &Path, dtype: FolderDtype) -> Result<()> {
    let cfg = &parts.config;
    let tok = &parts.tokenizer;
    let token = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).map(str::to_string);
    let mut tokenizer_config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(cfg.bos_token_id),
        "eos_token": token(cfg.eos_token_ids.first().copied()),
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": false,
    });
    if let Some(t) = &parts.chat_template {
        tokenizer_config["chat_template"] = serde_json::json!(t);
    }
    let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let mut config = crate::hf::config_json(cfg);
    config["torch_dtype"] = serde_json::json!(dtype.torch());
    for (name, text) in [
        (crate::hf::CONFIG_FILE, json(&config)),
        (
            crate::hf::GENERATION_CONFIG_FILE,
            json(&crate::hf::generation_config_json(cfg, &parts.generation)),
        ),
        (crate::hf::TOKENIZER_FILE, tok.to_hf_json()),
        (crate::hf::TOKENIZER_CONFIG_FILE, json(&tokenizer_config)),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// What [`write_mllm`] wrote.
#[derive(Debug, Clone)]
pub struct MllmReport {
    /// Every tensor's type, size and quantization error (against the pruned f32 values).
    pub tensors: Vec<TensorReport>,
    /// Sparsity of every tensor before quantization.
    pub sparsity: Vec<TensorSparsity>,
    /// Size of the file.
    pub file_bytes: u64,
}

/// Writes the pruned model (`parts`, already [`ModelParts::pruned`]) as a
/// `.mllm` file, quantized by `recipe`; pruned matrices of a 2:4 pattern
/// are stored in the recipe type's sparse twin (`q4` → `q4s24`, `q8` →
/// `q8s24`) unless `sparse_storage` is off. The recipe recorded in the
/// file names every tensor's actual type; the provenance records `opts`.
pub fn write_mllm(
    parts: &ModelParts,
    out: &Path,
    recipe: &Recipe,
    opts: &PruneOptions,
    sparse_storage: bool,
    mut on_tensor: impl FnMut(usize, usize, &str),
) -> Result<MllmReport> {
    let expected = expected_tensors(&parts.config);
    // The type of each matrix, decided before any work.
    let mut types = BTreeMap::new();
    for e in &expected {
        if e.role == Role::Matrix {
            let base = recipe.type_for(&e.name);
            let ty = match parse_proj_name(&e.name) {
                Some((l, p)) if opts.layers.selects(l, p) => {
                    storage_type(base, opts, e.shape[1], sparse_storage)
                }
                _ => base,
            };
            types.insert(e.name.clone(), ty);
        }
    }
    let mut counts: BTreeMap<TensorType, usize> = BTreeMap::new();
    for t in types.values() {
        *counts.entry(*t).or_default() += 1;
    }
    let default_type = counts
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(t, _)| *t)
        .unwrap_or(recipe.default_type);
    let final_recipe = Recipe {
        method: recipe.method.clone(),
        default_type,
        overrides: types
            .iter()
            .filter(|(_, t)| **t != default_type)
            .map(|(n, t)| (n.clone(), *t))
            .collect(),
    };
    let sources = crate::convert::source_files(parts)?
        .iter()
        .map(|p| describe_file(p))
        .collect::<Result<Vec<_>>>()?;
    let metadata = Metadata {
        config: parts.config.clone(),
        tokenizer: TokenizerInfo {
            kind: TokenizerKind::Binary,
        },
        chat_template: parts.chat_template.clone(),
        generation: parts.generation.clone(),
        quantization: final_recipe,
        provenance: Provenance {
            tool: format!("microllm {}", env!("CARGO_PKG_VERSION")),
            sources,
            pruning: Some(opts.describe()),
            lora: Vec::new(),
        },
    };
    let mut writer = MllmWriter::new(metadata, parts.tokenizer.to_binary());
    let mut report = MllmReport {
        tensors: Vec::new(),
        sparsity: Vec::new(),
        file_bytes: 0,
    };
    for (i, e) in expected.iter().enumerate() {
        let t = parts.tensors.load_f32(&e.name)?;
        if t.shape() != e.shape.as_slice() {
            return Err(Error::format(
                &parts.path,
                format!(
                    "tensor '{}' has shape {:?}, expected {:?}",
                    e.name,
                    t.shape(),
                    e.shape
                ),
            ));
        }
        let ty = types.get(&e.name).copied().unwrap_or(TensorType::F32);
        let (q, bytes) = quantize_tensor(&t, ty)
            .map_err(|err| Error::invalid(format!("tensor '{}': {err}", e.name)))?;
        let pruned = parse_proj_name(&e.name).is_some_and(|(l, p)| opts.layers.selects(l, p));
        report
            .sparsity
            .push(TensorSparsity::of(&e.name, &t, pruned));
        report.tensors.push(TensorReport {
            name: e.name.clone(),
            ty,
            shape: e.shape.clone(),
            bytes: bytes.len(),
            rel_rmse: relative_rmse(t.data(), &q),
        });
        writer.add_tensor(e.name.clone(), ty, &e.shape, bytes)?;
        on_tensor(i + 1, expected.len(), &e.name);
    }
    writer.write(out)?;
    report.file_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(report)
}

// ---------------------------------------------------------------------------
// Quality report

/// One row of the `--report` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// Scoring method.
    pub method: Method,
    /// Pattern.
    pub pattern: Pattern,
    /// Fraction of the selected weights removed.
    pub sparsity: f32,
    /// Perplexity of the pruned model.
    pub ppl: f64,
    /// Perplexity of the unpruned model.
    pub base_ppl: f64,
    /// Mean KL(unpruned ‖ pruned) per scored token.
    pub mean_kl: f64,
    /// Fraction of positions where both models' top token agree.
    pub same_top: f64,
}

/// The configurations `--report` measures: for each method, 10, 20, 30
/// and 50% unstructured (per row) and 2:4.
pub fn report_configs(base: &PruneOptions) -> Vec<PruneOptions> {
    let mut v = Vec::new();
    for method in [Method::Magnitude, Method::Wanda] {
        for s in [0.1f32, 0.2, 0.3, 0.5] {
            v.push(PruneOptions {
                method,
                sparsity: Some(s),
                pattern: Pattern::Unstructured,
                scope: Scope::Row,
                ..base.clone()
            });
        }
        v.push(PruneOptions {
            method,
            sparsity: None,
            pattern: Pattern::NofM { n: 2, m: 4 },
            scope: Scope::Row,
            ..base.clone()
        });
    }
    v
}

/// Measures each configuration: the source pruned in memory (f32, or the
/// source's own types), perplexity and mean KL against the unpruned
/// model `base` over `eval` tokens in windows of `ctx`
/// ([`crate::perplexity::perplexity_many`]: the base model runs once per
/// window). `open` gives a fresh copy of the source for each
/// configuration; all pruned models are held at once (a private copy of
/// the pruned matrices each). `on_progress(stage, done, total)` with
/// stage "pruning" (configurations) then "scoring" (windows).
pub fn quality_report(
    open: &dyn Fn() -> Result<ModelParts>,
    base: &Model,
    configs: &[PruneOptions],
    norms: Option<Arc<ActivationNorms>>,
    eval: &[u32],
    ctx: usize,
    mut on_progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<ReportRow>> {
    for c in configs {
        c.check_model(base.config())?;
        if c.method == Method::Wanda && norms.is_none() {
            return Err(Error::invalid(
                "the report's Wanda rows need calibration statistics",
            ));
        }
    }
    let mut models = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let n = (c.method == Method::Wanda).then(|| norms.clone()).flatten();
        models.push(Model::from_parts(open()?.pruned(c.clone(), n)?)?);
        on_progress("pruning", i + 1, configs.len());
    }
    let refs: Vec<&Model> = models.iter().collect();
    let reports = crate::perplexity::perplexity_many(&refs, base, eval, ctx, |d, t| {
        on_progress("scoring", d, t)
    })?;
    Ok(configs
        .iter()
        .zip(reports)
        .map(|(c, r)| ReportRow {
            method: c.method,
            pattern: c.pattern,
            sparsity: c.effective_sparsity(),
            ppl: r.ppl,
            base_ppl: r.base_ppl.unwrap_or(f64::NAN),
            mean_kl: r.mean_kl.unwrap_or(f64::NAN),
            same_top: r.same_top.unwrap_or(f64::NAN),
        })
        .collect())
}

/// Where a pruned model goes, told by the output path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A `.mllm` file (the path ends in `.mllm`).
    Mllm(PathBuf),
    /// A Hugging Face folder (any other path).
    HfFolder(PathBuf),
}

impl Output {
    /// `.mllm` by extension, else a folder.
    pub fn from_path(p: &Path) -> Output {
        if p.extension().is_some_and(|e| e == "mllm") {
            Output::Mllm(p.to_path_buf())
        } else {
            Output::HfFolder(p.to_path_buf())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_spec_parses_names_groups_and_ranges() {
        let s = LayerSpec::parse("mlp,q_proj,0-2,5").unwrap();
        assert!(s.selects(0, Proj::Down) && s.selects(2, Proj::Q) && s.selects(5, Proj::Up));
        assert!(!s.selects(3, Proj::Down) && !s.selects(0, Proj::K));
        let all = LayerSpec::parse("all").unwrap();
        assert!(all.selects(29, Proj::O));
        assert!(LayerSpec::parse("3").unwrap().selects(3, Proj::V));
        let e = LayerSpec::parse("qproj").unwrap_err().to_string();
        assert!(e.contains("qproj") && e.contains("down_proj"), "{e}");
        assert!(LayerSpec::parse("5-2").is_err());
        assert!(LayerSpec::parse("0-40").unwrap().check(30).is_err());
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_proj_name("model.layers.12.mlp.down_proj.weight"),
            Some((12, Proj::Down))
        );
        assert_eq!(parse_proj_name("model.embed_tokens.weight"), None);
        assert_eq!(
            parse_proj_name("model.layers.1.input_layernorm.weight"),
            None
        );
    }
}
