"""GPU speed options of the training step: attention kernel, bf16 LoRA weights, fused kernels, compiled layers.

Measured on an H200 (docs/benchmarks.md, FACTS.md): peft keeps LoRA weights in fp32 by default
(`autocast_adapter_dtype=True`), so each LoRA matmul of a bf16 model runs in fp32; `bf16_adapters`
keeps them in the base model's dtype. `liger` swaps RMSNorm/RoPE/SwiGLU for liger-kernel's fused Triton
kernels; `compile_layers` compiles each decoder layer. Packed rows have one fixed width, so torch's
default `dynamic=None` compiles static kernels once (another shape, an eval batch say, recompiles once
with dynamic shapes): 16,871 tok/s against 14,493 with `dynamic=True` on the H200. liger and
compile_layers do not combine (dynamo fails tracing liger's autograd functions); compile_layers is the
faster. On CPU these are off (the CPU trains in fp32 and liger needs Triton on a GPU).
"""

from __future__ import annotations

import contextlib

import torch

from records.errors import InputError


def load_kwargs(t) -> dict:
    """from_pretrained keywords of the train section `t` (the attention kernel)."""
    return {"attn_implementation": t.attn_implementation} if t.attn_implementation else {}


def peft_kwargs(t) -> dict:
    """get_peft_model keywords: LoRA weights in the base dtype when `t.bf16_adapters`."""
    return {"autocast_adapter_dtype": not t.bf16_adapters}


def fuse(base, t) -> None:
    """liger-kernel's RMSNorm, RoPE and SwiGLU in place of the model's own (before LoRA wraps it)."""
    if not t.liger:
        return
    import liger_kernel.transformers as liger  # config validation checked it is installed

    model_type = base.config.model_type
    apply = getattr(liger, f"apply_liger_kernel_to_{model_type}", None)
    if apply is None:
        raise InputError(f"train.liger: liger-kernel has no kernels for model type {model_type!r}")
    # The loss is ours (answer positions only): liger's cross-entropy patches stay off.
    apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=base)


def compile_layers(base, t) -> None:
    """torch.compile each decoder layer (after LoRA wraps its projections)."""
    if not t.compile_layers:
        return
    for layer in base.get_decoder().layers:
        layer.compile()  # dynamic=None: static for the fixed packed width


@contextlib.contextmanager
def generation_mode(causal_lm):
    """Generation runs eager with SDPA: compiled training layers and flex attention would recompile
    for every decode shape."""
    impl = causal_lm.config._attn_implementation
    switch = impl == "flex_attention"
    if switch:
        causal_lm.set_attn_implementation("sdpa")
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        if switch:
            causal_lm.set_attn_implementation(impl)
