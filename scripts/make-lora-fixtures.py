#!/usr/bin/env python3
"""Writes fixtures/lora/: random Hugging Face PEFT LoRA adapters for the tiny
test Llama of tests/common (hidden 32, intermediate 64, 2 layers, 4 heads,
2 kv heads, head_dim 8), and for each the same model with the adapter merged
in, computed here in float64 with PEFT's scaling rules, independently of
microllm.

Only the 14 projection matrices are written (the embedding and norms of the
tiny model are not touched by LoRA and come from tests/common):

  base_proj.safetensors          the base projections (replace the tiny
                                 model's own, so the merge below is exact)
  <name>/adapter_config.json     PEFT config
  <name>/adapter_model.safetensors
  <name>/merged_proj.safetensors W + scale * B @ A for every targeted
                                 projection, W elsewhere

Adapters (all r=4 on all seven projections unless said):
  plain           lora_alpha 8: scale 8/4 = 2
  rslora          use_rslora: scale 8/sqrt(4) = 4 (naive alpha/r would be 2)
  patterns        rank_pattern and alpha_pattern (plain names, a full module
                  path, a partial path and a regex), per-module ranks 2..6
  fan_in_fan_out  fan_in_fan_out true (PEFT resets it to false for
                  nn.Linear, as Llama's projections are: no effect), keys
                  with the `.default` adapter-name segment, f16 weights,
                  target_modules as a regex string

Run from the repository root:
    .venv/bin/python scripts/make-lora-fixtures.py
"""
import json
import math
import os
import re

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "lora")

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 32, 64, 2, 4, 2, 8
Q, KV = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
# (module path inside a layer, (out, in))
PROJS = [
    ("self_attn.q_proj", (Q, DIM)),
    ("self_attn.k_proj", (KV, DIM)),
    ("self_attn.v_proj", (KV, DIM)),
    ("self_attn.o_proj", (DIM, Q)),
    ("mlp.gate_proj", (HIDDEN, DIM)),
    ("mlp.up_proj", (HIDDEN, DIM)),
    ("mlp.down_proj", (DIM, HIDDEN)),
]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def modules():
    for l in range(LAYERS):
        for path, shape in PROJS:
            yield f"model.layers.{l}.{path}", shape


def pattern_value(pattern, name, default):
    """PEFT's get_pattern_key: the first key (in order) for which
    re.match(rf"(.*\\.)?({key})$", name) succeeds."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def config(**over):
    c = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": "microllm/tiny-llama-test",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": 4,
        "rank_pattern": {},
        "revision": None,
        "target_modules": ALL,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    c.update(over)
    return c


def make(name, cfg, seed, key_infix="", dtype=np.float32):
    rng = np.random.default_rng(seed)
    tensors, merged = {}, {}
    for mod, (out, inp) in modules():
        r = pattern_value(cfg["rank_pattern"], mod, cfg["r"])
        alpha = pattern_value(cfg["alpha_pattern"], mod, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
        a = (rng.standard_normal((r, inp)) * 0.15).astype(dtype)
        b = (rng.standard_normal((out, r)) * 0.15).astype(dtype)
        prefix = f"base_model.model.{mod}"
        tensors[f"{prefix}.lora_A{key_infix}.weight"] = a
        tensors[f"{prefix}.lora_B{key_infix}.weight"] = b
        w = BASE[f"{mod}.weight"].astype(np.float64)
        delta = b.astype(np.float64) @ a.astype(np.float64)
        merged[f"{mod}.weight"] = (w + scale * delta).astype(np.float32)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_file(tensors, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    save_file(merged, os.path.join(d, "merged_proj.safetensors"))


rng = np.random.default_rng(6)
BASE = {
    f"{mod}.weight": rng.uniform(-0.5, 0.5, shape).astype(np.float32) for mod, shape in modules()
}
os.makedirs(OUT, exist_ok=True)
save_file(BASE, os.path.join(OUT, "base_proj.safetensors"))

make("plain", config(), seed=1)
make("rslora", config(use_rslora=True), seed=2)
make(
    "patterns",
    config(
        rank_pattern={"q_proj": 2, "model.layers.1.mlp.down_proj": 6},
        alpha_pattern={
            "v_proj": 3,
            "layers.0.self_attn.o_proj": 16,
            r"layers\.1\.mlp\.(gate|up)_proj": 2,
        },
    ),
    seed=3,
)
make(
    "fan_in_fan_out",
    config(fan_in_fan_out=True, target_modules=r".*\.(q|k|v|o|gate|up|down)_proj"),
    seed=4,
    key_infix=".default",
    dtype=np.float16,
)
print("wrote", OUT)
