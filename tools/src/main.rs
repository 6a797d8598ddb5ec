//! `microllm`: run, chat with, inspect and check small language models.
//!
//! Everything here goes through the `microllm` library's public API.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use microllm::lora::{LoraAdapter, LoraSet};
use microllm::{source, Control, GenerateOptions, Logits, Message, Model, SamplerConfig, Session};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod prune_cmd;

#[derive(Parser)]
#[command(
    name = "microllm",
    version,
    about = "A pure-Rust inference engine for small language models"
)]
struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, short = 't', global = true)]
    threads: Option<usize>,
    /// Inputs of quantized matrix products: auto (f32 for prompts, int8 for
    /// generation), f32 (reference accuracy) or int8 (as llama.cpp; the
    /// fastest prompts on AVX-512 without AMX). f32 models always compute
    /// in f32.
    #[arg(long, global = true, default_value = "auto", value_parser = ["auto", "f32", "int8"])]
    act: String,
    /// Use .mllm files in place through a memory map (zero-copy: the pages
    /// are the page cache's) instead of reading them into transparent huge
    /// pages, which Linux offers by default and which make decode faster
    /// (fewer TLB misses) at the cost of one copy at load.
    #[arg(long, global = true)]
    mmap: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Run(RunArgs),
    /// Chat with the model in the terminal.
    Chat(ChatArgs),
    /// Write the logits of a prompt to a .npy file (float32).
    Logits(LogitsArgs),
    /// Print the token ids of TEXT as a JSON array (special tokens in the text recognised, none added).
    Tokenize {
        /// Model folder or file.
        model: PathBuf,
        /// Text to tokenize.
        text: String,
    },
    /// Convert a Hugging Face folder, GGUF or .mllm file into a quantized .mllm file.
    Convert(ConvertArgs),
    /// Perplexity of a text, and divergence from a base model.
    Perplexity(PerplexityArgs),
    /// Prune a model (magnitude or Wanda scores; unstructured or N:M) into a .mllm file or a Hugging Face folder.
    Prune(prune_cmd::PruneArgs),
    /// Measure prompt processing and generation speed, load time and memory.
    Bench(BenchArgs),
    /// Print the configuration and tensor list of a model.
    Inspect {
        /// Model folder or file.
        model: PathBuf,
    },
}

#[derive(Args)]
struct SamplingArgs {
    /// Most new tokens.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Keep only the K most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalty for tokens seen in the last --repeat-last-n (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Context length (default: the model's).
    #[arg(long)]
    ctx: Option<usize>,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampler: SamplerConfig {
                temperature: self.temp,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
                seed: self.seed,
            },
            stop_at_eos: !self.ignore_eos,
            stop_strings: self.stop.clone(),
            cancel: None,
        }
    }

    fn session(&self, model: Arc<Model>) -> Session {
        match self.ctx {
            Some(n) => Session::with_context_length(model, n),
            None => Session::new(model),
        }
    }
}

/// How `--lora` adapters are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LoraMode {
    /// Added into private copies of the targeted weights at load (in their
    /// own type): decoding runs at the base model's speed.
    Merged,
    /// Kept apart and added to each projection's product at run time, in f32.
    Unmerged,
}

#[derive(Args)]
struct LoraArgs {
    /// LoRA adapter (a Hugging Face PEFT folder) to apply, optionally with a
    /// scale (default 1): DIR or DIR:SCALE. Repeatable; the deltas add up.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    lora: Vec<String>,
    /// How to apply the adapters.
    #[arg(long, value_enum, default_value_t = LoraMode::Merged)]
    lora_mode: LoraMode,
}

/// Reads every `DIR[:SCALE]`, printing one line per adapter to stderr.
fn read_adapters(args: &[String]) -> Result<Vec<(LoraAdapter, f32)>> {
    let mut out = Vec::new();
    for arg in args {
        let (dir, scale) = microllm::lora::parse_lora_arg(arg)?;
        let a = LoraAdapter::load(&dir)?;
        let c = a.config();
        eprintln!(
            "lora: {} (r {}, alpha {}{}, {} projections, {:.2} MiB) at scale {scale}{}",
            dir.display(),
            c.r,
            c.lora_alpha,
            if c.use_rslora { ", rslora" } else { "" },
            a.modules().len(),
            a.bytes() as f64 / (1 << 20) as f64,
            a.base_model()
                .map(|b| format!(", trained on {b}"))
                .unwrap_or_default()
        );
        out.push((a, scale));
    }
    Ok(out)
}

