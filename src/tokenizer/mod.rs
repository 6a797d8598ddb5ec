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
//! A built tokenizer can be saved in a binary form that loads ~30 times
//! faster ([`Tokenizer::to_binary`], [`Tokenizer::from_binary`]; `binary`),
//! which is what `.mllm` files hold.

mod added;
mod binary;
mod bpe;
mod byte_level;
mod load;
mod pretokenize;
mod save;
mod stream;
mod unicode;
mod vocab;

pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;
use vocab::TokenKind;

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

/// The shared tables of a [`Tokenizer`].
#[derive(Debug)]
struct Inner {
    /// Text, bytes and kind of every id.
    vocab: vocab::Vocab,
    /// Ids `0..n_vocab` are the BPE vocabulary; the ids after it are added
    /// tokens that are not in the vocabulary.
    n_vocab: u32,
    bpe: bpe::Bpe,
    /// `ignore_merges`: a word that is itself in the BPE vocabulary (as a
    /// byte-alphabet string) is that token, without merging.
    ignore_merges: bool,
    pre: pretokenize::PreTokenizer,
    added: added::AddedTokens,
}

impl Inner {
    /// The vocabulary id of a whole word, for `ignore_merges`.
    fn whole_word(&self, word: &[u8]) -> Option<u32> {
        let key = byte_level::bytes_to_token_string(word);
        // Added tokens' contents are in the text index too; only the
        // vocabulary's own ids count.
        self.vocab.id_of(&key).filter(|&id| id < self.n_vocab)
    }
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

    /// The built tokenizer in the `microllm-bpe` binary form (the `.mllm`
    /// tokenizer section of that kind; layout in `docs/format.md`, section 4).
    ///
    /// [`Tokenizer::from_binary`] reads it back into a tokenizer that
    /// encodes, decodes and answers every query exactly like this one.
    pub fn to_binary(&self) -> Vec<u8> {
        binary::to_binary(&self.inner)
    }

    /// This tokenizer as a Hugging Face `tokenizer.json` (what
    /// [`Tokenizer::from_json_bytes`] reads back to the same tokenizer),
    /// for writing a model from a GGUF or `.mllm` file as a Hugging Face
    /// folder.
    pub fn to_hf_json(&self) -> String {
        // A `Value` of strings, numbers and lists always serializes.
        serde_json::to_string(&save::to_json(&self.inner)).unwrap_or_default()
    }

    /// Reads the form [`Tokenizer::to_binary`] writes: a few bulk copies
    /// and checks, no text parsing. Everything is checked (a checksum, then
    /// every count, offset and id); a damaged section is an
    /// [`Error::Format`] naming `path`.
    pub fn from_binary(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
        let inner = binary::from_binary(bytes)
            .map_err(|msg| Error::format(path, format!("tokenizer section: {msg}")))?;
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
                    let word = word.as_bytes();
                    if inner.ignore_merges && !word.is_empty() {
                        if let Some(id) = inner.whole_word(word) {
                            ids.push(id);
                            return;
                        }
                    }
                    inner.bpe.encode_word(word, &mut ids, &mut scratch)
                }),
            }
        }
        ids
    }

    /// Raw bytes of one token (special tokens as their text), `None` if out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.inner.vocab.bytes(id)
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
        self.inner.vocab.len()
    }

    /// Id of a token by its string (as written in the vocabulary, or a special token's content).
    ///
    /// The first call builds a text → id index (about a millisecond for
    /// 50k tokens); loading does not.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.id_of(token)
    }

    /// The vocabulary string of an id (an added token's content for added tokens).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.vocab.text(id)
    }

    /// True for control/special tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.vocab.kind(id) == Some(TokenKind::Special)
    }

    /// True for added tokens, special or not: tokens matched as whole text
    /// before BPE.
    pub fn is_added(&self, id: u32) -> bool {
        self.inner
            .vocab
            .kind(id)
            .is_some_and(|k| k != TokenKind::Normal)
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
    fn ignore_merges_takes_whole_vocabulary_words() {
        // "reated" is a token no merge reaches; "qq" an added token that is
        // not in the vocabulary.
        let json = serde_json::json!({
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pretokenize::LLAMA3_PATTERN},
                 "behavior": "Isolated"},
                {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
            ]},
            "model": {
                "type": "BPE", "ignore_merges": true,
                "vocab": {"r": 0, "e": 1, "a": 2, "t": 3, "d": 4, "q": 5, "_": 6,
                          "re": 7, "at": 8, "ed": 9, "ated": 10, "reated": 11},
                "merges": ["r e", "a t", "e d", "at ed"],
            },
            "added_tokens": [{"id": 12, "content": "qq", "single_word": true}],
        });
        let tok = Tokenizer::from_json_bytes(
            &serde_json::to_vec(&json).expect("json"),
            Path::new("t.json"),
        )
        .expect("valid");
        assert_eq!(tok.encode("reated"), [11]);
        assert_eq!(tok.encode("reate"), [7, 8, 1]);
        // "qq" touches a word character, so it is not taken as an added
        // token, and being no vocabulary word it goes through BPE.
        assert_eq!(tok.encode("qq_"), [5, 5, 6]);
        assert_eq!(tok.encode("qq"), [12]);
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
