#!/usr/bin/env bash
# The main job end to end: fetch SmolLM2-135M-Instruct, convert it to a q8
# .mllm file, and answer a prompt with it.
#
#   bash scripts/demo.sh ["your question"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prompt=${1:-"What is the capital of France?"}

bash scripts/fetch-models.sh
cargo build --release -q -p microllm-cli
bin=target/release/microllm
model=models/smollm2-135m-q8.mllm
if [[ ! -f $model ]]; then
  "$bin" convert models/SmolLM2-135M-Instruct.Q4_1.gguf -o "$model" --quant q8
fi
"$bin" run "$model" --chat -p "$prompt" --verbose