/// Loads the model with the `--lora` adapters: merged into it, or in a set
/// to apply unmerged (empty when merged or without adapters).
fn load_with_lora(path: &Path, l: &LoraArgs) -> Result<(Arc<Model>, LoraSet)> {
    with_lora(load_plain(path)?, l)
}

/// `model` with the adapters of `l` merged into it, or loaded for attaching.
fn with_lora(model: Model, l: &LoraArgs) -> Result<(Arc<Model>, LoraSet)> {
    let adapters = read_adapters(&l.lora)?;
    let mut set = LoraSet::new();
    if adapters.is_empty() {
        return Ok((Arc::new(model), set));
    }
    match l.lora_mode {
        LoraMode::Merged => {
            let before = model.load_time();
            let cpu_before = cpu_seconds();
            let pairs: Vec<(&LoraAdapter, f32)> = adapters.iter().map(|(a, s)| (a, *s)).collect();
            let model = model.with_lora_merged(&pairs)?;
            let cpu = match (cpu_before, cpu_seconds()) {
                (Some(a), Some(b)) => format!(", {:.0} ms of CPU", (b - a) * 1e3),
                _ => String::new(),
            };
            eprintln!(
                "lora: merged in {:.0} ms{cpu} (model loaded in {:.0} ms)",
                (model.load_time() - before).as_secs_f64() * 1e3,
                before.as_secs_f64() * 1e3
            );
            Ok((Arc::new(model), set))
        }
        LoraMode::Unmerged => {
            for (a, s) in adapters {
                set.attach(Arc::new(a), s, model.config())?;
            }
            Ok((Arc::new(model), set))
        }
    }
}

/// A session with the unmerged adapters of `set` attached.
fn attach_all(mut session: Session, set: &LoraSet) -> Result<Session> {
    for (a, s) in set.adapters() {
        session.attach_lora(a.clone(), *s)?;
    }
    Ok(session)
}

#[derive(Args)]
struct RunArgs {
    /// Model: a .mllm file, a Hugging Face folder or a .gguf file.
    model: PathBuf,
    /// The prompt.
    #[arg(long, short = 'p')]
    prompt: String,
    /// Apply the model's chat template (the prompt is the user's message).
    #[arg(long)]
    chat: bool,
    /// System prompt, with --chat.
    #[arg(long)]
    system: Option<String>,
    /// Print timings to stderr at the end.
    #[arg(long)]
    verbose: bool,
    /// Quick try of pruning at load time, METHOD:SPARSITY[:PATTERN] (magnitude:0.3,
    /// magnitude:0.5:2:4). Costs a private copy of every pruned tensor (f32, or
    /// requantized for a quantized model); `microllm prune` writes a file instead.
    #[arg(long, value_name = "METHOD:SPARSITY[:PATTERN]")]
    prune: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    lora: LoraArgs,
}

#[derive(Args)]
struct ChatArgs {
    /// Model: a .mllm file, a Hugging Face folder or a .gguf file.
    model: PathBuf,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    lora: LoraArgs,
}

#[derive(Args)]
struct LogitsArgs {
    /// Model: a .mllm file, a Hugging Face folder or a .gguf file.
    model: PathBuf,
    /// Text to score.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Comma-separated token ids to score.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Output .npy file.
    #[arg(long)]
    out: PathBuf,
    /// Write logits for every position, shape (n, vocab), not just the last (vocab).
    #[arg(long)]
    all_positions: bool,
    #[command(flatten)]
    lora: LoraArgs,
}

