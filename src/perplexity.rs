//! Perplexity and divergence from a base model over a text, computed the way
//! llama.cpp's `llama-perplexity` does, so that the figures compare.
//!
//! The tokens are cut into consecutive windows of `ctx` tokens (a partial
//! last window is dropped). Each window is run from an empty context and
//! only its second half is scored: the logits at positions
//! `ctx/2 .. ctx-1` predict tokens `ctx/2 + 1 .. ctx`, so every scored token
//! has at least `ctx/2` tokens of context.

use crate::error::{Error, Result};
use crate::model::{LinearHook, Logits, Model};

/// What [`perplexity`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// exp(mean negative log-likelihood) of the model.
    pub ppl: f64,
    /// The same for the base model, when one was given.
    pub base_ppl: Option<f64>,
    /// Mean KL(base ‖ model) over the scored positions.
    pub mean_kl: Option<f64>,
    /// Fraction of scored positions where both models' top token agree.
    pub same_top: Option<f64>,
    /// Scored tokens.
    pub tokens: usize,
    /// Windows evaluated.
    pub windows: usize,
}

/// Running sums of one comparison.
#[derive(Default)]
struct Sums {
    nll: f64,
    base_nll: f64,
    kl: f64,
    same_top: usize,
    n: usize,
}

/// Scores `tokens` with `model` (and `base`, if given) in windows of `ctx`.
/// `on_window(done, total)` is called after each window, for progress.
pub fn perplexity(
    model: &Model,
    base: Option<&Model>,
    tokens: &[u32],
    ctx: usize,
    on_window: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    perplexity_with_hook(model, None, base, tokens, ctx, on_window)
}

