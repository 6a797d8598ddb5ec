//! Building a tokenizer from `tokenizer.json` or from GGUF metadata.
//!
//! Both sources are turned into a [`Spec`] (vocabulary, merges, added
//! tokens, pre-tokenizer), which [`build`] checks and compiles. Every
//! problem is reported as a message; the callers attach the file name.

use super::added::{AddedToken, AddedTokens};
use super::bpe::{Bpe, UnknownBytes};
use super::byte_level::token_string_to_bytes;
use super::pretokenize::{PreTokenizer, SplitPattern, SplitStep};
use super::vocab::{TokenKind, Vocab};
use super::{Inner, TokenizerParts};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A tokenizer description, before checking.
#[derive(Debug, Default)]
struct Spec {
    /// (token string in the byte alphabet, id).
    vocab: Vec<(String, u32)>,
    merges: Vec<(String, String)>,
    unk_token: Option<String>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    added: Vec<AddedToken>,
    pre: Option<PreTokenizer>,
}

type Msg = String;

/// A JSON value for an error message, cut short if long.
fn shown(value: &impl std::fmt::Display) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

// ---------------------------------------------------------------------------
// tokenizer.json

/// Parses the contents of a `tokenizer.json`.
pub(super) fn from_json(bytes: &[u8]) -> Result<Inner, Msg> {
    let root: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let root = root
        .as_object()
        .ok_or("expected a JSON object at the top level")?;
    check_normalizer(root.get("normalizer"))?;
    check_decoder(root.get("decoder"))?;
    let pre = parse_pre_tokenizer(root.get("pre_tokenizer"))?;
    let model = root
        .get("model")
        .and_then(Value::as_object)
        .ok_or("missing \"model\" object")?;
    let mut spec = parse_bpe_model(model)?;
    spec.pre = Some(pre);
    spec.added = parse_added_tokens(root.get("added_tokens"))?;
    build(spec)
}

fn type_name(component: &Map<String, Value>) -> &str {
    component.get("type").and_then(Value::as_str).unwrap_or("?")
}

fn check_normalizer(normalizer: Option<&Value>) -> Result<(), Msg> {
    match normalizer {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(n))
            if type_name(n) == "Sequence"
                && n.get("normalizers")
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty) =>
        {
            Ok(())
        }
        Some(Value::Object(n)) => Err(format!(
            "normalizer type \"{}\" is not supported (only a null normalizer is)",
            type_name(n)
        )),
        Some(other) => Err(format!(
            "normalizer: expected an object or null, found {}",
            shown(other)
        )),
    }
}

fn check_decoder(decoder: Option<&Value>) -> Result<(), Msg> {
    match decoder {
        // Decoding is byte-level regardless; a missing decoder changes nothing.
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(d)) if type_name(d) == "ByteLevel" => Ok(()),
        Some(Value::Object(d)) => Err(format!(
            "decoder type \"{}\" is not supported (only ByteLevel is)",
            type_name(d)
        )),
        Some(other) => Err(format!(
            "decoder: expected an object or null, found {}",
            shown(other)
        )),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str, default: bool, what: &str) -> Result<bool, Msg> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "{what}.{key}: expected true or false, found {}",
            shown(other)
        )),
    }
}

/// One component of a `pre_tokenizer` (a `Sequence` is flattened).
enum PreComponent {
    Step(SplitStep),
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
}

fn parse_pre_components(value: &Value, out: &mut Vec<PreComponent>) -> Result<(), Msg> {
    let obj = value
        .as_object()
        .ok_or_else(|| format!("pre_tokenizer: expected an object, found {}", shown(value)))?;
    match type_name(obj) {
        "Sequence" => {
            let list = obj
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or("pre_tokenizer Sequence: missing \"pretokenizers\" list")?;
            for item in list {
                parse_pre_components(item, out)?;
            }
        }
        "ByteLevel" => out.push(PreComponent::ByteLevel {
            add_prefix_space: bool_field(obj, "add_prefix_space", true, "pre_tokenizer ByteLevel")?,
            use_regex: bool_field(obj, "use_regex", true, "pre_tokenizer ByteLevel")?,
        }),
        "Digits" => out.push(PreComponent::Step(SplitStep::Digits {
            individual: bool_field(obj, "individual_digits", false, "pre_tokenizer Digits")?,
        })),
        "Split" => out.push(PreComponent::Step(SplitStep::Regex(parse_split(obj)?))),
        other => {
            return Err(format!(
                "pre_tokenizer type \"{other}\" is not supported (supported: ByteLevel, Digits, \
                 Split with the GPT-2 or Llama-3 regex, Sequence of these)"
            ))
        }
    }
    Ok(())
}

