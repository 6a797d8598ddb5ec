#!/usr/bin/env python3
"""Make the GGUF test fixtures under fixtures/gguf/ (Python is used for
fixtures only; microllm never runs it).

    /tmp/setup/venv/bin/python scripts/make-gguf-fixtures.py

needs the PyPI packages gguf, numpy and safetensors. Output (deterministic,
fixed seed):

quants.safetensors
    For each ggml type T in F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q4_K Q5_K Q6_K:
    "T.raw"      U8   random block bytes (f16 scale fields set to finite
                      values; plain float types keep fully random bits,
                      NaNs and infinities included),
    "T.expected" F32  gguf.quants.dequantize of those bytes, the reference
                      the Rust dequantizer must match bit for bit.

tiny-llama.gguf
    A 2-layer llama (hidden 32, 4 heads of 8, 2 kv heads, ffn 64, 299-token
    byte-level BPE vocabulary with 40 merges, pre "smollm", tied embeddings)
    written with gguf.GGUFWriter. Tensor types are mixed (Q8_0, Q4_0, Q4_1,
    F16, BF16, F32), q/k weights and biases are stored with llama.cpp's row
    permutation as convert_hf_to_gguf.py does, and one extra tensor
    ("extra.weight") is outside the llama name table. Metadata "test.*" keys
    hold one value of every GGUF value type, including a nested array.

tiny-llama.expected.safetensors
    Every tensor of tiny-llama.gguf dequantized with gguf.quants.dequantize,
    q/k rows un-permuted (the inverse used by gguf_to_hf.py), under Hugging
    Face names ("extra.weight" under its GGUF name).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "gguf")

# --------------------------------------------------------------------------
# quants.safetensors
# --------------------------------------------------------------------------

# Byte offsets of the f16 scale fields inside one block, per type.
SCALE_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
N_BLOCKS = {
    T.F32: 64, T.F16: 256, T.BF16: 256,
    T.Q8_0: 8, T.Q4_0: 8, T.Q4_1: 8,
    T.Q4_K: 3, T.Q5_K: 3, T.Q6_K: 3,
}


def sane_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 scales of mixed sign and magnitude, a few exact zeros and
    subnormals among them."""
    v = rng.normal(0.0, 0.05, n) * 10.0 ** rng.integers(-3, 2, n)
    v[rng.random(n) < 0.05] = 0.0
    h = v.astype(np.float16)
    sub = rng.random(n) < 0.05
    h.view(np.uint16)[sub] = rng.integers(1, 0x400, sub.sum(), dtype=np.uint16)
    assert np.all(np.isfinite(h))
    return h


def make_quants(rng: np.random.Generator) -> None:
    tensors = {}
    for qtype, n_blocks in N_BLOCKS.items():
        block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
        for off in SCALE_FIELDS.get(qtype, []):
            raw[:, off:off + 2] = sane_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        if qtype == T.F16:
            # Make sure the special values are present.
            special = np.array([0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0x7c00, 0xfc00, 0x7c01, 0xfe00],
                               dtype="<u2").view(np.uint8).reshape(-1, 2)
            raw[:len(special)] = special
        raw = raw.reshape(-1)
        expected = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        assert expected.size == n_blocks * block_size, (qtype, expected.shape)
        tensors[f"{qtype.name}.raw"] = raw
        tensors[f"{qtype.name}.expected"] = np.ascontiguousarray(expected)
    save_file(tensors, os.path.join(OUT, "quants.safetensors"))