#[derive(Args)]
struct ConvertArgs {
    /// Source: a Hugging Face folder, a .gguf file or a .mllm file.
    source: PathBuf,
    /// Output .mllm file.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Type of the weight matrices: q8, q4 (symmetric), q4m (with a minimum), f16 or f32.
    #[arg(long, default_value = "q4")]
    quant: String,
    /// Type of the output head (the token embedding too, when they are tied).
    /// Default: q8 for q4/q4m, else as --quant.
    #[arg(long)]
    keep_output: Option<String>,
    /// Type of one tensor, as NAME=TYPE (repeatable).
    #[arg(long = "override", value_name = "NAME=TYPE")]
    overrides: Vec<String>,
    /// Print every tensor in the closing table, not only a summary per kind.
    #[arg(long)]
    verbose: bool,
    /// LoRA adapter (PEFT folder) to bake in, as DIR or DIR:SCALE
    /// (repeatable); recorded in the file's provenance.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    lora: Vec<String>,
}

fn tensor_type(s: &str) -> Result<microllm::format::TensorType> {
    microllm::format::TensorType::from_name(s)
        .ok_or_else(|| anyhow::anyhow!("unknown tensor type '{s}' (use q8, q4, q4m, f16 or f32)"))
}

#[derive(Args)]
struct PerplexityArgs {
    /// Model: a .mllm file, a Hugging Face folder or a .gguf file.
    model: PathBuf,
    /// Text file to score.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Window length in tokens; the second half of each window is scored (as llama-perplexity does).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Also report mean KL divergence and same-top-token rate against this model.
    #[arg(long)]
    kl_base: Option<PathBuf>,
    /// Print one JSON object: ppl, base_ppl, mean_kl, same_top, tokens.
    #[arg(long)]
    json: bool,
    /// Adapters for MODEL (not for --kl-base, so that the KL measures them).
    #[command(flatten)]
    lora: LoraArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Model: a .mllm file, a Hugging Face folder or a .gguf file.
    model: PathBuf,
    /// Prompt lengths to time (tests pp<N>).
    #[arg(short = 'p', long = "prompt", value_delimiter = ',', default_values_t = vec![64usize, 512])]
    prompt: Vec<usize>,
    /// Tokens to generate (test tg<N>); 0 skips it.
    #[arg(short = 'n', long = "gen", default_value_t = 128)]
    gen: usize,
    /// Repetitions of each test; the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// One JSON object per test on its own line.
    #[arg(long)]
    json: bool,
    /// Also measure read bandwidth on the same threads, the ceiling for
    /// decode: a read loop over 1 GiB (memory) and one over one token's
    /// weight bytes (where they stay in a cache); it raises peak RSS.
    #[arg(long)]
    bandwidth: bool,
    #[command(flatten)]
    lora: LoraArgs,
}

fn main() {
    quiet_when_stdout_closes();
    let cli = Cli::parse();
    if let Err(e) = run_cli(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `println!` panics when the reader of stdout has gone
/// (`microllm inspect m | head`); stop quietly then, as `cat` does,
/// instead of printing a panic.
fn quiet_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn run_cli(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up threads")?;
        microllm::pool::set_threads(n);
    }
    let act = microllm::Activations::from_name(&cli.act)
        .with_context(|| format!("--act {}: use auto, f32 or int8", cli.act))?;
    let _ = ACTIVATIONS.set(act);
    if cli.mmap {
        microllm::format::set_default_residency(microllm::format::Residency::Mapped);
    }
    // A bad MICROLLM_ISA is an error here rather than a silent fallback.
    microllm::dispatch::init().map_err(|e| anyhow::anyhow!("{e}"))?;
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Chat(a) => cmd_chat(a),
        Command::Logits(a) => cmd_logits(a),
        Command::Tokenize { model, text } => {
            let model = Model::load(&model)?;
            println!(
                "{}",
                serde_json::to_string(&model.tokenizer().encode(&text))?
            );
            Ok(())
        }
        Command::Convert(a) => cmd_convert(a),
        Command::Perplexity(a) => cmd_perplexity(a),
        Command::Prune(a) => prune_cmd::cmd_prune(a),
        Command::Bench(a) => cmd_bench(a, cli.threads),
        Command::Inspect { model } => cmd_inspect(&model),
    }
}

