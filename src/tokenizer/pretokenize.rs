//! Pre-tokenization: cutting text into the words BPE runs on.
//!
//! The regexes of Hugging Face's pre-tokenizers are implemented here as
//! hand-written scanners that give exactly the matches the regex engine
//! gives (checked against `fancy-regex` by property tests below), without a
//! regex engine at run time.

use super::unicode::{is_digit_for_split, is_letter, is_number, is_space};

/// The GPT-2 pattern, as the `ByteLevel` pre-tokenizer applies it.
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The Llama-3 pattern (also used by many later byte-level BPE models).
pub(crate) const LLAMA3_PATTERN: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// A regex a `Split` pre-tokenizer may use, recognised by its exact text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitPattern {
    /// [`GPT2_PATTERN`].
    Gpt2,
    /// [`LLAMA3_PATTERN`].
    Llama3,
}

impl SplitPattern {
    /// The scanner for a regex, if it is one of the known patterns.
    pub(crate) fn from_regex(regex: &str) -> Option<SplitPattern> {
        if regex == GPT2_PATTERN {
            Some(SplitPattern::Gpt2)
        } else if regex == LLAMA3_PATTERN {
            Some(SplitPattern::Llama3)
        } else {
            None
        }
    }

    /// Byte length of the match starting at the beginning of `text`, which
    /// must not be empty. Both patterns match at every position (every
    /// character is a letter, number, space or "other"), so the matches
    /// tile the text.
    fn match_len(self, text: &str) -> usize {
        match self {
            SplitPattern::Gpt2 => gpt2_match_len(text),
            SplitPattern::Llama3 => llama3_match_len(text),
        }
    }

    /// Calls `f` with each match of the pattern in `text`, in order.
    pub(crate) fn for_each_match<'a>(self, text: &'a str, mut f: impl FnMut(&'a str)) {
        let mut rest = text;
        while !rest.is_empty() {
            // At least one character, so the scan always advances.
            let len = self.match_len(rest).max(first_char_len(rest));
            let (piece, tail) = rest.split_at(len);
            f(piece);
            rest = tail;
        }
    }
}

fn first_char_len(text: &str) -> usize {
    text.chars().next().map_or(0, char::len_utf8)
}

/// Byte length of the run of characters satisfying `class` at the start of
/// `text`.
fn run_len(text: &str, class: impl Fn(char) -> bool) -> usize {
    text.char_indices()
        .find(|&(_, c)| !class(c))
        .map_or(text.len(), |(i, _)| i)
}

/// "Other": neither whitespace, letter nor number (`[^\s\p{L}\p{N}]`).
fn is_other(c: char) -> bool {
    !is_space(c) && !is_letter(c) && !is_number(c)
}

/// The class run a word of the GPT-2 pattern continues with after `c`.
fn word_class(c: char) -> fn(char) -> bool {
    if is_letter(c) {
        is_letter
    } else if is_number(c) {
        is_number
    } else {
        is_other
    }
}

/// `\s+(?!\S)|\s+` at the start of `text`, which starts with whitespace:
/// a whitespace run that reaches the end of the text is taken whole; one
/// followed by a non-space keeps its last character back (so that `" word"`
/// stays together), unless it is a single character.
fn whitespace_match_len(text: &str) -> usize {
    let run = run_len(text, is_space);
    if run == text.len() {
        return run;
    }
    match text[..run].char_indices().next_back() {
        Some((last, _)) if last > 0 => last,
        _ => run,
    }
}

