#!/usr/bin/env bash
# microllm vs llama.cpp, side by side on this machine. A benchmark, not a test:
# CI never runs it. See benches/README.md.
#
#   bash benches/compare-llamacpp.sh [options]
#
# 1. venv benches/.venv-llamacpp (git-ignored) with llama-cpp-python (pinned
#    below), compiled from source for the native CPU (-DGGML_NATIVE=ON); the
#    build is timed. Skipped when the venv already has it.
# 2. llama.cpp's own files for the same weights under models/llamacpp/: an F32
#    GGUF written from models/SmolLM2-135M-Instruct.Q4_1.gguf (every tensor
#    dequantized, metadata and tensor order untouched), then Q4_0 and Q8_0 made
#    from it by llama.cpp's quantizer. Skipped when they exist.
# 3. `cargo build --release -p microllm-cli` (unless MICROLLM_BIN is set).
# 4. Rounds of alternating runs (microllm, llama.cpp, microllm, llama.cpp...)
#    over the thread counts; each run does every test (ppN, tgN) with a
#    warm-up and --reps repetitions. Then a table of medians across rounds.
#
# Options (environment variable in brackets):
#   --pair MICROLLM_MODEL=LLAMACPP_GGUF  a pair to compare; repeatable [PAIRS,
#                      space-separated]. Default: every models/*.mllm whose
#                      name has q4 (q8) against llama.cpp Q4_0 (Q8_0), and the
#                      f32 path (the Q4_1 GGUF, dequantized at load) against
#                      both Q4_0 and Q8_0.
#   --threads 1,2      thread counts [THREADS]
#   -p 64,512          prompt lengths, ppN [PP]
#   -n 128             generated tokens, tgN (0: none) [TG]
#   --reps 3           repetitions per run [REPS]
#   --rounds 3         alternating rounds [ROUNDS]
#   --flash-attn auto|on|off  llama.cpp flash attention (llama-bench default: auto) [FLASH_ATTN]
#   --llamacpp-only    only run llama.cpp (on the llama.cpp side of the pairs)
#   --setup-only       steps 1-3 only
#   --out FILE         results as JSON lines (default benches/results/compare-DATE.jsonl)
#
# Other environment: PYTHON (interpreter for the venv, default python3),
# MICROLLM_BIN (a prebuilt microllm binary), MICROLLM_ARGS (global microllm
# options, e.g. "--act int8" for int8 activations), CARGO_TARGET_DIR,
# LLAMACPP_BENCH_ARGS (more options for benches/llamacpp_bench.py, e.g.
# "--no-repack --no-mmap"), LLAMA_CMAKE_ARGS (more CMake options for the
# llama.cpp build), LLAMACPP_AMX=1 (keep AMX in that build: see below).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
{ # the whole script is one compound command: bash reads it all before running it,
  # so editing this file while it runs cannot derail the run

LLAMA_CPP_PYTHON_VERSION=0.3.36
PY_PINS=("llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" gguf==0.19.0 numpy==2.4.6)
VENV=benches/.venv-llamacpp
VPY=$VENV/bin/python
SRC_GGUF=models/SmolLM2-135M-Instruct.Q4_1.gguf
LDIR=models/llamacpp
F32_GGUF=$LDIR/SmolLM2-135M-Instruct.F32.gguf
Q4_0_GGUF=$LDIR/SmolLM2-135M-Instruct.Q4_0.gguf
Q8_0_GGUF=$LDIR/SmolLM2-135M-Instruct.Q8_0.gguf

THREADS=${THREADS:-1,2}
PP=${PP:-64,512}
TG=${TG:-128}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-3}
FLASH_ATTN=${FLASH_ATTN:-auto}
read -r -a PAIR_LIST <<<"${PAIRS:-}"
LLAMACPP_ONLY=0
SETUP_ONLY=0
OUT=${OUT:-}

