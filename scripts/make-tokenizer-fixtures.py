#!/usr/bin/env python3
"""Writes the tokenizer parity fixtures in fixtures/tokenizer/ using the
reference implementation, Hugging Face `tokenizers` (Python bindings).

Run from the repository root with a Python that has `tokenizers`:

    /tmp/setup/venv/bin/python scripts/make-tokenizer-fixtures.py

Inputs: models/smollm2-135m-hf-f32/tokenizer.json (scripts/fetch-models.sh)
and the corpus (default /work/shared/corpus/rust-book-ch00-06.txt, or
--corpus). Outputs (all ids are `encode(text, add_special_tokens=False)`):

- corpus.txt           a copy of the corpus
- corpus_ids.json      ids of the whole corpus as one string, and of each
                       paragraph (byte ranges into corpus.txt) on its own so
                       a mismatch is easy to locate
- hard_cases.json      hand-written hard strings and seeded random strings
                       mixing scripts, whitespace, digits, marks, emoji and
                       special-token text, for the SmolLM2 tokenizer
- variants.json        patches to the SmolLM2 tokenizer.json (other
                       pre-tokenizers, [a, b] merges, ignore_merges, added
                       tokens with lstrip/rstrip/single_word/normalized) and
                       the ids the patched tokenizer gives for each case
- unicode_classes.json the code points that the reference's regex engine
                       (Oniguruma) puts in \\p{L}, \\p{N} and \\s, and those
                       its `Digits` pre-tokenizer (Rust char::is_numeric)
                       splits off, as inclusive ranges
"""
import argparse
import copy
import json
import os
import random
import shutil
import sys

from tokenizers import Regex, Tokenizer, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "tokenizer")
TOKENIZER_JSON = os.path.join(ROOT, "models", "smollm2-135m-hf-f32", "tokenizer.json")

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Strings chosen to hit every branch of the pre-tokenizers and the added-token
# splitter: contractions in both cases, whitespace runs before words and at
# the end, every Unicode space, digits of other scripts, combining marks,
# emoji sequences, special-token text glued to words or cut short.
HARD_STRINGS = [
    "", " ", "  ", "\t", "\n", "\n\n", " \n", "\n ", "a", " a", "  a", "a ", "a  ",
    "'s 's 'S 'T 're 'RE 've 'll 'LL 'd 'm 'M", "don't DON'T Don'T we'Re", "'", "''", "'''s", "x''s",
    " 'll", "'ll've'd", "rock'n'roll", "’s curly apostrophe’s",
    "a\u00a0b", "a \u00a0b", "a\u00a0 b", "\u3000\u3000x", "x\u3000", "a\u2009b\u200ac", "a\u2028b\u2029c",
    "a\u0085b", "a\x0bb\x0cc", "\x1c\x1d\x1e\x1f", "\r", "\r\n", "a\r\n\r\nb", " \r\n ", "\t\tx\t\t",
    "   leading and trailing   ", "multiple     spaces     between", "tab\tseparated\tvalues\t",
    "0", "00", "007", "1234567890", " 1", "  12", "a1b2c3", "x 1 2  3   4", "1.5e-10", "-42", "+3",
    "٣٤٥ ۱۲۳ ४५६ ১২৩ ๑๒๓ ０１２ ²³ ¹ ½ ¾ Ⅻ ⅻ 𝟘𝟙𝟚 ① ⑴ 〇 〡 𐌡",
    "v1.2.3 ip 192.168.0.1 $1,000.00 50% 3/4",
    "e\u0301 e\u0301\u0301 \u0301a a\u0301b \u20dd \u0301 x\u0308y",
    "Zalgo: Z\u0351\u036b\u0343a\u0352l\u0350g\u0352o",
    "한국어 텍스트 日本語のテキスト 中文文本 ไทย हिन्दी العربية עברית",
    "ǅ ǈ ǋ ᾈ ſ ß ẞ İ ı ﬁ ﬀ",
    "🤗🚀👍🏽 ❤️ 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 🇫🇷🇯🇵 #️⃣ 1️⃣",
    "\u200b\u200c\u200d\u2060\ufeff zero-width",
    "\x00\x01\x07\x7f\x80\x9f control",
    "\ufffd replacement \U0010ffff \U000e0001 tag",
    "\u1c89\u1c8a \U00011de0\U00011de1 new in Unicode 16/17",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|><|im_end|>", "<|im_start|user",
    "<|im_", "<<|im_start|>>", "x<|im_start|>y", " <|im_start|> ", "<|im_start|>\n\n",
    "<|endoftext|><|endoftext|>", "<repo_name><reponame>", "<file_sep>code<filename>name",
    "<gh_stars>10<issue_start>text<issue_comment>", "<jupyter_start><jupyter_code>x<jupyter_output>",
    "<empty_output><commit_before><commit_msg><commit_after><jupyter_text>",
    "Ċ Ġ ĠĠ čĊ Ã© â€™",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "----------------------------------------------------------------",
    "================================================================",
    "                                                                ",
    "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
    "    def f(x):\n        return x  # comment\n\n\n",
    "```rust\nfn main() {\n    println!(\"hi\");\n}\n```",
    "{\"key\": [1, 2, {\"nested\": null}], \"k2\": true}",
    "SELECT * FROM t WHERE a >= 10 AND b <> 'x';",
    "C:\\Users\\name\\file.txt /usr/local/bin ~/.config",
    "user@example.com @mention #hashtag",
    "Hello, World! How's it going? I'm fine; thanks... (really) [yes] {no}",
    "İstanbul ΑΒΓ αβγ Ωmega АБВ абв",
]

