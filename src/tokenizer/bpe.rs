//! The BPE model: merges byte symbols of one word by merge rank.

use super::byte_level::BYTE_TO_CHAR;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// What happens to a byte whose one-character token is not in the
/// vocabulary (never the case in a complete byte-level vocabulary).
#[derive(Debug, Clone, Default)]
pub(crate) struct UnknownBytes {
    /// `unk_token`'s id, used for such a byte if set.
    pub(crate) unk_id: Option<u32>,
    /// `fuse_unk`: consecutive unknown bytes give one `unk_id`.
    pub(crate) fuse_unk: bool,
    /// `byte_fallback`: `<0xXX>` tokens, when all exist, for the UTF-8 bytes
    /// of the byte's character (as the reference does).
    pub(crate) byte_fallback: Option<Box<[Option<u32>; 256]>>,
}

/// A byte-level BPE model.
#[derive(Debug, Clone)]
pub(crate) struct Bpe {
    /// Token id of each single byte, `None` if the vocabulary lacks it.
    byte_ids: [Option<u32>; 256],
    /// (left id, right id) → (rank, merged id). Lower rank merges first.
    merges: HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>,
    unknown: UnknownBytes,
    /// `ignore_merges`: a word that is itself in the vocabulary (as a
    /// byte-alphabet string → id) is that token, without merging.
    whole_words: Option<HashMap<String, u32>>,
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// A fast hasher for the (u32, u32) merge keys: the table is queried for
/// every adjacent pair of every word, and SipHash would dominate.
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; the high bits (used by hashbrown) mix both ids.
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A symbol of a word being merged: a token id and links to its live
/// neighbours (the reference's `Word`).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    /// False once merged into the symbol on its left.
    live: bool,
}

const NONE: usize = usize::MAX;

/// Buffers reused across the words of one `encode` call.
#[derive(Debug, Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    /// Min-heap of (rank, position, merged id), as in the reference.
    queue: BinaryHeap<Reverse<(u32, usize, u32)>>,
}

