#!/usr/bin/env bash
# Task 3: the paired monitored/unmonitored pass on vLLM's offline engine.
#
#   launch/generate.sh [--nohup|--tmux] [INPUT_JSON] [OUTPUT_DIR] [MODEL] [BATCH_SIZE] [MAX_NEW_TOKENS] [-- extra flags]
#
# Positional arguments follow the seed's order; any of them may be "" to keep the config's value.
# Extra flags after "--" go to `af-introspect generate` (see `af-introspect generate --help`), e.g.
#   launch/generate.sh --nohup data/gold-1560-full.json data/af_context_ablation "" 1024 256 -- --no-batch-invariant
#   launch/generate.sh --nohup "" "" "" "" "" -- --data-parallel 4    # 4 GPUs, one engine each
# Config: $AF_CONFIG (default configs/generate.yaml). A killed run resumes: run the same command again.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=foreground
case "${1:-}" in --nohup|--tmux) mode=${1#--}; shift ;; esac
args=(generate --config "${AF_CONFIG:-configs/generate.yaml}")
names=(--input --output-dir --model --batch-size --max-new-tokens)
for i in 0 1 2 3 4; do
    [[ $# -gt 0 && "$1" != "--" ]] || break
    [[ -n "$1" ]] && args+=("${names[$i]}" "$1")
    shift
done
[[ "${1:-}" == "--" ]] && shift
args+=("$@")
source launch/lib.sh
run_logged generate "$mode" "${args[@]}"
