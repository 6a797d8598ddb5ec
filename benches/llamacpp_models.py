#!/usr/bin/env python3
"""llama.cpp's model files for the microllm/llama.cpp comparison (benches/compare-llamacpp.sh).

  llamacpp_models.py to-f32 SRC.gguf OUT.gguf         every tensor dequantized to F32
  llamacpp_models.py quantize IN.gguf OUT.gguf Q4_0   llama.cpp's quantizer (llama_model_quantize)
  llamacpp_models.py info FILE.gguf...                size, bits per weight, tensor types

to-f32 keeps every metadata key (except general.file_type, which becomes
ALL_F32) and every tensor's name, shape and order exactly as in SRC: only the
data changes, so llama.cpp's Q/K row permutation stays as it is in the file.
Needs the gguf package; quantize needs llama-cpp-python (the venv
benches/.venv-llamacpp has both).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import sys

import numpy as np


def to_f32(src: str, out: str) -> None:
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(out, arch)
    align = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if align is not None:
        writer.data_alignment = int(align.contents())
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(gguf.LlamaFileType.ALL_F32)
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)

    # Reader shapes are ggml order (ne0 first); numpy arrays are the reverse.
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        writer.add_tensor_info(t.name, shape, np.dtype(np.float32), t.n_elements * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            data = np.asarray(t.data, dtype=np.float32)
        else:
            data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        assert data.size == t.n_elements, (t.name, data.shape, t.shape)
        writer.write_tensor_data(np.ascontiguousarray(data).reshape(-1))
    writer.close()

    # Check: same keys, tensor names, shapes and order; every tensor F32.
    check = gguf.GGUFReader(out)
    assert [t.name for t in check.tensors] == [t.name for t in reader.tensors]
    assert all(list(a.shape) == list(b.shape) for a, b in zip(check.tensors, reader.tensors))
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in check.tensors)
    assert list(check.fields) == list(reader.fields), "metadata keys differ"
    print(f"llamacpp_models: wrote {out}: {len(check.tensors)} tensors, F32, "
          f"{os.path.getsize(out) / 2**20:.1f} MiB")


FTYPES = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
          "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "F16": "LLAMA_FTYPE_MOSTLY_F16",
          "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def quantize(src: str, out: str, qtype: str) -> None:
    import llama_cpp

    if qtype not in FTYPES:
        sys.exit(f"llamacpp_models: unknown type {qtype} (known: {', '.join(FTYPES)})")
    log_cb = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    if not os.environ.get("LLAMACPP_VERBOSE"):
        llama_cpp.llama_log_set(log_cb, ctypes.c_void_p())  # the per-tensor log is long
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[qtype])
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llamacpp_models: llama_model_quantize({src} -> {out}, {qtype}) returned {rc}")
    print(f"llamacpp_models: wrote {out} ({qtype}, {os.path.getsize(out) / 2**20:.1f} MiB)")


def info(paths: list[str]) -> None:
    import gguf

    print(f"  {'file':<52} {'MiB':>7} {'params':>11} {'bpw':>6}  tensor types")
    for p in paths:
        r = gguf.GGUFReader(p)
        n_params = sum(t.n_elements for t in r.tensors)
        n_bytes = sum(t.n_bytes for t in r.tensors)
        types = collections.Counter(t.tensor_type.name for t in r.tensors)
        embd = next((t.tensor_type.name for t in r.tensors if t.name == "token_embd.weight"), "?")
        print(f"  {p:<52} {os.path.getsize(p) / 2**20:7.1f} {n_params:11,d} {8 * n_bytes / n_params:6.3f}"
              f"  {', '.join(f'{k} x{v}' for k, v in types.most_common())}; token_embd {embd}")
    print("  (bpw = 8 x tensor bytes / parameters, as llama-bench counts it; MiB = whole file)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-f32")
    a.add_argument("src")
    a.add_argument("out")
    a = sub.add_parser("quantize")
    a.add_argument("src")
    a.add_argument("out")
    a.add_argument("type", help=", ".join(FTYPES))
    a = sub.add_parser("info")
    a.add_argument("paths", nargs="+")
    args = ap.parse_args()
    if args.cmd == "to-f32":
        to_f32(args.src, args.out)
    elif args.cmd == "quantize":
        quantize(args.src, args.out, args.type)
    else:
        info(args.paths)


if __name__ == "__main__":
    main()
