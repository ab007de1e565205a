"""Time LoRA training of the explainer: today's collator, the padded reference and the packed/fused variants.

    python benchmarks/bench_training.py --tiny         # CPU: the toy organism, short sequences
    python benchmarks/bench_training.py                # GPU: random-weight Mistral-7B shape, r=128, bf16
    python benchmarks/bench_training.py --check        # GPU: packed flex logits == unpacked, then exit
    python benchmarks/bench_training.py --parity 200   # GPU: loss curves of today vs packed, fp32 vs bf16 LoRA

GPU mode builds a random-weight Mistral-7B-shaped model (32 layers, hidden 4096, vocab 32768) in memory,
wraps it with LoRA r=128 on all linear projections (peft, through training/speed.py as training/model.py
does) and trains on synthetic examples whose lengths are drawn uniformly from --min-len..--max-len with
--answer-len scored tokens each (Task 3 records: ~150-600 prompt tokens, ~15 answer tokens). Variants, in
this order (a fresh model each; liger patches transformers' module functions, so its rows come last):
- padded: the reference's way: random batches padded to their longest row with an attention mask, full
  [batch, seq, vocab] logits and the HF loss (peft's default fp32 LoRA weights);
- today: training/data.py's length-grouped rows of --batch-size, right padding without a mask, logits
  only at answer positions, fp32 LoRA weights (what train.py ran before packing);
- today-cpu-bf16 (CPU only, in --tiny's set): today's rows with the forward under CPU bf16 autocast and the
  eager attention kernel (train.cpu_precision: bf16);
- packed-*: training/packing.py's fixed-width rows holding --batch-size x --accumulation examples on
  average, flex attention's document mask, answer-only logits; then bf16 LoRA weights, liger-kernel's
  RMSNorm/RoPE/SwiGLU, per-layer torch.compile, as the names say.
Reports real (unpadded) tokens/s, MFU counting 4N FLOPs per token (LoRA: forward 2N + input-gradient 2N,
no weight gradients of the frozen base; N = base parameters) against the GPU's dense bf16 peak, padding
fraction and peak memory. Prints a table and appends it to docs/benchmarks.md (--markdown-file elsewhere).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU

# name -> (collator, attention, train-section speed options)
VARIANTS = {
    "padded": ("padded", "sdpa", {}),
    "today": ("rows", "sdpa", {}),
    "rows-bf16": ("rows", "sdpa", {"bf16_adapters": True}),
    "today-cpu-bf16": ("rows", "eager", {"cpu_bf16": True}),  # train.cpu_precision bf16: CPU autocast
    "packed-fp32": ("packed", "flex_attention", {}),
    "packed-bf16": ("packed", "flex_attention", {"bf16_adapters": True}),
    "packed-bf16-compile": ("packed", "flex_attention", {"bf16_adapters": True, "compile_layers": True}),
    "packed-bf16-liger": ("packed", "flex_attention", {"bf16_adapters": True, "liger": True}),
}
# liger + compile_layers together failed on the H200 (dynamo cannot trace liger's autograd functions)
DEFAULT_VARIANTS = "padded,today,packed-fp32,packed-bf16,packed-bf16-compile,packed-bf16-liger"


def speed_options(attn: str, **options) -> SimpleNamespace:
    """The train-section fields training/speed.py reads."""
    base = {"attn_implementation": attn, "bf16_adapters": False, "liger": False, "compile_layers": False,
            "cpu_bf16": False}
    return SimpleNamespace(**{**base, **options})


def build_model(args, device: torch.device, dtype: torch.dtype, t: SimpleNamespace, layers: int | None = None,
                hidden: int | None = None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

    from training import speed as S

    if args.tiny:
        from organism.build import toy_model_dir

        base = AutoModelForCausalLM.from_pretrained(toy_model_dir(), dtype=dtype, **S.load_kwargs(t)).to(device)
    else:
        hidden = hidden or args.hidden
        cfg = MistralConfig(vocab_size=32768, hidden_size=hidden, intermediate_size=int(hidden * 3.5),
                            num_hidden_layers=layers or args.layers, num_attention_heads=hidden // 128,
                            num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=1e6,
                            sliding_window=None, tie_word_embeddings=False)
        cfg._attn_implementation = t.attn_implementation
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        with torch.device(device):
            base = MistralForCausalLM(cfg)  # random weights, created on the GPU
        torch.set_default_dtype(previous)
    base.config.use_cache = False
    n_base = sum(p.numel() for p in base.parameters())
    S.fuse(base, t)
    torch.manual_seed(1)  # the same LoRA initialisation for every variant
    model = get_peft_model(base, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"), **S.peft_kwargs(t))
    if args.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    S.compile_layers(base, t)
    return model, n_base


def synthetic_examples(n: int, lo: int, hi: int, answer: int, vocab: int, seed: int, classes: int = 0):
    """Random-token examples. `classes` > 0: learnable ones (for loss curves): the prompt carries a class
    marker token after BOS and at its end, and the answer is that class's fixed token sequence."""
    from training.data import Encoded

    rng = random.Random(seed)
    answers = [[rng.randrange(100, vocab) for _ in range(answer)] for _ in range(classes)]
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [1] + [rng.randrange(100, vocab) for _ in range(length - 1)]
        if classes:
            c = rng.randrange(classes)
            ids[1] = ids[length - answer - 1] = 10 + c
            ids[length - answer:] = answers[c]
        out.append(Encoded(ids=ids, prompt_len=length - answer, weight=1.0, vector=None, index=i))
    return out


