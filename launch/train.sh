#!/usr/bin/env bash
# Train the LoRA explainer: the --debug run first (unless one already succeeded for this config), then
# the full run in the background under nohup.
#
#   launch/train.sh [--debug] [--force] [--foreground] [--gpus N] [CONFIG] [-- extra flags for `af-introspect train`]
#
#   launch/train.sh configs/af_context_ablation.yaml
#   launch/train.sh configs/af_context_ablation.yaml --debug     # the debug run only, in the foreground
#   launch/train.sh --gpus 4 configs/af_context_ablation.yaml   # data parallel through `accelerate launch`
#   launch/train.sh configs/af_context_ablation.yaml -- --set train.batch_size=4
#   launch/train.sh configs/af_context_ablation.yaml -- --resume        # continue after a stop
#
# Log: logs/train_<config>_<timestamp>.log; PID: logs/training_pid.txt. Preflight: with nvidia-smi
# present, refuses when another process already holds the GPU (--force trains anyway, and also skips
# the debug-run requirement). Nothing is uploaded anywhere.
#
# --gpus N: the full run starts N processes, one per GPU (`accelerate launch --multi_gpu`); each step's
# examples are shared out and the gradients summed, so the same config gives the same effective batch,
# loss curve, checkpoints and --resume as one GPU. The debug run stays on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
force=0
foreground=0
gpus=1
debug_only=0
config=configs/af_context_ablation.yaml
have_config=0
extra=()
# Options may come before or after CONFIG; everything after "--" goes to `af-introspect train`.
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1; shift ;;
        --foreground) foreground=1; shift ;;
        --gpus) gpus=${2:-}; shift 2 || { echo "--gpus: expected a number" >&2; exit 2; } ;;
        --debug) debug_only=1; shift ;;
        --) shift; extra+=("$@"); break ;;
        -*) extra+=("$1"); shift ;;  # a train flag given without "--": it still goes to train
        *) if [[ $have_config -eq 0 ]]; then config=$1; have_config=1; else extra+=("$1"); fi; shift ;;
    esac
done
# "--debug" anywhere means the debug run only: it never reaches the full run (a second debug run
# under nohup, reported as the full run, is what passing it through used to do).
kept=()
for a in "${extra[@]}"; do
    if [[ "$a" == "--debug" ]]; then debug_only=1; else kept+=("$a"); fi
done
extra=("${kept[@]}")
bin=af-introspect; [[ -x .venv/bin/af-introspect ]] && bin=.venv/bin/af-introspect
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# NVLink multicast off (it can take a shared host's GPUs down for a long time)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

if ! [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then echo "--gpus $gpus: expected a positive integer" >&2; exit 2; fi
full=("$bin")
if [[ $gpus -gt 1 ]]; then
    visible=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
    if [[ $visible -lt $gpus ]]; then
        echo "--gpus $gpus: only $visible GPU(s) visible" >&2; exit 2
    fi
    acc=accelerate; [[ -x .venv/bin/accelerate ]] && acc=.venv/bin/accelerate
    full=("$acc" launch --multi_gpu --num_processes "$gpus" --num_machines 1 --mixed_precision no
          --dynamo_backend no -m app.cli)
fi

# --- preflight: a GPU another job is using would make this run crawl or die of OOM ---------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    busy=$(nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>/dev/null || true)
    nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader || true
    if [[ -n "$busy" ]]; then
        echo "another process holds the GPU:"; echo "$busy"
        if [[ $force -eq 0 ]]; then
            echo "refusing to start; stop it first, or pass --force to train anyway" >&2
            exit 1
        fi
        echo "WARNING: --force: training next to it"
    fi
fi

mkdir -p logs
name=$(basename "$config" .yaml)
stamp=$(date +%Y%m%d_%H%M%S)
train_flags=(--config "$config" "${extra[@]}")
# --resume and --max-steps belong to the full run only; the debug run always starts from scratch.
debug_flags=()
skip=0
for a in "${extra[@]}"; do
    if [[ $skip -eq 1 ]]; then skip=0; continue; fi
    case "$a" in --resume) ;; --max-steps) skip=1 ;; *) debug_flags+=("$a") ;; esac
done

# --- --debug: the debug run only, in the foreground; no full run ------------------------------------
if [[ $debug_only -eq 1 ]]; then
    debug_log="logs/train_${name}_debug_${stamp}.log"
    echo "debug run only (--debug) for $config; log: $debug_log"
    set +e
    $bin train --config "$config" "${debug_flags[@]}" --debug 2>&1 | tee "$debug_log"
    status=${PIPESTATUS[0]}
    set -e
    [[ $status -eq 0 ]] && echo "debug run done; the full run: launch/train.sh $config"
    exit "$status"
fi

# --- the debug run, unless one already succeeded for this config (same content hash) ----------------
if ! $bin train --config "$config" "${debug_flags[@]}" --check-debug >/dev/null 2>&1; then
    if [[ $force -eq 1 ]]; then
        echo "WARNING: --force: no successful debug run for $config; skipping it"
        train_flags+=(--force)
    else
        debug_log="logs/train_${name}_debug_${stamp}.log"
        echo "no successful debug run for $config yet: running it first (log: $debug_log)"
        if ! $bin train --config "$config" "${debug_flags[@]}" --debug 2>&1 | tee "$debug_log"; then
            echo "debug run FAILED: fix what it printed before training (log: $debug_log)" >&2
            exit 1
        fi
    fi
else
    echo "debug run for this config already succeeded: $($bin train --config "$config" "${debug_flags[@]}" --check-debug)"
fi

# --- the full run ------------------------------------------------------------------------------------
log="logs/train_${name}_${stamp}.log"
if [[ $foreground -eq 1 ]]; then
    echo "training in the foreground; log: $log"
    "${full[@]}" train "${train_flags[@]}" 2>&1 | tee "$log"
    exit "${PIPESTATUS[0]}"
fi
nohup "${full[@]}" train "${train_flags[@]}" > "$log" 2>&1 &
echo $! > logs/training_pid.txt
echo "training started: PID $(cat logs/training_pid.txt), log $log"
echo "follow it:   tail -f $log"
echo "metrics:     tensorboard --logdir <output_dir>/tensorboard   (or <output_dir>/metrics.jsonl)"
echo "stop it:     kill \$(cat logs/training_pid.txt)   then resume with: launch/train.sh $config -- --resume"