fn parse_split(obj: &Map<String, Value>) -> Result<SplitPattern, Msg> {
    let pattern = obj
        .get("pattern")
        .and_then(Value::as_object)
        .ok_or("pre_tokenizer Split: missing \"pattern\"")?;
    let regex = match (pattern.get("Regex"), pattern.get("String")) {
        (Some(Value::String(regex)), _) => regex,
        (_, Some(Value::String(literal))) => {
            return Err(format!(
                "pre_tokenizer Split on the string {literal:?} is not supported (only the GPT-2 \
                 and Llama-3 regexes are)"
            ))
        }
        _ => return Err("pre_tokenizer Split: \"pattern\" needs a Regex or String".into()),
    };
    let split = SplitPattern::from_regex(regex).ok_or_else(|| {
        format!(
            "pre_tokenizer Split with regex {regex:?} is not supported (only the GPT-2 and \
             Llama-3 regexes are)"
        )
    })?;
    let behavior = obj.get("behavior").and_then(Value::as_str).unwrap_or("?");
    if behavior != "Isolated" {
        return Err(format!(
            "pre_tokenizer Split behavior \"{behavior}\" is not supported (only Isolated is)"
        ));
    }
    if bool_field(obj, "invert", false, "pre_tokenizer Split")? {
        return Err("pre_tokenizer Split with invert: true is not supported".into());
    }
    Ok(split)
}

fn parse_pre_tokenizer(value: Option<&Value>) -> Result<PreTokenizer, Msg> {
    let value = match value {
        None | Some(Value::Null) => {
            return Err(
                "no pre_tokenizer: only byte-level BPE (a ByteLevel pre-tokenizer) is \
                        supported"
                    .into(),
            )
        }
        Some(v) => v,
    };
    let mut components = Vec::new();
    parse_pre_components(value, &mut components)?;
    let mut steps = Vec::new();
    let mut byte_level = None;
    for component in components {
        match (component, byte_level) {
            (PreComponent::Step(step), None) => steps.push(step),
            (
                PreComponent::ByteLevel {
                    add_prefix_space,
                    use_regex,
                },
                None,
            ) => byte_level = Some((add_prefix_space, use_regex)),
            (_, Some(_)) => {
                return Err("pre_tokenizer: steps after ByteLevel are not supported".into())
            }
        }
    }
    let (add_prefix_space, use_regex) = byte_level
        .ok_or("pre_tokenizer has no ByteLevel step: only byte-level BPE is supported")?;
    Ok(PreTokenizer {
        steps,
        add_prefix_space,
        use_regex,
    })
}

fn parse_bpe_model(model: &Map<String, Value>) -> Result<Spec, Msg> {
    match model.get("type") {
        None => {}
        Some(Value::String(t)) if t == "BPE" => {}
        Some(other) => {
            return Err(format!(
                "model type {} is not supported (only BPE is)",
                shown(other)
            ))
        }
    }
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("model.vocab: missing, or not an object of token → id")?;
    let vocab = vocab
        .iter()
        .map(
            |(token, id)| match id.as_u64().and_then(|id| u32::try_from(id).ok()) {
                Some(id) => Ok((token.clone(), id)),
                None => Err(format!(
                    "model.vocab: id of {token:?} is not a token id: {}",
                    shown(id)
                )),
            },
        )
        .collect::<Result<Vec<_>, Msg>>()?;
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or("model.merges: missing, or not a list")?
        .iter()
        .enumerate()
        .map(|(i, merge)| parse_merge(i, merge))
        .collect::<Result<Vec<_>, Msg>>()?;

    match model.get("dropout") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_f64() == Some(0.0) => {}
        Some(d) => {
            return Err(format!(
                "model.dropout {} is not supported (it makes tokenization random)",
                shown(d)
            ))
        }
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(other) => {
                return Err(format!(
                    "model.{key} {} is not supported by byte-level BPE",
                    shown(other)
                ))
            }
        }
    }
    let unk_token = match model.get("unk_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "model.unk_token: expected a string or null, found {}",
                shown(other)
            ))
        }
    };
    Ok(Spec {
        vocab,
        merges,
        unk_token,
        fuse_unk: bool_field(model, "fuse_unk", false, "model")?,
        byte_fallback: bool_field(model, "byte_fallback", false, "model")?,
        ignore_merges: bool_field(model, "ignore_merges", false, "model")?,
        ..Spec::default()
    })
}