def answer_loss_sum(model, b, dtype) -> torch.Tensor:
    """Weighted sum of answer-token cross-entropies, as training/train.py's Explainer.loss_sum."""
    from training.packing import decoder_kwargs

    lm = model.get_base_model()
    extra = decoder_kwargs(b, lm.config._attn_implementation, dtype)
    hidden = lm.get_decoder()(input_ids=b.input_ids, use_cache=False, **extra).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[b.rows, b.cols]).float()  # [n_answer, vocab]
    return (F.cross_entropy(logits, b.targets, reduction="none") * b.weights).sum()


def step_plan(collator: str, examples, args) -> tuple[list[list[list[int]]], int]:
    """Optimizer steps -> micro-batches -> example positions, and the packed row width (0: not packed)."""
    from training import data as D
    from training import packing as P

    lengths = [len(e.ids) for e in examples]
    if collator == "packed":
        lay = P.layout(lengths, args.batch_size, args.accumulation, args.pack_tokens)
        return P.epoch_plan(lengths, lay, 0, 0), lay.width
    return D.epoch_plan(lengths, args.batch_size, args.accumulation, 0, 0, group_by_length=collator == "rows"), 0


def run_steps(collator: str, model, examples, args, device, dtype, steps: int, cpu_bf16: bool = False):
    """Yields one optimizer step's (loss, real tokens, padded tokens, examples) after its backward passes;
    `cpu_bf16`: the forward under CPU bf16 autocast, as Explainer.loss_sum with train.cpu_precision bf16."""
    from training import data as D
    from training import packing as P

    plan, width = step_plan(collator, examples, args)
    for k in range(steps):
        micro = [[examples[i] for i in mb] for mb in plan[k % len(plan)]]
        items = [e for mb in micro for e in mb]
        denom = D.answer_weight(items)
        total, n_tok, n_pad = 0.0, 0, 0
        for mb in micro:
            if collator == "padded":
                loss, real, padded = padded_loss(model, mb, device)
                loss = loss * D.answer_weight(mb) / denom  # HF's loss is the micro-batch mean
            else:
                b = (P.collate(mb, 0, width) if width else D.collate(mb, 0)).to(device)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                    loss = answer_loss_sum(model, b, dtype) / denom
                real, padded = b.n_tokens, b.n_padded
            loss.backward()
            total += loss.detach()
            n_tok, n_pad = n_tok + real, n_pad + padded
        yield total, n_tok, n_pad, len(items)


