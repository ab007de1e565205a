"""Time the explainer's greedy answers (training/model.py Explainer.generate, what evaluate runs for the
explainer, the untrained model, the few-shot baseline and the per-template scores) at several batchings.

    python benchmarks/bench_explainer_generation.py --tiny                      # CPU: mechanics, small shape
    python benchmarks/bench_explainer_generation.py --out-json $OUT/eg.json     # GPU: SmolLM2-135M shape
    python benchmarks/bench_explainer_generation.py --shape mistral7b           # GPU: Mistral-7B shape
    python benchmarks/bench_explainer_generation.py --from-json eg.json         # append a device run here

A random-weight model of the named shape (bf16 on GPU) gets a LoRA adapter on every linear projection, as
build_explainer gives it. Two prompt sets of random tokens: `--items` short prompts (Task 3's questions:
--short-len tokens) and `--fewshot-items` long ones (the few-shot baseline at k = 8: --long-len tokens).
Every answer is forced to --new-tokens tokens (no end of sequence), so the timings are the worst case and
equal across batchings. Batchings: "ROWS" or "ROWS:TOKENS" (test.batch_size, test.batch_tokens). Prints a
table and appends it to docs/benchmarks.md (--no-markdown: not).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.continuous import ContinuousEmbedder  # noqa: E402
from training.model import Explainer  # noqa: E402

SHAPES = {  # name -> (layers, hidden, intermediate, heads, kv heads, vocab)
    "tiny": (2, 128, 384, 4, 2, 4096),
    "smollm2": (30, 576, 1536, 9, 3, 49152),  # SmolLM2-135M-Instruct, the rehearsal's explainer
    "mistral7b": (32, 4096, 14336, 32, 8, 32768),
}


class ForcedLengthTokenizer:
    """The two things Explainer.generate reads: a pad id, no end of sequence (every answer runs to the
    limit), and a decode that reports lengths."""

    pad_token_id, eos_token_id = 0, None

    def batch_decode(self, out, skip_special_tokens=True):
        return [str(len(row)) for row in out.tolist()]


def build(shape: str, device: torch.device, dtype: torch.dtype, r: int) -> Explainer:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, inter, heads, kv, vocab = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=8192,
                      tie_word_embeddings=shape != "mistral7b")
    torch.manual_seed(0)
    with torch.device(device):
        base = LlamaForCausalLM(cfg).to(dtype)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM"))
    embedder = ContinuousEmbedder(-1, hidden, hidden, use_proj=False).to(device)
    embedder.projector = None
    return Explainer(model=model, tokenizer=ForcedLengthTokenizer(), embedder=embedder, device=device, dtype=dtype,
                     markers={})


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(rng.randint(int(length * 0.8), length))] for _ in range(n)]


def time_batching(explainer: Explainer, sets: dict[str, list[list[int]]], batching: str, new_tokens: int) -> dict:
    rows, _, tokens = batching.partition(":")
    row = {"batching": batching}
    for name, ps in sets.items():
        if explainer.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = explainer.generate(ps, [None] * len(ps), new_tokens, int(rows), int(tokens or 0))
        if explainer.device.type == "cuda":
            torch.cuda.synchronize()
        row[f"{name}_s"] = time.perf_counter() - t
        row[f"{name}_peak_gib"] = (torch.cuda.max_memory_allocated() / 2**30 if explainer.device.type == "cuda"
                                   else float("nan"))
        assert all(int(o) == new_tokens for o in out), "an answer stopped before the forced length"
    return row


def table(rows: list[dict], sets: dict[str, int]) -> list[str]:
    head = "| batching (rows:tokens) | " + " | ".join(f"{n} ({k} prompts) s | peak GiB" for n, k in sets.items()) + " |"
    lines = [head, "|---" * (1 + 2 * len(sets)) + "|"]
    for r in rows:
        cells = [f"{r[f'{n}_s']:.1f} | {r[f'{n}_peak_gib']:.1f}" for n in sets]
        lines.append(f"| {r['batching']} | " + " | ".join(cells) + " |")
    return lines


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({platform.node()})"
    return f"CPU {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def append_markdown(saved: dict) -> Path:
    path = REPO / "docs" / "benchmarks.md"
    lines = [f"\n## Explainer answers (evaluate's generation) by batching — {saved['date']}", "",
             f"- machine: {saved['machine']}", f"- command: `{saved['command']}`",
             f"- shape: {saved['shape']} (random weights, {saved['dtype']}, LoRA r={saved['r']}), "
             f"{saved['new_tokens']} forced new tokens an answer", "", *table(saved["rows"], saved["sets"])]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU: a 2-layer shape and few prompts (mechanics)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--items", type=int, default=600, help="short prompts (the rehearsal's evaluate: 600)")
    p.add_argument("--short-len", type=int, default=320)
    p.add_argument("--fewshot-items", type=int, default=200)
    p.add_argument("--long-len", type=int, default=2800, help="few-shot prompt length (k = 8)")
    p.add_argument("--new-tokens", type=int, default=48, help="test.max_new_tokens")
    p.add_argument("--batchings", default="32,256:131072", help="comma-separated ROWS[:TOKENS]")
    p.add_argument("--out-json", help="also write the results here (a device run brings them back)")
    p.add_argument("--from-json", help="append a saved run's table to docs/benchmarks.md and exit")
    p.add_argument("--no-markdown", action="store_true")
    args = p.parse_args()
    if args.from_json:
        print(f"appended to {append_markdown(json.loads(Path(args.from_json).read_text()))}")
        return
    if args.tiny:
        args.shape, args.items, args.short_len, args.fewshot_items, args.long_len = "tiny", 24, 40, 8, 200
        args.new_tokens = min(args.new_tokens, 8)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    explainer = build(args.shape, device, dtype, args.r)
    vocab = SHAPES[args.shape][5]
    sets = {"short": prompts(args.items, args.short_len, vocab, 0),
            "few-shot": prompts(args.fewshot_items, args.long_len, vocab, 1)}
    explainer.generate(sets["short"][:4], [None] * 4, 2, 4)  # warm-up: kernels, allocator
    rows = []
    for batching in args.batchings.split(","):
        rows.append(time_batching(explainer, sets, batching, args.new_tokens))
        print(json.dumps(rows[-1]), flush=True)
    saved = {"date": dt.date.today().isoformat(), "machine": machine(), "shape": args.shape, "r": args.r,
             "dtype": str(dtype).replace("torch.", ""), "new_tokens": args.new_tokens,
             "command": shlex.join(["python", *sys.argv]), "sets": {n: len(v) for n, v in sets.items()}, "rows": rows}
    print("\n".join(table(rows, saved["sets"])))
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(saved))
    if not args.no_markdown and not args.out_json:
        print(f"appended to {append_markdown(saved)}")


if __name__ == "__main__":
    main()
