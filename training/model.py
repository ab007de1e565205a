"""The explainer: a transformers causal LM with a fresh peft LoRA adapter and a continuous-token embedder.

`build_explainer` loads it (LoRA r/alpha on every linear projection, optionally trainable embedding rows
for the answer tokens); `Explainer.loss_sum` is the training loss, `Explainer.generate` the greedy answers
that evaluation scores.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lm.batching import left_pad, pad_token_id, token_budget_batches
from lm.tokens import CHAT_TEMPLATE
from records.errors import InputError
from training import data as D
from training import packing as P
from training import speed as S
from training.config import TrainConfig
from training.continuous import ContinuousEmbedder

log = logging.getLogger(__name__)


def pick_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """cuda when asked or available; bf16 only on GPU (CPU trains in fp32)."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise InputError("device: cuda asked for, but no CUDA device is available")
    device = torch.device("cuda" if use_cuda else "cpu")
    return device, (torch.bfloat16 if use_cuda and cfg.train.bf16 else torch.float32)


def load_tokenizer(model_dir: str):
    """The explainer's tokenizer; a model without a chat template gets the Mistral v0.3-style one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tok, "chat_template", None):
        log.warning("%s has no chat template: using the Mistral v0.3-style template of lm/tokens.py", model_dir)
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token_id is None:
        # Pads are never scored or attended by real tokens, so any id works; EOS is always present.
        tok.pad_token = tok.eos_token
    return tok


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), as torch.cpu reports it."""
    return any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def uses_cpu_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether this run's CPU matrix products run in bf16 under autocast (train.cpu_precision)."""
    mode = cfg.train.cpu_precision
    return device.type == "cpu" and (mode == "bf16" or (mode == "auto" and native_bf16()))


