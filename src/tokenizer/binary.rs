//! The `microllm-bpe` binary form of a built tokenizer.
//!
//! Building a tokenizer from `tokenizer.json` or GGUF parts parses
//! megabytes of JSON and hashes ~100k strings (30–60 ms for SmolLM2); this
//! form holds the built tables as flat little-endian arrays, so that loading
//! is a few bulk copies plus bounds checks, and the merge table built from
//! an id array. `docs/format.md` (section 4) describes the layout; in short:
//!
//! ```text
//! header (64 bytes)      magic "MBPE", version, checksum, counts, flags
//! pre-tokenizer steps    u32 each
//! byte ids               256 u32 (+ 256 u32 byte-fallback ids if flagged)
//! kinds                  u8 per id (0 normal, 1 added, 2 special), padded to 4
//! text ends, text        u32 end offset per id, then the UTF-8 blob, padded
//! bytes ends, bytes      u32 end offset per id, then the blob, padded
//! merges                 (left, right, merged) u32 triples, by rank
//! added tokens           (id, flags) u32 pairs, in declaration order
//! ```
//!
//! Every read is checked: a count is used only after the bytes it implies
//! were found in the section, every id is checked against the number of
//! ids, and a checksum over everything after the first 16 bytes catches
//! corruption that would still be well-formed (a flipped byte of a token).

use super::added::{AddedToken, AddedTokens};
use super::bpe::{Bpe, PairTable, UnknownBytes};
use super::pretokenize::{PreTokenizer, SplitPattern, SplitStep};
use super::vocab::{TokenKind, Vocab};
use super::Inner;

/// The first four bytes of the section.
pub(crate) const MAGIC: [u8; 4] = *b"MBPE";
/// The layout version this build writes, and the newest it reads.
pub(crate) const VERSION: u32 = 1;
/// Bytes of the fixed header.
const HEADER_LEN: usize = 64;
/// "No id" in the byte-id tables and for `unk_id`.
const NO_ID: u32 = u32::MAX;
/// More pre-tokenizer steps than any real tokenizer has: a sanity limit.
const MAX_PRE_STEPS: u32 = 64;

// Header flags.
const FLAG_FUSE_UNK: u32 = 1 << 0;
const FLAG_IGNORE_MERGES: u32 = 1 << 1;
const FLAG_BYTE_FALLBACK: u32 = 1 << 2;
const FLAG_ADD_PREFIX_SPACE: u32 = 1 << 3;
const FLAG_USE_REGEX: u32 = 1 << 4;
const KNOWN_FLAGS: u32 = (1 << 5) - 1;

// Added-token flags.
const ADDED_SPECIAL: u32 = 1 << 0;
const ADDED_SINGLE_WORD: u32 = 1 << 1;
const ADDED_LSTRIP: u32 = 1 << 2;
const ADDED_RSTRIP: u32 = 1 << 3;
const ADDED_NORMALIZED: u32 = 1 << 4;
const KNOWN_ADDED_FLAGS: u32 = (1 << 5) - 1;

// Pre-tokenizer step codes.
const STEP_DIGITS: u32 = 1;
const STEP_DIGITS_INDIVIDUAL: u32 = 2;
const STEP_SPLIT_GPT2: u32 = 3;
const STEP_SPLIT_LLAMA3: u32 = 4;

/// The section checksum: four interleaved multiply–rotate lanes over
/// little-endian u64 words (the tail zero-padded to a whole 32-byte block),
/// folded together with the length. Each step is a bijection of its lane,
/// so a change to any one word always changes the result; about 0.1 ms for
/// 2 MB.
pub(crate) fn checksum(data: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut lanes: [u64; 4] = [
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
        0x082E_FA98_EC4E_6C89,
    ];
    let mut step = |block: &[u8]| {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = ((*lane ^ u64::from_le_bytes(w)).wrapping_mul(K)).rotate_left(31);
        }
    };
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        step(block);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let mut block = [0u8; 32];
        block[..rest.len()].copy_from_slice(rest);
        step(&block);
    }
    let mut h = data.len() as u64;
    for lane in lanes {
        h = ((h ^ lane).wrapping_mul(K)).rotate_left(29);
    }
    h
}

