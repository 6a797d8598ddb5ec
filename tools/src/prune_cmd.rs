//! `microllm prune` and `run --prune`.

use anyhow::{bail, Context, Result};
use clap::Args;
use microllm::prune::{
    self, calibration_tokens, collect_norms, FolderDtype, LayerSpec, Method, Output, Pattern,
    PruneOptions, Scope, TensorSparsity,
};
use microllm::{source, Model};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct PruneArgs {
    /// Source: a Hugging Face folder, a .gguf file or a .mllm file.
    source: PathBuf,
    /// Output: a .mllm file (pruned, then quantized by --quant), or any
    /// other path for a Hugging Face folder (safetensors of type --dtype;
    /// from a GGUF or .mllm SOURCE the config and tokenizer files are
    /// written, from a folder they are copied).
    #[arg(long, short = 'o', required_unless_present = "report")]
    out: Option<PathBuf>,
    /// Fraction of the selected weights to remove, in [0, 1). Implied by an N:M pattern.
    #[arg(long, allow_negative_numbers = true)]
    sparsity: Option<f32>,
    /// Score: magnitude (|w|) or wanda (|w| times the input channel's activation norm over --calib text).
    #[arg(long, default_value = "magnitude")]
    method: String,
    /// unstructured, or N:M (keep the N largest of every M consecutive inputs), e.g. 2:4, 4:8.
    #[arg(long, default_value = "unstructured")]
    pattern: String,
    /// Unstructured pruning compares weights per output row (row), or over the whole matrix (matrix).
    #[arg(long, default_value = "row")]
    scope: String,
    /// Which linear layers: projection names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj, attn, mlp) and/or layer indices and ranges (3, 0-14), comma-separated;
    /// both must match. Embeddings, output head and norms are never pruned.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Calibration text file (Wanda, and --report).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration tokens: the first N tokens of --calib (it must have at least N).
    #[arg(long, default_value_t = 2048)]
    calib_tokens: usize,
    /// .mllm output: type of the weight matrices (q8, q4, q4m, f16, f32). With --pattern 2:4,
    /// pruned q4/q8 matrices are stored as the sparse q4s24/q8s24.
    #[arg(long, default_value = "q4")]
    quant: String,
    /// .mllm output: type of the output head (the token embedding too, when tied). Default: q8 for q4/q4m.
    #[arg(long)]
    keep_output: Option<String>,
    /// Folder output: tensor type, f32, f16, bf16 or auto (the SOURCE folder's own F16/BF16,
    /// else f32, which holds a GGUF or .mllm file's dequantized values exactly).
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// .mllm output: store 2:4-pruned matrices dense (zeros kept) instead of as q4s24/q8s24.
    #[arg(long)]
    dense: bool,
    /// Print the table of perplexity and mean KL divergence against the unpruned model for
    /// magnitude and Wanda at 10/20/30/50% unstructured and 2:4 (needs --calib).
    #[arg(long)]
    report: bool,
    /// Text scored by --report (default: the --calib text, after its calibration tokens).
    #[arg(long)]
    report_text: Option<PathBuf>,
    /// Score at most this many tokens in --report (default: all).
    #[arg(long)]
    report_tokens: Option<usize>,
    /// Window length of --report's perplexity (the second half of each window is scored).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Print every tensor's sparsity, not only a summary per kind.
    #[arg(long)]
    verbose: bool,
}

fn bar(template: &str) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    b
}

/// `model.layers.N.mlp.up_proj.weight` → `layers.*.mlp.up_proj.weight`.
fn kind(name: &str) -> String {
    match name.strip_prefix("model.layers.") {
        Some(rest) => format!("layers.*.{}", rest.split_once('.').map_or(rest, |r| r.1)),
        None => name.to_string(),
    }
}