# --------------------------------------------------------------------------
# tiny-llama.gguf
# --------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def learn_merges(text: str, n_merges: int, b2u: dict[int, str]) -> list[tuple[str, str]]:
    """A tiny byte-level BPE trainer: words (with their leading space) as
    symbol lists, repeatedly merge the most frequent adjacent pair (ties by
    first occurrence)."""
    words = []
    for i, w in enumerate(text.split(" ")):
        w = (" " if i else "") + w
        words.append([b2u[b] for b in w.encode("utf-8")])
    merges = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = max(counts, key=lambda p: counts[p])  # dicts keep insertion order: ties → first seen
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                else:
                    i += 1
    return merges


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF → GGUF rows)."""
    head_dim = w.shape[0] // n_head
    return (w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_qk, as in gguf_to_hf.py (GGUF → HF rows)."""
    head_dim = w.shape[0] // n_head
    return (w.reshape(n_head, head_dim // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


HIDDEN, N_HEAD, N_KV, FFN, N_LAYER, CTX = 32, 4, 2, 64, 2, 256
HEAD_DIM = HIDDEN // N_HEAD
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                 "{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT = ("the quick brown fox jumps over the lazy dog and the cat sat on the mat "
        "while the other cat then sat on the hat in the house there the three "
        "thin things thought that this was the thing")

# (GGUF tensor name, HF name, numpy shape [out, in], ggml type, permuted heads)
def tensor_plan(vocab: int):
    plan = [("token_embd.weight", "model.embed_tokens.weight", (vocab, HIDDEN), T.Q8_0, None)]
    layer_types = [
        # q      k       v       o       gate    up      down
        (T.Q4_1, T.Q8_0, T.F16, T.Q4_0, T.Q4_1, T.BF16, T.Q8_0),
        (T.F32, T.F16, T.Q4_1, T.F32, T.Q8_0, T.Q4_0, T.Q4_1),
    ]
    for i, (tq, tk, tv, to, tg, tu, td) in enumerate(layer_types):
        L = f"model.layers.{i}"
        plan += [
            (f"blk.{i}.attn_norm.weight", f"{L}.input_layernorm.weight", (HIDDEN,), T.F32, None),
            (f"blk.{i}.attn_q.weight", f"{L}.self_attn.q_proj.weight", (N_HEAD * HEAD_DIM, HIDDEN), tq, N_HEAD),
            (f"blk.{i}.attn_k.weight", f"{L}.self_attn.k_proj.weight", (N_KV * HEAD_DIM, HIDDEN), tk, N_KV),
            (f"blk.{i}.attn_v.weight", f"{L}.self_attn.v_proj.weight", (N_KV * HEAD_DIM, HIDDEN), tv, None),
            (f"blk.{i}.attn_output.weight", f"{L}.self_attn.o_proj.weight", (HIDDEN, N_HEAD * HEAD_DIM), to, None),
            (f"blk.{i}.ffn_gate.weight", f"{L}.mlp.gate_proj.weight", (FFN, HIDDEN), tg, None),
            (f"blk.{i}.ffn_up.weight", f"{L}.mlp.up_proj.weight", (FFN, HIDDEN), tu, None),
            (f"blk.{i}.ffn_down.weight", f"{L}.mlp.down_proj.weight", (HIDDEN, FFN), td, None),
            (f"blk.{i}.ffn_norm.weight", f"{L}.post_attention_layernorm.weight", (HIDDEN,), T.F32, None),
        ]
    # Attention biases of layer 0 (q and k are permuted like the weights).
    plan += [
        ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias", (N_HEAD * HEAD_DIM,), T.F32, N_HEAD),
        ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias", (N_KV * HEAD_DIM,), T.F32, N_KV),
        ("output_norm.weight", "model.norm.weight", (HIDDEN,), T.F32, None),
        ("extra.weight", "extra.weight", (2, 4), T.F32, None),
    ]
    return plan


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """The array GGUFWriter.add_tensor stores as a tensor of type qtype."""
    if qtype == T.F32:
        return values
    if qtype == T.F16:
        return values.astype(np.float16)
    return quantize(values, qtype)


def decode(raw: np.ndarray, qtype: T, shape: tuple) -> np.ndarray:
    """The reference dequantization, in numpy shape [out, in]."""
    return np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(shape)


def make_tiny_llama(rng: np.random.Generator) -> None:
    b2u = bytes_to_unicode()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = learn_merges(TEXT, 40, b2u)
    tokens = specials + [b2u[b] for b in range(256)] + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens), "duplicate tokens"
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    vocab = len(tokens)

    path = os.path.join(OUT, "tiny-llama.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_eot_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    # One value of every metadata type.
    V = gguf.GGUFValueType
    w.add_key_value("test.u8", 200, V.UINT8)
    w.add_key_value("test.i8", -100, V.INT8)
    w.add_key_value("test.u16", 60000, V.UINT16)
    w.add_key_value("test.i16", -30000, V.INT16)
    w.add_key_value("test.u32", 4000000000, V.UINT32)
    w.add_key_value("test.i32", -2000000000, V.INT32)
    w.add_key_value("test.f32", 0.1, V.FLOAT32)
    w.add_key_value("test.bool", True, V.BOOL)
    w.add_key_value("test.string", "héllo wörld", V.STRING)
    w.add_key_value("test.u64", 2**63 + 5, V.UINT64)
    w.add_key_value("test.i64", -(2**62), V.INT64)
    w.add_key_value("test.f64", 0.1, V.FLOAT64)
    w.add_key_value("test.nested", [[1, 2, 3], [4, 5]], V.ARRAY, V.ARRAY)

    expected = {}
    for gname, hname, shape, qtype, heads in tensor_plan(vocab):
        hf_w = rng.normal(0.0, 0.5, shape).astype(np.float32)
        stored = permute_qk(hf_w, heads) if heads else hf_w
        raw = encode(stored, qtype)
        w.add_tensor(gname, raw, raw_dtype=qtype if qtype not in (T.F32, T.F16) else None)
        value = decode(raw, qtype, shape)
        if heads:
            value = unpermute_qk(value, heads)
            # Permuting rows commutes with per-row quantization.
            assert np.array_equal(value, decode(encode(hf_w, qtype), qtype, shape)), gname
        expected[hname] = np.ascontiguousarray(value)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(OUT, "tiny-llama.expected.safetensors"))

    # Read the file back with the reference reader as a self-check.
    r = gguf.GGUFReader(path)
    assert len(r.tensors) == len(expected)
    for t in r.tensors:
        assert t.name in dict((g, h) for g, h, *_ in tensor_plan(vocab))
    for a, b in merges:
        assert a in tokens and b in tokens and a + b in tokens


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240601)
    make_quants(rng)
    make_tiny_llama(rng)
    total = 0
    for f in sorted(os.listdir(OUT)):
        size = os.path.getsize(os.path.join(OUT, f))
        total += size
        print(f"{f}: {size} bytes")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