/// The `--act` choice, applied by [`load`].
static ACTIVATIONS: std::sync::OnceLock<microllm::Activations> = std::sync::OnceLock::new();

/// Loads a model with the `--act` choice applied.
fn load_plain(path: &Path) -> Result<Model> {
    Ok(with_act(Model::load(path)?))
}

/// `model` with the `--act` choice applied.
fn with_act(mut model: Model) -> Model {
    model.set_activations(ACTIVATIONS.get().copied().unwrap_or_default());
    model
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let model = prune_cmd::load_maybe_pruned(&a.model, a.prune.as_deref())?;
    let (model, lora) = with_lora(model, &a.lora)?;
    let opts = a.sampling.options();
    let mut session = attach_all(a.sampling.session(model.clone()), &lora)?;
    let mut out = std::io::stdout().lock();
    let mut print = |ev: &microllm::TokenEvent| {
        // A closed stdout (e.g. piped into `head`) ends generation quietly.
        if out
            .write_all(ev.text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Control::Stop;
        }
        Control::Continue
    };
    let g = if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(Message::system(s.clone()));
        }
        messages.push(Message::user(a.prompt.clone()));
        session.chat(&messages, &opts, &mut print)?
    } else {
        session.generate(&a.prompt, &opts, &mut print)?
    };
    println!();
    if a.verbose {
        eprintln!(
            "[{:?}] prompt {} tokens, {:.1} tok/s; generated {} tokens, {:.1} tok/s; first token after {:.0} ms; load {:.0} ms",
            g.finish,
            g.prompt_tokens,
            g.prefill_tok_s(),
            g.tokens.len(),
            g.decode_tok_s(),
            g.time_to_first_token.as_secs_f64() * 1e3,
            model.load_time().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn cmd_chat(a: ChatArgs) -> Result<()> {
    let (model, lora) = load_with_lora(&a.model, &a.lora)?;
    if model.chat_template().is_none() {
        bail!("{}: this model has no chat template", a.model.display());
    }
    let opts = a.sampling.options();
    let mut session = attach_all(a.sampling.session(model), &lora)?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::system(s.clone()));
    }
    eprintln!("Chat with the model. /reset forgets the conversation, /quit (or Ctrl-D) ends.");
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim();
        match input {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages.retain(|m| m.role == "system");
                session.reset();
                continue;
            }
            _ => {}
        }
        messages.push(Message::user(input));
        let mut out = std::io::stdout().lock();
        let g = session.chat(&messages, &opts, |ev| {
            let _ = out.write_all(ev.text.as_bytes()).and_then(|_| out.flush());
            Control::Continue
        })?;
        drop(out);
        println!();
        messages.push(Message::assistant(g.text));
    }
    Ok(())
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let (model, lora) = load_with_lora(&a.model, &a.lora)?;
    let ids = match (&a.prompt, &a.tokens) {
        (Some(p), _) => model.tokenizer().encode(p),
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("give --prompt or --tokens"),
    };
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    let mut cache = model.new_cache(ids.len());
    let which = if a.all_positions {
        Logits::All
    } else {
        Logits::Last
    };
    let logits = model.forward_with(&ids, &mut cache, which, lora.hook())?;
    let vocab = model.config().vocab_size;
    let shape = if a.all_positions {
        vec![ids.len(), vocab]
    } else {
        vec![vocab]
    };
    write_npy_f32(&a.out, &shape, &logits)
        .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote {} ({:?} float32, {} tokens)",
        a.out.display(),
        shape,
        ids.len()
    );
    Ok(())
}