# Pieces the random strings are made of: all the character classes the
# GPT-2 regex distinguishes, plus text that looks like special tokens.
RANDOM_PIECES = (
    list("abcXYZé'sStTmMdDrReEvVlL0123456789 ") * 3
    + [" ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u00a0", "\u3000", "\u2009", "\x0b", "\x85", "\u2028"]
    + ["٣", "५", "２", "²", "½", "Ⅻ", "𝟙", "\U00011de0"]
    + ["\u0301", "\u0308", "\u20dd", "\u200d", "\ufe0f"]
    + ["東", "京", "は", "한", "ก", "ж", "ß", "ſ", "ǅ", "\u1c89"]
    + ["🤗", "👍", "🏽", "❤", "🇫", "🇷"]
    + [".", ",", "!", "?", "-", "_", "(", ")", "<", ">", "|", "\"", "’", "…", "—", "$", "#", "\\", "/"]
    + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "im_end|>", "<file_sep>"]
    + ["'s", "'t", "'re", "'ve", "'ll", "'d", "'m", "'RE", "'LL"]
    + ["\x00", "\x1f", "\x7f"]
)


def random_strings(seed, count, max_pieces):
    rng = random.Random(seed)
    return ["".join(rng.choice(RANDOM_PIECES) for _ in range(rng.randint(1, max_pieces))) for _ in range(count)]


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def cases_for(tok, texts):
    return [{"text": t, "ids": encode(tok, t)} for t in texts]


def paragraphs(text):
    """Byte ranges of the paragraphs of `text` (separated by blank lines)."""
    data = text.encode("utf-8")
    out, start = [], 0
    while start < len(data):
        end = data.find(b"\n\n", start)
        if end < 0:
            end = len(data)
        if end > start:
            out.append((start, end))
        start = end + 2
    return out


def write_json(name, value):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")


def corpus_fixtures(tok, corpus_path):
    shutil.copyfile(corpus_path, os.path.join(OUT, "corpus.txt"))
    with open(corpus_path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")
    paras = []
    for start, end in paragraphs(text):
        paras.append({"start": start, "end": end, "ids": encode(tok, data[start:end].decode("utf-8"))})
    whole = encode(tok, text)
    write_json("corpus_ids.json", {
        "note": "encode(text, add_special_tokens=False) of corpus.txt as one string (ids) and of each "
                "blank-line-separated paragraph (byte range start..end of corpus.txt) on its own",
        "ids": whole,
        "paragraphs": paras,
    })
    return len(whole)


def added(id_for, content, special=False, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": id_for(content), "content": content, "single_word": single_word, "lstrip": lstrip,
            "rstrip": rstrip, "normalized": normalized, "special": special}


def byte_level(add_prefix_space=False, use_regex=True):
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": True, "use_regex": use_regex}


def split(pattern):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def variant_patches(base):
    """Each variant: a name and a patch (top-level keys replaced, `model`
    keys replaced, added tokens appended) applied to the base tokenizer.json."""
    vocab = base["model"]["vocab"]
    next_id = [len(vocab)]

    def id_for(content):
        # The reference gives an added token already in the vocabulary its
        # vocabulary id, and any other the next free id (whatever the file
        # says), so write the ids it will use.
        if content in vocab:
            return vocab[content]
        next_id[0] += 1
        return next_id[0] - 1

    return [
        ("gpt2_bytelevel", {"pre_tokenizer": byte_level()}),
        ("prefix_space", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level(add_prefix_space=True)]}}),
        ("prefix_space_only", {"pre_tokenizer": byte_level(add_prefix_space=True)}),
        ("digits_contiguous", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": False}, byte_level()]}}),
        ("no_regex", {"pre_tokenizer": byte_level(use_regex=False)}),
        ("split_gpt2", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(GPT2_PATTERN), byte_level(use_regex=False)]}}),
        ("split_llama3", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(LLAMA3_PATTERN), byte_level(use_regex=False)]}}),
        ("merges_pairs", {"model": {"merges": [m.split(" ") for m in base["model"]["merges"]]}}),
        ("ignore_merges", {"model": {"ignore_merges": True}}),
        ("added_options", {"added_tokens_append": [
            added(id_for, "<mask>", special=True, lstrip=True, rstrip=True),
            added(id_for, "<|im"),
            added(id_for, "ony", single_word=True, normalized=True),
            added(id_for, "Hello", single_word=True),
            added(id_for, "<sep>", lstrip=True),
            added(id_for, "<cls>", rstrip=True, normalized=True),
            added(id_for, "über", single_word=True),
            added(id_for, "__", normalized=True),
            added(id_for, "the", special=True, single_word=True, normalized=True),
            added(id_for, "\u3000<w>", lstrip=True, rstrip=True),
        ]}),
    ]


