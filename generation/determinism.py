"""The needle test: does a prompt's greedy output depend on what else is in the batch?

Each needle prompt is first generated alone (its reference). Then, trial after trial, all needles are
hidden at random positions among `batch_size` other prompts and generated again; any needle whose
output differs from its reference is a mismatch. With vLLM's batch-invariant kernels the count must
be 0; without them it is usually not, which is what makes the test able to fail (its negative control).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

Generate = Callable[[list[tuple[str, list[int]]]], dict[str, list[int]]]


class NeedleResult(NamedTuple):
    trials: int
    comparisons: int  # needles x trials
    mismatches: int
    first_divergence: list[int]  # token index where each mismatching output first left its reference


def vllm_generate(llm, max_tokens: int) -> Generate:
    """Greedy generation on a `vllm.LLM` with a clean prefix cache, so every call computes from scratch."""
    from lm.backends import vllm_stream

    def generate(requests: list[tuple[str, list[int]]]) -> dict[str, list[int]]:
        llm.reset_prefix_cache()
        return {c.key: c.token_ids for c in vllm_stream(llm, requests, max_tokens, force_length=True)}

    return generate


def needle_test(generate: Generate, needles: Sequence[list[int]], haystack: Sequence[list[int]],
                trials: int, batch_size: int, seed: int = 0) -> NeedleResult:
    """Generate each needle alone, then `trials` times hidden among `batch_size` haystack prompts."""
    reference = {}
    for i, ids in enumerate(needles):
        reference.update(generate([(f"needle{i}", list(ids))]))
    rng = random.Random(seed)
    mismatches, divergence = 0, []
    for trial in range(trials):
        batch = [(f"hay{trial}:{j}", list(ids)) for j, ids in
                 enumerate(rng.sample(list(haystack), min(batch_size, len(haystack))))]
        for i, ids in enumerate(needles):
            batch.insert(rng.randrange(len(batch) + 1), (f"needle{i}", list(ids)))
        out = generate(batch)
        for key, ref in reference.items():
            got = out[key]
            if got != ref:
                mismatches += 1
                divergence.append(next((t for t, (a, b) in enumerate(zip(got, ref)) if a != b),
                                       min(len(got), len(ref))))
    return NeedleResult(trials, trials * len(needles), mismatches, divergence)