def padded_loss(model, items, device):
    """The reference: padded to the longest row, attention mask, full logits, HF loss."""
    width = max(len(e.ids) for e in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, e in enumerate(items):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
        labels[row, e.prompt_len: len(e.ids)] = torch.tensor(e.ids[e.prompt_len:])
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
    return out.loss, sum(len(e.ids) for e in items), len(items) * width


def make_optimizer(model, lr: float):
    params = [p for p in model.parameters() if p.requires_grad]
    return params, torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def measure(name, model, examples, args, device, dtype, n_base: int, peak_tflops: float | None) -> dict:
    collator = VARIANTS[name][0]
    params, opt = make_optimizer(model, 1e-5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tokens = padded = n_examples = 0
    warmup = max(1, args.warmup)  # the first steps pay for compiling, allocation and kernel selection
    t0 = t_start = time.perf_counter()
    cpu_bf16 = VARIANTS[name][2].get("cpu_bf16", False)
    for k, (_, n_tok, n_pad, n_ex) in enumerate(run_steps(collator, model, examples, args, device, dtype,
                                                        warmup + args.steps, cpu_bf16)):
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k == warmup - 1:
            _sync(device)
            t_start = time.perf_counter()
            warm_s = t_start - t0
        elif k >= warmup:
            tokens, padded, n_examples = tokens + n_tok, padded + n_pad, n_examples + n_ex
    _sync(device)
    seconds = time.perf_counter() - t_start
    tok_s = tokens / seconds
    row = {"variant": name, "tokens_per_s": tok_s, "step_s": seconds / args.steps,
           "examples_per_step": n_examples / args.steps, "padding_fraction": 1 - tokens / padded, "tokens": tokens,
           "warmup_s": warm_s}
    row["mfu"] = 4 * n_base * tok_s / (peak_tflops * 1e12) if peak_tflops else float("nan")
    row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del opt
    return row


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(model) -> None:
    del model
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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


def speedups(rows: list[dict]) -> str:
    by = {r["variant"]: r["tokens_per_s"] for r in rows}
    if "today" not in by:
        return ""
    best = max(rows, key=lambda r: r["tokens_per_s"])
    parts = [f"best ({best['variant']}) / today: {best['tokens_per_s'] / by['today']:.2f}x"]
    if "padded" in by:
        parts.append(f"today / padded: {by['today'] / by['padded']:.2f}x")
    return "; ".join(parts)


def format_table(rows: list[dict]) -> str:
    head = (f"{'variant':<26} {'tok/s':>9} {'MFU':>7} {'s/step':>7} {'ex/step':>8} {'padding':>8} "
            f"{'peak GiB':>9} {'warm-up s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<26} {r['tokens_per_s']:>9,.0f} {r['mfu']:>7.1%} {r['step_s']:>7.3f} "
                     f"{r['examples_per_step']:>8.1f} {r['padding_fraction']:>8.1%} {r['peak_mem_gib']:>9.1f} "
                     f"{r['warmup_s']:>9.1f}")
    lines.append(speedups(rows))
    return "\n".join(lines)


def append_markdown(path: Path, rows: list[dict], args, command: str) -> Path:
    shape = ("toy organism (4 layers, hidden 128)" if args.tiny
             else f"random Mistral-7B shape ({args.layers} layers, hidden {args.hidden})")
    lines = [f"\n## LoRA training throughput: today, padded reference, packed/fused — {dt.date.today().isoformat()}",
             "",
             f"- machine: {machine()}; torch {torch.__version__}", f"- command: `{command}`",
             f"- model: {shape}, LoRA r={args.r} all-linear, {'bf16' if torch.cuda.is_available() else 'fp32'}, "
             f"gradient checkpointing {args.gradient_checkpointing}",
             f"- data: {args.examples} synthetic examples, lengths uniform {args.min_len}-{args.max_len}, "
             f"{args.answer_len} answer tokens each; steps of {args.batch_size} x {args.accumulation} examples "
             f"(packed: that many on average, rows of at most {args.pack_tokens} tokens); {args.warmup} warm-up + "
             f"{args.steps} timed steps",
             "- MFU counts 4N FLOPs per real token (N = base parameters) against the dense bf16 peak", "",
             "| variant | tokens/s | MFU | s/step | examples/step | padding | peak GiB | warm-up s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['step_s']:.3f} | "
              f"{r['examples_per_step']:.1f} | {r['padding_fraction']:.1%} | {r['peak_mem_gib']:.1f} | "
              f"{r['warmup_s']:.1f} |" for r in rows]
    lines.append(f"\n{speedups(rows)}")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def check_packed(args, device) -> None:
    """Packed rows give each example the logits it gets alone (fresh random examples and weights): flex
    attention on the GPU, in fp32 and bf16; and a row without the document mask must not pass."""
    from training import data as D
    from training import packing as P

    for dtype, tol in ((torch.float32, 1e-3), (torch.bfloat16, 2e-2)):
        t = speed_options("flex_attention", bf16_adapters=True)
        model, _ = build_model(args, device, dtype, t, layers=4, hidden=1024)
        for p in model.parameters():  # LoRA B starts at zero: give the adapters an effect to check
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.02)
        lm = model.get_base_model()
        examples = synthetic_examples(12, args.min_len, args.max_len, args.answer_len, 32768, seed=int(time.time()))
        lay = P.layout([len(e.ids) for e in examples], 12, 1, args.pack_tokens)
        with torch.no_grad():
            alone = []
            for e in examples:  # one example per call, plain causal attention
                b = D.collate([e], 0).to(device)
                h = lm.get_decoder()(input_ids=b.input_ids, use_cache=False).last_hidden_state
                alone.append(lm.get_output_embeddings()(h[b.rows, b.cols]).float())
            ref = torch.cat(alone)
            out, leaky = [], []
            for row in (r for step in P.epoch_plan([len(e.ids) for e in examples], lay, 0, 0) for r in step):
                b = P.collate([examples[i] for i in row], 0, lay.width).to(device)
                order = [examples[i] for i in row]
                h = lm.get_decoder()(input_ids=b.input_ids, use_cache=False,
                                     **P.decoder_kwargs(b, "flex_attention", dtype)).last_hidden_state
                # the bug this must catch: no document mask, positions running on across the row
                h_leak = lm.get_decoder()(input_ids=b.input_ids, use_cache=False).last_hidden_state
                out.append((order, lm.get_output_embeddings()(h[b.rows, b.cols]).float()))
                leaky.append((order, lm.get_output_embeddings()(h_leak[b.rows, b.cols]).float()))
        index = {id(e): k for k, e in enumerate(examples)}

        def reorder(parts, index=index, examples=examples):
            pieces = {}
            for order, logits in parts:
                for j, e in enumerate(order):
                    pieces[index[id(e)]] = logits[j * args.answer_len:(j + 1) * args.answer_len]
            return torch.cat([pieces[k] for k in range(len(examples))])

        err = float((reorder(out) - ref).norm() / ref.norm())
        err_leak = float((reorder(leaky) - ref).norm() / ref.norm())
        ok = err < tol and err_leak > 10 * tol
        print(f"check {str(dtype).replace('torch.', '')}: packed flex vs alone rel err {err:.2e} (tol {tol:g}); "
              f"without the document mask {err_leak:.2e}: {'OK' if ok else 'FAILED'}", flush=True)
        _free(model)
        if not ok:
            raise SystemExit(1)


def parity(args, device, dtype, out: Path) -> None:
    """The same learnable data and recipe (AdamW lr --lr, clip 1) through today's rows with fp32 LoRA,
    packed rows with fp32 LoRA, and packed rows with bf16 LoRA (+ the variants' speed options)."""
    examples = synthetic_examples(args.examples, args.min_len, args.max_len, args.answer_len, 32768, 0, classes=32)
    curves = {}
    for name in args.parity_variants.split(","):
        collator, attn, options = VARIANTS[name]
        model, _ = build_model(args, device, dtype, speed_options(attn, **options))
        params, opt = make_optimizer(model, args.lr)
        losses, t0 = [], time.perf_counter()
        for loss, *_ in run_steps(collator, model, examples, args, device, dtype, args.parity):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        curves[name] = losses
        print(f"parity {name}: {args.parity} steps in {time.perf_counter() - t0:.0f} s, first loss {losses[0]:.3f}, "
              f"last 10 mean {sum(losses[-10:]) / 10:.3f}", flush=True)
        del opt, params
        _free(model)
    (out / "parity.json").write_text(json.dumps(curves))
    windows = [(0, 10)] + [(s - 10, s) for s in range(50, args.parity + 1, 50)]
    head = "| variant | " + " | ".join(f"steps {a + 1}-{b}" for a, b in windows) + " |"
    lines = [head, "|---" * (len(windows) + 1) + "|"]
    for name, losses in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{sum(losses[a:b]) / (b - a):.3f}" for a, b in windows) + " |")
    print("\nmean answer-token loss over step windows\n" + "\n".join(lines))
    (out / "parity.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, losses in curves.items():
            ax.plot(range(1, len(losses) + 1), losses, label=name, lw=1)
        ax.set(xlabel="optimizer step", ylabel="answer-token loss", yscale="log",
               title="LoRA r=128, random Mistral-7B shape: loss parity")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "parity.png", dpi=110)
    except ImportError:
        print("no matplotlib: parity.png not drawn")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU: the toy organism, short sequences, few steps")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--r", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (rows)")
    p.add_argument("--accumulation", type=int, default=2, help="micro-batches per step (the GPU YAMLs: 2)")
    p.add_argument("--pack-tokens", type=int, default=8192)
    p.add_argument("--min-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--answer-len", type=int, default=16)
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU (default: from its name)")
    p.add_argument("--check", action="store_true", help="check packed flex logits against unpacked, then exit")
    p.add_argument("--parity", type=int, default=0, help="train this many steps per parity variant instead")
    p.add_argument("--parity-variants", default="today,packed-fp32,packed-bf16-compile")
    p.add_argument("--lr", type=float, default=5e-5, help="parity runs' learning rate (the GPU recipe's)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for rows.jsonl and parity files")
    p.add_argument("--markdown-file", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--no-markdown", action="store_true", help="do not append to the markdown file")
    args = p.parse_args()
    if args.tiny:
        args.r, args.min_len, args.max_len, args.answer_len = min(args.r, 16), 60, 200, 12
        args.examples, args.warmup, args.steps = min(args.examples, 256), 1, min(args.steps, 4)
        if args.variants == DEFAULT_VARIANTS:
            args.variants = "padded,today,today-cpu-bf16,packed-fp32"
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.check:
        check_packed(args, device)
        return
    if args.parity:
        parity(args, device, dtype, out)
        return
    peak = peak_for_device(args.peak_tflops)
    rows, n_base, examples = [], 0, None
    for name in args.variants.split(","):
        collator, attn, options = VARIANTS[name]
        if options.get("cpu_bf16") and device.type != "cpu":
            continue  # a CPU precision: nothing to measure on a GPU
        if device.type == "cpu" and attn == "flex_attention":
            attn = "sdpa"  # the CPU run checks the mechanics; flex attention is the GPU's
        model, n_base = build_model(args, device, dtype, speed_options(attn, **options))
        if examples is None:
            vocab = model.get_base_model().config.vocab_size
            examples = synthetic_examples(args.examples, args.min_len, args.max_len, args.answer_len, vocab, 0)
        rows.append(measure(name, model, examples, args, device, dtype, n_base, peak))
        _free(model)
        with open(out / "rows.jsonl", "a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(f"{name}: {rows[-1]['tokens_per_s']:,.0f} tok/s, {rows[-1]['mfu']:.1%} MFU, "
              f"{rows[-1]['peak_mem_gib']:.1f} GiB, warm-up {rows[-1]['warmup_s']:.0f} s", flush=True)
    table = format_table(rows)
    print(f"\n{machine()}: {n_base / 1e6:,.1f}M base parameters, bf16 peak {peak or 'unknown'} TFLOP/s\n{table}")
    if not args.no_markdown:
        path = append_markdown(Path(args.markdown_file), rows, args, " ".join(["python"] + sys.argv))
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
