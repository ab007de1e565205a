"""Time LoRA training of the explainer: our collator vs a padded-batch reference, same model, same run.

    python benchmarks/bench_training.py --tiny         # CPU: the toy organism, short sequences
    python benchmarks/bench_training.py                # GPU: random-weight Mistral-7B shape, r=128, bf16

GPU mode builds a random-weight Mistral-7B-shaped model (32 layers, hidden 4096, vocab 32768) in memory,
wraps it with LoRA r=128 on all linear projections (peft, as training/model.py does) and trains on
synthetic examples whose lengths are drawn uniformly from --min-len..--max-len with --answer-len scored
tokens each (Task 3 records: ~150-600 prompt tokens, ~15 answer tokens). Two collators, in this order:
- ours: training/data.py's length-grouped batches, right padding without a mask, logits only at the
  positions that predict answer tokens, loss averaged over answer tokens;
- padded: the reference's way: random batches padded to their longest row with an attention mask, full
  [batch, seq, vocab] logits and the HF loss.
Reports real (unpadded) tokens/s, MFU counting 4N FLOPs per token (LoRA: forward 2N + input-gradient 2N,
no weight gradients of the frozen base; N = base parameters) against the GPU's dense bf16 peak, padding
fraction and peak memory. Prints a table and appends it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def build_model(args, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    if args.tiny:
        from organism.build import toy_model_dir

        base = AutoModelForCausalLM.from_pretrained(toy_model_dir(), dtype=dtype).to(device)
    else:
        cfg = MistralConfig(vocab_size=32768, hidden_size=args.hidden, intermediate_size=int(args.hidden * 3.5),
                            num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128,
                            num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=1e6,
                            sliding_window=None, tie_word_embeddings=False)
        cfg._attn_implementation = args.attn
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        with torch.device(device):
            base = MistralForCausalLM(cfg)  # random weights, created on the GPU
        torch.set_default_dtype(previous)
    base.config.use_cache = False
    n_base = sum(p.numel() for p in base.parameters())
    model = get_peft_model(base, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    if args.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, n_base


def synthetic_examples(n: int, lo: int, hi: int, answer: int, vocab: int, seed: int):
    from training.data import Encoded

    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [1] + [rng.randrange(100, vocab) for _ in range(length - 1)]
        out.append(Encoded(ids=ids, prompt_len=length - answer, weight=1.0, vector=None, index=i))
    return out


def run_ours(model, examples, args, device, steps: int):
    """Length-grouped micro-batches, answer-only logits. Yields (real tokens, padded tokens) per step."""
    from training.data import answer_weight, collate, epoch_plan

    lm = model.get_base_model()
    plan = epoch_plan([len(e.ids) for e in examples], args.batch_size, 1, 0, 0, group_by_length=True)
    for k in range(steps):
        items = [examples[i] for i in plan[k % len(plan)][0]]
        b = collate(items, 0).to(device)
        hidden = lm.get_decoder()(input_ids=b.input_ids, use_cache=False).last_hidden_state
        logits = lm.get_output_embeddings()(hidden[b.rows, b.cols]).float()  # [n_answer, vocab]
        loss = (F.cross_entropy(logits, b.targets, reduction="none") * b.weights).sum() / answer_weight(items)
        yield loss, b.n_tokens, b.n_padded


def run_padded(model, examples, args, device, steps: int):
    """Random batches padded to their longest row, attention mask, full logits, HF loss."""
    from training.data import epoch_plan

    plan = epoch_plan([len(e.ids) for e in examples], args.batch_size, 1, 0, 0, group_by_length=False)
    for k in range(steps):
        items = [examples[i] for i in plan[k % len(plan)][0]]
        width = max(len(e.ids) for e in items)
        ids = torch.zeros(len(items), width, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        for row, e in enumerate(items):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            mask[row, : len(e.ids)] = 1
            labels[row, e.prompt_len: len(e.ids)] = torch.tensor(e.ids[e.prompt_len:])
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        yield out.loss, sum(len(e.ids) for e in items), len(items) * width


def measure(name, runner, model, examples, args, device, n_base: int, peak_tflops: float | None) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tokens = padded = 0
    t_start = time.perf_counter()
    warmup = max(1, args.warmup)  # the first steps pay for allocation and kernel selection
    for k, (loss, n_tok, n_pad) in enumerate(runner(model, examples, args, device, warmup + args.steps)):
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k == warmup - 1:
            _sync(device)
            t_start = time.perf_counter()
        elif k >= warmup:
            tokens += n_tok
            padded += n_pad
    _sync(device)
    seconds = time.perf_counter() - t_start
    tok_s = tokens / seconds
    row = {"collator": name, "tokens_per_s": tok_s, "step_s": seconds / args.steps,
           "padding_fraction": 1 - tokens / padded, "tokens": tokens}
    row["mfu"] = 4 * n_base * tok_s / (peak_tflops * 1e12) if peak_tflops else float("nan")
    row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del opt
    gc.collect()
    return row


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({platform.node()})"
    return f"CPU {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def peak_for_device(override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def format_table(rows: list[dict]) -> str:
    head = f"{'collator':<8} {'tok/s':>10} {'MFU':>7} {'s/step':>8} {'padding':>8} {'peak GiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['collator']:<8} {r['tokens_per_s']:>10,.0f} {r['mfu']:>7.1%} {r['step_s']:>8.3f} "
                     f"{r['padding_fraction']:>8.1%} {r['peak_mem_gib']:>9.1f}")
    if len(rows) == 2:
        lines.append(f"speed-up ours / padded: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    return "\n".join(lines)


def append_markdown(rows: list[dict], args, command: str) -> Path:
    path = REPO / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    shape = "toy organism (4 layers, hidden 128)" if args.tiny else f"random Mistral-7B shape ({args.layers} layers, hidden {args.hidden})"
    lines = [f"\n## LoRA training throughput: ours vs padded reference — {dt.date.today().isoformat()}", "",
             f"- machine: {machine()}; torch {torch.__version__}", f"- command: `{command}`",
             f"- model: {shape}, LoRA r={args.r} all-linear, {'bf16' if torch.cuda.is_available() else 'fp32'}, "
             f"attention {args.attn}, gradient checkpointing {args.gradient_checkpointing}",
             f"- data: {args.examples} synthetic examples, lengths uniform {args.min_len}-{args.max_len}, "
             f"{args.answer_len} answer tokens each; batch {args.batch_size}; {args.warmup} warm-up + {args.steps} timed steps",
             "- MFU counts 4N FLOPs per real token (N = base parameters) against the dense bf16 peak", "",
             "| collator | tokens/s | MFU | s/step | padding | peak GiB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['collator']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['step_s']:.3f} | "
              f"{r['padding_fraction']:.1%} | {r['peak_mem_gib']:.1f} |" for r in rows]
    if len(rows) == 2:
        lines.append(f"\nspeed-up ours / padded: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU: the toy organism, short sequences, few steps")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--r", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--answer-len", type=int, default=16)
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--attn", default="sdpa", help="attention implementation (sdpa | eager | flash_attention_2)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--only", choices=["ours", "padded"], help="run one collator")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: from its name)")
    p.add_argument("--no-markdown", action="store_true", help="do not append to docs/benchmarks.md")
    args = p.parse_args()
    if args.tiny:
        args.r, args.min_len, args.max_len, args.answer_len = min(args.r, 16), 60, 200, 12
        args.examples, args.warmup, args.steps = min(args.examples, 256), 1, min(args.steps, 6)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, n_base = build_model(args, device, dtype)
    vocab = model.get_base_model().config.vocab_size
    examples = synthetic_examples(args.examples, args.min_len, args.max_len, args.answer_len, vocab, 0)
    peak = peak_for_device(args.peak_tflops)
    rows = []
    for name, runner in (("ours", run_ours), ("padded", run_padded)):
        if args.only and args.only != name:
            continue
        rows.append(measure(name, runner, model, examples, args, device, n_base, peak))
        print(f"{name}: {rows[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    table = format_table(rows)
    print(f"\n{machine()}: {n_base / 1e6:,.1f}M base parameters, bf16 peak {peak or 'unknown'} TFLOP/s\n{table}")
    if not args.no_markdown:
        print(f"appended to {append_markdown(rows, args, ' '.join(['python'] + sys.argv))}")


if __name__ == "__main__":
    main()