// ---------------------------------------------------------------------------
// Writing

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn opt_id(id: Option<u32>) -> u32 {
    id.unwrap_or(NO_ID)
}

/// Serializes the built tables.
pub(crate) fn to_binary(inner: &Inner) -> Vec<u8> {
    let vocab = &inner.vocab;
    let n_tokens = vocab.len();
    let merges = inner.bpe.merges.to_list();
    let added = &inner.added.tokens;
    let unknown = &inner.bpe.unknown;
    let pre = &inner.pre;

    let mut flags = 0;
    for (on, flag) in [
        (unknown.fuse_unk, FLAG_FUSE_UNK),
        (inner.ignore_merges, FLAG_IGNORE_MERGES),
        (unknown.byte_fallback.is_some(), FLAG_BYTE_FALLBACK),
        (pre.add_prefix_space, FLAG_ADD_PREFIX_SPACE),
        (pre.use_regex, FLAG_USE_REGEX),
    ] {
        if on {
            flags |= flag;
        }
    }
    // Sizes were checked to fit u32 when the tokenizer was built.
    let len32 = |n: usize| n as u32;

    let mut out = Vec::with_capacity(
        HEADER_LEN
            + 4 * 512
            + n_tokens * 9
            + vocab.text.len()
            + vocab.bytes.len()
            + merges.len() * 12
            + added.len() * 8
            + 16,
    );
    out.extend_from_slice(&MAGIC);
    put_u32(&mut out, VERSION);
    out.extend_from_slice(&[0; 8]); // checksum, filled in at the end
    for v in [
        len32(n_tokens),
        inner.n_vocab,
        len32(merges.len()),
        len32(added.len()),
        len32(vocab.text.len()),
        len32(vocab.bytes.len()),
        flags,
        opt_id(unknown.unk_id),
        len32(pre.steps.len()),
        0,
        0,
        0,
    ] {
        put_u32(&mut out, v);
    }
    debug_assert_eq!(out.len(), HEADER_LEN);

    for step in &pre.steps {
        put_u32(
            &mut out,
            match step {
                SplitStep::Digits { individual: false } => STEP_DIGITS,
                SplitStep::Digits { individual: true } => STEP_DIGITS_INDIVIDUAL,
                SplitStep::Regex(SplitPattern::Gpt2) => STEP_SPLIT_GPT2,
                SplitStep::Regex(SplitPattern::Llama3) => STEP_SPLIT_LLAMA3,
            },
        );
    }
    for id in inner.bpe.byte_ids {
        put_u32(&mut out, opt_id(id));
    }
    if let Some(fallback) = &unknown.byte_fallback {
        for &id in fallback.iter() {
            put_u32(&mut out, opt_id(id));
        }
    }
    out.extend(vocab.kinds.iter().map(|k| k.code()));
    pad4(&mut out);
    for &end in &vocab.text_ends {
        put_u32(&mut out, end);
    }
    out.extend_from_slice(vocab.text.as_bytes());
    pad4(&mut out);
    for &end in &vocab.bytes_ends {
        put_u32(&mut out, end);
    }
    out.extend_from_slice(&vocab.bytes);
    pad4(&mut out);
    for (left, right, merged) in merges {
        put_u32(&mut out, left);
        put_u32(&mut out, right);
        put_u32(&mut out, merged);
    }
    for token in added {
        let mut f = 0;
        for (on, flag) in [
            (token.special, ADDED_SPECIAL),
            (token.single_word, ADDED_SINGLE_WORD),
            (token.lstrip, ADDED_LSTRIP),
            (token.rstrip, ADDED_RSTRIP),
            (token.normalized, ADDED_NORMALIZED),
        ] {
            if on {
                f |= flag;
            }
        }
        put_u32(&mut out, token.id);
        put_u32(&mut out, f);
    }
    let sum = checksum(&out[16..]);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
    out
}

// ---------------------------------------------------------------------------
// Reading

type Msg = String;

