#!/usr/bin/env python3
# Project copy of the shared-folder tool `tools/gguf_to_hf.py` (sha256 of the
# original: 20f4b1dd558e0c39d6e15454ef57c2dd5c687f6c728b4b8a8b2ae017f01abe9e),
# vendored unchanged below this note so that scripts/fetch-models.sh can build
# models/smollm2-135m-hf-f32/ without the shared folder. It is a test-data
# tool, not part of the product (microllm reads GGUF itself). Needs the PyPI
# packages gguf, numpy and tokenizers (fetch-models.sh pins their versions).
"""Convert a llama.cpp GGUF checkpoint of a Llama-architecture model into a
Hugging Face style checkpoint directory:

    config.json               LlamaForCausalLM hyper-parameters
    generation_config.json    bos/eos/pad ids
    model.safetensors         weights, bf16 (default) or f32 (--dtype f32)
    tokenizer.json            byte-level BPE built from the GGUF vocab+merges
    tokenizer_config.json     special tokens + chat template
    special_tokens_map.json
    conversion_report.json    what was converted, bf16 rounding statistics

Only the `gguf`, `numpy` and `tokenizers` PyPI packages are used (no torch).

Weight handling
---------------
* Every tensor is dequantized to float32 with `gguf.quants.dequantize`
  (handles F32/F16/BF16/Q4_0/Q4_1/Q5_x/Q8_0/K-quants...).  GGUF lists dims
  innermost-first (ne0 = input features); the numpy array the reader returns
  is already in row-major [out_features, in_features] order, i.e. exactly
  the layout of a PyTorch nn.Linear weight.
* llama.cpp's `convert_hf_to_gguf.py` permutes the rows of q_proj and k_proj
  so that llama.cpp can use its "normal" (adjacent pairs (2i, 2i+1)) RoPE:

      w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2).reshape(out, in)

  HF Llama uses `rotate_half` (pairs (i, i + head_dim/2)), so we apply the
  inverse permutation

      w.reshape(n_head, head_dim // 2, 2, in).swapaxes(1, 2).reshape(out, in)

  with n_head = num_attention_heads for Q and num_key_value_heads for K.
  Row permutation commutes with the per-row block quantization, so the
  dequantized values are exactly those of the original quantized rows.
* bf16 output uses round-to-nearest-even from the float32 dequantized value
  (what torch's `.to(torch.bfloat16)` does).  Q4_1 values are d*q + m with
  f16 d and m, and Q8_0 values d*q; these generally need more than bf16's 8
  significant bits, so the bf16 file is a (tiny) rounding of the GGUF model.
  The f32 file (--dtype f32) is bit-exact w.r.t. gguf's dequantization.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from collections import Counter, OrderedDict

import numpy as np

import gguf
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize


# --------------------------------------------------------------------------
# GGUF metadata helpers
# --------------------------------------------------------------------------

def field_value(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def f32_to_py(x: float) -> float:
    """Shortest decimal that round-trips the float32 value (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


# --------------------------------------------------------------------------
# Tensor name mapping (GGUF llama names -> HF LlamaForCausalLM names)
# --------------------------------------------------------------------------

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    # Llama with attention biases (not present in SmolLM2, kept for completeness)
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
}


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, idx, rest = gguf_name.split(".", 2)
        if rest in BLOCK_NAMES:
            return f"model.layers.{int(idx)}.{BLOCK_NAMES[rest]}"
    raise KeyError(f"don't know how to map GGUF tensor {gguf_name!r}")


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf.py LlamaModel.permute()."""
    out = w.shape[0]
    head_dim = out // n_head
    assert head_dim * n_head == out and head_dim % 2 == 0, (w.shape, n_head)
    return (w.reshape(n_head, head_dim // 2, 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's forward permutation (used only for the self-check)."""
    out = w.shape[0]
    head_dim = out // n_head
    return (w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


# --------------------------------------------------------------------------
# bf16 + safetensors writer (numpy has no bfloat16, so write the file by hand
# following https://github.com/huggingface/safetensors#format)
# --------------------------------------------------------------------------

def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit pattern (uint16), round-to-nearest-even."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite weight")
    u = x.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: str, tensors: "OrderedDict[str, tuple[str, tuple, bytes]]",
                      metadata: dict | None = None) -> None:
    """tensors: name -> (dtype_str, shape, raw little-endian bytes)."""
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)  # pad header to a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for _, (_, _, raw) in tensors.items():
            f.write(raw)


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

