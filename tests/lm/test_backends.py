"""The vLLM stream hands the engine rendered prompts where the engine has a renderer (raw prompts are
deprecated there) and token-id prompts otherwise; completions come back as they finish."""

from __future__ import annotations

from types import SimpleNamespace

from lm import backends


class FakeEngine:
    """Records what add_request gets; finishes every request on the first step, echoing its prompt."""

    def __init__(self, with_renderer: bool):
        self.added, self.pending = [], []
        if with_renderer:
            self.renderer = SimpleNamespace(render_cmpl=lambda prompts: [{"type": "token", **p} for p in prompts])

    def add_request(self, key, prompt, params):
        self.added.append(prompt)
        self.pending.append((key, prompt))

    def has_unfinished_requests(self):
        return bool(self.pending)

    def step(self):
        done, self.pending = self.pending, []
        return [SimpleNamespace(finished=True, request_id=k,
                                outputs=[SimpleNamespace(token_ids=list(p["prompt_token_ids"]) + [2],
                                                         finish_reason="stop")]) for k, p in done]

    def abort_request(self, keys):
        raise AssertionError("nothing was left pending")


def fake_llm(with_renderer: bool):
    return SimpleNamespace(llm_engine=FakeEngine(with_renderer), get_tokenizer=lambda: SimpleNamespace(eos_token_id=2))


def test_rendered_prompts_when_the_engine_renders_them():
    llm = fake_llm(with_renderer=True)
    out = list(backends.vllm_stream(llm, [("a", [5, 6]), ("b", [7])], max_tokens=4))
    assert all(p["type"] == "token" for p in llm.llm_engine.added)  # what add_request accepts without warning
    assert {c.key: c.token_ids for c in out} == {"a": [5, 6], "b": [7]}  # EOS stripped


def test_token_id_prompts_on_engines_without_a_renderer():
    llm = fake_llm(with_renderer=False)
    list(backends.vllm_stream(llm, [("a", [5, 6])], max_tokens=4))
    assert llm.llm_engine.added == [{"prompt_token_ids": [5, 6]}]


def test_eager_with_batch_invariance_on_a_gpu_is_warned(monkeypatch, caplog):
    """GPU-only branch of build_vllm, run here with the GPU and vLLM faked: enforce_eager was measured not
    batch-invariant (docs/rehearsal.md, fourth run), so the engine says so; without eager it stays quiet."""
    import logging
    import sys

    made = []
    monkeypatch.setattr(backends.torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=lambda **kw: made.append(kw) or kw))
    monkeypatch.setattr(backends.os, "environ", dict(backends.os.environ))  # what build_vllm sets stays here
    with caplog.at_level(logging.WARNING):
        backends.build_vllm("m", "m", "bfloat16", 0, True, {"enforce_eager": True})
        backends.build_vllm("m", "m", "bfloat16", 0, True, {})
        backends.build_vllm("m", "m", "bfloat16", 0, False, {"enforce_eager": True})
    warned = [r.getMessage() for r in caplog.records if "enforce_eager" in r.getMessage()]
    assert len(made) == 3 and made[0]["enforce_eager"] is True
    assert len(warned) == 1 and "not invariant" in warned[0]
