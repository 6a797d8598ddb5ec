//! Byte-level BPE tokenizer with exact parity with Hugging Face `tokenizers`.
//!
//! Encoding follows the reference's pipeline for byte-level BPE models:
//!
//! 1. added tokens (special or not) written in the text are found first
//!    (`added`: leftmost-longest, honouring `lstrip`, `rstrip`,
//!    `single_word`, `normalized`);
//! 2. the text between them is pre-tokenized into words (`pretokenize`:
//!    `Digits`, `Split` with the GPT-2 or Llama-3 regex, then `ByteLevel`
//!    with the GPT-2 regex, as hand-written scanners);
//! 3. each word's bytes are merged by BPE rank (`bpe`).
//!
//! Loading accepts `tokenizer.json` ([`Tokenizer::from_json_file`]) or the
//! GGUF `tokenizer.ggml.*` metadata ([`Tokenizer::from_gguf_parts`]);
//! anything this implementation would not reproduce exactly is an error.

mod added;
mod bpe;
mod byte_level;
mod load;
mod pretokenize;
mod stream;
mod unicode;

pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A byte-level BPE tokenizer.
///
/// Cheap to clone (the tables are shared) and usable from several threads.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

/// The pieces a GGUF file stores its tokenizer as.
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    /// `tokenizer.ggml.tokens`: token strings in GPT-2 byte-to-unicode form.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges`: "a b" pairs, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.pre`: pre-tokenizer name ("smollm", "gpt-2", "default", ...).
    pub pre: String,
}

/// What kind of token an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// A BPE vocabulary token.
    Normal,
    /// An added token that is not special (GGUF user-defined).
    Added,
    /// A special added token (GGUF control).
    Special,
}

/// One id's strings.
#[derive(Debug, Clone)]
struct TokenEntry {
    /// As written in the vocabulary (byte alphabet), or an added token's content.
    text: Box<str>,
    /// The bytes the token stands for when decoding.
    bytes: Box<[u8]>,
    kind: TokenKind,
}

