//! The strings of every token id, in flat arrays.
//!
//! One text blob and one bytes blob with end offsets, and a kind per id:
//! three allocations whatever the vocabulary size, so that building (and
//! loading a binary tokenizer section, which holds these arrays as they
//! are) costs little. The text → id index that `token_to_id` needs is built
//! on first use.

use std::sync::OnceLock;

/// What kind of token an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A BPE vocabulary token.
    Normal,
    /// An added token that is not special (GGUF user-defined).
    Added,
    /// A special added token (GGUF control).
    Special,
}

impl TokenKind {
    /// Its code in the binary section.
    pub(crate) fn code(self) -> u8 {
        match self {
            TokenKind::Normal => 0,
            TokenKind::Added => 1,
            TokenKind::Special => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<TokenKind> {
        match code {
            0 => Some(TokenKind::Normal),
            1 => Some(TokenKind::Added),
            2 => Some(TokenKind::Special),
            _ => None,
        }
    }
}

/// Every id's text (as written in the vocabulary, or an added token's
/// content), bytes (what it decodes to) and kind.
///
/// Invariants (checked by whoever builds one): `text_ends` and `bytes_ends`
/// have one entry per id, never decrease and end at the blob's length;
/// every text end is a character boundary; no two ids have the same text.
#[derive(Debug, Default)]
pub(crate) struct Vocab {
    pub(crate) text: String,
    pub(crate) text_ends: Vec<u32>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) bytes_ends: Vec<u32>,
    pub(crate) kinds: Vec<TokenKind>,
    /// Text → id, built by the first `id_of`.
    index: OnceLock<TextIndex>,
}

impl Vocab {
    pub(crate) fn with_capacity(tokens: usize, text_bytes: usize) -> Vocab {
        Vocab {
            text: String::with_capacity(text_bytes),
            text_ends: Vec::with_capacity(tokens),
            bytes: Vec::with_capacity(text_bytes),
            bytes_ends: Vec::with_capacity(tokens),
            kinds: Vec::with_capacity(tokens),
            index: OnceLock::new(),
        }
    }

    /// Arrays already checked against the invariants above.
    pub(crate) fn from_parts(
        text: String,
        text_ends: Vec<u32>,
        bytes: Vec<u8>,
        bytes_ends: Vec<u32>,
        kinds: Vec<TokenKind>,
    ) -> Vocab {
        Vocab {
            text,
            text_ends,
            bytes,
            bytes_ends,
            kinds,
            index: OnceLock::new(),
        }
    }

    /// Appends the next id. Fails if a blob would pass 4 GiB.
    pub(crate) fn push(&mut self, text: &str, bytes: &[u8], kind: TokenKind) -> Result<(), String> {
        self.text.push_str(text);
        self.bytes.extend_from_slice(bytes);
        let too_big = || "the vocabulary's strings exceed 4 GiB".to_string();
        self.text_ends
            .push(u32::try_from(self.text.len()).map_err(|_| too_big())?);
        self.bytes_ends
            .push(u32::try_from(self.bytes.len()).map_err(|_| too_big())?);
        self.kinds.push(kind);
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    fn range(ends: &[u32], id: usize) -> Option<std::ops::Range<usize>> {
        let end = *ends.get(id)? as usize;
        let start = match id {
            0 => 0,
            _ => ends[id - 1] as usize,
        };
        Some(start..end)
    }

    pub(crate) fn text(&self, id: u32) -> Option<&str> {
        self.text.get(Self::range(&self.text_ends, id as usize)?)
    }

    pub(crate) fn bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(Self::range(&self.bytes_ends, id as usize)?)
    }

    pub(crate) fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The id whose text is `text`.
    pub(crate) fn id_of(&self, text: &str) -> Option<u32> {
        self.index
            .get_or_init(|| TextIndex::build(self))
            .find(self, text)
    }
}

/// An open-addressing table of ids by text hash (linear probing, at most
/// half full, so a probe always ends).
#[derive(Debug)]
struct TextIndex {
    /// Ids, `EMPTY` for a free slot.
    slots: Vec<u32>,
    mask: usize,
    shift: u32,
}

const EMPTY: u32 = u32::MAX;

/// An FxHash-style hash of a string, 8 bytes at a time.
fn hash_text(text: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = text.len() as u64;
    let mut chunks = text.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
    }
    h
}

impl TextIndex {
    fn build(vocab: &Vocab) -> TextIndex {
        let capacity = (vocab.len() * 2).next_power_of_two().max(16);
        let mut index = TextIndex {
            slots: vec![EMPTY; capacity],
            mask: capacity - 1,
            shift: 64 - capacity.trailing_zeros(),
        };
        for id in 0..vocab.len() as u32 {
            let text = vocab.text(id).unwrap_or_default();
            let mut slot = index.home(text);
            // Ids go in increasing order; with duplicate texts (only in a
            // crafted binary section) the first id is found.
            while index.slots[slot] != EMPTY {
                slot = (slot + 1) & index.mask;
            }
            index.slots[slot] = id;
        }
        index
    }

    fn home(&self, text: &str) -> usize {
        (hash_text(text.as_bytes()) >> self.shift) as usize & self.mask
    }

    fn find(&self, vocab: &Vocab, text: &str) -> Option<u32> {
        let mut slot = self.home(text);
        loop {
            let id = self.slots[slot];
            if id == EMPTY {
                return None;
            }
            if vocab.text(id) == Some(text) {
                return Some(id);
            }
            slot = (slot + 1) & self.mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_arrays_and_index() {
        let mut v = Vocab::with_capacity(4, 16);
        for (text, kind) in [
            ("a", TokenKind::Normal),
            ("", TokenKind::Normal),
            ("Ġb", TokenKind::Normal),
            ("<s>", TokenKind::Special),
        ] {
            v.push(text, text.as_bytes(), kind).unwrap();
        }
        assert_eq!(v.len(), 4);
        assert_eq!(v.text(2), Some("Ġb"));
        assert_eq!(v.text(1), Some(""));
        assert_eq!(v.bytes(3), Some(&b"<s>"[..]));
        assert_eq!(v.text(4), None);
        assert_eq!(v.kind(3), Some(TokenKind::Special));
        for id in 0..4 {
            assert_eq!(v.id_of(v.text(id).unwrap()), Some(id));
        }
        assert_eq!(v.id_of("b"), None);
        assert_eq!(v.id_of("<s"), None);
    }
}
