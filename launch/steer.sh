#!/usr/bin/env bash
# Task 2: the steering grid (layers x alphas) on the HF transformers path.
#
#   launch/steer.sh [--nohup] [flags of `af-introspect steer`]
#
# Every flag goes to `af-introspect steer` (see `af-introspect steer --help`), e.g.
#   launch/steer.sh --alphas 0.125,0.25,0.5,1 --layers 20,30                # configs/steer.yaml, foreground
#   launch/steer.sh --nohup --alphas 0.125,0.25,0.5,1 --layers 20,30 --layers-together   # long run, detached
#   launch/steer.sh --config configs/steer_cpu.yaml                          # toy organism on CPU
#   launch/steer.sh --nohup --data-parallel 4                                 # 4 GPUs, scenarios sharded
# Without --config, $AF_CONFIG or configs/steer.yaml is used. Output goes to logs/steer_<timestamp>.log
# as well as the terminal. A killed run resumes: run the same command again.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=foreground
if [[ "${1:-}" == "--nohup" ]]; then mode=nohup; shift; fi
args=(steer)
has_config=0
for a in "$@"; do [[ "$a" == --config || "$a" == --config=* ]] && has_config=1; done
(( has_config )) || args+=(--config "${AF_CONFIG:-configs/steer.yaml}")
args+=("$@")
source launch/lib.sh
run_logged steer "$mode" "${args[@]}"