say() { printf 'compare-llamacpp: %s\n' "$*"; }
die() { printf 'compare-llamacpp: ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --pair) PAIR_LIST+=("$2"); shift 2 ;;
    --pair=*) PAIR_LIST+=("${1#*=}"); shift ;;
    --threads|-t) THREADS=$2; shift 2 ;;
    -p) PP=$2; shift 2 ;;
    -n) TG=$2; shift 2 ;;
    --reps|-r) REPS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --flash-attn|-fa) FLASH_ATTN=$2; shift 2 ;;
    --llamacpp-only) LLAMACPP_ONLY=1; shift ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $REPS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--reps and --rounds must be positive integers"
[[ $THREADS =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--threads must look like 1,2"
[[ $PP =~ ^([1-9][0-9]*(,[1-9][0-9]*)*)?$ && $TG =~ ^[0-9]+$ ]] || die "-p must look like 64,512 and -n like 128"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
T0=$SECONDS

# --- 1. venv with llama-cpp-python built from source ---------------------------
# GGML_NATIVE=ON compiles ggml with -march=native: AVX2, AVX-512, VNNI... are
# taken from the build machine. Except AMX: on Sapphire Rapids-class CPUs
# (amx_int8 in /proc/cpuinfo) -march=native also turns on ggml's AMX path, and
# with it this llama.cpp segfaults in ggml_backend_amx_mul_mat on the first
# batch (llama.cpp issue #20824; seen here with the SmolLM2 Q4_0 file). So the build
# says -mno-amx-* unless LLAMACPP_AMX=1 (CMAKE_ARGS is split like a shell line).
CMAKE_FLAGS="-DGGML_NATIVE=ON"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" # each explicit, or -march=native turns int8 back on
[[ ${LLAMACPP_AMX:-0} == 1 ]] || CMAKE_FLAGS+=" -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
[[ -n ${LLAMA_CMAKE_ARGS:-} ]] && CMAKE_FLAGS+=" $LLAMA_CMAKE_ARGS"
STAMP=$VENV/llama-cpp-build.txt # "CMAKE_ARGS=..." then the build time

pins_ok() {
  [[ -x $VPY ]] && "$VPY" - "$@" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
EOF
}
built_ok() { pins_ok "${PY_PINS[0]}" && [[ $(head -n 1 "$STAMP" 2>/dev/null) == "CMAKE_ARGS=$CMAKE_FLAGS" ]]; }

if pins_ok "${PY_PINS[@]}" && built_ok; then
  say "venv $VENV ok (${PY_PINS[*]}; $(sed -n 2p "$STAMP"))"
else
  PYTHON=${PYTHON:-python3}
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Debian: apt-get install python3 python3-venv)"
  if ! [[ -x $VPY ]] || ! "$VPY" -m pip --version >/dev/null 2>&1; then
    say "creating venv $VENV with $PYTHON ($("$PYTHON" -V 2>&1))"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (Debian: apt-get install python3-venv)"
  fi
  pins_ok "${PY_PINS[@]:1}" || "$VPY" -m pip install -q "${PY_PINS[@]:1}" ||
    die "pip install ${PY_PINS[*]:1} failed (is PyPI reachable?)"
  if ! built_ok; then
    # The PyPI package is a source distribution: pip compiles llama.cpp (CMake
    # and Ninja come from PyPI as build dependencies when the machine has none).
    # --no-cache-dir: never reuse a wheel built earlier with other flags.
    again=()
    pins_ok "${PY_PINS[0]}" && again=(--force-reinstall --no-deps) # built with other flags
    log=$VENV/llama-cpp-build.log
    say "building ${PY_PINS[0]} from source, CMAKE_ARGS=\"$CMAKE_FLAGS\", $(nproc) jobs (a few minutes); log: $log"
    b0=$(date +%s)
    rm -f "$STAMP"
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VPY" -m pip install -v --no-cache-dir \
      --no-binary llama-cpp-python "${again[@]}" "${PY_PINS[0]}" >"$log" 2>&1 || {
      tail -n 40 "$log" >&2
      die "building ${PY_PINS[0]} failed (full log: $log)"
    }
    printf 'CMAKE_ARGS=%s\nbuilt in %d s (pip install, with its downloads), finished %s, load average then %s\n' \
      "$CMAKE_FLAGS" $(($(date +%s) - b0)) "$(date -u +%FT%TZ)" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$STAMP"
    say "${PY_PINS[0]} $(sed -n 2p "$STAMP")"
  fi
  pins_ok "${PY_PINS[@]}" && built_ok || die "$VENV does not have ${PY_PINS[*]} after pip install"
