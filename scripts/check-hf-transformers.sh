#!/usr/bin/env bash
# Do the Hugging Face folders that `microllm prune -o DIR` writes load in
# Hugging Face transformers, with the same names, shapes, config, tokenizer
# and outputs?  bash scripts/check-hf-transformers.sh
#
# For each source below it prunes into a folder, loads that folder with
# transformers (scripts/hf_transformers_logits.py: its Flax backend, as
# PyTorch is a multi-GB install) and with microllm, and compares the token
# ids of a prompt and the logits of its last token. Fails on a missing or
# unexpected tensor name, a wrong shape, different token ids, a different
# top-1 token, max |Δlogit| > 1e-2 or KL > 1e-5. The unpruned folder of
# scripts/fetch-models.sh is checked the same way, as a control of the
# harness itself.
#
# Needs the models of scripts/fetch-models.sh and PyPI; the venv
# (target/hf-venv, about 0.8 GB) is kept for the next run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PINS=(transformers==4.46.3 flax==0.8.5 jax==0.4.30 jaxlib==0.4.30 numpy==1.26.4 safetensors==0.8.0)
VENV=target/hf-venv
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
HF=models/smollm2-135m-hf-f32
PROMPT="The capital of France is Paris. Its most famous tower was built in"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error

say() { printf 'check-hf-transformers: %s\n' "$*"; }
[[ -f $GGUF && -d $HF ]] || { say "run scripts/fetch-models.sh first" >&2; exit 1; }

t0=$SECONDS
if ! "$VENV/bin/python" -c 'import transformers, flax' 2>/dev/null; then
  say "installing ${PINS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${PINS[@]}"
  say "venv ready in $((SECONDS - t0)) s"
fi

cargo build -q -p microllm-cli
BIN=target/debug/microllm
WORK=$(mktemp -d target/hf-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

say "making $WORK/m.q8.mllm (a .mllm source)"
"$BIN" convert "$GGUF" -o "$WORK/m.q8.mllm" --quant q8 >/dev/null

check() { # label folder
  local label=$1 dir=$2 ours theirs
  theirs=$("$VENV/bin/python" scripts/hf_transformers_logits.py "$dir" "$PROMPT" "$WORK/theirs.npy" 2>"$WORK/py.err") ||
    { cat "$WORK/py.err" >&2; say "$label: transformers failed"; return 1; }
  printf '%s\n' "$theirs" | sed '$d' | sed "s/^/  /"
  ours=$("$BIN" tokenize "$dir" "$PROMPT")
  "$BIN" logits "$dir" --prompt "$PROMPT" --out "$WORK/ours.npy" >/dev/null 2>"$WORK/ml.err" ||
    { cat "$WORK/ml.err" >&2; say "$label: microllm failed"; return 1; }
  "$VENV/bin/python" - "$label" "$WORK/theirs.npy" "$WORK/ours.npy" \
    "$(printf '%s\n' "$theirs" | tail -1)" "$ours" <<'PY'
import json, sys
import numpy as np
label, theirs, ours, ids_t, ids_o = sys.argv[1:6]
ids_t, ids_o = json.loads(ids_t), json.loads(ids_o)
a, b = np.load(theirs).astype(np.float64), np.load(ours).astype(np.float64)
def logsoftmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())
pa, pb = logsoftmax(a), logsoftmax(b)
kl = float((np.exp(pa) * (pa - pb)).sum())
d = float(np.abs(a - b).max())
print(f"  {label}: {len(ids_t)} token ids {'equal' if ids_t == ids_o else 'DIFFER'}, "
      f"top-1 {a.argmax()} / {b.argmax()}, max |dlogit| {d:.2e}, KL {kl:.1e}")
ok = ids_t == ids_o and a.argmax() == b.argmax() and d <= 1e-2 and kl <= 1e-5
sys.exit(0 if ok else 1)
PY
}

fail=0
check "unpruned folder (control)" "$HF" || fail=1
for case in "$GGUF|2:4|auto" "$WORK/m.q8.mllm|unstructured|auto" "$HF|4:8|bf16"; do
  IFS='|' read -r file pattern dtype <<<"$case"
  dir="$WORK/pruned-$(basename "$file")-${pattern/:/of}-$dtype"
  say "prune $file --pattern $pattern --dtype $dtype -o $dir"
  "$BIN" prune "$file" -o "$dir" --sparsity 0.5 --pattern "$pattern" --dtype "$dtype" >/dev/null
  check "pruned from $(basename "$file"), $pattern, $dtype" "$dir" || fail=1
done
((fail == 0)) && say "all folders load in transformers with microllm's outputs ($((SECONDS - t0)) s)"
exit "$fail"