fn print_sparsity(rows: &[TensorSparsity], verbose: bool) {
    println!(
        "{:<48} {:>14} {:>12} {:>9}",
        "tensor", "shape", "zeros", "sparsity"
    );
    if verbose {
        for t in rows {
            println!(
                "{:<48} {:>14} {:>12} {:>8.2}%",
                t.name,
                format!("{:?}", t.shape),
                t.zeros,
                t.sparsity() * 100.0
            );
        }
    } else {
        let mut groups: Vec<(String, Vec<usize>, usize, usize, usize)> = Vec::new();
        for t in rows {
            let k = kind(&t.name);
            match groups.iter_mut().find(|g| g.0 == k) {
                Some(g) => {
                    g.2 += 1;
                    g.3 += t.zeros;
                    g.4 += t.numel;
                }
                None => groups.push((k, t.shape.clone(), 1, t.zeros, t.numel)),
            }
        }
        for (k, shape, n, zeros, numel) in groups {
            let name = if n > 1 { format!("{k} (x{n})") } else { k };
            println!(
                "{name:<48} {:>14} {zeros:>12} {:>8.2}%",
                format!("{shape:?}"),
                zeros as f64 / numel.max(1) as f64 * 100.0
            );
        }
    }
    let (pruned, all) = prune::overall(rows);
    println!(
        "achieved sparsity: {:.2}% of the pruned matrices, {:.2}% of all weights",
        pruned * 100.0,
        all * 100.0
    );
}