/// One match of [`GPT2_PATTERN`] at the start of a non-empty `text`.
fn gpt2_match_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if bytes[0] == b'\'' {
        match (bytes.get(1), bytes.get(2)) {
            (Some(b's' | b't' | b'm' | b'd'), _) => return 2,
            (Some(b'r'), Some(b'e')) | (Some(b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => {
                return 3
            }
            _ => {}
        }
    }
    let mut chars = text.chars();
    let Some(first) = chars.next() else { return 0 };
    // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: an optional space, then a run
    // of one class.
    if first == ' ' {
        if let Some(second) = chars.next().filter(|&c| !is_space(c)) {
            return 1 + run_len(&text[1..], word_class(second));
        }
    } else if !is_space(first) {
        return run_len(text, word_class(first));
    }
    whitespace_match_len(text)
}

/// Case-insensitive `'s|'t|'re|'ve|'m|'ll|'d` (with Unicode simple case
/// folding, under which U+017F LATIN SMALL LETTER LONG S is an `s`).
fn llama3_contraction_len(text: &str) -> Option<usize> {
    let mut chars = text.chars();
    if chars.next() != Some('\'') {
        return None;
    }
    let second = chars.next()?;
    match second {
        's' | 'S' | 'ſ' | 't' | 'T' | 'm' | 'M' | 'd' | 'D' => Some(1 + second.len_utf8()),
        'r' | 'R' | 'v' | 'V' => matches!(chars.next(), Some('e' | 'E')).then_some(3),
        'l' | 'L' => matches!(chars.next(), Some('l' | 'L')).then_some(3),
        _ => None,
    }
}

/// One match of [`LLAMA3_PATTERN`] at the start of a non-empty `text`.
fn llama3_match_len(text: &str) -> usize {
    if let Some(len) = llama3_contraction_len(text) {
        return len;
    }
    let mut chars = text.chars();
    let Some(first) = chars.next() else { return 0 };
    let second = chars.next();
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if is_letter(first) {
        return run_len(text, is_letter);
    }
    let is_newline = |c: char| c == '\r' || c == '\n';
    if !is_newline(first) && !is_number(first) && second.is_some_and(is_letter) {
        let start = first.len_utf8();
        return start + run_len(&text[start..], is_letter);
    }
    // \p{N}{1,3}
    if is_number(first) {
        return text
            .char_indices()
            .take(3)
            .take_while(|&(_, c)| is_number(c))
            .map(|(i, c)| i + c.len_utf8())
            .last()
            .unwrap_or(0);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let other_start = if first == ' ' && second.is_some_and(is_other) {
        Some(1)
    } else if is_other(first) {
        Some(0)
    } else {
        None
    };
    if let Some(start) = other_start {
        let end = start + run_len(&text[start..], is_other);
        return end + run_len(&text[end..], is_newline);
    }
    // \s*[\r\n]+ : the whitespace run up to and including its last newline.
    let run = run_len(text, is_space);
    if let Some((last_newline, c)) = text[..run]
        .char_indices()
        .rev()
        .find(|&(_, c)| is_newline(c))
    {
        return last_newline + c.len_utf8();
    }
    whitespace_match_len(text)
}

/// Splits `text` before and after every numeric character (`individual`),
/// or around each run of them.
fn split_digits<'a>(text: &'a str, individual: bool, out: &mut Vec<&'a str>) {
    let mut start = 0;
    let mut in_digits = false;
    for (i, c) in text.char_indices() {
        let digit = is_digit_for_split(c);
        if i > start && (digit != in_digits || (digit && individual)) {
            out.push(&text[start..i]);
            start = i;
        }
        in_digits = digit;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
}

/// One splitting step that runs before the final `ByteLevel` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitStep {
    /// `Digits`: numeric characters split off, one by one or in runs.
    Digits { individual: bool },
    /// `Split` with a known regex and `Isolated` behaviour: every match
    /// becomes a piece.
    Regex(SplitPattern),
}

/// A byte-level pre-tokenizer: zero or more splitting steps, then
/// `ByteLevel` (optionally adding a leading space, optionally splitting
/// with the GPT-2 regex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    pub(crate) steps: Vec<SplitStep>,
    pub(crate) add_prefix_space: bool,
    pub(crate) use_regex: bool,
}

impl PreTokenizer {
    /// `ByteLevel(add_prefix_space=false, use_regex=true)`: GPT-2's.
    pub(crate) fn gpt2() -> PreTokenizer {
        PreTokenizer {
            steps: Vec::new(),
            add_prefix_space: false,
            use_regex: true,
        }
    }

