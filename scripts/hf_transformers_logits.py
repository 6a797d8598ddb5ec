"""Load a Hugging Face folder with Hugging Face transformers and print what
scripts/check-hf-transformers.sh compares against microllm.

    python hf_transformers_logits.py FOLDER PROMPT OUT.npy

Checks the folder's tensor names, shapes and dtypes against what
transformers' Llama expects for its config.json, then writes the logits of
the prompt's last token (float32, .npy) and prints the prompt's token ids as
a JSON array on the last line.

transformers runs here on its Flax (JAX) backend: PyTorch is a multi-GB
install. Two gaps of Flax's Llama, against PyTorch's, are filled the way
PyTorch's does it: it has no weight tying (tie_word_embeddings: the head is
the embedding's transpose) and its rotary embedding hard-codes theta = 10000
(PyTorch's reads rope_theta).
"""

import json
import sys

import jax
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

import transformers.models.llama.modeling_flax_llama as flax_llama  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoConfig, AutoTokenizer, FlaxAutoModelForCausalLM  # noqa: E402


def expected_tensors(cfg):
    """Name -> shape of a Llama checkpoint as transformers names it."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    out = {"model.embed_tokens.weight": [cfg.vocab_size, h], "model.norm.weight": [h]}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = [cfg.vocab_size, h]
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        out.update({
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [q, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, q],
            p + "mlp.gate_proj.weight": [i, h],
            p + "mlp.up_proj.weight": [i, h],
            p + "mlp.down_proj.weight": [h, i],
        })
    return out


def main():
    folder, prompt, out_path = sys.argv[1:4]
    cfg = AutoConfig.from_pretrained(folder)
    if cfg.model_type != "llama":
        sys.exit(f"{folder}: model_type {cfg.model_type}, this check knows llama only")

    want = expected_tensors(cfg)
    with safe_open(f"{folder}/model.safetensors", framework="numpy") as f:
        got = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        sys.exit(f"tensors: missing {missing[:5]}, unexpected {extra[:5]}, wrong shape {wrong[:5]}")
    print(f"tensors: {len(got)} names and shapes as transformers expects, dtypes {sorted(dtypes)}")

    theta = float(getattr(cfg, "rope_theta", 10000.0))

    def sinusoidal(num_pos, dim):
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
        freqs = np.einsum("i , j -> i j", np.arange(num_pos), inv_freq).astype("float32")
        emb = np.concatenate((freqs, freqs), axis=-1)
        out = np.concatenate((np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]), axis=-1)
        return flax_llama.jnp.array(out[:, :, :num_pos])

    flax_llama.create_sinusoidal_positions = sinusoidal

    tok = AutoTokenizer.from_pretrained(folder)
    model = FlaxAutoModelForCausalLM.from_pretrained(folder, from_pt=True)
    # A bf16/f16 folder computes in f32, as microllm widens such weights.
    model.params = model.to_fp32(model.params)
    if cfg.tie_word_embeddings:
        params = model.params
        params["lm_head"]["kernel"] = params["model"]["embed_tokens"]["embedding"].T
        model.params = params
    ids = tok(prompt, return_tensors="np").input_ids
    logits = np.asarray(model(ids).logits[0, -1], dtype=np.float32)
    np.save(out_path, logits)
    print(json.dumps(ids[0].tolist()))


if __name__ == "__main__":
    main()
