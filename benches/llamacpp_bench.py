#!/usr/bin/env python3
"""Time llama.cpp the way llama-bench does, through llama-cpp-python's low-level API.

  llamacpp_bench.py MODEL.gguf [--threads N] [-p 64,512] [-n 128] [--reps 5]
                    [--flash-attn auto|on|off] [--no-repack] [--ubatch N]

Prints one JSON object per test on its own line, the schema of
`microllm bench --json` (test, threads, tok_s = median over reps, tok_s_min,
tok_s_max, reps, load_ms) plus engine, model and the llama.cpp settings used.

What it does, test by test, as llama-bench (tools/llama-bench/llama-bench.cpp):
  - one context per test, n_ctx = N, n_threads = n_threads_batch = --threads,
    n_batch = n_ubatch = max(512, largest ppN) so a prompt is ONE batch;
  - ppN: N random tokens (a BOS first if the vocab adds one) in one llama_decode
    from an empty KV cache, then llama_synchronize;
  - tgN: from an empty KV cache, N single-token llama_decode calls, each followed
    by llama_synchronize;
  - a warm-up run before the timed reps (ppN: the whole prompt; tgN: one token),
    the KV cache cleared (llama_memory_clear) before every rep.
Defaults follow llama-bench's: flash attention "auto", weight repacking (extra
buffer types: CPU repack, AMX) on, mmap on, F16 KV cache.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import sys
import time

import llama_cpp as L

FA = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
      "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED, "1": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
      "0": L.LLAMA_FLASH_ATTN_TYPE_DISABLED, "-1": L.LLAMA_FLASH_ATTN_TYPE_AUTO}


def int_list(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


@L.llama_log_callback
def _quiet_log(level, text, user_data):  # noqa: ARG001 (ctypes callback)
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-p", "--prompt", type=int_list, default=[64, 512], help="prompt lengths (ppN), e.g. 64,512")
    ap.add_argument("-n", "--gen", type=int, default=128, help="generated tokens (tgN); 0 skips it")
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("-fa", "--flash-attn", choices=["auto", "on", "off", "1", "0"], default="auto")
    ap.add_argument("--no-repack", action="store_true",
                    help="use_extra_bufts = false: no weight repacking (CPU_REPACK, AMX buffer types)")
    ap.add_argument("--no-mmap", action="store_true", help="use_mmap = false: read the weights into memory")
    ap.add_argument("--ubatch", type=int, default=0, help="n_batch = n_ubatch (default: max(512, largest ppN))")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="store_true", help="keep llama.cpp's log (stderr)")
    args = ap.parse_args()
    if args.reps < 1 or args.threads < 1:
        sys.exit("llamacpp_bench: --reps and --threads must be >= 1")

    if not args.verbose:
        L.llama_log_set(_quiet_log, ctypes.c_void_p())
    L.llama_backend_init()
    rng = random.Random(args.seed)

    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    if args.no_repack:
        mparams.use_extra_bufts = False
    if args.no_mmap:
        mparams.use_mmap = False
    t0 = time.perf_counter()
    model = L.llama_model_load_from_file(args.model.encode(), mparams)
    if not model:
        sys.exit(f"llamacpp_bench: cannot load {args.model}")
    load_ms = (time.perf_counter() - t0) * 1e3
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    add_bos = bool(L.llama_vocab_get_add_bos(vocab))
    bos = L.llama_vocab_bos(vocab)
    ubatch = args.ubatch or max([512, *args.prompt])

    def first_token() -> int:
        return bos if add_bos else rng.randrange(n_vocab)

    def new_context(n_ctx: int):
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = ubatch
        cp.n_ubatch = ubatch
        cp.n_threads = args.threads
        cp.n_threads_batch = args.threads
        cp.flash_attn_type = FA[args.flash_attn]
        cp.no_perf = True
        ctx = L.llama_init_from_model(model, cp)
        if not ctx:
            sys.exit(f"llamacpp_bench: llama_init_from_model failed (n_ctx {n_ctx})")
        return ctx

    def run_prompt(ctx, n: int) -> float:
        tokens = [first_token()] + [rng.randrange(n_vocab) for _ in range(n - 1)]
        arr = (L.llama_token * n)(*tokens)
        batch = L.llama_batch_get_one(arr, n)
        t = time.perf_counter_ns()
        rc = L.llama_decode(ctx, batch)  # one batch: n <= n_batch = n_ubatch
        L.llama_synchronize(ctx)
        dt = time.perf_counter_ns() - t
        if rc != 0:
            sys.exit(f"llamacpp_bench: llama_decode returned {rc}")
        return dt / 1e9

    def run_gen(ctx, n: int) -> float:
        tok = (L.llama_token * 1)(first_token())
        nexts = [rng.randrange(n_vocab) for _ in range(n)]
        t = time.perf_counter_ns()
        for i in range(n):
            rc = L.llama_decode(ctx, L.llama_batch_get_one(tok, 1))
            L.llama_synchronize(ctx)
            if rc != 0:
                sys.exit(f"llamacpp_bench: llama_decode returned {rc}")
            tok[0] = nexts[i]
        return (time.perf_counter_ns() - t) / 1e9

    tests = [("pp", n) for n in args.prompt] + ([("tg", args.gen)] if args.gen > 0 else [])
    for kind, n in tests:
        if kind == "pp" and n > ubatch:
            sys.exit(f"llamacpp_bench: pp{n} does not fit in one batch (n_ubatch {ubatch})")
        ctx = new_context(n)
        mem = L.llama_get_memory(ctx)
        run = run_prompt if kind == "pp" else run_gen
        if not args.no_warmup:
            L.llama_memory_clear(mem, False)
            run(ctx, n if kind == "pp" else 1)
        rates = []
        for _ in range(args.reps):
            L.llama_memory_clear(mem, False)
            rates.append(n / run(ctx, n))
        L.llama_free(ctx)
        print(json.dumps({
            "engine": "llama.cpp", "model": args.model, "test": f"{kind}{n}", "threads": args.threads,
            "tok_s": statistics.median(rates), "tok_s_min": min(rates), "tok_s_max": max(rates),
            "reps": args.reps, "samples": rates, "load_ms": load_ms, "n_batch": ubatch, "n_ubatch": ubatch,
            "flash_attn": args.flash_attn, "repack": not args.no_repack, "mmap": not args.no_mmap,
            "llama_cpp_python": L.__version__ if hasattr(L, "__version__") else None,
        }), flush=True)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
