//! The Llama-family decoder: weights, KV cache and the forward pass, read top
//! to bottom in one place.
//!
//! Notation: `dim` = hidden_size, `hidden` = intermediate_size, `q_dim` =
//! n_heads · head_dim, `kv_dim` = n_kv_heads · head_dim, `n` = tokens in
//! this forward call.

use crate::chat::ChatTemplate;
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::source::{self, GenerationDefaults, ModelParts, SourceFormat, TensorSource};
use crate::tensor::Tensor;
use crate::tokenizer::Tokenizer;
use microllm_kernels::dispatch::{self, Kernels};
use microllm_kernels::f32 as k;
use microllm_kernels::f32::HeadCache;
use microllm_kernels::pool::{self, Pool};
use microllm_kernels::quant::{F32Activations, Planes, Q8Activations, TensorType, WeightsRef};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Weights of one transformer block.
#[derive(Debug)]
pub struct LayerWeights {
    /// attn_norm: (dim)
    pub attn_norm: Tensor,
    /// wq: (q_dim, dim)
    pub wq: Tensor,
    /// wk: (kv_dim, dim)
    pub wk: Tensor,
    /// wv: (kv_dim, dim)
    pub wv: Tensor,
    /// wo: (dim, q_dim)
    pub wo: Tensor,
    /// ffn_norm: (dim)
    pub ffn_norm: Tensor,
    /// w_gate: (hidden, dim)
    pub w_gate: Tensor,
    /// w_up: (hidden, dim)
    pub w_up: Tensor,
    /// w_down: (dim, hidden)
    pub w_down: Tensor,
}

/// All weights of the model.
#[derive(Debug)]
pub struct Weights {
    /// token_embedding: (vocab, dim)
    pub token_embedding: Tensor,
    /// layers: n_layers blocks
    pub layers: Vec<LayerWeights>,
    /// final_norm: (dim)
    pub final_norm: Tensor,
    /// lm_head: (vocab, dim); `None` when tied to the token embedding.
    pub lm_head: Option<Tensor>,
}

impl Weights {
    /// Fetches every tensor from `src`, checking each shape against `cfg`.
    fn load(cfg: &ModelConfig, src: &dyn TensorSource, path: &Path) -> Result<Weights> {
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            match src.shape(name) {
                None => return Err(Error::format(path, format!("missing tensor '{name}'"))),
                Some(s) if s != shape => {
                    return Err(Error::format(
                        path,
                        format!("tensor '{name}' has shape {s:?}, expected {shape:?}"),
                    ))
                }
                Some(_) => {}
            }
            let t = src.load(name)?;
            if shape.len() == 1 && t.ty() != TensorType::F32 {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' is {}; norms must be f32", t.ty()),
                ));
            }
            if t.shape() != shape {
                return Err(Error::format(
                    path,
                    format!(
                        "tensor '{name}' loaded with shape {:?}, expected {shape:?}",
                        t.shape()
                    ),
                ));
            }
            Ok(t)
        };
        let (dim, hidden, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let layers = (0..cfg.n_layers)
            .map(|l| {
                let p = format!("model.layers.{l}.");
                Ok(LayerWeights {
                    attn_norm: get(&format!("{p}input_layernorm.weight"), &[dim])?,
                    wq: get(&format!("{p}self_attn.q_proj.weight"), &[q_dim, dim])?,
                    wk: get(&format!("{p}self_attn.k_proj.weight"), &[kv_dim, dim])?,
                    wv: get(&format!("{p}self_attn.v_proj.weight"), &[kv_dim, dim])?,
                    wo: get(&format!("{p}self_attn.o_proj.weight"), &[dim, q_dim])?,
                    ffn_norm: get(&format!("{p}post_attention_layernorm.weight"), &[dim])?,
                    w_gate: get(&format!("{p}mlp.gate_proj.weight"), &[hidden, dim])?,
                    w_up: get(&format!("{p}mlp.up_proj.weight"), &[hidden, dim])?,
                    w_down: get(&format!("{p}mlp.down_proj.weight"), &[dim, hidden])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(get("lm_head.weight", &[vocab, dim])?)
        };
        Ok(Weights {
            token_embedding: get("model.embed_tokens.weight", &[vocab, dim])?,
            layers,
            final_norm: get("model.norm.weight", &[dim])?,
            lm_head,
        })
    }
}

/// Keys and values of every position seen so far, per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// k[layer]: (len, kv_dim)
    k: Vec<Vec<f32>>,
    /// v[layer]: (len, kv_dim)
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for up to `capacity` positions. Memory grows with use.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> KvCache {
        KvCache {
            k: vec![Vec::new(); cfg.n_layers],
            v: vec![Vec::new(); cfg.n_layers],
            kv_dim: cfg.kv_dim(),
            len: 0,
            capacity,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache accepts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
                buf.truncate(len * self.kv_dim);
            }
            self.len = len;
        }
    }

    /// Bytes held by keys and values.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.len() * 4).sum()
    }
}

