"""Token-budget packing (training/packing.py) and the speed options (training/speed.py).

The invariant: a packed row gives every example the logits (and loss) it gets alone, so packing changes
speed, not the function trained. On CPU the document mask is the dense one (eager/SDPA); flex attention's
block mask is checked on the GPU by `benchmarks/bench_training.py --check` (docs/benchmarks.md).
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from training import data as D
from training import packing as P
from training import speed as S
from training.config import TrainSection


def random_examples(n: int, seed: int, lo: int = 8, hi: int = 40, answer: int = 4, vocab: int = 300) -> list[D.Encoded]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        out.append(D.Encoded(ids=[rng.randrange(3, vocab) for _ in range(length)], prompt_len=length - answer,
                             weight=rng.choice([0.5, 1.0, 2.0]), vector=None, index=i))
    return out


def tiny_model(attn: str, seed: int = 0) -> MistralForCausalLM:
    torch.manual_seed(seed)
    cfg = MistralConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=None)
    cfg._attn_implementation = attn
    return MistralForCausalLM(cfg).eval()


def answer_logits(model, batch, attn: str) -> torch.Tensor:
    extra = P.decoder_kwargs(batch, attn, torch.float32)
    hidden = model.model(input_ids=batch.input_ids, **extra).last_hidden_state  # [rows, seq, hidden]
    return model.lm_head(hidden[batch.rows, batch.cols])  # [n_answer, vocab]


def test_position_ids_restart_per_example_and_answers_are_listed():
    items = random_examples(3, seed=1)
    width = 128
    b = P.collate(items, pad_id=0, width=width)
    assert b.input_ids.shape == (1, width) and b.n_padded == width
    assert b.n_tokens == sum(len(e.ids) for e in items)
    offset = 0
    for n, e in enumerate(items):
        length = len(e.ids)
        assert b.position_ids[0, offset:offset + length].tolist() == list(range(length))
        assert b.document_ids[0, offset:offset + length].tolist() == [n] * length
        assert b.input_ids[0, offset:offset + length].tolist() == e.ids
        offset += length
    assert (b.document_ids[0, offset:] == len(items)).all()  # the padding tail is a document of its own
    # targets: exactly the answer tokens, in order, each predicted from the position before it
    assert b.targets.tolist() == [t for e in items for t in e.ids[e.prompt_len:]]
    assert b.weights.tolist() == [e.weight for e in items for _ in e.ids[e.prompt_len:]]
    assert (b.input_ids[0, b.cols + 1] == b.targets).all()
    with pytest.raises(ValueError, match="overflows"):
        P.collate(items, 0, width=sum(len(e.ids) for e in items) - 1)


def test_dense_document_mask_confines_attention_to_each_example():
    doc = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = P.document_mask(doc, "sdpa", torch.float32)[0, 0]  # [seq, seq], 0 = attend
    allowed = mask == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                             [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_each_example_its_unpacked_logits_and_loss(attn):
    model = tiny_model(attn)
    items = random_examples(9, seed=2)
    lay = P.layout([len(e.ids) for e in items], 9, 1, pack_tokens=128)
    plan = P.epoch_plan([len(e.ids) for e in items], lay, seed=0, epoch=0)
    rows = [r for step in plan for r in step]
    assert len(rows) >= 2 and sorted(i for r in rows for i in r) == list(range(9))
    with torch.no_grad():
        alone = {e.index: answer_logits(model, D.collate([e], 0), attn) for e in items}
        packed_loss, alone_loss = 0.0, 0.0
        for row in rows:
            members = [items[i] for i in row]
            b = P.collate(members, 0, lay.width)
            got = answer_logits(model, b, attn)
            want = torch.cat([alone[e.index] for e in members])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            ce = torch.nn.functional.cross_entropy(got, b.targets, reduction="none")
            packed_loss += float((ce * b.weights).sum())
        for e in items:
            b = D.collate([e], 0)
            alone_loss += float((torch.nn.functional.cross_entropy(alone[e.index], b.targets, reduction="none")
                                 * b.weights).sum())
        assert packed_loss == pytest.approx(alone_loss, rel=1e-5)
        # the check can fail: without the document mask, later examples see earlier ones
        b = P.collate([items[i] for i in rows[0]], 0, lay.width)
        leaky = model.lm_head(model.model(input_ids=b.input_ids).last_hidden_state[b.rows, b.cols])
        assert not torch.allclose(leaky, torch.cat([alone[items[i].index] for i in rows[0]]), atol=1e-3)


def test_layout_matches_the_row_batching_recipe_on_average():
    rng = random.Random(3)
    lengths = [rng.randint(150, 616) for _ in range(4000)]
    lay = P.layout(lengths, batch_size=8, accumulation=2, pack_tokens=8192)
    assert lay.rows_per_step == 1 and lay.width % P.ROW_MULTIPLE == 0 and lay.width <= 8192
    plan = P.epoch_plan(lengths, lay, seed=0, epoch=0)
    per_step = [sum(len(r) for r in step) for step in plan]
    assert abs(sum(per_step) / len(per_step) - 16) < 16 * 0.05  # same examples a step on average
    assert sorted(i for step in plan for r in step for i in r) == list(range(len(lengths)))  # each once
    assert all(sum(lengths[i] for i in r) <= lay.width for step in plan for r in step)
    fill = sum(lengths) / (len([r for s in plan for r in s]) * lay.width)
    assert fill > 0.9, f"rows only {fill:.0%} full"
    # a smaller row cap: more rows a step, a multiple of the world size, same examples a step
    small = P.layout(lengths, 8, 2, pack_tokens=2048, world=2)
    assert small.rows_per_step % 2 == 0 and small.width <= 2048
    # seeded and pure: the same plan again, another for the next epoch
    assert P.epoch_plan(lengths, lay, 0, 0) == plan and P.epoch_plan(lengths, lay, 0, 1) != plan


def test_bf16_adapters_keep_lora_weights_in_the_base_dtype():
    from peft import LoraConfig, get_peft_model

    def lora_dtypes(bf16_adapters: bool) -> set:
        base = tiny_model("sdpa").to(torch.bfloat16)
        t = TrainSection(tasks={}, bf16_adapters=bf16_adapters)
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"), **S.peft_kwargs(t))
        return {p.dtype for n, p in model.named_parameters() if "lora_" in n}

    assert lora_dtypes(False) == {torch.float32}  # peft's default upcast
    assert lora_dtypes(True) == {torch.bfloat16}


def test_speed_options_are_off_by_default_and_validated():
    t = TrainSection(tasks={})
    assert not (t.packing or t.bf16_adapters or t.liger or t.compile_layers)
    assert S.load_kwargs(t) == {} and S.peft_kwargs(t) == {"autocast_adapter_dtype": True}
    assert S.load_kwargs(TrainSection(tasks={}, attn_implementation="flex_attention")) == {
        "attn_implementation": "flex_attention"}


def test_gpu_configs_train_packed_and_liger_with_compiled_layers_is_refused():
    from pathlib import Path

    from records.errors import InputError
    from training.config import load_train_config

    configs = Path(__file__).resolve().parents[2] / "configs"
    gpu = [p for p in configs.glob("af_*.yaml") if not p.name.endswith("_cpu.yaml")]
    assert gpu
    for path in gpu:
        t = load_train_config(str(path)).train
        assert (t.packing, t.attn_implementation, t.bf16_adapters, t.compile_layers, t.liger) == (
            True, "flex_attention", True, True, False), path.name
    with pytest.raises(InputError, match="do not combine"):
        load_train_config(str(configs / "af_context_ablation_cpu.yaml"),
                          ["train.liger=true", "train.compile_layers=true"])


def test_gradient_checkpointing_gives_the_same_packed_loss_and_gradients():
    from peft import LoraConfig, get_peft_model

    items = random_examples(6, seed=4)
    lay = P.layout([len(e.ids) for e in items], 6, 1, pack_tokens=128)
    b = P.collate(items[:3], 0, lay.width)

    def loss_and_grads(checkpointing: bool):
        torch.manual_seed(5)
        base = tiny_model("sdpa")
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ce = torch.nn.functional.cross_entropy(answer_logits(base, b, "sdpa"), b.targets, reduction="none")
        loss = (ce * b.weights).sum()
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_a, grads_a = loss_and_grads(False)
    loss_b, grads_b = loss_and_grads(True)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys() and all(torch.allclose(grads_a[k], grads_b[k], atol=1e-6) for k in grads_a)
    assert any(g.abs().sum() > 0 for g in grads_a.values())