# llama.cpp pre-tokenizer name -> HF pre_tokenizer JSON.
#   "smollm": LLAMA_VOCAB_PRE_TYPE_SMOLLM = regex "\p{N}" (every number char
#   on its own) followed by the GPT-2 regex; HF expresses this as
#   Digits(individual_digits=True) + ByteLevel(use_regex=True).
def hf_pre_tokenizer(pre: str):
    from tokenizers import pre_tokenizers
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
    if pre in ("gpt-2", "default"):
        return bl
    raise NotImplementedError(f"tokenizer.ggml.pre={pre!r} not mapped (add it here)")


def build_tokenizer(reader: GGUFReader, merges_format: str):
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise NotImplementedError(f"tokenizer.ggml.model={model!r}; only byte-level BPE ('gpt2') handled")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    merges = field_value(reader, "tokenizer.ggml.merges")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")

    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token strings in GGUF vocab"
    pairs = []
    for m in merges:
        a, b = m.split(" ")
        pairs.append((a, b))

    bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    tok.pre_tokenizer = hf_pre_tokenizer(pre)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)

    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    special_ids = [i for i, t in enumerate(types) if t == 3]
    user_ids = [i for i, t in enumerate(types) if t == 4]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False,
                                       lstrip=False, rstrip=False, single_word=False)
                            for i in special_ids])
    if user_ids:
        tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user_ids])

    tj = json.loads(tok.to_str())
    # sanity: ids of added tokens must be the GGUF ids
    for at in tj["added_tokens"]:
        assert vocab[at["content"]] == at["id"], at
    if merges_format == "strings":
        tj["model"]["merges"] = [f"{a} {b}" for a, b in pairs]
    else:
        tj["model"]["merges"] = [[a, b] for a, b in pairs]
    return tj, tokens, special_ids