/// Writes a little-endian float32 array in NumPy's .npy format (version 1.0).
fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&u16::try_from(header.len())?.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Median, minimum and maximum of the samples.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// CPU time (user + system, all threads) this process used so far, in
/// seconds (Linux; 10 ms resolution).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn cmd_bench(a: BenchArgs, threads: Option<usize>) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let threads = threads.unwrap_or_else(|| microllm::pool::global().threads());
    let isa = microllm::dispatch::kernels().isa;
    let start = std::time::Instant::now();
    let (model, lora) = load_with_lora(&a.model, &a.lora)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let hook = lora.hook();
    let lora_bytes: usize = lora.adapters().iter().map(|(ad, _)| ad.bytes()).sum();
    let lora_mode = match (a.lora.lora.is_empty(), a.lora.lora_mode) {
        (true, _) => "none",
        (false, LoraMode::Merged) => "merged",
        (false, LoraMode::Unmerged) => "unmerged",
    };
    // Where a .mllm file's weights live (huge pages or the file's map).
    let residency = (model.format() == microllm::source::SourceFormat::Mllm)
        .then(|| microllm::format::default_residency().resolve().name());
    let vocab = model.config().vocab_size as u32;
    // Synthetic prompts, as llama-bench uses: the speed does not depend on which tokens.
    let prompt_of =
        |n: usize| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919 + 1000) % vocab).collect() };
    let mut rows = Vec::new();
    for &n in &a.prompt {
        if n == 0 {
            continue;
        }
        let tokens = prompt_of(n);
        let mut speeds = Vec::new();
        let mut firsts = Vec::new();
        for rep in 0..=a.reps {
            let mut cache = model.new_cache(n + 1);
            let t = std::time::Instant::now();
            model.forward_with(&tokens, &mut cache, Logits::Last, hook)?;
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                // The first run warms caches and threads; it is not counted.
                speeds.push(n as f64 / secs);
                firsts.push(secs * 1e3);
            }
        }
        rows.push((format!("pp{n}"), spread(speeds), Some(spread(firsts).0)));
    }
    if a.gen > 0 {
        let mut speeds = Vec::new();
        for rep in 0..=a.reps {
            let mut cache = model.new_cache(a.gen + 1);
            let mut tok = 1u32;
            let t = std::time::Instant::now();
            for _ in 0..a.gen {
                let logits = model.forward_with(&[tok], &mut cache, Logits::Last, hook)?;
                tok = microllm::sampler::argmax(&logits);
            }
            if rep > 0 {
                speeds.push(a.gen as f64 / t.elapsed().as_secs_f64());
            }
        }
        rows.push((format!("tg{}", a.gen), spread(speeds), None));
    }
    let rss = peak_rss_bytes();
    let bytes_per_token = model.weight_bytes_per_token();
    // Decode token i (from 0) attends over i + 1 cached positions: on
    // average (gen + 1) / 2 of them, each read once per token.
    let kv_per_token = model.kv_bytes_per_position() * (a.gen + 1) / 2;
    let read_per_token = bytes_per_token + kv_per_token;
    let ceiling = if a.bandwidth {
        Some((
            read_bandwidth(1 << 30, 5)?,
            read_bandwidth(read_per_token, 20)?,
        ))
    } else {
        None
    };
    for (test, (median, min, max), ttft_ms) in &rows {
        // Decode reads every weight once per token, and the KV cache so
        // far: the bandwidth it uses.
        let decode = test.starts_with("tg");
        let gb_s = decode.then(|| median * bytes_per_token as f64 / 1e9);
        let read_gb_s = decode.then(|| median * read_per_token as f64 / 1e9);
        if a.json {
            let v = serde_json::json!({
                "test": test, "threads": threads, "isa": isa.name(), "act": model.activations().name(), "tok_s": median, "tok_s_min": min, "tok_s_max": max,
                "reps": a.reps, "time_to_first_token_ms": ttft_ms, "load_ms": load_ms,
                "peak_rss_bytes": rss, "model": a.model.display().to_string(),
                "lora_mode": lora_mode, "lora_unmerged_bytes": lora_bytes,
                "weight_bytes_per_token": bytes_per_token, "weight_gb_s": gb_s,
                "kv_bytes_per_token": decode.then_some(kv_per_token), "read_gb_s": read_gb_s,
                "weights_in": residency,
            });
            println!("{v}");
        } else {
            let ttft = ttft_ms
                .map(|t| format!("  first token {t:.1} ms"))
                .unwrap_or_default();
            let bw = read_gb_s
                .map(|g| format!("  {g:.1} GB/s of weights and KV cache"))
                .unwrap_or_default();
            println!("{test:>6}  {threads} threads  {isa:<6}  {median:8.1} tok/s  (min {min:.1}, max {max:.1}){ttft}{bw}");
        }
    }
    if let Some((mem, same)) = ceiling {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"test": "read", "threads": threads, "gb_s": mem, "gb_s_token_bytes": same})
            );
        } else {
            let tok = |c: f64| c * 1e9 / read_per_token as f64;
            println!("  read  {threads} threads  {mem:8.1} GB/s (read loop over 1 GiB: the decode ceiling is {:.0} tok/s)", tok(mem));
            println!("  read  {threads} threads  {same:8.1} GB/s (read loop over one token's {:.1} MiB: the decode ceiling is {:.0} tok/s)", read_per_token as f64 / (1 << 20) as f64, tok(same));
        }
    }
    if !a.json {
        println!(
            "load {load_ms:.1} ms, peak RSS {:.1} MiB, {:.1} MiB of weights and {:.1} MiB of KV cache (tg{} average) read per token{}",
            rss.unwrap_or(0) as f64 / (1 << 20) as f64,
            bytes_per_token as f64 / (1 << 20) as f64,
            kv_per_token as f64 / (1 << 20) as f64,
            a.gen,
            residency
                .map(|r| format!(", weights in {r}"))
                .unwrap_or_default()
        );
        if lora_mode != "none" {
            println!(
                "lora {lora_mode}: {} adapter(s), {:.2} MiB held unmerged",
                a.lora.lora.len(),
                lora_bytes as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

/// Read bandwidth in GB/s: the best of `passes` passes (after one that is
/// not timed) of a read loop over `bytes`, split over the model's thread
/// pool. Over 1 GiB it is memory's bandwidth; over the bytes one token
/// reads, what decode could reach at best where those bytes stay in a
/// cache between tokens (a large L3 holds all of a 135M model).
///
/// The buffer is anonymous memory asked for huge pages where the system
/// offers them (as the weights are by default, `Residency::Auto`), so the
/// loop measures memory rather than page walks.
fn read_bandwidth(bytes: usize, passes: usize) -> Result<f64> {
    let chunk = 1 << 13;
    let words = (bytes / 8).next_multiple_of(chunk);
    let mut map = memmap2::MmapMut::map_anon(words * 8).context("read loop buffer")?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let buf: &mut [u64] = bytemuck::cast_slice_mut(&mut map[..]);
    for (i, w) in buf.iter_mut().enumerate() {
        *w = i as u64;
    }
    let buf = &*buf;
    let pool = microllm::pool::global();
    let mut best = 0.0f64;
    for pass in 0..=passes {
        let t = std::time::Instant::now();
        let total = std::sync::atomic::AtomicU64::new(0);
        pool.run(buf.len() / chunk, &|i| {
            // Eight independent sums, so the loop is bound by loads.
            let mut acc = [0u64; 8];
            for c in buf[i * chunk..(i + 1) * chunk].chunks_exact(8) {
                for k in 0..8 {
                    acc[k] = acc[k].wrapping_add(c[k]);
                }
            }
            total.fetch_add(
                acc.iter().fold(0, |a, &b| a.wrapping_add(b)),
                std::sync::atomic::Ordering::Relaxed,
            );
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(total.load(std::sync::atomic::Ordering::Relaxed));
        if pass > 0 {
            best = best.max((buf.len() * 8) as f64 / secs / 1e9);
        }
    }
    Ok(best)
}

fn cmd_convert(a: ConvertArgs) -> Result<()> {
    use microllm::format::TensorType;
    let quant = tensor_type(&a.quant)?;
    let output = match &a.keep_output {
        Some(t) => Some(tensor_type(t)?),
        None if matches!(quant, TensorType::Q4 | TensorType::Q4m) => Some(TensorType::Q8),
        None => None,
    };
    let mut overrides = Vec::new();
    for o in &a.overrides {
        let (name, ty) = o
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--override wants NAME=TYPE, got '{o}'"))?;
        overrides.push((name.to_string(), tensor_type(ty)?));
    }
    let tied = source::open(&a.source)?.config.tie_word_embeddings;
    let recipe = microllm::convert::recipe(quant, output, tied, &overrides);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("converting [{bar:30}] {pos}/{len} tensors {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let adapters = read_adapters(&a.lora)?;
    let pairs: Vec<(&LoraAdapter, f32)> = adapters.iter().map(|(ad, s)| (ad, *s)).collect();
    let start = std::time::Instant::now();
    let report = microllm::convert::convert_with_lora(
        &a.source,
        &a.out,
        &recipe,
        &pairs,
        |done, total, name| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        },
    )?;
    bar.finish_and_clear();
    println!(
        "{:<48} {:>5} {:>14} {:>10} {:>9}",
        "tensor", "type", "shape", "bytes", "rel RMSE"
    );
    let kind = |name: &str| -> String {
        // model.layers.N.mlp.up_proj.weight -> mlp.up_proj.weight
        match name.strip_prefix("model.layers.") {
            Some(rest) => format!("layers.*.{}", rest.split_once('.').map_or(rest, |r| r.1)),
            None => name.to_string(),
        }
    };
    if a.verbose {
        for t in &report.tensors {
            let shape = format!("{:?}", t.shape);
            println!(
                "{:<48} {:>5} {:>14} {:>10} {:>9.5}",
                t.name,
                t.ty.to_string(),
                shape,
                t.bytes,
                t.rel_rmse
            );
        }
    } else {
        // One line per kind of tensor: count, bytes summed, mean error.
        let mut groups: Vec<(String, TensorType, Vec<usize>, usize, usize, f64)> = Vec::new();
        for t in &report.tensors {
            let k = kind(&t.name);
            match groups.iter_mut().find(|g| g.0 == k) {
                Some(g) => {
                    g.3 += 1;
                    g.4 += t.bytes;
                    g.5 += t.rel_rmse;
                }
                None => groups.push((k, t.ty, t.shape.clone(), 1, t.bytes, t.rel_rmse)),
            }
        }
        for (k, ty, shape, n, bytes, err) in groups {
            let name = if n > 1 { format!("{k} (x{n})") } else { k };
            let shape = format!("{shape:?}");
            println!(
                "{name:<48} {:>5} {shape:>14} {bytes:>10} {:>9.5}",
                ty.to_string(),
                err / n as f64
            );
        }
    }
    println!(
        "wrote {}: {:.1} MiB, {} parameters, {:.3} bits per weight, in {:.1} s",
        a.out.display(),
        report.file_bytes as f64 / (1 << 20) as f64,
        report.params,
        report.bits_per_weight(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_perplexity(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let (model, lora) = load_with_lora(&a.model, &a.lora)?;
    let base = a.kl_base.as_deref().map(load_plain).transpose()?;
    let tokens = model.tokenizer().encode(&text);
    if let Some(b) = &base {
        if b.tokenizer().encode(&text) != tokens {
            bail!("the base model tokenizes the text differently: KL divergence needs the same tokenizer");
        }
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} windows, {elapsed} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message("perplexity");
    let r = microllm::perplexity::perplexity_with_hook(
        &model,
        lora.hook(),
        base.as_ref(),
        &tokens,
        a.ctx,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        let v = serde_json::json!({
            "ppl": r.ppl, "base_ppl": r.base_ppl, "mean_kl": r.mean_kl,
            "same_top": r.same_top, "tokens": r.tokens,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} tokens scored in {} windows of {}",
        r.tokens, r.windows, a.ctx
    );
    println!("perplexity: {:.4}", r.ppl);
    if let (Some(bp), Some(kl), Some(st)) = (r.base_ppl, r.mean_kl, r.same_top) {
        println!("base perplexity: {bp:.4} (ratio {:.4})", r.ppl / bp);
        println!("mean KL divergence: {kl:.6}");
        println!("same top token: {:.2}%", st * 100.0);
    }
    Ok(())
}

fn cmd_inspect(path: &Path) -> Result<()> {
    let parts = source::open(path)?;
    if parts.format == microllm::source::SourceFormat::Mllm {
        return inspect_mllm(path, &parts);
    }
    println!("model: {} ({:?})", path.display(), parts.format);
    print_config(&parts.config);
    println!("tokenizer: {} tokens", parts.tokenizer.vocab_size());
    println!(
        "chat template: {}",
        if parts.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    let mut names = parts.tensors.names();
    names.sort_by_key(|n| natural_key(n));
    let mut total = 0usize;
    println!("tensors ({}):", names.len());
    for n in &names {
        let shape = parts.tensors.shape(n).unwrap_or_default();
        total += shape.iter().product::<usize>();
        println!("  {n:<50} {shape:?}");
    }
    println!("parameters: {total} ({:.1} M)", total as f64 / 1e6);
    Ok(())
}

fn print_config(c: &microllm::ModelConfig) {
    println!("architecture: {}", c.architecture);
    println!(
        "layers {}  hidden {}  intermediate {}  heads {} (kv {})  head_dim {}",
        c.n_layers, c.hidden_size, c.intermediate_size, c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!(
        "vocab {}  context {}  rope_theta {}  rms_norm_eps {:e}  tied embeddings {}",
        c.vocab_size, c.max_seq_len, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings
    );
    if let Some(s) = &c.rope_scaling {
        println!("rope scaling: {s:?}");
    }
    println!("bos {:?}  eos {:?}", c.bos_token_id, c.eos_token_ids);
}

/// A .mllm file: its metadata, tensor table with types, and bits per weight.
fn inspect_mllm(path: &Path, parts: &microllm::source::ModelParts) -> Result<()> {
    // Only the table is read: no copy into huge pages.
    let file = microllm::format::MllmFile::open_with(path, microllm::format::Residency::Mapped)?;
    let meta = file.metadata();
    println!(
        "model: {} (.mllm format version {})",
        path.display(),
        file.version()
    );
    print_config(&meta.config);
    println!(
        "tokenizer: {} tokens ({:?} section)",
        parts.tokenizer.vocab_size(),
        meta.tokenizer.kind
    );
    println!(
        "chat template: {}",
        if meta.chat_template.is_some() {
            "yes"
        } else {
            "no"
        }
    );
    let q = &meta.quantization;
    println!("quantization: {} by {}", q.default_type, q.method);
    for (name, ty) in &q.overrides {
        println!("  override {name}: {ty}");
    }
    println!("made by: {}", meta.provenance.tool);
    for s in &meta.provenance.sources {
        println!("  from {} ({} bytes, sha256 {})", s.name, s.bytes, s.sha256);
    }
    if let Some(p) = &meta.provenance.pruning {
        println!("  pruning: {p}");
    }
    for l in &meta.provenance.lora {
        let mut extra = String::new();
        if let Some(ad) = &l.adapter {
            extra.push_str(&format!(" from {ad}/"));
        }
        if let (Some(r), Some(alpha)) = (l.r, l.lora_alpha) {
            extra.push_str(&format!(" r {r}, alpha {alpha},"));
        }
        println!(
            "  LoRA{extra} {} ({} bytes, sha256 {}) at scale {}",
            l.source.name, l.source.bytes, l.source.sha256, l.scale
        );
    }
    println!("tensors ({}):", file.tensors().len());
    let (mut params, mut bytes) = (0u64, 0u64);
    for t in file.tensors() {
        let shape = format!("{:?}", t.shape);
        println!(
            "  {:<50} {:>5} {shape:>14} {:>10} bytes at {}",
            t.name,
            t.ty.to_string(),
            t.len,
            t.offset
        );
        params += t.shape.iter().product::<usize>() as u64;
        bytes += t.len as u64;
    }
    println!(
        "parameters: {params} ({:.1} M), tensor data {:.1} MiB, {:.3} bits per weight; file {:.1} MiB",
        params as f64 / 1e6,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 * 8.0 / params.max(1) as f64,
        file.bytes().len() as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// Sorts "layers.10" after "layers.9".
fn natural_key(name: &str) -> Vec<(String, u64)> {
    name.split('.')
        .map(|p| match p.parse::<u64>() {
            Ok(n) => (String::new(), n),
            Err(_) => (p.to_string(), 0),
        })
        .collect()
}