    /// Calls `word` with each word of `text`, in order. The words are what
    /// the BPE model sees (before the byte-to-character mapping, which BPE
    /// does on bytes directly). Empty pieces are dropped, as the reference
    /// does.
    pub(crate) fn for_each_word(&self, text: &str, mut word: impl FnMut(&str)) {
        let mut pieces: Vec<&str> = Vec::new();
        if !text.is_empty() {
            pieces.push(text);
        }
        let mut next: Vec<&str> = Vec::new();
        for step in &self.steps {
            next.clear();
            for &piece in &pieces {
                match *step {
                    SplitStep::Digits { individual } => split_digits(piece, individual, &mut next),
                    SplitStep::Regex(pattern) => pattern.for_each_match(piece, |m| next.push(m)),
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        let mut prefixed = String::new();
        for piece in pieces {
            // ByteLevel adds the space to each piece that reaches it, not
            // just to the start of the text (as the reference does).
            let piece = if self.add_prefix_space && !piece.starts_with(' ') {
                prefixed.clear();
                prefixed.push(' ');
                prefixed.push_str(piece);
                prefixed.as_str()
            } else {
                piece
            };
            if self.use_regex {
                SplitPattern::Gpt2.for_each_match(piece, &mut word);
            } else {
                word(piece);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gpt2(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        SplitPattern::Gpt2.for_each_match(text, |m| out.push(m));
        out
    }

    fn llama3(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        SplitPattern::Llama3.for_each_match(text, |m| out.push(m));
        out
    }

    fn words(pre: &PreTokenizer, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        pre.for_each_word(text, |w| out.push(w.to_string()));
        out
    }

    fn smollm() -> PreTokenizer {
        PreTokenizer {
            steps: vec![SplitStep::Digits { individual: true }],
            ..PreTokenizer::gpt2()
        }
    }

    #[test]
    fn gpt2_splits_words_punctuation_and_spaces() {
        assert_eq!(
            gpt2("Hello my friend, how's it going?"),
            ["Hello", " my", " friend", ",", " how", "'s", " it", " going", "?"]
        );
        assert_eq!(
            gpt2("Hello there       dear"),
            ["Hello", " there", "      ", " dear"]
        );
        assert_eq!(gpt2("a \n\nb"), ["a", " \n", "\n", "b"]);
        assert_eq!(gpt2("end   "), ["end", "   "]);
        assert_eq!(gpt2("\tx"), ["\t", "x"]);
        assert_eq!(gpt2(" 123 !?"), [" 123", " !?"]);
    }

    #[test]
    fn gpt2_contractions_are_case_sensitive() {
        assert_eq!(gpt2("DON'T don't"), ["DON", "'", "T", " don", "'t"]);
        assert_eq!(gpt2("we'd've"), ["we", "'d", "'ve"]);
        assert_eq!(gpt2("x''s"), ["x", "''", "s"]);
        assert_eq!(gpt2("'ll'"), ["'ll", "'"]);
    }

    #[test]
    fn gpt2_keeps_marks_and_emoji_apart_from_letters() {
        assert_eq!(gpt2("cafe\u{301}!"), ["cafe", "\u{301}!"]);
        assert_eq!(gpt2("東京 🤗🚀"), ["東京", " 🤗🚀"]);
        assert_eq!(gpt2("a\u{A0}b"), ["a", "\u{A0}", "b"]);
    }

    #[test]
    fn llama3_differs_where_expected() {
        assert_eq!(llama3("DON'T 12345"), ["DON", "'T", " ", "123", "45"]);
        assert_eq!(llama3("(word \tx"), ["(word", " ", "\tx"]);
        assert_eq!(llama3("a;\n\nb"), ["a", ";\n\n", "b"]);
        assert_eq!(llama3("x  \n  \n y"), ["x", "  \n  \n", " y"]);
        assert_eq!(llama3("'ſ"), ["'ſ"]);
    }

    #[test]
    fn digits_are_split_one_by_one() {
        let mut out = Vec::new();
        split_digits("ab12 3x٣", true, &mut out);
        assert_eq!(out, ["ab", "1", "2", " ", "3", "x", "٣"]);
        out.clear();
        split_digits("ab12 3x٣", false, &mut out);
        assert_eq!(out, ["ab", "12", " ", "3", "x", "٣"]);
    }

    #[test]
    fn smollm_pre_tokenizer_words() {
        let pre = smollm();
        assert_eq!(
            words(&pre, "12345 + 67890"),
            ["1", "2", "3", "4", "5", " +", " ", "6", "7", "8", "9", "0"]
        );
        // The digit split ends the piece, so the whitespace before a digit
        // is at the end of its piece and is taken whole.
        assert_eq!(words(&pre, "a  1"), ["a", "  ", "1"]);
        assert!(words(&pre, "").is_empty());
    }

    #[test]
    fn prefix_space_is_added_to_every_piece() {
        let pre = PreTokenizer {
            add_prefix_space: true,
            ..smollm()
        };
        assert_eq!(words(&pre, "a1"), [" a", " 1"]);
        assert_eq!(words(&pre, " a"), [" a"]);
        let no_regex = PreTokenizer {
            steps: Vec::new(),
            add_prefix_space: false,
            use_regex: false,
        };
        assert_eq!(words(&no_regex, "a b  c"), ["a b  c"]);
    }

    fn regex_matches(re: &fancy_regex::Regex, text: &str) -> Vec<String> {
        re.find_iter(text)
            .map(|m| m.expect("regex ran").as_str().to_string())
            .collect()
    }

    /// Characters of every class the patterns distinguish.
    const ALPHABET: &[&str] = &[
        "a", "b", "Z", "s", "t", "S", "T", "r", "e", "R", "E", "v", "V", "l", "L", "m", "M", "d",
        "D", "ſ", "'", "'", "0", "7", " ", " ", " ", "\t", "\n", "\r", "\u{0B}", "\u{0C}",
        "\u{85}", "\u{A0}", "\u{2009}", "\u{2028}", "\u{3000}", "\u{1C}", "٣", "५", "２", "²", "½",
        "Ⅻ", "𝟙", "\u{301}", "\u{308}", "\u{20DD}", "\u{200D}", "\u{FE0F}", "東", "京", "は", "한",
        "ж", "ß", "ǅ", "ʰ", "🤗", "👍", "🏽", ".", ",", "!", "-", "_", "(", "<", "|", "’", "—",
        "\u{0}", "\u{7F}", "é",
    ];

    fn text_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(ALPHABET), 0..40)
            .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn gpt2_scanner_matches_regex(text in text_strategy()) {
            thread_local! {
                static RE: fancy_regex::Regex = fancy_regex::Regex::new(GPT2_PATTERN).expect("pattern");
            }
            let expected = RE.with(|re| regex_matches(re, &text));
            prop_assert_eq!(gpt2(&text), expected);
        }

        #[test]
        fn llama3_scanner_matches_regex(text in text_strategy()) {
            thread_local! {
                static RE: fancy_regex::Regex = fancy_regex::Regex::new(LLAMA3_PATTERN).expect("pattern");
            }
            let expected = RE.with(|re| regex_matches(re, &text));
            prop_assert_eq!(llama3(&text), expected);
        }

        #[test]
        fn gpt2_scanner_matches_regex_on_any_string(text in "\\PC{0,30}|[\\s\\S]{0,30}") {
            thread_local! {
                static RE: fancy_regex::Regex = fancy_regex::Regex::new(GPT2_PATTERN).expect("pattern");
            }
            let expected = RE.with(|re| regex_matches(re, &text));
            prop_assert_eq!(gpt2(&text), expected);
        }

        #[test]
        fn pieces_tile_the_text(text in text_strategy()) {
            prop_assert_eq!(words(&smollm(), &text).concat(), text.clone());
            prop_assert_eq!(llama3(&text).concat(), text);
        }
    }
}