# --------------------------------------------------------------------------
# main conversion
# --------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="input .gguf file")
    ap.add_argument("outdir", help="output HF checkpoint directory")
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16",
                    help="dtype of model.safetensors (default bf16)")
    ap.add_argument("--merges-format", choices=["strings", "pairs"], default="strings",
                    help="tokenizer.json merges as 'a b' strings (classic, default) or [a, b] pairs")
    args = ap.parse_args(argv)

    reader = GGUFReader(args.gguf)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"architecture {arch!r} not supported (llama only)")
    A = lambda k, d=None: field_value(reader, f"{arch}.{k}", d)  # noqa: E731

    n_layer = int(A("block_count"))
    hidden = int(A("embedding_length"))
    ffn = int(A("feed_forward_length"))
    n_head = int(A("attention.head_count"))
    n_kv = int(A("attention.head_count_kv", n_head))
    ctx = int(A("context_length"))
    rope_theta = f32_to_py(A("rope.freq_base", 10000.0))
    eps = f32_to_py(A("attention.layer_norm_rms_epsilon"))
    head_dim = hidden // n_head
    rope_dim = int(A("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise SystemExit(f"partial rotary (rope dim {rope_dim} != head_dim {head_dim}) not supported")
    if A("rope.scaling.type") not in (None, "none"):
        raise SystemExit("rope scaling present; not handled")

    tensor_names = {t.name for t in reader.tensors}
    tied = "output.weight" not in tensor_names
    tokens_list = field_value(reader, "tokenizer.ggml.tokens")
    vocab_size = int(A("vocab_size", len(tokens_list)))
    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    pad = field_value(reader, "tokenizer.ggml.padding_token_id")
    unk = field_value(reader, "tokenizer.ggml.unknown_token_id")
    chat_template = field_value(reader, "tokenizer.chat_template")
    add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(field_value(reader, "tokenizer.ggml.add_eos_token", False))

    os.makedirs(args.outdir, exist_ok=True)

    # ---------------- weights ----------------
    tensors = OrderedDict()
    report = {"source": os.path.basename(args.gguf), "dtype": args.dtype,
              "gguf_tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
              "tensors": {}}
    worst_rel = (0.0, None)
    tot_abs_err = 0.0
    n_total = 0
    n_exact = 0
    max_abs_err = 0.0
    f32_arrays = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32)
        expected = tuple(int(d) for d in reversed(t.shape))
        w = w.reshape(expected)
        if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
            w = unpermute_qk(w, n_head)
            assert np.array_equal(permute_qk(w, n_head), dequantize(t.data, t.tensor_type).reshape(expected))
        elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
            w = unpermute_qk(w, n_kv)
        w = np.ascontiguousarray(w)
        f32_arrays[name] = w
        if args.dtype == "bf16":
            bits = f32_to_bf16_bits(w)
            back = bf16_bits_to_f32(bits)
            err = np.abs(back - w)
            nz = w != 0
            rel = np.zeros_like(err)
            rel[nz] = err[nz] / np.abs(w[nz])
            i = int(np.argmax(rel))
            if rel.flat[i] > worst_rel[0]:
                idx = tuple(int(j) for j in np.unravel_index(i, w.shape))
                worst_rel = (float(rel.flat[i]), f"{name}{list(idx)} "
                                                  f"f32={float(w.flat[i])!r} bf16={float(back.flat[i])!r}")
            max_abs_err = max(max_abs_err, float(err.max()))
            tot_abs_err += float(err.sum())
            n_exact += int((err == 0).sum())
            n_total += w.size
            tensors[name] = ("BF16", w.shape, bits.tobytes())
            report["tensors"][name] = {"gguf_name": t.name, "gguf_type": t.tensor_type.name,
                                       "shape": list(w.shape),
                                       "bf16_max_rel_err": float(rel.max()),
                                       "bf16_max_abs_err": float(err.max())}
        else:
            tensors[name] = ("F32", w.shape, w.astype("<f4").tobytes())
            report["tensors"][name] = {"gguf_name": t.name, "gguf_type": t.tensor_type.name,
                                       "shape": list(w.shape)}

    expected_names = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(n_layer):
        for s in ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                  "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            expected_names.add(f"model.layers.{i}.{s}.weight")
    if not tied:
        expected_names.add("lm_head.weight")
    missing = expected_names - set(tensors)
    if missing:
        raise SystemExit(f"missing tensors: {sorted(missing)[:10]}")
    assert f32_arrays["model.embed_tokens.weight"].shape == (vocab_size, hidden)
    assert f32_arrays["model.layers.0.self_attn.q_proj.weight"].shape == (n_head * head_dim, hidden)
    assert f32_arrays["model.layers.0.self_attn.k_proj.weight"].shape == (n_kv * head_dim, hidden)
    assert f32_arrays["model.layers.0.mlp.gate_proj.weight"].shape == (ffn, hidden)

    ordered = OrderedDict(sorted(tensors.items()))
    write_safetensors(os.path.join(args.outdir, "model.safetensors"), ordered, metadata={"format": "pt"})

    if args.dtype == "bf16":
        report["bf16_rounding"] = {
            "max_relative_error": worst_rel[0],
            "worst_element": worst_rel[1],
            "max_abs_error": max_abs_err,
            "mean_abs_error": tot_abs_err / n_total,
            "fraction_exactly_representable": n_exact / n_total,
            "n_params": n_total,
        }

    # ---------------- config ----------------
    config = OrderedDict([
        ("architectures", ["LlamaForCausalLM"]),
        ("model_type", "llama"),
        ("attention_bias", any(n.endswith(".bias") for n in tensors)),
        ("attention_dropout", 0.0),
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
        ("hidden_act", "silu"),
        ("hidden_size", hidden),
        ("head_dim", head_dim),
        ("initializer_range", 0.02),
        ("intermediate_size", ffn),
        ("max_position_embeddings", ctx),
        ("mlp_bias", False),
        ("num_attention_heads", n_head),
        ("num_hidden_layers", n_layer),
        ("num_key_value_heads", n_kv),
        ("pretraining_tp", 1),
        ("rms_norm_eps", eps),
        ("rope_scaling", None),
        ("rope_theta", rope_theta),
        ("tie_word_embeddings", tied),
        ("torch_dtype", "bfloat16" if args.dtype == "bf16" else "float32"),
        ("transformers_version", "4.46.0"),
        ("use_cache", True),
        ("vocab_size", vocab_size),
    ])
    with open(os.path.join(args.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    gen = OrderedDict([("_from_model_config", True), ("bos_token_id", bos), ("eos_token_id", eos),
                       ("pad_token_id", pad), ("transformers_version", "4.46.0")])
    with open(os.path.join(args.outdir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")

    # ---------------- tokenizer ----------------
    tj, toks, special_ids = build_tokenizer(reader, args.merges_format)
    with open(os.path.join(args.outdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=2)
        f.write("\n")

    def tokstr(i):
        return None if i is None else toks[i]

    added_decoder = OrderedDict()
    for at in tj["added_tokens"]:
        added_decoder[str(at["id"])] = OrderedDict([
            ("content", at["content"]), ("lstrip", at["lstrip"]), ("normalized", at["normalized"]),
            ("rstrip", at["rstrip"]), ("single_word", at["single_word"]), ("special", at["special"])])
    tcfg = OrderedDict([
        ("add_bos_token", add_bos),
        ("add_eos_token", add_eos),
        ("add_prefix_space", False),
        ("added_tokens_decoder", added_decoder),
        ("additional_special_tokens", list(dict.fromkeys(t for t in (tokstr(bos), tokstr(eos)) if t is not None))),
        ("bos_token", tokstr(bos)),
        ("chat_template", chat_template),
        ("clean_up_tokenization_spaces", False),
        ("eos_token", tokstr(eos)),
        ("model_max_length", ctx),
        ("pad_token", tokstr(pad)),
        ("tokenizer_class", "GPT2Tokenizer"),
        ("unk_token", tokstr(unk)),
        ("vocab_size", vocab_size),
    ])
    with open(os.path.join(args.outdir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tcfg, f, ensure_ascii=False, indent=2)
        f.write("\n")
    stm = OrderedDict([
        ("additional_special_tokens", tcfg["additional_special_tokens"]),
        ("bos_token", tokstr(bos)), ("eos_token", tokstr(eos)),
        ("pad_token", tokstr(pad)), ("unk_token", tokstr(unk))])
    with open(os.path.join(args.outdir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(stm, f, ensure_ascii=False, indent=2)
        f.write("\n")

    report["config"] = config
    report["gguf_metadata"] = {
        "general.name": field_value(reader, "general.name"),
        "tokenizer.ggml.pre": field_value(reader, "tokenizer.ggml.pre"),
        "tokenizer.ggml.add_bos_token": add_bos,
        "n_merges": len(tj["model"]["merges"]),
        "n_special_tokens": len(special_ids),
    }
    report["gguf_package_version"] = getattr(gguf, "__version__", None)
    with open(os.path.join(args.outdir, "conversion_report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")

    print(f"wrote {args.outdir}: {len(tensors)} tensors ({args.dtype}), tied={tied}, "
          f"layers={n_layer} hidden={hidden} heads={n_head}/{n_kv} ffn={ffn} vocab={vocab_size} "
          f"rope_theta={rope_theta} eps={eps}")
    if args.dtype == "bf16":
        print("bf16 rounding:", json.dumps(report["bf16_rounding"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
