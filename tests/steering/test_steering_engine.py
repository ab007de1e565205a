"""Task 2 steering, the engine (steering/engine.py) and its batch runner (steering/batches.py): the fast engine
equals HF generate with the same hooks, alpha 0 equals the unsteered model, padding changes nothing, and out
of memory halves the batch."""

import pytest
import torch
from steer_helpers import left_pad, prompts_of

from steering.engine import FastSteeredGenerator, Row, hf_generate


@pytest.mark.parametrize("policy", ["last", "all", "generated"])
def test_fast_engine_matches_hf_generate_with_the_same_hooks(tiny, policy):
    model, d = tiny
    rows = [Row(p, g, {1: a}) for g, p in enumerate(prompts_of()) for a in (0.0, 4.0, 9.0)]
    fast = FastSteeredGenerator(model, d, [1], policy, eos_ids=[2], pad_id=0, cuda_graphs=False)
    a = fast.generate(rows, 12, force_length=True, pad_to=12)
    b = hf_generate(model, d, [1], policy, rows, 12, [2], 0, force_length=True)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    assert all(len(x.token_ids) == 12 for x in a)
    if policy == "last":
        assert fast.stats["prefill_rows"] == 3  # one shared prefill per prompt, not one per arm


def test_alpha_zero_reproduces_unsteered_generation_exactly(tiny):
    model, d = tiny
    prompts = prompts_of()
    rows = [Row(p, g, {0: 0.0, 1: 0.0}) for g, p in enumerate(prompts)]
    fast = FastSteeredGenerator(model, d, [0, 1], "all", eos_ids=[2], pad_id=0, cuda_graphs=False)
    steered = fast.generate(rows, 10, force_length=True)
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                               min_new_tokens=10, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    assert [r.token_ids for r in steered] == plain.tolist()


@pytest.mark.parametrize("policy", ["all", "last"])
def test_left_padded_rows_generate_what_they_generate_alone(tiny, policy):
    """Padding is neither steered nor attended: a short prompt padded in a batch = the prompt alone."""
    model, d = tiny
    prompts = prompts_of(lengths=(3, 11))
    fast = FastSteeredGenerator(model, d, [0], policy, eos_ids=[2], pad_id=0, cuda_graphs=False)
    batch = fast.generate([Row(p, g, {0: 5.0}) for g, p in enumerate(prompts)], 8, force_length=True)
    alone = [fast.generate([Row(p, 0, {0: 5.0})], 8, force_length=True)[0] for p in prompts]
    assert [b.token_ids for b in batch] == [a.token_ids for a in alone]


def test_out_of_memory_halves_the_batch_and_retries(tiny, caplog):
    from steering.batches import BatchRunner
    from steering.config import SteerConfig

    model, d = tiny
    cfg = SteerConfig(layers=[1], batch_size=4, max_new_tokens=6, cuda_graphs="off", positions="last")
    runner = BatchRunner(cfg, model, d, eos_ids=[2], pad_id=0)
    real = runner.fast.generate
    sizes = []

    def flaky(rows, *a, **kw):
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(rows, *a, **kw)

    runner.fast.generate = flaky
    rows = [Row(p, g, {1: a}) for g, p in enumerate(prompts_of(lengths=(4, 6))) for a in (0.0, 3.0)]
    caplog.set_level("WARNING")
    out = runner.run(rows)
    assert len(out) == 4 and sizes == [4, 2, 2] and runner.sub_batch == 2
    assert any("out of memory at 4 rows" in m and "with 2 rows" in m for m in caplog.messages)
    expected = FastSteeredGenerator(model, d, [1], "last", [2], 0, cuda_graphs=False).generate(rows, 6)
    assert [o.token_ids for o in out] == [e.token_ids for e in expected]
