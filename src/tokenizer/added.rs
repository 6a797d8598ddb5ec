//! Added tokens (special and not): found in the text before pre-tokenizing.
//!
//! Follows Hugging Face's `AddedVocabulary::extract_and_normalize`: first the
//! tokens with `normalized: false` are found in the whole text, then those
//! with `normalized: true` in the pieces between (this tokenizer has no
//! normalizer, so both match the raw text). Each search takes, left to
//! right, the longest token starting at the leftmost position; a
//! `single_word` token that touches a word character is skipped (and the
//! search goes on after it); `lstrip`/`rstrip` take the whitespace beside the
//! token into it.

use super::unicode::{is_space, is_word_char};

/// An added token as declared in `tokenizer.json` (or made from GGUF token
/// types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddedToken {
    pub(crate) id: u32,
    pub(crate) content: String,
    pub(crate) special: bool,
    pub(crate) single_word: bool,
    pub(crate) lstrip: bool,
    pub(crate) rstrip: bool,
    pub(crate) normalized: bool,
}

impl AddedToken {
    /// A token matched exactly, with no options (GGUF control and
    /// user-defined tokens).
    pub(crate) fn plain(id: u32, content: &str, special: bool) -> AddedToken {
        AddedToken {
            id,
            content: content.to_string(),
            special,
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
        }
    }
}

/// A piece of the input: text still to pre-tokenize, or an added token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A leftmost-longest matcher over a set of added tokens.
#[derive(Debug, Clone, Default)]
struct Matcher {
    /// Indices into `AddedTokens::tokens`, by first byte of the content,
    /// longest content first.
    by_first_byte: Vec<Vec<usize>>,
}

impl Matcher {
    fn new(tokens: &[AddedToken], include: impl Fn(&AddedToken) -> bool) -> Matcher {
        let mut by_first_byte = vec![Vec::new(); 256];
        for (index, token) in tokens.iter().enumerate() {
            if let Some(&first) = token.content.as_bytes().first() {
                if include(token) {
                    by_first_byte[first as usize].push(index);
                }
            }
        }
        for list in &mut by_first_byte {
            // Stable: among equal lengths the first declared wins.
            list.sort_by_key(|&i| std::cmp::Reverse(tokens[i].content.len()));
        }
        Matcher { by_first_byte }
    }

    fn is_empty(&self) -> bool {
        self.by_first_byte.iter().all(Vec::is_empty)
    }

    /// The leftmost-longest match at or after `from`: (start, token index).
    fn find(&self, tokens: &[AddedToken], text: &str, from: usize) -> Option<(usize, usize)> {
        let bytes = text.as_bytes();
        (from..bytes.len()).find_map(|start| {
            self.by_first_byte[bytes[start] as usize]
                .iter()
                .find(|&&i| bytes[start..].starts_with(tokens[i].content.as_bytes()))
                .map(|&i| (start, i))
        })
    }
}

/// The added tokens of a tokenizer and the two matchers over them.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedTokens {
    pub(crate) tokens: Vec<AddedToken>,
    raw: Matcher,
    normalized: Matcher,
}

impl AddedTokens {
    pub(crate) fn new(tokens: Vec<AddedToken>) -> AddedTokens {
        let raw = Matcher::new(&tokens, |t| !t.normalized);
        let normalized = Matcher::new(&tokens, |t| t.normalized);
        AddedTokens {
            tokens,
            raw,
            normalized,
        }
    }

    /// Splits `text` into added tokens and the text between them.
    pub(crate) fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut first_pass = Vec::new();
        self.find_matches(&self.raw, text, &mut first_pass);
        if self.normalized.is_empty() {
            return first_pass;
        }
        let mut out = Vec::with_capacity(first_pass.len());
        for segment in first_pass {
            match segment {
                Segment::Text(piece) => self.find_matches(&self.normalized, piece, &mut out),
                token => out.push(token),
            }
        }
        out
    }

    /// One pass of the reference's `find_matches` over `text`.
    fn find_matches<'a>(&self, matcher: &Matcher, text: &'a str, out: &mut Vec<Segment<'a>>) {
        let mut done = 0; // end of the text already given out
        let mut search_from = 0;
        while let Some((found, index)) = matcher.find(&self.tokens, text, search_from) {
            let token = &self.tokens[index];
            let mut start = found;
            let mut stop = found + token.content.len();
            search_from = stop;
            if token.single_word {
                let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
                let word_after = text[stop..].chars().next().is_some_and(is_word_char);
                if word_before || word_after {
                    continue;
                }
            }
            if token.lstrip {
                let spaces: usize = text[..start]
                    .chars()
                    .rev()
                    .take_while(|&c| is_space(c))
                    .map(char::len_utf8)
                    .sum();
                start -= spaces;
            }
            if token.rstrip {
                stop += text[stop..]
                    .chars()
                    .take_while(|&c| is_space(c))
                    .map(char::len_utf8)
                    .sum::<usize>();
            }
            // Whitespace an earlier token's rstrip took is not taken twice.
            start = start.max(done);
            if done < start {
                out.push(Segment::Text(&text[done..start]));
            }
            out.push(Segment::Token(token.id));
            done = done.max(stop);
        }
        if done < text.len() {
            out.push(Segment::Text(&text[done..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: u32, content: &str) -> AddedToken {
        AddedToken::plain(id, content, true)
    }

    #[test]
    fn longest_leftmost_match_wins() {
        let added = AddedTokens::new(vec![token(1, "<|im"), token(2, "<|im_start|>")]);
        assert_eq!(
            added.split("a<|im_start|>b<|imc"),
            [
                Segment::Text("a"),
                Segment::Token(2),
                Segment::Text("b"),
                Segment::Token(1),
                Segment::Text("c")
            ]
        );
        assert_eq!(added.split(""), []);
        assert_eq!(
            added.split("<|im<|im"),
            [Segment::Token(1), Segment::Token(1)]
        );
    }

    #[test]
    fn single_word_needs_word_boundaries() {
        let mut the = token(7, "the");
        the.single_word = true;
        let added = AddedTokens::new(vec![the]);
        assert_eq!(
            added.split("bathe the_ the!"),
            [
                Segment::Text("bathe the_ "),
                Segment::Token(7),
                Segment::Text("!")
            ]
        );
    }

    #[test]
    fn strip_takes_neighbouring_whitespace() {
        let mut mask = token(3, "<mask>");
        mask.lstrip = true;
        mask.rstrip = true;
        let added = AddedTokens::new(vec![mask]);
        assert_eq!(
            added.split("a \t<mask>\u{3000} b"),
            [Segment::Text("a"), Segment::Token(3), Segment::Text("b")]
        );
    }

    #[test]
    fn normalized_tokens_match_in_a_second_pass() {
        let mut foo = token(5, "foo");
        foo.normalized = true;
        let added = AddedTokens::new(vec![foo, token(6, "o<x>")]);
        // The first pass takes "o<x>", so the second cannot see "foo".
        assert_eq!(
            added.split("fo<x>foo"),
            [Segment::Text("f"), Segment::Token(6), Segment::Token(5)]
        );
    }
}