fi
SYSINFO=$("$VPY" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())' 2>/dev/null)
say "llama.cpp system info: $SYSINFO"
if grep -qw avx512_vnni /proc/cpuinfo && ! { grep -q 'AVX512 = 1' <<<"$SYSINFO" && grep -q 'AVX512_VNNI = 1' <<<"$SYSINFO"; }; then
  say "WARNING: llama.cpp was built without AVX512/AVX512_VNNI (CPU flags: $(grep -o -w 'avx512f\|avx512_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '))"
fi

# --- 2. llama.cpp's files: F32 from the Q4_1 GGUF, then Q4_0 and Q8_0 ------------
[[ -f $SRC_GGUF ]] || die "$SRC_GGUF missing: run bash scripts/fetch-models.sh"
mkdir -p "$LDIR"
if [[ -f $F32_GGUF ]]; then
  say "$F32_GGUF ok"
elif [[ -f $Q4_0_GGUF && -f $Q8_0_GGUF ]]; then
  : # only needed to make those
else
  say "writing $F32_GGUF (dequantized from $SRC_GGUF)"
  "$VPY" benches/llamacpp_models.py to-f32 "$SRC_GGUF" "$F32_GGUF.tmp"
  mv -f "$F32_GGUF.tmp" "$F32_GGUF"
fi
for q in Q4_0 Q8_0; do
  out=$LDIR/SmolLM2-135M-Instruct.$q.gguf
  if [[ -f $out ]]; then
    say "$out ok"
  else
    say "quantizing $F32_GGUF -> $out with llama_model_quantize"
    "$VPY" benches/llamacpp_models.py quantize "$F32_GGUF" "$out.tmp" "$q"
    mv -f "$out.tmp" "$out"
  fi
done

# --- 3. microllm --------------------------------------------------------------
if [[ -n ${MICROLLM_BIN:-} ]]; then
  [[ -x $MICROLLM_BIN ]] || die "MICROLLM_BIN=$MICROLLM_BIN is not executable"
elif ((!LLAMACPP_ONLY)); then
  say "cargo build --release -p microllm-cli"
  cargo build --release -q -p microllm-cli || die "cargo build failed"
  MICROLLM_BIN=${CARGO_TARGET_DIR:-target}/release/microllm
fi