/// [`perplexity`] with `hook` applied to `model`'s forward passes (LoRA
/// adapters unmerged, see [`crate::LoraSet::hook`]); not to `base`.
pub fn perplexity_with_hook(
    model: &Model,
    hook: Option<&dyn LinearHook>,
    base: Option<&Model>,
    tokens: &[u32],
    ctx: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<PerplexityReport> {
    if ctx < 4 {
        return Err(Error::invalid(format!(
            "--ctx {ctx} is too small (at least 4)"
        )));
    }
    if ctx > model.config().max_seq_len {
        return Err(Error::invalid(format!(
            "--ctx {ctx} exceeds the model's context length {}",
            model.config().max_seq_len
        )));
    }
    let windows = tokens.len() / ctx;
    if windows == 0 {
        return Err(Error::invalid(format!(
            "the text has {} tokens, fewer than one window of {ctx}",
            tokens.len()
        )));
    }
    if let Some(b) = base {
        if b.config().vocab_size != model.config().vocab_size {
            return Err(Error::invalid(format!(
                "the base model's vocabulary ({}) differs from the model's ({})",
                b.config().vocab_size,
                model.config().vocab_size
            )));
        }
    }
    let vocab = model.config().vocab_size;
    let first = ctx / 2;
    let mut s = Sums::default();
    for w in 0..windows {
        let window = &tokens[w * ctx..(w + 1) * ctx];
        let logits = model.forward_with(window, &mut model.new_cache(ctx), Logits::All, hook)?;
        let base_logits = match base {
            Some(b) => Some(b.forward(window, &mut b.new_cache(ctx), Logits::All)?),
            None => None,
        };
        for pos in first..ctx - 1 {
            let target = window[pos + 1] as usize;
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let lp = log_softmax(row);
            s.nll -= lp[target];
            if let Some(bl) = &base_logits {
                let brow = &bl[pos * vocab..(pos + 1) * vocab];
                let blp = log_softmax(brow);
                s.base_nll -= blp[target];
                s.kl += blp
                    .iter()
                    .zip(&lp)
                    .map(|(&p, &q)| p.exp() * (p - q))
                    .sum::<f64>();
                s.same_top += usize::from(argmax(row) == argmax(brow));
            }
            s.n += 1;
        }
        on_window(w + 1, windows);
    }
    let n = s.n as f64;
    let with_base = base.is_some();
    Ok(PerplexityReport {
        ppl: (s.nll / n).exp(),
        base_ppl: with_base.then(|| (s.base_nll / n).exp()),
        mean_kl: with_base.then(|| s.kl / n),
        same_top: with_base.then(|| s.same_top as f64 / n),
        tokens: s.n,
        windows,
    })
}

/// [`perplexity`] of several models against one base model in one pass:
/// each window's base logits are computed once and compared with every
/// model's (what `microllm prune --report` needs: one unpruned model,
/// many pruned ones). Same windows and scoring as [`perplexity`].
/// `on_window(done, total)` is called after each window.
pub fn perplexity_many(
    models: &[&Model],
    base: &Model,
    tokens: &[u32],
    ctx: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<Vec<PerplexityReport>> {
    if ctx < 4 || ctx > base.config().max_seq_len {
        return Err(Error::invalid(format!(
            "--ctx {ctx} must be between 4 and the model's context length {}",
            base.config().max_seq_len
        )));
    }
    let windows = tokens.len() / ctx;
    if windows == 0 {
        return Err(Error::invalid(format!(
            "the text has {} tokens, fewer than one window of {ctx}",
            tokens.len()
        )));
    }
    let vocab = base.config().vocab_size;
    if let Some(m) = models.iter().find(|m| m.config().vocab_size != vocab) {
        return Err(Error::invalid(format!(
            "a model's vocabulary ({}) differs from the base model's ({vocab})",
            m.config().vocab_size
        )));
    }
    let first = ctx / 2;
    let mut sums: Vec<Sums> = models.iter().map(|_| Sums::default()).collect();
    for w in 0..windows {
        let window = &tokens[w * ctx..(w + 1) * ctx];
        let bl = base.forward(window, &mut base.new_cache(ctx), Logits::All)?;
        let base_rows: Vec<(Vec<f64>, usize)> = (first..ctx - 1)
            .map(|pos| {
                let row = &bl[pos * vocab..(pos + 1) * vocab];
                (log_softmax(row), argmax(row))
            })
            .collect();
        drop(bl);
        for (m, s) in models.iter().zip(&mut sums) {
            let logits = m.forward(window, &mut m.new_cache(ctx), Logits::All)?;
            for (pos, (blp, btop)) in (first..ctx - 1).zip(&base_rows) {
                let target = window[pos + 1] as usize;
                let row = &logits[pos * vocab..(pos + 1) * vocab];
                let lp = log_softmax(row);
                s.nll -= lp[target];
                s.base_nll -= blp[target];
                s.kl += blp
                    .iter()
                    .zip(&lp)
                    .map(|(&p, &q)| p.exp() * (p - q))
                    .sum::<f64>();
                s.same_top += usize::from(argmax(row) == *btop);
                s.n += 1;
            }
        }
        on_window(w + 1, windows);
    }
    Ok(sums
        .into_iter()
        .map(|s| {
            let n = s.n as f64;
            PerplexityReport {
                ppl: (s.nll / n).exp(),
                base_ppl: Some((s.base_nll / n).exp()),
                mean_kl: Some(s.kl / n),
                same_top: Some(s.same_top as f64 / n),
                tokens: s.n,
                windows,
            }
        })
        .collect())
}

/// log-softmax in f64: exact enough that KL values near 1e-6 mean something.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&v| v as f64 - lse).collect()
}

/// Index of the largest value, the first on ties (the greedy sampler's).
fn argmax(v: &[f32]) -> usize {
    crate::sampler::argmax(v) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_hand_computed() {
        let lp = log_softmax(&[0.0, (3.0f32).ln()]);
        assert!((lp[0] - (0.25f64).ln()).abs() < 1e-7);
        assert!((lp[1] - (0.75f64).ln()).abs() < 1e-7);
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