/// The seven linear layers of a transformer block, by their Hugging Face
/// names (`model.layers.{l}.{name}.weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// `self_attn.q_proj`: (q_dim, dim)
    Q,
    /// `self_attn.k_proj`: (kv_dim, dim)
    K,
    /// `self_attn.v_proj`: (kv_dim, dim)
    V,
    /// `self_attn.o_proj`: (dim, q_dim)
    O,
    /// `mlp.gate_proj`: (hidden, dim)
    Gate,
    /// `mlp.up_proj`: (hidden, dim)
    Up,
    /// `mlp.down_proj`: (dim, hidden)
    Down,
}

impl Proj {
    /// All seven, in the order the forward pass runs them.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module path inside a layer, as Hugging Face names it.
    pub const fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The short module name ("q_proj", "down_proj").
    pub fn short_name(self) -> &'static str {
        let full = self.hf_name();
        &full[full.find('.').map_or(0, |i| i + 1)..]
    }

    /// The full tensor name of this projection in layer `layer`.
    pub fn tensor_name(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.weight", self.hf_name())
    }
}

impl LayerWeights {
    /// The weight of one projection.
    pub fn proj(&self, p: Proj) -> &Tensor {
        match p {
            Proj::Q => &self.wq,
            Proj::K => &self.wk,
            Proj::V => &self.wv,
            Proj::O => &self.wo,
            Proj::Gate => &self.w_gate,
            Proj::Up => &self.w_up,
            Proj::Down => &self.w_down,
        }
    }

    /// The weight of one projection, to replace it (LoRA merged at load).
    pub(crate) fn proj_mut(&mut self, p: Proj) -> &mut Tensor {
        match p {
            Proj::Q => &mut self.wq,
            Proj::K => &mut self.wk,
            Proj::V => &mut self.wv,
            Proj::O => &mut self.wo,
            Proj::Gate => &mut self.w_gate,
            Proj::Up => &mut self.w_up,
            Proj::Down => &mut self.w_down,
        }
    }
}

/// Sees every linear layer's product during a forward pass and may add to
/// it: LoRA adapters applied unmerged, activation statistics for pruning.
pub trait LinearHook: Sync {
    /// Called right after `out (n, rows) = x (n, cols) · Wᵀ` for projection
    /// `proj` of layer `layer`; `x` is the projection's input.
    fn linear(&self, layer: usize, proj: Proj, x: &[f32], n: usize, out: &mut [f32]);
}

/// Which positions of a forward call to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (what generation needs).
    Last,
    /// Every token's (for perplexity and reference checks).
    All,
}

/// How the inputs of quantized matrix products are represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32 for prompts (several tokens at once) and int8 for generation
    /// (one token at a time): prompts keep the reference accuracy (a
    /// forward call over several tokens, a prompt or a perplexity window,
    /// gives exactly the logits of [`Activations::F32`]), and generation,
    /// bound by reading the weights, takes int8 inputs, which halve the
    /// work per weight byte.
    #[default]
    Auto,
    /// f32 always, as the reference: quantized weights are dequantized
    /// inside the product.
    F32,
    /// int8 per block of 32 always, as llama.cpp does: integer products,
    /// at a small cost in accuracy (see `docs/performance.md`). The
    /// fastest prompts on AVX-512 without AMX (about 1.2–1.5× the default
    /// there, one int8 part per block instead of two).
    Int8,
}