/// Checked sequential reads.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next `len` bytes, or an error naming `what` if the section ends first.
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], Msg> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "{what} ({len} bytes at offset {}) runs past the end of the section ({} bytes)",
                    self.pos,
                    self.bytes.len()
                )
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Msg> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `count` u32 values; the bytes are found before anything is allocated.
    fn u32s(&mut self, count: u32, what: &str) -> Result<Vec<u32>, Msg> {
        let len = (count as usize)
            .checked_mul(4)
            .ok_or_else(|| format!("{what}: {count} entries is too many"))?;
        let b = self.take(len, what)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Skips zero padding to a multiple of 4.
    fn pad4(&mut self, what: &str) -> Result<(), Msg> {
        let len = (4 - self.pos % 4) % 4;
        if self.take(len, what)?.iter().any(|&b| b != 0) {
            return Err(format!("{what}: padding is not zero"));
        }
        Ok(())
    }
}

/// An id table entry: `NO_ID` or an id below `limit`.
fn check_opt_id(id: u32, limit: u32) -> Result<Option<u32>, Msg> {
    match id {
        NO_ID => Ok(None),
        id if id < limit => Ok(Some(id)),
        id => Err(format!("is {id}, not below {limit}")),
    }
}

/// End offsets of `count` strings in a blob of `blob_len` bytes: never
/// decreasing, the last one the blob's end.
fn check_ends(ends: &[u32], blob_len: u32, what: &str) -> Result<(), Msg> {
    let mut previous = 0;
    for (id, &end) in ends.iter().enumerate() {
        if end < previous {
            return Err(format!(
                "{what}: id {id} ends at {end}, before the previous one ({previous})"
            ));
        }
        previous = end;
    }
    if previous != blob_len {
        return Err(format!(
            "{what}: the last string ends at {previous}, but the blob is {blob_len} bytes"
        ));
    }
    Ok(())
}