# --- pairs --------------------------------------------------------------------
if ((${#PAIR_LIST[@]} == 0)); then
  shopt -s nullglob nocaseglob
  for m in models/*q4*.mllm models/*/*q4*.mllm; do PAIR_LIST+=("$m=$Q4_0_GGUF"); done
  for m in models/*q8*.mllm models/*/*q8*.mllm; do PAIR_LIST+=("$m=$Q8_0_GGUF"); done
  shopt -u nullglob nocaseglob
  PAIR_LIST+=("$SRC_GGUF=$Q4_0_GGUF" "$SRC_GGUF=$Q8_0_GGUF")
fi
LLAMA_MODELS=()
add_unique() { # array-name value
  local -n arr=$1
  local x
  for x in "${arr[@]}"; do [[ $x == "$2" ]] && return 0; done
  arr+=("$2")
}
for p in "${PAIR_LIST[@]}"; do
  [[ $p == *=* ]] || die "--pair wants MICROLLM_MODEL=LLAMACPP_GGUF, got '$p'"
  m=${p%%=*} l=${p#*=}
  ((LLAMACPP_ONLY)) || [[ -e $m ]] || die "microllm model $m not found"
  [[ -f $l ]] || die "llama.cpp model $l not found"
  add_unique LLAMA_MODELS "$l"
done

say "llama.cpp files:"
"$VPY" benches/llamacpp_models.py info "${LLAMA_MODELS[@]}"

((SETUP_ONLY)) && { say "setup done in $((SECONDS - T0)) s"; exit 0; }

# --- 4. alternating runs --------------------------------------------------------
mkdir -p benches/results
OUT=${OUT:-benches/results/compare-$(date +%Y%m%d-%H%M%S).jsonl}
: >"$OUT"
IFS=, read -r -a THREAD_LIST <<<"$THREADS"
MICRO_TESTS=()
[[ -n $PP ]] && MICRO_TESTS+=(-p "$PP")
MICRO_TESTS+=(-n "$TG")

tag() { # JSON members to put in front of every JSON line on stdin
  local line
  while IFS= read -r line; do
    [[ $line == '{'* ]] || continue
    printf '{%s,%s\n' "$1" "${line#\{}"
  done
}
run_micro() { # model threads round
  say "  microllm  $1  threads=$2"
  # shellcheck disable=SC2086 # MICROLLM_ARGS is a list of options
  "$MICROLLM_BIN" ${MICROLLM_ARGS:-} bench "$1" --threads "$2" "${MICRO_TESTS[@]}" --reps "$REPS" --json |
    tag "\"engine\":\"microllm\",\"round\":$3" >>"$OUT"
}
run_llama() { # model threads round
  say "  llama.cpp $1  threads=$2"
  "$VPY" benches/llamacpp_bench.py "$1" --threads "$2" -p "$PP" -n "$TG" --reps "$REPS" --flash-attn "$FLASH_ATTN" \
    ${LLAMACPP_BENCH_ARGS:-} |
    tag "\"round\":$3" >>"$OUT"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "benchmark: threads $THREADS, pp ${PP:-none}, tg $TG, reps $REPS, rounds $ROUNDS; load average $LOAD_BEFORE"
awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }' &&
  say "WARNING: load average ${LOAD_BEFORE%% *} on $(nproc) CPUs: other work is running, the numbers will be noisy" \
    "(llama.cpp's spinning threads suffer most when all cores are asked for)"
# The run order follows the pairs (microllm A, then its llama.cpp B, next pair...),
# each model once per round and thread count: A1 B1 A2 B2 ..., so that machine
# drift hits both engines alike. Even rounds run the sequence backwards.
SEQ=()
for p in "${PAIR_LIST[@]}"; do
  ((LLAMACPP_ONLY)) || add_unique SEQ "micro=${p%%=*}"
  add_unique SEQ "llama=${p#*=}"
done
for ((r = 1; r <= ROUNDS; r++)); do
  say "round $r/$ROUNDS"
  order=("${SEQ[@]}")
  if ((r % 2 == 0)); then
    order=()
    for ((i = ${#SEQ[@]} - 1; i >= 0; i--)); do order+=("${SEQ[i]}"); done
  fi
  for t in "${THREAD_LIST[@]}"; do
    for job in "${order[@]}"; do
      case $job in
        micro=*) run_micro "${job#micro=}" "$t" "$r" || say "WARNING: that microllm run failed" ;;
        llama=*) run_llama "${job#llama=}" "$t" "$r" || say "WARNING: that llama.cpp run failed" ;;
      esac
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# --- table ----------------------------------------------------------------------
echo
"$VPY" benches/compare_table.py "$OUT" "${PAIR_LIST[@]}"
echo
echo "medians across $ROUNDS round(s) of $REPS rep(s); range = min..max of the per-round medians"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs;" \
  "load average before $LOAD_BEFORE, after $LOAD_AFTER"
echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, flash_attn=$FLASH_ATTN${LLAMACPP_BENCH_ARGS:+ $LLAMACPP_BENCH_ARGS}; results: $OUT; total $((SECONDS - T0)) s"
exit
}