@dataclass
class Explainer:
    model: torch.nn.Module  # the peft model
    tokenizer: object
    embedder: ContinuousEmbedder
    device: torch.device
    dtype: torch.dtype
    markers: dict[str, str]
    cpu_bf16: bool = False  # matrix products in bf16 under CPU autocast (train.cpu_precision)

    @property
    def causal_lm(self):
        return self.model.get_base_model()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """LoRA then projector parameters, in a fixed order (the optimizer state depends on it)."""
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.embedder.parameters())

    def embed(self, input_ids: torch.Tensor, vectors: torch.Tensor | None) -> torch.Tensor:
        return self.embedder(self.causal_lm.get_input_embeddings(), input_ids, vectors)

    @contextlib.contextmanager
    def _training_precision(self):
        """train.cpu_precision bf16: the forward under CPU bf16 autocast, with the eager attention kernel for
        it (the CPU's bf16 SDPA backward is slower than fp32's; SDPA stays for generation, where eager
        attention over long few-shot prompts doubled the time)."""
        if not self.cpu_bf16:
            yield
            return
        config = self.causal_lm.config
        kernel = config._attn_implementation
        config._attn_implementation = "eager"
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        finally:
            config._attn_implementation = kernel

    def loss_sum(self, batch: D.Batch) -> torch.Tensor:
        """Weighted sum of answer-token cross-entropies of one micro-batch (the caller divides)."""
        with self._training_precision():
            embeds = self.embed(batch.input_ids, batch.vectors)  # [batch, seq, hidden]
            extra = P.decoder_kwargs(batch, self.causal_lm.config._attn_implementation, self.dtype)  # packed rows
            hidden = self.causal_lm.get_decoder()(inputs_embeds=embeds, use_cache=False, **extra).last_hidden_state
            # The vocabulary projection only where an answer token is predicted: [n_answer, vocab]
            logits = self.causal_lm.get_output_embeddings()(hidden[batch.rows, batch.cols]).float()
        ce = F.cross_entropy(logits, batch.targets, reduction="none")  # [n_answer]
        return (ce * batch.weights).sum()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], vectors: list[np.ndarray | None], max_new_tokens: int,
                 batch_size: int = 16, batch_tokens: int = 0) -> list[str]:
        """Greedy answers for token-id prompts (left-padded batches, sorted by length for little padding; at
        most `batch_size` prompts and, when `batch_tokens` > 0, that many tokens a batch, new ones included).
        `vectors[i]`: the prompt's vector [dim], or one row per placeholder in prompt order [n, dim], or None."""
        self.model.eval()
        pad = pad_token_id(self.tokenizer)
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        answers: dict[int, str] = {}
        for idx in token_budget_batches(order, lengths, batch_size, batch_tokens, extra=max_new_tokens):
            ids, mask = left_pad([prompts[i] for i in idx], pad)  # [batch, width] each
            ids, mask = ids.to(self.device), mask.to(self.device)
            # a prompt may hold several placeholders (few-shot: one per solved example): [n, dim] rows
            vecs = [np.atleast_2d(vectors[i]) for i in idx if vectors[i] is not None]
            vt = torch.from_numpy(np.concatenate(vecs)).to(self.device) if vecs else None
            embeds = self.embed(ids, vt)  # [batch, width, hidden]
            with S.generation_mode(self.causal_lm):
                out = self.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
            # With inputs_embeds only, generate returns just the new tokens: [batch, new]
            for i, text in zip(idx, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = text
        return [answers[i] for i in range(len(prompts))]


def build_explainer(cfg: TrainConfig, vector_dim: int | None, device: torch.device, dtype: torch.dtype,
                    tokenizer=None, markers: dict[str, str] | None = None,
                    token_indices: list[int] | None = None) -> Explainer:
    """Load the explainer, wrap it with a fresh LoRA adapter (r, alpha, all linear projections).

    `token_indices`: embedding rows trained besides LoRA (train.trainable_answer_tokens), or None.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lm.models import resolve_model

    if not cfg.train.peft_lora:
        raise InputError("train.peft_lora: false (full fine-tuning) is not supported; this stage trains LoRA adapters")
    model_dir = resolve_model(cfg.model_path, "model_path")
    tokenizer = tokenizer or load_tokenizer(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **S.load_kwargs(cfg.train)).to(device)
    base.config.use_cache = False
    S.fuse(base, cfg.train)
    lora = LoraConfig(r=cfg.train.lora_r, lora_alpha=cfg.train.lora_alpha or 2 * cfg.train.lora_r,
                      lora_dropout=cfg.train.lora_dropout, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM", trainable_token_indices=token_indices or None)
    model = get_peft_model(base, lora, **S.peft_kwargs(cfg.train))
    if cfg.train.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    S.compile_layers(base, cfg.train)
    markers = markers or {}
    rep_id = tokenizer.convert_tokens_to_ids(markers["continuous_rep"]) if markers else -1
    hidden = base.config.get_text_config().hidden_size
    embedder = ContinuousEmbedder(rep_id, vector_dim or hidden, hidden,
                                  use_proj=bool(vector_dim) and cfg.use_embed_proj).to(device)
    if vector_dim is None:
        embedder.projector = None  # text-only tasks: nothing to project
    return Explainer(model=model, tokenizer=tokenizer, embedder=embedder, device=device, dtype=dtype,
                     markers=markers, cpu_bf16=uses_cpu_bf16(cfg, device))


def trainable_tokens(cfg: TrainConfig, encoded: list[D.Encoded], examples: list, tokenizer) -> list[int] | None:
    """Embedding rows trained besides LoRA: the tokens of training answers (train.trainable_answer_tokens)
    and of the values of the slots named in train.trainable_slot_tokens (with and without a leading
    space, as a value tokenises mid-sentence or alone)."""
    ids: set[int] = set()
    if cfg.train.trainable_answer_tokens:
        ids.update(t for e in encoded for t in e.ids[e.prompt_len:])
    values = {ex.slots[name] for ex in examples for name in cfg.train.trainable_slot_tokens if ex.slots.get(name)}
    for value in values:
        for text in (value, " " + value):
            ids.update(tokenizer.encode(text, add_special_tokens=False))
    return sorted(ids) or None