/// A merge as `"a b"` or `["a", "b"]`.
fn parse_merge(index: usize, merge: &Value) -> Result<(String, String), Msg> {
    let bad = || {
        format!(
            "model.merges[{index}]: expected \"a b\" or [\"a\", \"b\"], found {}",
            shown(merge)
        )
    };
    match merge {
        Value::String(s) => split_merge(s).ok_or_else(bad),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] => Ok((a.clone(), b.clone())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// `"a b"` → (a, b); exactly one space, as the reference requires.
fn split_merge(merge: &str) -> Option<(String, String)> {
    let mut parts = merge.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), None) => Some((a.to_string(), b.to_string())),
        _ => None,
    }
}

fn parse_added_tokens(value: Option<&Value>) -> Result<Vec<AddedToken>, Msg> {
    let list = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(format!(
                "added_tokens: expected a list, found {}",
                shown(other)
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let what = format!("added_tokens[{i}]");
            let obj = item
                .as_object()
                .ok_or_else(|| format!("{what}: expected an object, found {}", shown(item)))?;
            let id = obj
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("{what}: missing or invalid \"id\""))?;
            let content = obj
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{what}: missing or invalid \"content\""))?;
            Ok(AddedToken {
                id,
                content: content.to_string(),
                special: bool_field(obj, "special", false, &what)?,
                single_word: bool_field(obj, "single_word", false, &what)?,
                lstrip: bool_field(obj, "lstrip", false, &what)?,
                rstrip: bool_field(obj, "rstrip", false, &what)?,
                // The reference's default for a token read without the field.
                normalized: bool_field(obj, "normalized", true, &what)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// GGUF

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The pre-tokenizer Hugging Face uses for a GGUF `tokenizer.ggml.pre` name,
/// and whether it sets `ignore_merges`.
fn pre_tokenizer_for_gguf(pre: &str) -> Result<(PreTokenizer, bool), Msg> {
    match pre {
        // Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]
        "smollm" => Ok((
            PreTokenizer {
                steps: vec![SplitStep::Digits { individual: true }],
                ..PreTokenizer::gpt2()
            },
            false,
        )),
        "gpt-2" | "gpt2" | "default" | "" => Ok((PreTokenizer::gpt2(), false)),
        // Llama 3's tokenizer.json: Split(Llama-3 regex) then ByteLevel
        // without its own regex, and ignore_merges.
        "llama3" | "llama-bpe" => Ok((
            PreTokenizer {
                steps: vec![SplitStep::Regex(SplitPattern::Llama3)],
                add_prefix_space: false,
                use_regex: false,
            },
            true,
        )),
        other => Err(format!(
            "tokenizer.ggml.pre \"{other}\" is not supported (supported: smollm, gpt-2, \
             default, llama-bpe)"
        )),
    }
}

/// Builds from GGUF tokenizer metadata.
pub(super) fn from_gguf(parts: TokenizerParts) -> Result<Inner, Msg> {
    let TokenizerParts {
        tokens,
        merges,
        token_types,
        pre,
    } = parts;
    if !token_types.is_empty() && token_types.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            token_types.len(),
            tokens.len()
        ));
    }
    let (pre, ignore_merges) = pre_tokenizer_for_gguf(&pre)?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            split_merge(m)
                .ok_or_else(|| format!("tokenizer.ggml.merges[{i}]: expected \"a b\", found {m:?}"))
        })
        .collect::<Result<Vec<_>, Msg>>()?;
    let mut added = Vec::new();
    for (id, &kind) in token_types.iter().enumerate() {
        let special = match kind {
            TOKEN_TYPE_CONTROL => true,
            TOKEN_TYPE_USER_DEFINED => false,
            0..=6 => continue,
            other => {
                return Err(format!(
                    "tokenizer.ggml.token_type[{id}] is {other}, not a known token type (0-6)"
                ))
            }
        };
        let content = tokens.get(id).map(String::as_str).unwrap_or_default();
        // The reference skips empty added tokens; the id stays a plain token.
        if !content.is_empty() {
            added.push(AddedToken::plain(id as u32, content, special));
        }
    }
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| {
            u32::try_from(id)
                .map(|id| (token, id))
                .map_err(|_| "more tokens than 32-bit ids".to_string())
        })
        .collect::<Result<Vec<_>, Msg>>()?;
    build(Spec {
        vocab,
        merges,
        ignore_merges,
        added,
        pre: Some(pre),
        ..Spec::default()
    })
}

// ---------------------------------------------------------------------------
// Checking and compiling

