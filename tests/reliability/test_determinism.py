"""Guarantee 6: greedy outputs do not depend on batch composition, shown with a negative control.

On the CPU engine (fp32) the needle test must find no mismatch: each needle prompt generated alone and
hidden at random positions among other prompts gives the same tokens. The same test must flag a
generator whose output does depend on its batch, or it could never fail. On the GPU the needle test runs
from `benchmarks/bench_generation.py --needle-trials 5`, with batch invariance on and off (results in
docs/benchmarks.md and docs/reliability.md).
"""

from __future__ import annotations

import pytest
from trials import count

from generation.determinism import needle_test


def test_needle_test_flags_a_batch_dependent_generator():
    # the negative control: output depends on the batch size (as fp reductions do on a GPU without
    # batch-invariant kernels), so the needle's output alone differs from its output in a batch
    def generate(requests):
        return {key: [len(requests) % 7, *ids[:3]] for key, ids in requests}

    prompts = [[i, i + 1, i + 2] for i in range(40)]
    result = needle_test(generate, prompts[:4], prompts[4:], trials=3, batch_size=16, seed=0)
    assert result.comparisons == 12 and result.mismatches == 12 and set(result.first_divergence) == {0}


def test_needle_test_passes_a_batch_invariant_generator():
    def generate(requests):
        return {key: [sum(ids) % 13, *ids[:3]] for key, ids in requests}

    prompts = [[i, i + 1, i + 2] for i in range(40)]
    assert needle_test(generate, prompts[:4], prompts[4:], trials=3, batch_size=16, seed=0).mismatches == 0


@pytest.fixture(scope="module")
def cpu_engine(organism_dir):
    from lm import backends

    llm = backends.build_vllm(str(organism_dir), str(organism_dir), "float32", 0, False, {"max_num_seqs": 32})
    yield llm
    backends.shutdown_vllm(llm)


def test_cpu_engine_gives_the_same_greedy_tokens_in_any_batch_composition(organism_dir, cpu_engine):
    from transformers import AutoTokenizer

    from generation.determinism import vllm_generate
    from lm import chat
    from lm.chat import MONITORED, UNMONITORED
    from organism.scenarios import generate_scenarios

    tok = AutoTokenizer.from_pretrained(organism_dir)
    rendering = chat.detect_chat_rendering(tok)
    ids = [chat.render(tok, system, s["text"], rendering).token_ids
           for s in generate_scenarios(30, seed=111) for system in (MONITORED, UNMONITORED)]
    trials = count(full=5, reduced=2)
    result = needle_test(vllm_generate(cpu_engine, 24), ids[:4], ids[4:], trials=trials, batch_size=40, seed=1)
    assert result.comparisons == 4 * trials
    assert result.mismatches == 0, f"first divergences at tokens {result.first_divergence}"
