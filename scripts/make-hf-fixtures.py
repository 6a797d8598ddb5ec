#!/usr/bin/env python3
"""Writes fixtures/hf/smollm2-135m-hf-f32.json: what the Python `safetensors`
library (independently of microllm) reads from
models/smollm2-135m-hf-f32/model.safetensors: every tensor's dtype and shape,
and sample values from a few tensors (first, middle and last elements).

Run from the repository root with the setup venv:
    /tmp/setup/venv/bin/python scripts/make-hf-fixtures.py
"""
import json
import os
import sys

import numpy as np
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "smollm2-135m-hf-f32", "model.safetensors")
OUT = os.path.join(ROOT, "fixtures", "hf", "smollm2-135m-hf-f32.json")

SAMPLED = [
    "model.embed_tokens.weight",
    "model.norm.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.29.mlp.down_proj.weight",
]


def samples(arr):
    """Flat index -> value for the first 8, 4 in the middle and the last 4."""
    flat = arr.reshape(-1)
    n = flat.size
    idx = list(range(min(8, n))) + list(range(n // 2, min(n, n // 2 + 4))) + list(range(max(0, n - 4), n))
    # float(np.float32) is exact in a double, and json writes the shortest
    # repr that round-trips the double, so the Rust side recovers the f32 bits.
    return [[i, float(flat[i])] for i in sorted(set(idx))]


def main():
    if not os.path.exists(MODEL):
        sys.exit(f"{MODEL} is missing: run scripts/fetch-models.sh")
    out = {"file_size": os.path.getsize(MODEL), "tensors": {}, "samples": {}}
    with safe_open(MODEL, framework="numpy") as f:
        for name in sorted(f.keys()):
            sl = f.get_slice(name)
            out["tensors"][name] = {"dtype": sl.get_dtype(), "shape": list(sl.get_shape())}
        for name in SAMPLED:
            arr = f.get_tensor(name)
            assert arr.dtype == np.float32
            out["samples"][name] = samples(arr)
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"wrote {OUT}: {len(out['tensors'])} tensors")


if __name__ == "__main__":
    main()