impl Activations {
    /// The name the CLI takes ("auto", "f32", "int8").
    pub fn name(self) -> &'static str {
        match self {
            Activations::Auto => "auto",
            Activations::F32 => "f32",
            Activations::Int8 => "int8",
        }
    }

    /// The mode with this name.
    pub fn from_name(name: &str) -> Option<Activations> {
        [Activations::Auto, Activations::F32, Activations::Int8]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// Whether a forward call over `n` tokens uses int8 inputs.
    pub fn int8_for(self, n: usize) -> bool {
        match self {
            Activations::Auto => n == 1,
            Activations::F32 => false,
            Activations::Int8 => true,
        }
    }
}

/// A loaded model: weights, tokenizer and chat template. Share it between
/// sessions with an `Arc`.
pub struct Model {
    config: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    generation: GenerationDefaults,
    weights: Weights,
    /// inv_freq: (head_dim / 2), RoPE frequencies after any scaling.
    inv_freq: Vec<f64>,
    path: PathBuf,
    format: SourceFormat,
    load_time: Duration,
    activations: Activations,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a model from a Hugging Face checkpoint folder or a `.gguf` file.
    ///
    /// ```no_run
    /// let model = microllm::Model::load("models/smollm2-135m-hf-f32")?;
    /// println!("{} layers", model.config().n_layers);
    /// # Ok::<(), microllm::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let start = Instant::now();
        let parts = source::open(path.as_ref())?;
        let mut model = Model::from_parts(parts)?;
        model.load_time = start.elapsed();
        Ok(model)
    }

    /// Builds a model from what a reader produced.
    pub fn from_parts(parts: ModelParts) -> Result<Model> {
        let start = Instant::now();
        let ModelParts {
            config,
            tokenizer,
            chat_template,
            generation,
            tensors,
            path,
            format,
        } = parts;
        config.validate(&path)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::format(
                &path,
                format!(
                    "tokenizer has {} tokens but the model's vocabulary is {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            ));
        }
        let weights = Weights::load(&config, tensors.as_ref(), &path)?;
        let chat_template = match chat_template {
            Some(src) => {
                let name = |id: Option<u32>| {
                    id.and_then(|i| tokenizer.id_to_token(i))
                        .unwrap_or("")
                        .to_string()
                };
                let bos = name(config.bos_token_id);
                let eos = name(config.eos_token_ids.first().copied());
                Some(ChatTemplate::new(&src, &bos, &eos)?)
            }
            None => None,
        };
        let inv_freq = rope_inv_freq(&config);
        Ok(Model {
            config,
            tokenizer,
            chat_template,
            generation,
            weights,
            inv_freq,
            path,
            format,
            load_time: start.elapsed(),
            activations: Activations::default(),
        })
    }

    /// Hyperparameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer that came with the model.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Sampling defaults suggested by the checkpoint.
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.generation
    }

    /// The weights, for inspection.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The weights, to replace some (LoRA merged at load, `crate::lora`).
    pub(crate) fn weights_mut(&mut self) -> &mut Weights {
        &mut self.weights
    }

    /// Counts `extra` (work done after loading, like merging adapters) in
    /// [`Model::load_time`].
    pub(crate) fn add_load_time(&mut self, extra: Duration) {
        self.load_time += extra;
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kind of file it was loaded from.
    pub fn format(&self) -> SourceFormat {
        self.format
    }

    /// How the inputs of quantized matrix products are represented.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// Chooses the representation of quantized products' inputs.
    pub fn set_activations(&mut self, a: Activations) {
        self.activations = a;
    }

    /// Wall time `load` took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Bytes of weights one decoded token reads: every matrix and norm of
    /// every layer, the final norm, the output head, and one row of the
    /// token embedding (the whole matrix when it is also the head). The
    /// KV cache comes on top ([`Model::kv_bytes_per_position`]).
    pub fn weight_bytes_per_token(&self) -> usize {
        let w = &self.weights;
        let layers: usize = w
            .layers
            .iter()
            .map(|l| {
                [&l.attn_norm, &l.ffn_norm]
                    .into_iter()
                    .chain(Proj::ALL.iter().map(|&p| l.proj(p)))
                    .map(|t| t.byte_len())
                    .sum::<usize>()
            })
            .sum();
        let emb = &w.token_embedding;
        let head = match &w.lm_head {
            Some(h) => h.byte_len() + emb.byte_len() / self.config.vocab_size.max(1),
            None => emb.byte_len(),
        };
        layers + w.final_norm.byte_len() + head
    }

    /// Bytes of KV cache that attention reads for each cached position
    /// (keys and values of every layer, f32): a token decoded after `p`
    /// cached positions reads `(p + 1)` times this on top of
    /// [`Model::weight_bytes_per_token`].
    pub fn kv_bytes_per_position(&self) -> usize {
        let c = &self.config;
        2 * c.n_layers * c.n_kv_heads * c.head_dim * std::mem::size_of::<f32>()
    }

    /// A KV cache for this model holding up to `capacity` positions (capped
    /// at the model's context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(&self.config, capacity.min(self.config.max_seq_len))
    }

    /// Runs `tokens` through the model after the positions already in
    /// `cache`, appends their keys and values to it, and returns logits:
    /// `(vocab)` for [`Logits::Last`], `(n, vocab)` for [`Logits::All`].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, which, None)
    }

    /// [`Model::forward`] with a hook called after every linear layer.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        hook: Option<&dyn LinearHook>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::invalid("forward: no tokens"));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        let pos0 = cache.len;
        if pos0 + n > cache.capacity {
            return Err(Error::invalid(format!(
                "context full: {pos0} + {n} tokens exceed the context length {}",
                cache.capacity
            )));
        }
        let (dim, hidden, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let w = &self.weights;
        let kern = dispatch::kernels();
        let pool = pool::global();
        // The int8 form of the current projection input, when asked for.
        let int8 = self.activations.int8_for(n);
        let mut xq = Q8Activations::quantize(&[], 0, 0);

        // x: (n, dim), the residual stream, starts as the token embeddings.
        let emb = w.token_embedding.weights();
        let mut x = vec![0.0f32; n * dim];
        for (row, &t) in x.chunks_exact_mut(dim).zip(tokens) {
            emb.dequantize_row(t as usize, row);
        }

        // RoPE tables for the new positions: cos, sin: (n, head_dim / 2).
        let half = hd / 2;
        let mut cos = vec![0.0f32; n * half];
        let mut sin = vec![0.0f32; n * half];
        for t in 0..n {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let angle = (pos0 + t) as f64 * f;
                cos[t * half + i] = angle.cos() as f32;
                sin[t * half + i] = angle.sin() as f32;
            }
        }

        // Scratch buffers.
        let mut xb = vec![0.0f32; n * dim]; // (n, dim) normed input
        let mut q = vec![0.0f32; n * q_dim]; // (n, q_dim)
        let mut kk = vec![0.0f32; n * kv_dim]; // (n, kv_dim)
        let mut vv = vec![0.0f32; n * kv_dim]; // (n, kv_dim)
        let mut att = vec![0.0f32; n * q_dim]; // (n, q_dim) attention output
        let mut proj = vec![0.0f32; n * dim]; // (n, dim)
        let mut gate = vec![0.0f32; n * hidden]; // (n, hidden)
        let mut up = vec![0.0f32; n * hidden]; // (n, hidden)
        let mut scratch = AttentionScratch::default();

        for (l, lw) in w.layers.iter().enumerate() {
            // Attention block: x += wo · attention(rope(wq · norm(x)), cache).
            rmsnorm_rows(
                pool,
                &mut xb,
                &x,
                lw.attn_norm.data(),
                cfg.rms_norm_eps,
                dim,
            );
            let xin_f = F32Activations::new(&xb, n, dim);
            let xin = Input::new(&xin_f, int8_form(&mut xq, int8, kern, &xb, n, dim));
            let qkv = [Proj::Q, Proj::K, Proj::V];
            linears(l, lw, &qkv, &mut [&mut q, &mut kk, &mut vv], xin, n, hook);
            for (m, width) in [(&mut q, q_dim), (&mut kk, kv_dim)] {
                par_rows(pool, m, width, &|t, row| {
                    let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                    k::rope(row, hd, c, s);
                });
            }
            cache.k[l].extend_from_slice(&kk);
            cache.v[l].extend_from_slice(&vv);
            attention(
                &mut att,
                &q,
                &cache.k[l],
                &cache.v[l],
                pos0,
                cfg,
                kern,
                &mut scratch,
            );
            let ain_f = F32Activations::new(&att, n, q_dim);
            let ain = Input::new(&ain_f, int8_form(&mut xq, int8, kern, &att, n, q_dim));
            linear(l, lw, Proj::O, &mut proj, ain, n, hook);
            add_rows(pool, &mut x, &proj, dim);

            // MLP block: x += w_down · (silu(w_gate · norm(x)) * (w_up · norm(x))).
            rmsnorm_rows(pool, &mut xb, &x, lw.ffn_norm.data(), cfg.rms_norm_eps, dim);
            let xin_f = F32Activations::new(&xb, n, dim);
            let xin = Input::new(&xin_f, int8_form(&mut xq, int8, kern, &xb, n, dim));
            let gate_up = [Proj::Gate, Proj::Up];
            linears(l, lw, &gate_up, &mut [&mut gate, &mut up], xin, n, hook);
            par_rows(pool, &mut gate, hidden, &|t, g| {
                (kern.silu_mul)(g, &up[t * hidden..][..hidden])
            });
            let gin_f = F32Activations::new(&gate, n, hidden);
            let gin = Input::new(&gin_f, int8_form(&mut xq, int8, kern, &gate, n, hidden));
            linear(l, lw, Proj::Down, &mut proj, gin, n, hook);
            add_rows(pool, &mut x, &proj, dim);
        }
        cache.len += n;

        // Output: logits = lm_head · norm(x), for the positions asked for.
        let head = w.lm_head.as_ref().unwrap_or(&w.token_embedding).weights();
        let vocab = cfg.vocab_size;
        let rows = match which {
            Logits::Last => &x[(n - 1) * dim..],
            Logits::All => &x[..],
        };
        let m = rows.len() / dim;
        let mut normed = vec![0.0f32; m * dim];
        rmsnorm_rows(
            pool,
            &mut normed,
            rows,
            w.final_norm.data(),
            cfg.rms_norm_eps,
            dim,
        );
        let mut logits = vec![0.0f32; m * vocab];
        let hin_f = F32Activations::new(&normed, m, dim);
        let hin = Input::new(&hin_f, int8_form(&mut xq, int8, kern, &normed, m, dim));
        hin.matmul(&head, &mut logits, m);
        Ok(logits)
    }
}

