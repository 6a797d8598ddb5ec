//! Writing a tokenizer as a Hugging Face `tokenizer.json`: the inverse of
//! [`super::load`]'s reader, in the layout the `tokenizers` library writes
//! (for SmolLM2 the same components as its own file), so that a model
//! from a GGUF or `.mllm` file can be written as a Hugging Face folder.

use super::pretokenize::{SplitPattern, SplitStep, GPT2_PATTERN, LLAMA3_PATTERN};
use super::Inner;
use serde_json::{json, Map, Value};

/// The `tokenizer.json` of `inner`.
pub(super) fn to_json(inner: &Inner) -> Value {
    let vocab = &inner.vocab;
    // Every id below `n_vocab` has a text (checked when it was built).
    let text = |id: u32| vocab.text(id).unwrap_or_default();
    let added: Vec<Value> = inner
        .added
        .tokens
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "content": t.content,
                "single_word": t.single_word,
                "lstrip": t.lstrip,
                "rstrip": t.rstrip,
                "normalized": t.normalized,
                "special": t.special,
            })
        })
        .collect();
    let mut model_vocab = Map::new();
    for id in 0..inner.n_vocab {
        model_vocab.insert(text(id).to_string(), json!(id));
    }
    let merges: Vec<Value> = inner
        .bpe
        .merges
        .to_list()
        .into_iter()
        .map(|(l, r, _)| json!([text(l), text(r)]))
        .collect();
    let unknown = &inner.bpe.unknown;
    let pre = &inner.pre;
    let byte_level = json!({
        "type": "ByteLevel",
        "add_prefix_space": pre.add_prefix_space,
        "trim_offsets": true,
        "use_regex": pre.use_regex,
    });
    let pre_tokenizer = if pre.steps.is_empty() {
        byte_level
    } else {
        let mut list: Vec<Value> = pre.steps.iter().map(step).collect();
        list.push(byte_level);
        json!({"type": "Sequence", "pretokenizers": list})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
        },
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unknown.unk_id.map(text),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": unknown.fuse_unk,
            "byte_fallback": unknown.byte_fallback.is_some(),
            "ignore_merges": inner.ignore_merges,
            "vocab": model_vocab,
            "merges": merges,
        },
    })
}

/// One splitting step as a pre-tokenizer component.
fn step(s: &SplitStep) -> Value {
    match *s {
        SplitStep::Digits { individual } => {
            json!({"type": "Digits", "individual_digits": individual})
        }
        SplitStep::Regex(p) => json!({
            "type": "Split",
            "pattern": {"Regex": match p {
                SplitPattern::Gpt2 => GPT2_PATTERN,
                SplitPattern::Llama3 => LLAMA3_PATTERN,
            }},
            "behavior": "Isolated",
            "invert": false,
        }),
    }
}