pub fn cmd_prune(a: PruneArgs) -> Result<()> {
    // Every option is checked before any work starts.
    // `--report` alone (no -o) only uses the layer selection and calibration.
    let report_only = a.out.is_none();
    let opts = PruneOptions {
        method: Method::parse(&a.method)?,
        sparsity: a.sparsity.or(report_only.then_some(0.5)),
        pattern: Pattern::parse(&a.pattern)?,
        scope: Scope::parse(&a.scope)?,
        layers: LayerSpec::parse(&a.layers)?,
        calib_tokens: a.calib_tokens,
    };
    opts.validate()?;
    let needs_calib = (opts.method == Method::Wanda && !report_only) || a.report;
    if needs_calib && a.calib.is_none() {
        bail!(
            "{} needs calibration text: give --calib FILE",
            if a.report {
                "--report"
            } else {
                "--method wanda"
            }
        );
    }
    if a.report && a.calib_tokens < prune::MIN_CALIB_TOKENS {
        bail!(
            "--calib-tokens {} is too few for Wanda (at least {})",
            a.calib_tokens,
            prune::MIN_CALIB_TOKENS
        );
    }
    let quant = crate::tensor_type(&a.quant)?;
    let keep_output = a
        .keep_output
        .as_deref()
        .map(crate::tensor_type)
        .transpose()?;
    let output = a.out.as_deref().map(Output::from_path);
    let dtype = FolderDtype::parse(&a.dtype)?;
    let parts = source::open(&a.source)?;
    opts.check_model(&parts.config)?;
    let dtype = match dtype {
        Some(d) => d,
        None => FolderDtype::of_source(&parts)?,
    };
    let calib_text = a
        .calib
        .as_deref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let calib = match &calib_text {
        Some(t) if needs_calib => Some(calibration_tokens(&parts.tokenizer, t, a.calib_tokens)?),
        _ => None,
    };
    let eval = if a.report {
        let (text, skip) = match &a.report_text {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                0,
            ),
            None => (calib_text.clone().unwrap_or_default(), a.calib_tokens),
        };
        let mut t = parts.tokenizer.encode(&text);
        t.drain(..skip.min(t.len()));
        if let Some(n) = a.report_tokens {
            t.truncate(n);
        }
        if t.len() < a.ctx {
            bail!(
                "--report needs at least one window of {} tokens to score; the report text has {} (after the calibration tokens)",
                a.ctx,
                t.len()
            );
        }
        Some(t)
    } else {
        None
    };
    let tied = parts.config.tie_word_embeddings;
    drop(parts);

    // Calibration: the unpruned model over the calibration text.
    let base = if needs_calib {
        Some(Arc::new(Model::load(&a.source)?))
    } else {
        None
    };
    let norms = match (&base, &calib) {
        (Some(m), Some(tokens)) => {
            let b = bar("calibrating [{bar:30}] {pos}/{len} windows, {elapsed}");
            let n = collect_norms(m, tokens, 512, |d, t| {
                b.set_length(t as u64);
                b.set_position(d as u64);
            })?;
            b.finish_and_clear();
            eprintln!("calibrated on {} tokens", n.tokens());
            Some(Arc::new(n))
        }
        _ => None,
    };

    if let Some(out) = &output {
        let start = std::time::Instant::now();
        let n = (opts.method == Method::Wanda)
            .then(|| norms.clone())
            .flatten();
        let parts = source::open(&a.source)?.pruned(opts.clone(), n)?;
        let b = bar("pruning [{bar:30}] {pos}/{len} tensors {msg}");
        let progress = |d: usize, t: usize, name: &str| {
            b.set_length(t as u64);
            b.set_position(d as u64);
            b.set_message(name.to_string());
        };
        match out {
            Output::HfFolder(dir) => {
                let rows = prune::write_hf_folder(&parts, dir, &opts, dtype, progress)?;
                b.finish_and_clear();
                print_sparsity(&rows, a.verbose);
                println!(
                    "wrote {} (Hugging Face folder, {}) in {:.1} s",
                    dir.display(),
                    dtype.name(),
                    start.elapsed().as_secs_f64()
                );
            }
            Output::Mllm(path) => {
                let output_ty = match keep_output {
                    Some(t) => Some(t),
                    None if matches!(
                        quant,
                        microllm::format::TensorType::Q4 | microllm::format::TensorType::Q4m
                    ) =>
                    {
                        Some(microllm::format::TensorType::Q8)
                    }
                    None => None,
                };
                let recipe = microllm::convert::recipe(quant.dense(), output_ty, tied, &[]);
                let r = prune::write_mllm(&parts, path, &recipe, &opts, !a.dense, progress)?;
                b.finish_and_clear();
                print_sparsity(&r.sparsity, a.verbose);
                let mut by_type: Vec<(String, usize, usize)> = Vec::new();
                for t in &r.tensors {
                    let name = t.ty.to_string();
                    match by_type.iter_mut().find(|g| g.0 == name) {
                        Some(g) => {
                            g.1 += 1;
                            g.2 += t.bytes;
                        }
                        None => by_type.push((name, 1, t.bytes)),
                    }
                }
                for (ty, n, bytes) in by_type {
                    println!(
                        "  {ty:>6}: {n} tensors, {:.1} MiB",
                        bytes as f64 / (1 << 20) as f64
                    );
                }
                println!(
                    "wrote {}: {:.1} MiB in {:.1} s",
                    path.display(),
                    r.file_bytes as f64 / (1 << 20) as f64,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }

    if let (Some(eval), Some(base)) = (&eval, &base) {
        let configs = prune::report_configs(&opts);
        let b = bar("{msg} [{bar:30}] {pos}/{len}, {elapsed} (eta {eta})");
        let src = a.source.clone();
        let open = move || source::open(&src);
        let rows = prune::quality_report(
            &open,
            base,
            &configs,
            norms.clone(),
            eval,
            a.ctx,
            |stage, d, t| {
                b.set_message(format!("report: {stage}"));
                b.set_length(t as u64);
                b.set_position(d as u64);
            },
        )?;
        b.finish_and_clear();
        let scored = (eval.len() / a.ctx) * (a.ctx / 2 - 1);
        println!(
            "quality against the unpruned model: {} tokens scored (windows of {}), layers '{}', f32",
            scored,
            a.ctx,
            opts.layers.as_str()
        );
        println!("| method | pattern | sparsity | perplexity | ratio | mean KL | same top |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        if let Some(r) = rows.first() {
            println!(
                "| none | dense | 0% | {:.3} | 1.000 | 0 | 100.0% |",
                r.base_ppl
            );
        }
        for r in &rows {
            println!(
                "| {} | {} | {:.0}% | {:.3} | {:.3} | {:.4} | {:.1}% |",
                r.method,
                r.pattern,
                r.sparsity * 100.0,
                r.ppl,
                r.ppl / r.base_ppl,
                r.mean_kl,
                r.same_top * 100.0
            );
        }
    }
    Ok(())
}

/// Loads a model, pruned at load time when `spec` (`METHOD:SPARSITY[:PATTERN]`) is given.
pub fn load_maybe_pruned(path: &Path, spec: Option<&str>) -> Result<Model> {
    let Some(spec) = spec else {
        return Ok(crate::with_act(Model::load(path)?));
    };
    let opts = PruneOptions::parse_quick(spec)?;
    let parts = source::open(path)?.pruned(opts, None)?;
    Ok(crate::with_act(Model::from_parts(parts)?))
}