/// `out (n, rows) = x (n, cols) · Wᵀ` for one projection, then the hook.
fn linear(
    layer: usize,
    lw: &LayerWeights,
    p: Proj,
    out: &mut [f32],
    x: Input<'_>,
    n: usize,
    hook: Option<&dyn LinearHook>,
) {
    x.matmul(&lw.proj(p).weights(), out, n);
    if let Some(h) = hook {
        h.linear(layer, p, x.f32.data(), n, out);
    }
}

/// [`linear`] for several projections of one input: for one token on
/// int8 inputs, one pool job for all of them (the threads meet once, not
/// once per matrix); otherwise one after another.
fn linears(
    layer: usize,
    lw: &LayerWeights,
    projs: &[Proj],
    outs: &mut [&mut [f32]],
    x: Input<'_>,
    n: usize,
    hook: Option<&dyn LinearHook>,
) {
    let mut fused = |a: &Q8Activations| {
        let ws: Vec<WeightsRef<'_>> = projs.iter().map(|&p| lw.proj(p).weights()).collect();
        if !ws.iter().all(|w| dispatch::kernels().int8_for(w.ty())) {
            return false;
        }
        let ws: Vec<&WeightsRef<'_>> = ws.iter().collect();
        WeightsRef::matmul_q8_many_with(dispatch::kernels(), pool::global(), &ws, outs, a);
        true
    };
    match x.q8 {
        Some(a) if n == 1 && fused(a) => {
            if let Some(h) = hook {
                for (&p, o) in projs.iter().zip(outs.iter_mut()) {
                    h.linear(layer, p, x.f32.data(), n, o);
                }
            }
        }
        _ => {
            for (&p, o) in projs.iter().zip(outs.iter_mut()) {
                linear(layer, lw, p, o, x, n, hook);
            }
        }
    }
}

