#!/usr/bin/env bash
# The project's test command: bash scripts/test.sh
#
#   1. scripts/fetch-models.sh   (models/ for the whole-model tests; skipped when present)
#   2. cargo test --workspace    (native)
#   3. cargo test -p microllm-kernels --target aarch64-unknown-linux-gnu
#      (the NEON kernels, run under qemu-aarch64; see .cargo/config.toml)
#
# Stage 3 needs: apt-get install gcc-aarch64-linux-gnu qemu-user
#                rustup target add aarch64-unknown-linux-gnu
# Without them the script fails; MICROLLM_SKIP_AARCH64=1 skips stage 3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

AARCH64=aarch64-unknown-linux-gnu
stage() { printf '\n==== [%4d s] %s\n' "$SECONDS" "$*"; }

stage "fetch models (scripts/fetch-models.sh)"
bash scripts/fetch-models.sh

stage "cargo test --workspace"
cargo test --workspace

stage "cargo test -p microllm-kernels --target $AARCH64 (qemu)"
missing=()
[[ -d "$(rustc --print sysroot)/lib/rustlib/$AARCH64/lib" ]] || missing+=("rustup target add $AARCH64")
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=("apt-get install gcc-aarch64-linux-gnu")
command -v qemu-aarch64 >/dev/null || missing+=("apt-get install qemu-user")
if [[ ${MICROLLM_SKIP_AARCH64:-0} == 1 ]]; then
  echo "test.sh: MICROLLM_SKIP_AARCH64=1: SKIPPING the aarch64 tests"
elif ((${#missing[@]})); then
  echo "test.sh: the aarch64 cross-test needs (or set MICROLLM_SKIP_AARCH64=1 to skip it):" >&2
  printf '    %s\n' "${missing[@]}" >&2
  exit 1
else
  cargo test -p microllm-kernels --target "$AARCH64"
fi

stage "all tests passed"