/// Reads a section written by [`to_binary`], checking all of it.
pub(crate) fn from_binary(bytes: &[u8]) -> Result<Inner, Msg> {
    if bytes.len() < 8 || bytes[..4] != MAGIC {
        return Err(format!(
            "not a microllm-bpe tokenizer section (it does not start with {:?})",
            std::str::from_utf8(&MAGIC).unwrap_or_default()
        ));
    }
    let mut r = Reader { bytes, pos: 4 };
    let version = r.u32("version")?;
    if version == 0 {
        return Err("version 0 is not a valid microllm-bpe version".into());
    }
    if version > VERSION {
        return Err(format!(
            "microllm-bpe version {version} was made by a newer microllm (this one reads up to \
             version {VERSION})"
        ));
    }
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "truncated: {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ));
    }
    let stored = u64::from_le_bytes(r.take(8, "checksum")?.try_into().unwrap_or_default());
    let actual = checksum(&bytes[16..]);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:016x}, computed {actual:016x}): the section is \
             corrupted or truncated"
        ));
    }

    let n_tokens = r.u32("token count")?;
    let n_vocab = r.u32("vocabulary size")?;
    let n_merges = r.u32("merge count")?;
    let n_added = r.u32("added token count")?;
    let text_len = r.u32("text length")?;
    let bytes_len = r.u32("bytes length")?;
    let flags = r.u32("flags")?;
    let unk_id = r.u32("unk id")?;
    let n_steps = r.u32("pre-tokenizer step count")?;
    for i in 0..3 {
        if r.u32("reserved")? != 0 {
            return Err(format!("reserved header word {i} is not zero"));
        }
    }
    if n_vocab == 0 {
        return Err("the vocabulary is empty".into());
    }
    if n_vocab > n_tokens || n_tokens == u32::MAX {
        return Err(format!(
            "vocabulary size {n_vocab} and token count {n_tokens} are inconsistent"
        ));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {:#x}", flags & !KNOWN_FLAGS));
    }
    if n_steps > MAX_PRE_STEPS {
        return Err(format!(
            "{n_steps} pre-tokenizer steps (at most {MAX_PRE_STEPS})"
        ));
    }

    // Pre-tokenizer.
    let steps = r
        .u32s(n_steps, "pre-tokenizer steps")?
        .into_iter()
        .map(|code| match code {
            STEP_DIGITS => Ok(SplitStep::Digits { individual: false }),
            STEP_DIGITS_INDIVIDUAL => Ok(SplitStep::Digits { individual: true }),
            STEP_SPLIT_GPT2 => Ok(SplitStep::Regex(SplitPattern::Gpt2)),
            STEP_SPLIT_LLAMA3 => Ok(SplitStep::Regex(SplitPattern::Llama3)),
            other => Err(format!("unknown pre-tokenizer step {other}")),
        })
        .collect::<Result<Vec<_>, Msg>>()?;
    let pre = PreTokenizer {
        steps,
        add_prefix_space: flags & FLAG_ADD_PREFIX_SPACE != 0,
        use_regex: flags & FLAG_USE_REGEX != 0,
    };

    // BPE byte tables; they hold vocabulary ids.
    let byte_table = |r: &mut Reader, what: &str| -> Result<[Option<u32>; 256], Msg> {
        let raw = r.u32s(256, what)?;
        let mut table = [None; 256];
        for (b, (slot, &id)) in table.iter_mut().zip(&raw).enumerate() {
            *slot = check_opt_id(id, n_vocab).map_err(|e| format!("{what}[{b}] {e}"))?;
        }
        Ok(table)
    };
    let byte_ids = byte_table(&mut r, "byte ids")?;
    let byte_fallback = if flags & FLAG_BYTE_FALLBACK != 0 {
        Some(Box::new(byte_table(&mut r, "byte-fallback ids")?))
    } else {
        None
    };
    let unk_id = check_opt_id(unk_id, n_vocab).map_err(|e| format!("unk id {e}"))?;

    // Kinds; the ids after the vocabulary are all added tokens.
    let kinds = r
        .take(n_tokens as usize, "token kinds")?
        .iter()
        .enumerate()
        .map(|(id, &code)| match TokenKind::from_code(code) {
            Some(TokenKind::Normal) if id >= n_vocab as usize => Err(format!(
                "id {id} is after the vocabulary ({n_vocab} ids) but not an added token"
            )),
            Some(kind) => Ok(kind),
            None => Err(format!("id {id} has unknown kind {code}")),
        })
        .collect::<Result<Vec<_>, Msg>>()?;
    r.pad4("token kinds")?;

    // Strings.
    let text_ends = r.u32s(n_tokens, "text offsets")?;
    check_ends(&text_ends, text_len, "text offsets")?;
    let text = r.take(text_len as usize, "token text")?;
    let text = std::str::from_utf8(text)
        .map_err(|e| format!("token text is not UTF-8 (at byte {})", e.valid_up_to()))?;
    if let Some(id) = text_ends
        .iter()
        .position(|&end| !text.is_char_boundary(end as usize))
    {
        return Err(format!("the text of id {id} ends inside a UTF-8 character"));
    }
    let text = text.to_string();
    r.pad4("token text")?;
    let bytes_ends = r.u32s(n_tokens, "byte offsets")?;
    check_ends(&bytes_ends, bytes_len, "byte offsets")?;
    let token_bytes = r.take(bytes_len as usize, "token bytes")?.to_vec();
    r.pad4("token bytes")?;
    let vocab = Vocab::from_parts(text, text_ends, token_bytes, bytes_ends, kinds);

    // Merges, by rank; they join vocabulary ids into vocabulary ids.
    let len = (n_merges as usize)
        .checked_mul(12)
        .ok_or("too many merges")?;
    let raw = r.take(len, "merges")?;
    let mut merges = PairTable::with_capacity(n_merges as usize);
    for (rank, m) in raw.chunks_exact(12).enumerate() {
        let id = |i: usize| u32::from_le_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
        let (left, right, merged) = (id(0), id(4), id(8));
        if left >= n_vocab || right >= n_vocab || merged >= n_vocab {
            return Err(format!(
                "merge #{rank} ({left}, {right}) → {merged} has an id not below the vocabulary \
                 size {n_vocab}"
            ));
        }
        if !merges.insert(left, right, rank as u32, merged) {
            // The writer lists each pair once.
            return Err(format!(
                "merge #{rank} ({left}, {right}) repeats an earlier pair"
            ));
        }
    }

    // Added tokens: each id once, with the kind its flags say, and every
    // id of kind added or special listed.
    let raw = r.u32s(
        n_added.checked_mul(2).ok_or("too many added tokens")?,
        "added tokens",
    )?;
    let mut listed = vec![false; n_tokens as usize];
    let mut added = Vec::with_capacity(n_added as usize);
    for pair in raw.chunks_exact(2) {
        let (id, f) = (pair[0], pair[1]);
        let what = format!("added token id {id}");
        if f & !KNOWN_ADDED_FLAGS != 0 {
            return Err(format!(
                "{what}: unknown flags {:#x}",
                f & !KNOWN_ADDED_FLAGS
            ));
        }
        let seen = listed
            .get_mut(id as usize)
            .ok_or_else(|| format!("{what} is not below the token count {n_tokens}"))?;
        if std::mem::replace(seen, true) {
            return Err(format!("{what} is listed twice"));
        }
        let special = f & ADDED_SPECIAL != 0;
        let expected = if special {
            TokenKind::Special
        } else {
            TokenKind::Added
        };
        if vocab.kind(id) != Some(expected) {
            return Err(format!("{what}: its kind does not match its flags"));
        }
        let content = vocab.text(id).unwrap_or_default();
        if content.is_empty() {
            return Err(format!("{what} has empty content"));
        }
        added.push(AddedToken {
            id,
            content: content.to_string(),
            special,
            single_word: f & ADDED_SINGLE_WORD != 0,
            lstrip: f & ADDED_LSTRIP != 0,
            rstrip: f & ADDED_RSTRIP != 0,
            normalized: f & ADDED_NORMALIZED != 0,
        });
    }
    if let Some(id) =
        (0..n_tokens).find(|&id| !listed[id as usize] && vocab.kind(id) != Some(TokenKind::Normal))
    {
        return Err(format!(
            "id {id} is of an added kind but not in the added-token list"
        ));
    }
    if r.pos != bytes.len() {
        return Err(format!(
            "{} unexpected bytes after the added tokens",
            bytes.len() - r.pos
        ));
    }

    Ok(Inner {
        vocab,
        n_vocab,
        bpe: Bpe {
            byte_ids,
            merges,
            unknown: UnknownBytes {
                unk_id,
                fuse_unk: flags & FLAG_FUSE_UNK != 0,
                byte_fallback,
            },
        },
        ignore_merges: flags & FLAG_IGNORE_MERGES != 0,
        pre,
        added: AddedTokens::new(added),
    })
}