/// `x (n, cols)` quantized into `buf` when `int8`, else nothing.
fn int8_form<'b>(
    buf: &'b mut Q8Activations,
    int8: bool,
    kern: &Kernels,
    x: &[f32],
    n: usize,
    cols: usize,
) -> Option<&'b Q8Activations> {
    if !int8 || !cols.is_multiple_of(microllm_kernels::quant::QK) {
        return None;
    }
    buf.requantize_with(kern, x, n, cols);
    Some(buf)
}

/// A projection's input: f32 rows, and their int8 form when the model runs
/// on int8 activations.
#[derive(Clone, Copy)]
struct Input<'a> {
    f32: &'a F32Activations<'a>,
    q8: Option<&'a Q8Activations>,
}

impl<'a> Input<'a> {
    fn new(f32: &'a F32Activations<'a>, q8: Option<&'a Q8Activations>) -> Input<'a> {
        Input { f32, q8 }
    }

    /// `out (n, rows) = x (n, cols) · Wᵀ`, on the int8 form when there is
    /// one and the weights are quantized.
    fn matmul(&self, w: &WeightsRef<'_>, out: &mut [f32], n: usize) {
        match self.q8 {
            // Where the tier has a SIMD int8 kernel for the type.
            Some(a) if dispatch::kernels().int8_for(w.ty()) => w.matmul_q8(out, a),
            _ => {
                debug_assert_eq!(self.f32.n(), n);
                w.matmul_act(out, self.f32)
            }
        }
    }
}

/// `f(t, row t)` for every `width`-wide row of `m`, the rows split evenly
/// over the pool (a prompt's element-wise steps would otherwise leave
/// every thread but one waiting; one row runs on the calling thread).
fn par_rows(pool: &Pool, m: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let n = m.len() / width.max(1);
    let per = n.div_ceil(pool.threads()).max(1);
    pool.for_chunks(m, per * width, &|i, part| {
        for (j, row) in part.chunks_exact_mut(width).enumerate() {
            f(i * per + j, row);
        }
    });
}

/// RMSNorm of each `dim`-wide row of `x` into `out`.
fn rmsnorm_rows(pool: &Pool, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32, dim: usize) {
    par_rows(pool, out, dim, &|t, o| {
        k::rmsnorm(o, &x[t * dim..][..dim], weight, eps)
    });
}

/// The residual connection `y += x`, rows of `dim` split over the pool.
fn add_rows(pool: &Pool, y: &mut [f32], x: &[f32], dim: usize) {
    par_rows(pool, y, dim, &|t, row| {
        k::add_inplace(row, &x[t * dim..][..dim])
    });
}

/// Causal grouped-query attention of the `n` new queries (positions
/// `pos0..pos0 + n`) over every cached position up to their own.
///
/// out, q: (n, q_dim); k_cache, v_cache: (pos0 + n, kv_dim).
#[allow(clippy::too_many_arguments)]
fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    cfg: &ModelConfig,
    kern: &Kernels,
    scratch: &mut AttentionScratch,
) {
    let Heads {
        hd,
        q_dim,
        kv_dim,
        group,
        scale,
    } = Heads::of(cfg);
    let n = q.len() / q_dim;
    if n >= PROMPT_ATTENTION_MIN_TOKENS {
        return prompt_attention(out, q, k_cache, v_cache, pos0, cfg, kern, scratch);
    }
    // One task per (token, head): each owns one head_dim slice of `out`.
    pool::global().for_chunks(out, hd, &|i, o| {
        let (t, h) = (i / cfg.n_heads, i % cfg.n_heads);
        let kvh = h / group;
        let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
        let n_ctx = pos0 + t + 1;
        TASK_SCRATCH.with(|ts| {
            let scores = &mut ts.borrow_mut().1;
            scores.resize(n_ctx, 0.0);
            // Rows of head kvh: kv_dim apart, from kvh·hd.
            let cache = HeadCache {
                k: &k_cache[kvh * hd..],
                v: &v_cache[kvh * hd..],
                stride: kv_dim,
            };
            (kern.attend)(o, qh, cache, scale, scores);
        });
    });
}