fn build(spec: Spec) -> Result<Inner, Msg> {
    let n_vocab = spec.vocab.len();
    if n_vocab == 0 {
        return Err("the vocabulary is empty".into());
    }
    // Vocabulary ids must be exactly 0..n: no duplicates, no gaps.
    let mut by_id: Vec<Option<String>> = vec![None; n_vocab];
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n_vocab);
    for (token, id) in spec.vocab {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            format!("vocabulary id {id} of {token:?} is out of range: there are {n_vocab} tokens")
        })?;
        if let Some(other) = slot {
            return Err(format!(
                "vocabulary id {id} is given to both {other:?} and {token:?}"
            ));
        }
        if vocab.insert(token.clone(), id).is_some() {
            return Err(format!("token {token:?} appears twice in the vocabulary"));
        }
        *slot = Some(token);
    }
    let by_id: Vec<String> = by_id.into_iter().flatten().collect();

    let lookup = |token: &str, index: usize, pair: &str| {
        vocab
            .get(token)
            .copied()
            .ok_or_else(|| format!("merge #{index} {pair:?}: {token:?} is not in the vocabulary"))
    };
    let merges = spec
        .merges
        .iter()
        .enumerate()
        .map(|(i, (a, b))| {
            let pair = format!("{a} {b}");
            Ok((
                lookup(a, i, &pair)?,
                lookup(b, i, &pair)?,
                lookup(&format!("{a}{b}"), i, &pair)?,
            ))
        })
        .collect::<Result<Vec<_>, Msg>>()?;

    let unk_id = match &spec.unk_token {
        Some(unk) => Some(
            *vocab
                .get(unk)
                .ok_or_else(|| format!("unk_token {unk:?} is not in the vocabulary"))?,
        ),
        None => None,
    };
    let byte_fallback = spec.byte_fallback.then(|| {
        let mut table = Box::new([None; 256]);
        for (b, slot) in table.iter_mut().enumerate() {
            *slot = vocab.get(&format!("<0x{b:02X}>")).copied();
        }
        table
    });

    // Added tokens: one already in the vocabulary keeps its vocabulary id;
    // a new one takes the next id after the vocabulary. The reference
    // assigns ids this way whatever the file says, so a different id in the
    // file means the file does not describe what the reference would load.
    let mut kinds = vec![TokenKind::Normal; n_vocab];
    // Contents of the added tokens not in the vocabulary, by id from n_vocab.
    let mut new_tokens: Vec<&str> = Vec::new();
    let mut seen_added: HashMap<&str, u32> = HashMap::new();
    for token in &spec.added {
        if token.content.is_empty() {
            return Err(format!(
                "added token with id {} has empty content",
                token.id
            ));
        }
        if seen_added.insert(&token.content, token.id).is_some() {
            return Err(format!("added token {:?} is declared twice", token.content));
        }
        let expected = vocab
            .get(&token.content)
            .copied()
            .unwrap_or(kinds.len() as u32);
        if token.id != expected {
            return Err(format!(
                "added token {:?} has id {} but should have id {expected} ({})",
                token.content,
                token.id,
                if vocab.contains_key(&token.content) {
                    "its id in the vocabulary"
                } else {
                    "added tokens not in the vocabulary take the ids after it, in order"
                }
            ));
        }
        let kind = if token.special {
            TokenKind::Special
        } else {
            TokenKind::Added
        };
        match kinds.get_mut(token.id as usize) {
            Some(slot) => *slot = kind,
            None => {
                kinds.push(kind);
                new_tokens.push(&token.content);
            }
        }
    }
    if kinds.len() >= u32::MAX as usize {
        return Err(format!(
            "{} tokens is more than 32-bit ids allow",
            kinds.len()
        ));
    }

    // Every id's strings: a vocabulary token decodes to the bytes its
    // byte-alphabet string stands for, an added token to its content.
    let text_bytes: usize = by_id.iter().map(String::len).sum::<usize>()
        + new_tokens.iter().map(|t| t.len()).sum::<usize>();
    let mut strings = Vocab::with_capacity(kinds.len(), text_bytes);
    for (text, &kind) in by_id.iter().zip(&kinds) {
        if kind == TokenKind::Normal {
            strings.push(text, &token_string_to_bytes(text), kind)?;
        } else {
            strings.push(text, text.as_bytes(), kind)?;
        }
    }
    for (content, &kind) in new_tokens.iter().zip(&kinds[n_vocab..]) {
        strings.push(content, content.as_bytes(), kind)?;
    }

    let bpe = Bpe::new(
        &vocab,
        &merges,
        UnknownBytes {
            unk_id,
            fuse_unk: spec.fuse_unk,
            byte_fallback,
        },
    );
    Ok(Inner {
        vocab: strings,
        n_vocab: n_vocab as u32,
        bpe,
        ignore_merges: spec.ignore_merges,
        pre: spec.pre.unwrap_or_else(PreTokenizer::gpt2),
        added: AddedTokens::new(spec.added),
    })
}
