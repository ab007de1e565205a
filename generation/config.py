"""Config of the Task 3 paired pass (generate): defaults in the type, YAML in configs/generate*.yaml."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from lm.chat import PromptTemplates
from lm.judge_config import JudgeConfig

# Bounds in the types: a wrong value fails at load, naming the field (`Expected `int` >= 1 - at `$.save_every``),
# not inside the engine after it started. records.config.revalidate applies them to configs built in Python.
Positive = Annotated[int, msgspec.Meta(ge=1)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class SamplingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Sampled mode (generation/sampled.py): k samples per prompt and context instead of one greedy output.

    Every sample has its own seed, derived from `seed`, the prompt and the sample's number, so a rerun,
    a resumed run or another batch composition reproduces it (on the GPU with batch invariance on).
    """

    k: Positive = 8  # samples per prompt and context
    # > 0: greedy is the default (leave `sampling` out), not temperature 0
    temperature: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    seed: int = 0


class GenerateConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything the paired monitored/unmonitored pass needs."""

    # scenario file (JSON list or JSONL), or hf:NAME[:split] (a datasets folder or the local HF datasets cache,
    # records/hub.py); "" = gold_1560 from the paths config
    input: str = ""
    output_dir: str = "data/af_context_ablation"
    # "" = organism_model of the paths config; else a local folder, a cached hub id, or "toy" / "toy-twin"
    # (the toy organism / its twin)
    model: str = ""
    tokenizer: str = ""  # "" = the model's own
    backend: Literal["vllm", "hf"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    max_new_tokens: Positive = 256  # output length cap
    # None: greedy, one output per prompt (the default). Set (e.g. `sampling: {k: 8}`): the compliance gap
    # the alignment-faking literature reports, from k samples per prompt and context (generation/sampled.py)
    sampling: SamplingConfig | None = None
    save_every: Positive = 100  # finished pairs per fsynced flush
    test_size: Count = 200  # about N scenarios form test.jsonl: whole groups, stratified by behaviour transition
    # regex whose first capture groups scenarios that must share a split (toy: its nonce trigger, the last
    # word); near-duplicate texts are always grouped (records/split.py)
    group_pattern: str = ""
    limit: Count = 0  # 0 = all scenarios; N = the first N (quick tries)
    control_size: Count = 64  # scenarios re-run with the same system prompt to measure the noise floor
    # auto: on with a CUDA GPU. YAML reads a bare on/off as true/false, so booleans are accepted too.
    batch_invariant: Literal["auto", "on", "off"] | bool = "auto"
    # who labels behaviour (lm/judge_config.py); the judge runs on this pass's backend, dtype and engine
    judge: JudgeConfig = msgspec.field(default_factory=JudgeConfig)
    hf_batch_size: Positive = 64
    ignore_eos: bool = False  # benchmarks only: force every output to max_new_tokens so timings are honest
    seed: int = 0
    data_parallel: Positive = 1  # engines, one per GPU, each on its own shard of the scenarios
    paths: str = "configs/paths.yaml"
    progress_log: str = "PROGRESS.md"
    prompts: PromptTemplates = msgspec.field(default_factory=PromptTemplates)
    # Passed to vllm.LLM as given (max_num_seqs, max_num_batched_tokens, gpu_memory_utilization, ...).
    engine: dict[str, Any] = msgspec.field(default_factory=dict)