/// The attention shapes of a model: head width, query and key/value row
/// widths, query heads per key/value head, and the score scale.
struct Heads {
    hd: usize,
    q_dim: usize,
    kv_dim: usize,
    group: usize,
    scale: f32,
}

impl Heads {
    fn of(cfg: &ModelConfig) -> Heads {
        Heads {
            hd: cfg.head_dim,
            q_dim: cfg.q_dim(),
            kv_dim: cfg.kv_dim(),
            group: cfg.n_heads / cfg.n_kv_heads,
            scale: 1.0 / (cfg.head_dim as f32).sqrt(),
        }
    }
}

/// From this many new tokens attention runs as matrix products.
const PROMPT_ATTENTION_MIN_TOKENS: usize = 8;

/// Queries per chunk of [`prompt_attention`].
const PROMPT_ATTENTION_CHUNK: usize = 64;

/// [`attention`] for a prompt: per key/value head, two matrix products on
/// the kernels' matmul (the AMX tiles where there are some) instead of a
/// dot product and an axpy per (query, position), per chunk of
/// [`PROMPT_ATTENTION_CHUNK`] queries, which see only the positions up to
/// their last one (causal: the chunks skip most of the masked triangle):
///
/// - `scores (group·c, len) = Q_c · K_hᵀ`, the chunk's queries of the
///   `group` heads that share the key head stacked as rows (token-major),
///   `len` the positions its last query sees;
/// - each row scaled, masked to its own past and softmaxed into
///   `P (group·c, lc)`, `lc` = `len` padded to whole blocks of 32;
/// - `O (group·c, head_dim) = P · V_h`, with the first `lc` columns of
///   `V_hᵀ (head_dim, ctx)` as the matrix.
///
/// Each (key head, chunk) is one task of a single pool job, on one
/// thread, last chunks (the largest) first: small products split over
/// the threads would make them meet three times per chunk.
#[allow(clippy::too_many_arguments)]
fn prompt_attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    cfg: &ModelConfig,
    kern: &Kernels,
    scratch: &mut AttentionScratch,
) {
    let Heads {
        hd,
        q_dim,
        kv_dim,
        group,
        scale,
    } = Heads::of(cfg);
    let n_kv = cfg.n_kv_heads;
    let n = q.len() / q_dim;
    let n_ctx = pos0 + n;
    let ctx = n_ctx.next_multiple_of(microllm_kernels::quant::QK);
    let pool = pool::global();
    let chunks = n.div_ceil(PROMPT_ATTENTION_CHUNK);
    let chunk_rows = group * n.min(PROMPT_ATTENTION_CHUNK);
    let AttentionScratch { kh, vt, o } = scratch;
    // K_h (n_ctx, hd) and V_hᵀ (hd, ctx) of every key head; V_hᵀ's padding
    // columns stay 0 (the sizes are the same for every layer of one
    // forward pass).
    kh.resize(n_kv * ctx * hd, 0.0);
    vt.resize(n_kv * hd * ctx, 0.0);
    o.resize(n_kv * chunks * chunk_rows * hd, 0.0);
    pool.for_chunks(kh, ctx * hd, &|kvh, kh| {
        let (live, pad) = kh.split_at_mut(n_ctx * hd);
        for (pos, row) in live.chunks_exact_mut(hd).enumerate() {
            row.copy_from_slice(&k_cache[pos * kv_dim + kvh * hd..][..hd]);
        }
        pad.fill(0.0);
    });
    pool.for_chunks(vt, hd * ctx, &|kvh, vt| {
        for pos in 0..n_ctx {
            for (d, &v) in v_cache[pos * kv_dim + kvh * hd..][..hd].iter().enumerate() {
                vt[d * ctx + pos] = v;
            }
        }
    });
    let (kh, vt) = (&*kh, &*vt);
    let one = serial_pool();
    // Task i: chunk `chunks − 1 − i / n_kv` of key head `i % n_kv`; its
    // output O (group·c, hd) in its own stretch of `o`.
    let task = |i: usize| (i % n_kv, chunks - 1 - i / n_kv);
    pool.for_chunks_in_order(o, chunk_rows * hd, &|i, o| {
        let (kvh, c) = task(i);
        let t0 = c * PROMPT_ATTENTION_CHUNK;
        let t1 = (t0 + PROMPT_ATTENTION_CHUNK).min(n);
        let rc = (t1 - t0) * group;
        let len = pos0 + t1;
        let lc = len.next_multiple_of(microllm_kernels::quant::QK);
        TASK_SCRATCH.with(|ts| {
            let ts = &mut *ts.borrow_mut();
            let (qg, p, vc) = (&mut ts.0, &mut ts.1, &mut ts.2);
            // Row (t − t0)·group + g: token t's query of head kvh·group + g
            // (the group's heads lie side by side in q and in out), scaled
            // by 1/√hd here rather than every score after the product.
            qg.clear();
            for t in t0..t1 {
                let row = &q[t * q_dim + kvh * group * hd..][..group * hd];
                qg.extend(row.iter().map(|&v| v * scale));
            }
            // Scores straight into P (rc, lc): K_h's rows past n_ctx are 0.
            let kh = &kh[kvh * ctx * hd..][..lc * hd];
            let k_mat = WeightsRef::new(lc, hd, Planes::F32(kh)).expect("K_h is (lc, hd)");
            p.resize(rc * lc, 0.0);
            k_mat.matmul_with(kern, one, p, qg, rc);
            // Row (t, g) sees positions 0..=pos0 + t; the rest of P is 0.
            for (r, prow) in p.chunks_exact_mut(lc).enumerate() {
                let live = pos0 + t0 + r / group + 1;
                let (live, masked) = prow.split_at_mut(live);
                (kern.softmax)(live);
                masked.fill(0.0);
            }
            // V_hᵀ's first lc columns, rows lc apart.
            vc.resize(hd * lc, 0.0);
            let vt = &vt[kvh * hd * ctx..][..hd * ctx];
            for (d, row) in vc.chunks_exact_mut(lc).enumerate() {
                row.copy_from_slice(&vt[d * ctx..][..lc]);
            }
            let v_mat = WeightsRef::new(hd, lc, Planes::F32(vc)).expect("V_hᵀ is (hd, lc)");
            v_mat.matmul_with(kern, one, &mut o[..rc * hd], p, rc);
        });
    });
    for (i, o) in o.chunks_exact(chunk_rows * hd).enumerate() {
        let (kvh, c) = task(i);
        let t0 = c * PROMPT_ATTENTION_CHUNK;
        let heads = kvh * group * hd..(kvh + 1) * group * hd;
        for (t, row) in (t0..(t0 + PROMPT_ATTENTION_CHUNK).min(n)).zip(o.chunks_exact(group * hd)) {
            out[t * q_dim..][heads.clone()].copy_from_slice(row);
        }
    }
}

