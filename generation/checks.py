"""Refusals of the generate stage's cross-field and file rules, before any engine starts. Single-field bounds
(sizes, counts, the sampling temperature) are in the config's types (generation/config.py)."""

from __future__ import annotations

from generation.config import GenerateConfig
from generation.pairs import key_index
from records.errors import InputError
from records.parallel import check_world


def check_run(cfg: GenerateConfig, batch_invariant: bool, requests, model_dir: str) -> None:
    """Everything that would otherwise fail only inside the engine, after it started (and on every retry)."""
    check_engine_settings(cfg.engine, batch_invariant)
    check_world(cfg.data_parallel, int(cfg.engine.get("tensor_parallel_size", 1)))
    if cfg.data_parallel > 1 and cfg.backend != "vllm":
        raise InputError("data_parallel > 1 runs vLLM engines; the hf backend is the single-process reference")
    check_prompt_lengths(requests, cfg.max_new_tokens, model_dir, cfg.engine)
    if cfg.backend == "vllm":
        check_engine_keys(cfg.engine)


def check_engine_keys(engine: dict) -> None:
    """Every `engine.*` key must be a vllm.LLM engine argument (a typo would fail only at engine start)."""
    if not engine:
        return
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(engine) - known)
    if unknown:
        raise InputError(f"engine: {', '.join(unknown)} not an argument of vLLM's engine (vllm EngineArgs); "
                         "check the spelling")


def check_prompt_lengths(requests, max_new_tokens: int, model_dir: str, engine: dict) -> None:
    """Refuse a prompt that cannot fit the model's context with the output it must leave room for."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = int(engine.get("max_model_len") or getattr(text, "max_position_embeddings", 0) or 0)
    if not limit:
        return
    too_long = [(key, len(ids)) for key, ids in requests if len(ids) + max_new_tokens > limit]
    if too_long:
        key, n = max(too_long, key=lambda kn: kn[1])
        raise InputError(f"{len(too_long)} prompt(s) do not fit the model's context of {limit} tokens with "
                         f"{max_new_tokens} new tokens; the longest is scenario {key_index(key)} ({key.split(':')[1]}, "
                         f"{n} tokens); shorten them or drop them from the input")


def check_engine_settings(engine: dict, batch_invariant: bool) -> None:
    """Refuse engine settings that silently break what the records claim."""
    kv = str(engine.get("kv_cache_dtype", "auto"))
    if batch_invariant and kv.startswith("fp8"):
        # Measured on an H100 (docs/benchmarks.md, run 4): 64/64 control outputs changed with an FP8 KV
        # cache under VLLM_BATCH_INVARIANT=1, 0/64 with the default cache.
        raise InputError(f"engine.kv_cache_dtype={kv} breaks batch invariance (the noise-floor control changed "
                         "64/64 outputs on an H100), so behaviour changes could not be told from engine noise; "
                         "drop it, or set batch_invariant: off to accept that noise knowingly")
