//! `perplexity` against a direct computation from the forward pass.

mod common;

use common::*;
use microllm::{perplexity, Logits, Model};

#[test]
fn perplexity_scores_the_second_half_of_each_window() {
    let dir = tiny_llama_folder("ppl", |_| {});
    let model = Model::load(&dir).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let tokens: Vec<u32> = (0..37u32).map(|i| (i * 7919 + 13) % 49152).collect();
    let ctx = 8;
    let mut progress = Vec::new();
    let r = perplexity(&model, None, &tokens, ctx, |d, t| progress.push((d, t))).unwrap();
    assert_eq!(r.windows, 4, "37 tokens hold four whole windows of 8");
    assert_eq!(progress, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    // Positions 4, 5, 6 of each window predict tokens 5, 6, 7.
    assert_eq!(r.tokens, 4 * 3);
    let vocab = model.config().vocab_size;
    let mut nll = 0.0;
    for w in 0..4 {
        let win = &tokens[w * ctx..(w + 1) * ctx];
        let logits = model
            .forward(win, &mut model.new_cache(ctx), Logits::All)
            .unwrap();
        for pos in 4..7 {
            let lp = log_softmax(&logits[pos * vocab..(pos + 1) * vocab]);
            nll -= lp[win[pos + 1] as usize];
        }
    }
    let want = (nll / 12.0).exp();
    assert!((r.ppl - want).abs() < 1e-9 * want, "{} vs {want}", r.ppl);
    assert!(r.base_ppl.is_none() && r.mean_kl.is_none());

    // Against itself: no divergence, every top token the same.
    let r2 = perplexity(&model, Some(&model), &tokens, ctx, |_, _| {}).unwrap();
    assert_eq!(r2.ppl, r.ppl);
    assert_eq!(r2.base_ppl, Some(r.ppl));
    assert!(r2.mean_kl.unwrap().abs() < 1e-12);
    assert_eq!(r2.same_top, Some(1.0));

    // Too little text, too small or too large a window.
    assert!(perplexity(&model, None, &tokens[..7], ctx, |_, _| {}).is_err());
    assert!(perplexity(&model, None, &tokens, 2, |_, _| {}).is_err());
    let err = perplexity(&model, None, &tokens, 1 << 20, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("context length"), "{err}");
}
