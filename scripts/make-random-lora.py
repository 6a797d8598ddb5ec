#!/usr/bin/env python3
"""Writes a random PEFT LoRA adapter for a Hugging Face Llama folder, for
measuring (load time, decode speed, memory): r on all seven projections of
every layer, lora_alpha = 2r, values small enough that the model still
talks.

    .venv/bin/python scripts/make-random-lora.py models/smollm2-135m-hf-f32 /tmp/lora-r16 --r 16
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

PROJS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    dim, hidden = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", dim // heads)
    shapes = {
        "self_attn.q_proj": (heads * hd, dim), "self_attn.k_proj": (kv * hd, dim),
        "self_attn.v_proj": (kv * hd, dim), "self_attn.o_proj": (dim, heads * hd),
        "mlp.gate_proj": (hidden, dim), "mlp.up_proj": (hidden, dim), "mlp.down_proj": (dim, hidden),
    }
    rng = np.random.default_rng(args.seed)
    r = args.r
    tensors = {}
    for l in range(cfg["num_hidden_layers"]):
        for p in PROJS:
            out, inp = shapes[p]
            key = f"base_model.model.model.layers.{l}.{p}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((r, inp)) / np.sqrt(inp)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out, r)) * 0.002).astype(np.float32)
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "use_dora": False,
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    json.dump(config, open(os.path.join(args.out, "adapter_config.json"), "w"), indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
