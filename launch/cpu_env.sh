# Sourced by launch/demo.sh and launch/test.sh (not run): the environment the CPU engine and the tests
# were measured with (../shared/FACTS.md): vLLM in-process with 1 GiB of KV cache, caches inside the
# checkout, nothing fetched from a hub.
export VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CACHE_ROOT="$PWD/.cache/vllm" TORCHINDUCTOR_CACHE_DIR="$PWD/.cache/inductor"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