/// The shared tables of a [`Tokenizer`].
#[derive(Debug)]
struct Inner {
    /// By id.
    entries: Vec<TokenEntry>,
    /// Vocabulary strings and added-token contents (the latter win) → id.
    token_ids: HashMap<String, u32>,
    bpe: bpe::Bpe,
    pre: pretokenize::PreTokenizer,
    added: added::AddedTokens,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("added_tokens", &self.inner.added.tokens.len())
            .field("pre_tokenizer", &self.inner.pre)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    ///
    /// Supported: a BPE model (merges as `"a b"` or `["a", "b"]`, with
    /// `ignore_merges`, `fuse_unk`, `byte_fallback`, `unk_token`), added
    /// tokens with all their options, no normalizer, a pre-tokenizer made of
    /// `Digits`, `Split` (GPT-2 or Llama-3 regex, `Isolated`) and a final
    /// `ByteLevel`, and a `ByteLevel` decoder. Anything else, and any
    /// inconsistency (duplicate or out-of-range ids, merges of unknown
    /// tokens), is an [`Error::Format`] naming the file.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_bytes(&bytes, path)
    }

    /// Like [`Tokenizer::from_json_file`] for contents already read; `path`
    /// names the file in errors.
    pub fn from_json_bytes(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
        let inner = load::from_json(bytes).map_err(|msg| Error::format(path, msg))?;
        Ok(Tokenizer {
            inner: Arc::new(inner),
        })
    }

    /// Builds the tokenizer from GGUF metadata; `path` names the file in errors.
    ///
    /// Builds what Hugging Face builds from the same metadata: control
    /// tokens (type 3) become special added tokens, user-defined ones (type
    /// 4) non-special added tokens; `pre` "smollm" is
    /// `Digits(individual_digits) + ByteLevel`, "gpt-2"/"default" is
    /// `ByteLevel`, "llama-bpe" the Llama-3 split; another name is an error.
    pub fn from_gguf_parts(parts: TokenizerParts, path: &Path) -> Result<Tokenizer> {
        let inner = load::from_gguf(parts).map_err(|msg| Error::format(path, msg))?;
        Ok(Tokenizer {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `text`: special tokens written in the text are recognised, none are added.
    ///
    /// The same ids as Hugging Face's `encode(text, add_special_tokens=False)`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let inner = &*self.inner;
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        let mut scratch = bpe::BpeScratch::default();
        for segment in inner.added.split(text) {
            match segment {
                added::Segment::Token(id) => ids.push(id),
                added::Segment::Text(piece) => inner.pre.for_each_word(piece, |word| {
                    inner
                        .bpe
                        .encode_word(word.as_bytes(), &mut ids, &mut scratch)
                }),
            }
        }
        ids
    }

    /// Raw bytes of one token (special tokens as their text), `None` if out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.entry(id).map(|e| &*e.bytes)
    }

    /// Decodes ids to text, replacing invalid UTF-8.
    ///
    /// Special and added tokens decode to their content; ids out of range
    /// are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Number of token ids (vocabulary and added tokens); ids are `0..vocab_size()`.
    pub fn vocab_size(&self) -> usize {
        self.inner.entries.len()
    }

    /// Id of a token by its string (as written in the vocabulary, or a special token's content).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_ids.get(token).copied()
    }

    /// The vocabulary string of an id (an added token's content for added tokens).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.entry(id).map(|e| &*e.text)
    }

    /// True for control/special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.entry(id).is_some_and(|e| e.kind == TokenKind::Special)
    }

    /// True for added tokens, special or not: tokens matched as whole text
    /// before BPE.
    pub fn is_added(&self, id: u32) -> bool {
        self.entry(id).is_some_and(|e| e.kind != TokenKind::Normal)
    }

    /// The special tokens (content, id), in declaration order: candidates
    /// for stop tokens, e.g. `("<|im_end|>", 2)`.
    pub fn special_tokens(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.added_tokens().filter(|&(_, id)| self.is_special(id))
    }

    /// All added tokens, special or not (content, id), in declaration order.
    pub fn added_tokens(&self) -> impl Iterator<Item = (&str, u32)> + '_ {
        self.inner
            .added
            .tokens
            .iter()
            .map(|t| (t.content.as_str(), t.id))
    }

    fn entry(&self, id: u32) -> Option<&TokenEntry> {
        self.inner.entries.get(id as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn tokenizer_is_shareable() {
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<StreamDecoder>();
    }

    /// A complete byte-level vocabulary (the 256 byte tokens), a few merges
    /// and two special tokens, from GGUF-style parts.
    fn small() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| byte_level::bytes_to_token_string(&[b]))
            .collect();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<s>".into());
        tokens.push("<|end|>".into());
        let mut token_types = vec![1; tokens.len()];
        let n = token_types.len();
        token_types[n - 2] = 3;
        token_types[n - 1] = 3;
        let parts = TokenizerParts {
            tokens,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            token_types,
            pre: "gpt-2".into(),
        };
        Tokenizer::from_gguf_parts(parts, Path::new("small.gguf")).expect("valid parts")
    }

    #[test]
    fn encodes_with_merges_and_special_tokens() {
        let tok = small();
        let id = |t: &str| tok.token_to_id(t).expect("token exists");
        assert_eq!(tok.vocab_size(), 256 + 6 + 2);
        assert_eq!(
            tok.encode("hello wo<|end|>"),
            [id("hello"), id("Ġwo"), id("<|end|>")]
        );
        assert_eq!(tok.encode("hell"), [id("hell")]);
        assert_eq!(tok.encode(" w"), [id("Ġw")]);
        assert!(tok.is_special(id("<s>")) && !tok.is_special(id("hello")));
        assert_eq!(
            tok.special_tokens().collect::<Vec<_>>(),
            [("<s>", id("<s>")), ("<|end|>", id("<|end|>"))]
        );
        assert_eq!(tok.id_to_token(id("Ġwo")), Some("Ġwo"));
        assert_eq!(tok.token_bytes(id("Ġwo")), Some(&b" wo"[..]));
        assert_eq!(tok.token_bytes(9999), None);
    }

    #[test]
    fn decodes_bytes_and_special_tokens() {
        let tok = small();
        let text = "<s>héllo 東京 🤗\n\t<|end|>";
        let ids = tok.encode(text);
        assert_eq!(tok.decode(&ids), text);
        // Half of a multi-byte character decodes lossily.
        let e_acute = tok.encode("é");
        assert_eq!(e_acute.len(), 2);
        assert_eq!(tok.decode(&e_acute[..1]), "\u{FFFD}");
        // Out-of-range ids are skipped.
        assert_eq!(tok.decode(&[9999, id_of(&tok, "hello")]), "hello");
    }

    fn id_of(tok: &Tokenizer, token: &str) -> u32 {
        tok.token_to_id(token).expect("token exists")
    }

    #[test]
    fn gguf_errors_name_the_problem() {
        let bad_pre = TokenizerParts {
            tokens: vec!["a".into()],
            pre: "qwen2".into(),
            ..TokenizerParts::default()
        };
        let err = Tokenizer::from_gguf_parts(bad_pre, Path::new("m.gguf")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("m.gguf") && msg.contains("qwen2"), "{msg}");

        let bad_merge = TokenizerParts {
            tokens: vec!["a".into(), "b".into()],
            merges: vec!["a b".into()],
            pre: "gpt-2".into(),
            ..TokenizerParts::default()
        };
        let msg = Tokenizer::from_gguf_parts(bad_merge, Path::new("m.gguf"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"ab\" is not in the vocabulary"), "{msg}");

        let duplicate = TokenizerParts {
            tokens: vec!["a".into(), "a".into()],
            pre: "gpt-2".into(),
            ..TokenizerParts::default()
        };
        let msg = Tokenizer::from_gguf_parts(duplicate, Path::new("m.gguf"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("appears twice"), "{msg}");

        let types = TokenizerParts {
            tokens: vec!["a".into()],
            token_types: vec![1, 1],
            pre: "gpt-2".into(),
            ..TokenizerParts::default()
        };
        assert!(Tokenizer::from_gguf_parts(types, Path::new("m.gguf")).is_err());
    }
}