VARIANT_STRINGS = [
    "Hello world", "Hello", " Hello", "HelloHello", "Hello,Hello", "xHello", "Hello_x", "Hello1",
    "<mask>", "a <mask> b", "a  <mask>  b", "a\t<mask>\n\nb", "<mask><mask>", "<mask> <mask>", " <mask>",
    "<mask>\u3000x", "<|im", "<|im_start|>", "<|im_end|>", "<|im_x", "x<|imy", "<|im<|im_start|>",
    "ony", "Anthony", " ony ", "ony,ony", "-ony-", "ony\u0301", "\u0301ony", "a_ony", "ony1", "1ony",
    "x <sep> y", "x<sep>", "   <sep>", "x <cls>   y", "<cls>\n", "über", "Xüber", "über!", "über\u00a0",
    "a__b", "____", "___", "the cat", "bathe", "the", "the_", "théthe the", "a \u3000<w> b", "\u3000<w>",
    "  \u3000<w>\u3000  x",
]


def variant_fixtures(base_tj, texts):
    out = []
    for name, patch in variant_patches(base_tj):
        tj = copy.deepcopy(base_tj)
        for key, value in patch.items():
            if key == "model":
                tj["model"].update(value)
            elif key == "added_tokens_append":
                tj["added_tokens"].extend(value)
            else:
                tj[key] = value
        tok = Tokenizer.from_str(json.dumps(tj))
        for at in tj["added_tokens"]:
            assert tok.token_to_id(at["content"]) == at["id"], (name, at)
        out.append({"name": name, "patch": patch if name != "merges_pairs" else {"merges_as_pairs": True},
                    "cases": cases_for(tok, texts)})
    write_json("variants.json", {
        "note": "each variant patches models/smollm2-135m-hf-f32/tokenizer.json: top-level keys replaced, "
                "'model' keys merged into model, 'added_tokens_append' appended to added_tokens, "
                "'merges_as_pairs' rewrites model.merges as [a, b] pairs",
        "variants": out,
    })


def ranges(points):
    out = []
    for p in sorted(points):
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


def unicode_class_fixtures():
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    everything = "".join(chr(c) for c in cps)

    def members(cls):
        # Remove everything outside the class: what is left is the class.
        splitter = pre_tokenizers.Split(Regex(r"[^%s]+" % cls), behavior="removed")
        return {ord(ch) for piece, _ in splitter.pre_tokenize_str(everything) for ch in piece}

    digits = pre_tokenizers.Digits(individual_digits=True)
    single = [p for p, _ in digits.pre_tokenize_str(everything) if len(p) == 1]
    numeric = {ord(p) for p in single if len(digits.pre_tokenize_str("a" + p + "a")) == 3}
    write_json("unicode_classes.json", {
        "note": "inclusive code point ranges: letter/number/whitespace = what the reference's "
                "Oniguruma regex matches with \\p{L}, \\p{N}, \\s; digits_numeric = what its Digits "
                "pre-tokenizer (Rust char::is_numeric) isolates",
        "letter": ranges(members(r"\p{L}")),
        "number": ranges(members(r"\p{N}")),
        "whitespace": ranges(members(r"\s")),
        "digits_numeric": ranges(numeric),
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/corpus/rust-book-ch00-06.txt")
    args = ap.parse_args()
    if not os.path.exists(TOKENIZER_JSON):
        sys.exit(f"{TOKENIZER_JSON} missing: run scripts/fetch-models.sh first")
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer.from_file(TOKENIZER_JSON)
    with open(TOKENIZER_JSON, encoding="utf-8") as f:
        base_tj = json.load(f)

    n_corpus = corpus_fixtures(tok, args.corpus)
    print(f"corpus: {n_corpus} tokens")
    hard = HARD_STRINGS + random_strings(seed=1234, count=400, max_pieces=24)
    write_json("hard_cases.json", {
        "note": "encode(text, add_special_tokens=False) with models/smollm2-135m-hf-f32/tokenizer.json",
        "cases": cases_for(tok, hard),
    })
    variant_fixtures(base_tj, VARIANT_STRINGS + HARD_STRINGS + random_strings(seed=99, count=60, max_pieces=16))
    unicode_class_fixtures()


if __name__ == "__main__":
    main()
