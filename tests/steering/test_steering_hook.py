"""Task 2 steering, the hook (lm/hooks.py): each row its own alpha, each position policy its positions,
only the hooked layer moves, and the hook compiles without graph breaks."""

import math

import pytest
import torch
from steer_helpers import H, left_pad, prompts_of

from lm.hooks import SteeringState, prompt_position_mask, steering


class ZeroLayer(torch.nn.Module):
    """A decoder layer stand-in whose output is zeros: whatever comes out of the hook is the steering delta."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden):
        out = torch.zeros_like(hidden)
        return (out, "extra") if self.as_tuple else out


class ZeroModel(torch.nn.Module):
    def __init__(self, as_tuple: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList([ZeroLayer(as_tuple)])

    def forward(self, input_ids=None, attention_mask=None):
        out = self.layers[0](torch.zeros(*input_ids.shape, H))
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("as_tuple", [False, True], ids=["bare-tensor", "tuple"])
def test_each_row_gets_its_own_steering_for_tensor_and_tuple_outputs(as_tuple):
    model = ZeroModel(as_tuple)
    d = torch.randn(H)
    d = d / d.norm()
    state = SteeringState(d, [0], batch=3)
    state.set_coefficients({0: [0.0, 2.0, -3.0]})
    ids = torch.ones(3, 5, dtype=torch.long)
    with steering(model, state):
        out = model(input_ids=ids)  # mask = decode mask (every position) with no policy pre-hook
    assert out.shape == (3, 5, H)
    assert torch.equal(out[0], torch.zeros(5, H))  # row 0 (alpha 0): untouched — not row 0 steered for all
    assert torch.allclose(out[1], 2.0 * d.expand(5, H))
    assert torch.allclose(out[2], -3.0 * d.expand(5, H))
    # hooks are gone after the block, also after an exception inside it
    with pytest.raises(RuntimeError):
        with steering(model, state):
            raise RuntimeError("boom")
    assert torch.equal(model(input_ids=ids), torch.zeros(3, 5, H))


@pytest.mark.parametrize("policy", ["last", "all", "generated"])
def test_each_policy_steers_exactly_its_positions_and_never_padding(policy):
    model = ZeroModel(False)
    d = torch.ones(H) / math.sqrt(H)
    state = SteeringState(d, [0], batch=3)
    state.set_coefficients({0: [1.0, 1.0, 1.0]})
    ids, mask = left_pad(prompts_of())
    with steering(model, state, policy=policy):
        prefill = model(input_ids=ids, attention_mask=mask)
        decode = model(input_ids=ids[:, -1:], attention_mask=torch.ones(3, ids.shape[1] + 1, dtype=torch.long))
    steered = prefill.abs().sum(-1) > 0  # [B, S]
    real = mask.bool()
    expected = {"all": real, "generated": torch.zeros_like(real),
                "last": torch.zeros_like(real).index_fill_(1, torch.tensor([ids.shape[1] - 1]), True)}[policy]
    assert torch.equal(steered, expected)
    assert not steered[~real].any()  # padding never
    assert (decode.abs().sum(-1) > 0).all()  # every generated token, under every policy


def test_prompt_position_mask_rejects_unknown_policy():
    with pytest.raises(ValueError):
        prompt_position_mask(torch.ones(2, 3), "first")


def test_per_row_alpha_isolation_and_alpha_zero_rows_equal_unsteered_exactly(tiny):
    model, d = tiny
    prompt = prompts_of(lengths=(6,))[0]
    ids = torch.tensor([prompt] * 4)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        state = SteeringState(d, [1], batch=4)
        state.set_coefficients({1: [0.0, 3.0, 0.0, -5.0]})
        with steering(model, state):
            steered = model(input_ids=ids).logits
        singles = []
        for a in (3.0, -5.0):
            one = SteeringState(d, [1], batch=1)
            one.set_coefficients({1: [a]})
            with steering(model, one):
                singles.append(model(input_ids=ids[:1]).logits)
    assert torch.equal(steered[0], plain[0]) and torch.equal(steered[2], plain[2])  # alpha 0: bit-identical
    assert not torch.allclose(steered[1], plain[1]) and not torch.allclose(steered[1], steered[3])
    assert torch.allclose(steered[1], singles[0][0], atol=1e-5)  # each row as if run alone
    assert torch.allclose(steered[3], singles[1][0], atol=1e-5)


def test_steering_leaves_the_layers_before_the_hooked_one_unchanged_and_removing_it_restores_the_model(tiny):
    """The steering-vectors invariant: only the hooked layer's output (and what follows) moves."""
    from lm.hooks import capture_residuals

    model, d = tiny
    ids = torch.tensor([prompts_of(lengths=(6,))[0]])
    state = SteeringState(d, [1], batch=1)
    state.set_coefficients({1: [4.0]})
    with torch.no_grad():
        with capture_residuals(model, [0, 1]) as plain:
            plain_logits = model(input_ids=ids).logits
        with steering(model, state), capture_residuals(model, [0, 1]) as steered:
            steered_logits = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(steered[0][0], plain[0][0])  # layer 0 comes before the hook: bit-identical
    assert torch.allclose(steered[1][0] - plain[1][0], 4.0 * d.expand_as(plain[1][0]), atol=1e-5)
    assert not torch.allclose(steered_logits, plain_logits)
    assert torch.equal(after, plain_logits)  # the hook is gone


def test_hook_compiles_without_graph_breaks(tiny):
    model, d = tiny
    state = SteeringState(d, [0, 1], batch=2)
    state.set_coefficients({0: [1.0, 0.0], 1: [0.0, 2.0]})
    ids = torch.tensor(prompts_of(lengths=(5, 5))[:2])
    with torch.no_grad(), steering(model, state):
        eager = model(input_ids=ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: model(input_ids=x).logits, backend="eager", fullgraph=True)
        assert torch.allclose(compiled(ids), eager, atol=1e-5)
        state.set_coefficients({0: [0.0, 0.0], 1: [0.0, 0.0]})  # new values in place: same graph, new result
        assert torch.allclose(compiled(ids), model(input_ids=ids).logits, atol=1e-5)
    torch._dynamo.reset()