/// A pool of one thread (the caller), for products inside a pool task.
fn serial_pool() -> &'static Pool {
    static ONE: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    ONE.get_or_init(|| Pool::new(1))
}

/// One [`prompt_attention`] task's Q_g (rows, hd), scores turned into P
/// (rows, lc) and V_hᵀ's first lc columns (hd, lc); a decode task's
/// scores use the second.
type TaskScratch = (Vec<f32>, Vec<f32>, Vec<f32>);

thread_local! {
    /// A [`TaskScratch`] per thread, kept between tasks.
    static TASK_SCRATCH: std::cell::RefCell<TaskScratch> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Scratch of [`prompt_attention`], made once per forward pass: every key
/// head's K_h (n_ctx, hd) and V_hᵀ (hd, ctx), and each task's O (rows, hd).
#[derive(Default)]
struct AttentionScratch {
    kh: Vec<f32>,
    vt: Vec<f32>,
    o: Vec<f32>,
}

/// RoPE frequencies `1 / theta^(2i / head_dim)`, adjusted for scaling.
fn rope_inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let hd = cfg.head_dim;
    let base: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f64).powf((2 * i) as f64 / hd as f64))
        .collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / *factor as f64).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            // Llama 3.1: long wavelengths slowed by `factor`, short ones kept,
            // a smooth blend between.
            let (factor, low, high) = (
                *factor as f64,
                *low_freq_factor as f64,
                *high_freq_factor as f64,
            );
            let old_ctx = *original_max_position_embeddings as f64;
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}