impl Bpe {
    /// Builds the model from its vocabulary and merges.
    ///
    /// `vocab` maps byte-alphabet strings to ids; `merges` are (left id,
    /// right id, merged id) in priority order. A pair listed twice keeps the
    /// later rank, as in the reference.
    pub(crate) fn new(
        vocab: &HashMap<String, u32>,
        merges: &[(u32, u32, u32)],
        unknown: UnknownBytes,
        ignore_merges: bool,
    ) -> Bpe {
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            *slot = vocab.get(&*BYTE_TO_CHAR[b].encode_utf8(&mut buf)).copied();
        }
        let mut merge_map = HashMap::with_capacity_and_hasher(merges.len(), Default::default());
        for (rank, &(left, right, merged)) in merges.iter().enumerate() {
            merge_map.insert(pair_key(left, right), (rank as u32, merged));
        }
        Bpe {
            byte_ids,
            merges: merge_map,
            unknown,
            whole_words: ignore_merges.then(|| vocab.clone()),
        }
    }

    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges.get(&pair_key(left, right)).copied()
    }

    /// Appends the token ids of one pre-tokenized word to `out`.
    pub(crate) fn encode_word(&self, word: &[u8], out: &mut Vec<u32>, scratch: &mut BpeScratch) {
        if word.is_empty() {
            return;
        }
        if let Some(whole) = &self.whole_words {
            let key = super::byte_level::bytes_to_token_string(word);
            if let Some(&id) = whole.get(&key) {
                out.push(id);
                return;
            }
        }
        if word.len() == 1 {
            if let Some(id) = self.byte_ids[word[0] as usize] {
                out.push(id);
                return;
            }
        }
        let symbols = &mut scratch.symbols;
        symbols.clear();
        self.initial_symbols(word, symbols);
        if symbols.is_empty() {
            return;
        }
        self.merge_all(symbols, &mut scratch.queue);
        out.extend(symbols.iter().filter(|s| s.live).map(|s| s.id));
    }

    /// One symbol per byte, with the reference's handling of bytes missing
    /// from the vocabulary.
    fn initial_symbols(&self, word: &[u8], symbols: &mut Vec<Symbol>) {
        let mut push = |id: u32| {
            let index = symbols.len();
            if let Some(last) = symbols.last_mut() {
                last.next = index;
            }
            symbols.push(Symbol {
                id,
                prev: if index == 0 { NONE } else { index - 1 },
                next: NONE,
                live: true,
            });
        };
        // An unknown byte waiting to be pushed (so that it can be fused).
        let mut pending_unk = None;
        for &b in word {
            if let Some(id) = self.byte_ids[b as usize] {
                if let Some(unk) = pending_unk.take() {
                    push(unk);
                }
                push(id);
                continue;
            }
            if let Some(fallback) = &self.unknown.byte_fallback {
                let mut buf = [0u8; 4];
                let char_bytes = BYTE_TO_CHAR[b as usize].encode_utf8(&mut buf).as_bytes();
                let ids: Option<Vec<u32>> =
                    char_bytes.iter().map(|&c| fallback[c as usize]).collect();
                if let Some(ids) = ids {
                    // As in the reference, a pending unknown is not flushed here.
                    ids.into_iter().for_each(&mut push);
                    continue;
                }
            }
            if let Some(unk_id) = self.unknown.unk_id {
                match pending_unk {
                    Some(_) if self.unknown.fuse_unk => {}
                    Some(previous) => {
                        push(previous);
                        pending_unk = Some(unk_id);
                    }
                    None => pending_unk = Some(unk_id),
                }
            }
            // Otherwise the byte is dropped, as the reference drops it.
        }
        if let Some(unk) = pending_unk {
            push(unk);
        }
    }

    /// Applies merges lowest rank first, leftmost first among equal ranks,
    /// exactly as the reference's `Word::merge_all` (including its check
    /// that a queued merge is still current, which compares merged ids).
    fn merge_all(
        &self,
        symbols: &mut [Symbol],
        queue: &mut BinaryHeap<Reverse<(u32, usize, u32)>>,
    ) {
        queue.clear();
        for pos in 0..symbols.len().saturating_sub(1) {
            if let Some((rank, merged)) = self.merge(symbols[pos].id, symbols[pos + 1].id) {
                queue.push(Reverse((rank, pos, merged)));
            }
        }
        while let Some(Reverse((_, pos, merged))) = queue.pop() {
            let current = symbols[pos];
            if !current.live || current.next == NONE {
                continue;
            }
            let right = symbols[current.next];
            match self.merge(current.id, right.id) {
                Some((_, id)) if id == merged => {}
                _ => continue, // stale: one side has changed since queued
            }
            symbols[pos].id = merged;
            symbols[pos].next = right.next;
            symbols[current.next].live = false;
            if right.next != NONE {
                symbols[right.next].prev = pos;
            }
            let merged_symbol = symbols[pos];
            if merged_symbol.prev != NONE {
                let prev = symbols[merged_symbol.prev];
                if let Some((rank, id)) = self.merge(prev.id, merged) {
                    queue.push(Reverse((rank, merged_symbol.prev, id)));
                }
            }
            if merged_symbol.next != NONE {
                let next = symbols[merged_symbol.next];
                if let Some((rank, id)) = self.merge(merged, next.id) {
                    queue.push(Reverse((rank, pos, id)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: the letters of "unrelated" and some merges.
    fn tiny() -> (HashMap<String, u32>, Bpe) {
        let tokens = [
            "u",
            "n",
            "r",
            "e",
            "l",
            "a",
            "t",
            "d",
            "re",
            "at",
            "ed",
            "un",
            "ated",
            "rel",
            "related",
            "unrelated",
            "Ġ",
            "Ġu",
        ];
        let vocab: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let id = |t: &str| vocab[t];
        let merges: Vec<(u32, u32, u32)> = [
            ("r", "e"),
            ("a", "t"),
            ("e", "d"),
            ("u", "n"),
            ("at", "ed"),
            ("re", "l"),
            ("rel", "ated"),
            ("un", "related"),
            ("Ġ", "u"),
        ]
        .iter()
        .map(|&(a, b)| (id(a), id(b), id(&format!("{a}{b}"))))
        .collect();
        let bpe = Bpe::new(&vocab, &merges, UnknownBytes::default(), false);
        (vocab, bpe)
    }

    fn encode(bpe: &Bpe, word: &str) -> Vec<u32> {
        let mut out = Vec::new();
        bpe.encode_word(word.as_bytes(), &mut out, &mut BpeScratch::default());
        out
    }

    #[test]
    fn merges_by_rank() {
        let (vocab, bpe) = tiny();
        assert_eq!(encode(&bpe, "unrelated"), [vocab["unrelated"]]);
        assert_eq!(encode(&bpe, "related"), [vocab["related"]]);
        // r-e merges first (rank 0), then a-t, e-d cannot (the e is taken)...
        assert_eq!(
            encode(&bpe, "reated"),
            [vocab["re"], vocab["ated"]],
            "re + at + ed → re ated"
        );
        assert_eq!(
            encode(&bpe, "lane"),
            [vocab["l"], vocab["a"], vocab["n"], vocab["e"]]
        );
        // A space is the byte-alphabet 'Ġ'. u-n (rank 3) outranks Ġ-u (rank 8).
        assert_eq!(encode(&bpe, " un"), [vocab["Ġ"], vocab["un"]]);
        assert_eq!(encode(&bpe, " u"), [vocab["Ġu"]]);
    }

    #[test]
    fn unknown_bytes_are_dropped_or_replaced() {
        let (vocab, bpe) = tiny();
        assert_eq!(
            encode(&bpe, "uxn"),
            [vocab["un"]],
            "x dropped, then u+n merge"
        );
        let with_unk = Bpe {
            unknown: UnknownBytes {
                unk_id: Some(99),
                ..UnknownBytes::default()
            },
            ..bpe.clone()
        };
        assert_eq!(encode(&with_unk, "uxxn"), [vocab["u"], 99, 99, vocab["n"]]);
        let fused = Bpe {
            unknown: UnknownBytes {
                unk_id: Some(99),
                fuse_unk: true,
                byte_fallback: None,
            },
            ..bpe
        };
        assert_eq!(encode(&fused, "uxxn"), [vocab["u"], 99, vocab["n"]]);
    }

    #[test]
    fn ignore_merges_takes_whole_words() {
        let (vocab, mut bpe) = tiny();
        // "reated" is not a token, so it merges as usual; "rel" is.
        bpe.whole_words = Some(vocab.clone());
        assert_eq!(encode(&bpe, "rel"), [vocab["rel"]]);
        assert_eq!(encode(&bpe, "reated"), [vocab["re"], vocab["ated"]]);
    }
}