#[cfg(test)]
mod tests {
    use super::super::pretokenize::LLAMA3_PATTERN;
    use super::super::{Tokenizer, TokenizerParts};
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    /// A small tokenizer.json using every option the binary form stores:
    /// unk token, fuse_unk, byte fallback, ignore_merges, pre-tokenizer
    /// steps, prefix space, added tokens with every flag.
    fn everything_json() -> Vec<u8> {
        let mut vocab = serde_json::Map::new();
        let tokens = [
            "<unk>", "<0xC3>", "<0x83>", "a", "b", "c", "Ġ", "ab", "Ġa", "abc", "1", "2", "x", "y",
            "z", "xy", "d", "e", "de", "Ġab",
        ];
        for (id, t) in tokens.iter().enumerate() {
            vocab.insert(t.to_string(), id.into());
        }
        let json = serde_json::json!({
            "version": "1.0",
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated",
                 "invert": false},
                {"type": "ByteLevel", "add_prefix_space": true, "use_regex": false},
            ]},
            "decoder": {"type": "ByteLevel"},
            "model": {
                "type": "BPE", "vocab": vocab,
                "merges": ["a b", "Ġ a", "ab c", "x y", "d e", "Ġa b", "a b"],
                "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": true,
                "ignore_merges": true,
            },
            "added_tokens": [
                {"id": 20, "content": "<|end|>", "special": true, "normalized": false},
                {"id": 21, "content": "xyz", "special": false, "single_word": true,
                 "lstrip": true, "rstrip": true, "normalized": true},
                {"id": 15, "content": "xy", "special": true, "normalized": false},
                {"id": 19, "content": "Ġab", "special": false, "normalized": false},
            ],
        });
        serde_json::to_vec(&json).unwrap()
    }

    fn everything() -> Tokenizer {
        Tokenizer::from_json_bytes(&everything_json(), Path::new("everything.json"))
            .expect("valid tokenizer.json")
    }

    /// GGUF-style parts: a complete byte vocabulary, gpt-2 pre-tokenizer.
    fn gguf_small() -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8)
            .map(|b| super::super::byte_level::bytes_to_token_string(&[b]))
            .collect();
        let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.extend(["<s>".into(), "<|user|>".into(), "".into()]);
        let mut token_types = vec![1; tokens.len()];
        let n = token_types.len();
        token_types[n - 3] = 3;
        token_types[n - 2] = 4;
        token_types[n - 1] = 3; // empty: stays a plain token
        let parts = TokenizerParts {
            tokens,
            merges: merges.iter().map(|m| m.to_string()).collect(),
            token_types,
            pre: "smollm".into(),
        };
        Tokenizer::from_gguf_parts(parts, Path::new("small.gguf")).expect("valid parts")
    }

    const TEXTS: &[&str] = &[
        "",
        "abc ab a b c",
        "xyz xyz_ axyz  xyz  <|end|>xy",
        "hello world 12345 héllo 東京 🤗\n\t<s><|user|>",
        " abcde  Ġab ab\r\n\r\n'S 'll",
        "Ãé\u{0}\u{7f}zzz 1a2b",
    ];

    fn round_trip(tok: &Tokenizer) -> Tokenizer {
        let bytes = tok.to_binary();
        let back = Tokenizer::from_binary(&bytes, Path::new("x.mllm")).expect("reads back");
        assert_eq!(
            back.to_binary(),
            bytes,
            "writing again gives the same bytes"
        );
        back
    }

    #[test]
    fn round_trip_keeps_every_table() {
        for tok in [everything(), gguf_small()] {
            let back = round_trip(&tok);
            // The whole internal state (before the lazy index is built).
            assert_eq!(format!("{:?}", tok.inner), format!("{:?}", back.inner));
            for text in TEXTS {
                assert_eq!(tok.encode(text), back.encode(text), "{text:?}");
            }
            for id in 0..tok.vocab_size() as u32 + 2 {
                assert_eq!(tok.id_to_token(id), back.id_to_token(id));
                assert_eq!(tok.token_bytes(id), back.token_bytes(id));
                assert_eq!(tok.is_special(id), back.is_special(id));
                assert_eq!(tok.is_added(id), back.is_added(id));
                if let Some(text) = tok.id_to_token(id) {
                    assert_eq!(tok.token_to_id(text), back.token_to_id(text));
                }
            }
            assert!(tok.added_tokens().eq(back.added_tokens()));
        }
    }

    #[test]
    fn options_survive_and_matter() {
        let tok = round_trip(&everything());
        // A prefix space for every piece, digits one by one.
        assert_eq!(tok.encode("12"), [6, 10, 6, 11]);
        // "Ã" is C3 83: byte C3 falls back to <0xC3><0x83> (the UTF-8 of
        // the character standing for it), byte 83 to <unk>.
        assert_eq!(tok.encode("Ã"), [6, 1, 2, 0]);
        // fuse_unk: three unknown bytes, one <unk>.
        assert_eq!(tok.encode("qqq"), [6, 0]);
        // The special "xy" (not normalized) is found before "xyz".
        assert_eq!(tok.encode("a xyz a"), [8, 6, 15, 6, 14, 8]);
        assert!(tok.is_special(15) && tok.is_added(21) && !tok.is_special(21));
        assert_eq!(tok.token_to_id("<|end|>"), Some(20));
    }

    #[test]
    fn checksum_catches_every_single_word_change() {
        let data: Vec<u8> = (0..100u8).collect();
        let base = checksum(&data);
        for i in 0..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert_ne!(checksum(&d), base, "byte {i} bit {bit}");
            }
        }
        assert_ne!(checksum(&data[..99]), base);
        assert_ne!(checksum(&[0u8; 40]), checksum(&[0u8; 41]));
    }

    /// Replaces the checksum so that the structural checks are reached.
    fn reseal(bytes: &mut [u8]) {
        if bytes.len() >= 16 {
            let sum = checksum(&bytes[16..]);
            bytes[8..16].copy_from_slice(&sum.to_le_bytes());
        }
    }

    fn put(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn error_of(bytes: &[u8]) -> String {
        Tokenizer::from_binary(bytes, Path::new("m.mllm"))
            .map(|_| ())
            .expect_err("must be refused")
            .to_string()
    }

    #[test]
    fn damaged_sections_are_named_errors() {
        let good = everything().to_binary();
        let check = |edit: &dyn Fn(&mut Vec<u8>), expected: &str, reseal_it: bool| {
            let mut b = good.clone();
            edit(&mut b);
            if reseal_it {
                reseal(&mut b);
            }
            let e = error_of(&b);
            assert!(
                e.contains("m.mllm") && e.contains("tokenizer section") && e.contains(expected),
                "{expected}: {e}"
            );
        };
        check(&|b| b[0] = b'X', "does not start with", false);
        check(&|b| b.truncate(3), "does not start with", false);
        check(&|b| put(b, 4, 2), "newer microllm", false);
        check(&|b| put(b, 4, 0), "version 0", false);
        check(
            &|b| b.truncate(40),
            "shorter than the 64-byte header",
            false,
        );
        check(&|b| b[100] ^= 1, "checksum mismatch", false);
        check(&|b| b.truncate(b.len() - 1), "checksum mismatch", false);
        check(&|b| put(b, 16, u32::MAX), "inconsistent", true);
        check(&|b| put(b, 16, u32::MAX - 1), "token kinds", true);
        check(&|b| put(b, 20, 0), "vocabulary is empty", true);
        check(&|b| put(b, 24, u32::MAX), "merges", true);
        check(&|b| put(b, 28, u32::MAX), "added tokens", true);
        check(&|b| put(b, 32, u32::MAX), "text offsets", true);
        check(&|b| put(b, 40, 1 << 20), "unknown flags", true);
        check(&|b| put(b, 44, 999), "unk id is 999", true);
        check(&|b| put(b, 48, 1000), "pre-tokenizer steps", true);
        check(&|b| put(b, 56, 1), "reserved", true);
        check(
            &|b| put(b, HEADER_LEN, 9),
            "unknown pre-tokenizer step 9",
            true,
        );
        check(&|b| b.extend_from_slice(&[0; 4]), "unexpected bytes", true);
    }

    fn use_everything(tok: &Tokenizer) {
        for text in TEXTS {
            let ids = tok.encode(text);
            let _ = tok.decode(&ids);
        }
        for id in 0..tok.vocab_size() as u32 + 1 {
            let _ = (tok.token_bytes(id), tok.is_special(id), tok.is_added(id));
            if let Some(t) = tok.id_to_token(id) {
                let _ = tok.token_to_id(t);
            }
        }
        let _ = tok.special_tokens().count();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Changed bytes behind a recomputed checksum (as a crafted file
        /// would have): an error or a working tokenizer, never a panic.
        #[test]
        fn resealed_damage_never_panics(
            which in 0usize..2,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut b = [everything(), gguf_small()][which].to_binary();
            for (at, value) in edits {
                let i = 16 + at.index(b.len() - 16);
                b[i] = value;
            }
            if let Some(cut) = cut {
                b.truncate(cut.index(b.len()));
            }
            reseal(&mut b);
            match Tokenizer::from_binary(&b, Path::new("m.mllm")) {
                Ok(tok) => use_everything(&tok),
                Err(e) => prop_assert!(e.to_string().contains("m.mllm")),
            }
        }

        /// Header words set to anything: counts are checked before use.
        #[test]
        fn resealed_header_values_never_panic(word in 4usize..16, value in any::<u32>()) {
            let mut b = everything().to_binary();
            put(&mut b, word * 4, value);
            reseal(&mut b);
            if let Ok(tok) = Tokenizer::from_binary(&b, Path::new("m.mllm")) {
                use_everything(&tok);
            }
        }
    }
}
