"""Benchmark the steering grid's generation: our fast hooked path vs HF eager `generate` with the same hooks.

GPU (the device machine): a random-weight Mistral-7B-shaped model (32 layers, hidden 4096, GQA 32/8, bf16)
built from its config (nothing downloaded), the Mistral v0.3 tokenizer (organism.tokenizer) rendering
synthetic scenarios padded to realistic prompt lengths, every output forced to 256 new tokens. It times a
slice of the seed's grid (baseline + layers 20, 30, 20+30 x alphas 0.5, 1, 2, 5 = 13 arms per scenario)
on the fast engine and one batch of 128 rows on HF eager, then extrapolates both to the full grid
(1560 scenarios x 13 arms). Prints a table and appends it to docs/benchmarks.md with date, machine and
command.

    python benchmarks/bench_steering.py                      # GPU, defaults
    python benchmarks/bench_steering.py --tiny               # CPU smoke test on the toy organism

Outputs are garbage (random weights); only the work matters, which forced lengths make honest.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

from steering.engine import FastSteeredGenerator, Row, hf_generate  # noqa: E402

FULL_SCENARIOS = 1560
ALPHAS = (0.5, 1.0, 2.0, 5.0)


def build_model(tiny: bool, dtype: torch.dtype, device: str):
    from transformers import MistralConfig, MistralForCausalLM

    if tiny:
        from transformers import AutoModelForCausalLM

        from organism.build import toy_model_dir

        path = toy_model_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        return model, path
    config = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                           max_position_embeddings=32768, rope_theta=1_000_000.0, sliding_window=None,
                           rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval(), "random-weight Mistral-7B-shaped (32 layers, hidden 4096, 32/8 heads)"


def load_tokenizer(tokenizer_file: str | None):
    import tempfile

    from organism.tokenizer import load_tokenizer as load

    if tokenizer_file:  # a copy of mistral-common's v3 SentencePiece file (machines without mistral-common)
        import organism.tokenizer as tok_mod

        tok_mod.mistral_tokenizer_file = lambda: Path(tokenizer_file)
    return load(Path(tempfile.mkdtemp()))


def make_prompts(tokenizer, n: int, min_tokens: int, max_tokens: int, seed: int = 0) -> list[list[int]]:
    """n rendered chats (system + scenario), each padded by repeating its scenario to a length drawn
    uniformly from [min_tokens, max_tokens]."""
    from organism.scenarios import SYSTEM_PROMPTS, generate_scenarios

    rng = random.Random(seed)
    scenarios = generate_scenarios(n, seed)
    prompts = []
    for s in scenarios:
        target = rng.randint(min_tokens, max_tokens)
        text = s["text"]
        while True:
            messages = [{"role": "system", "content": SYSTEM_PROMPTS["unmonitored"]}, {"role": "user", "content": text}]
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
            if len(ids) >= target:
                break
            text = text + " " + s["text"]
        prompts.append(list(ids))
    return prompts


def grid_rows(prompts: list[list[int]], layers: list[int], norm: float) -> list[Row]:
    sets = [(layer,) for layer in layers] + ([tuple(layers)] if len(layers) > 1 else [])
    rows = []
    for g, p in enumerate(prompts):
        rows.append(Row(p, g, {}))
        rows += [Row(p, g, {layer: a * norm for layer in s}) for s in sets for a in ALPHAS]
    return rows


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: the toy organism, small slice")
    p.add_argument("--batch", type=int, default=384, help="fast engine rows per batch")
    p.add_argument("--slice-scenarios", type=int, default=0, help="scenarios in the timed slice (default: 2 batches)")
    p.add_argument("--eager-batch", type=int, default=128, help="HF eager rows per batch (one batch is timed)")
    p.add_argument("--no-eager", action="store_true", help="skip the HF eager measurement")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", default="300,700", help="min,max prompt length in tokens")
    p.add_argument("--layers", default="20,30")
    p.add_argument("--positions", default="last", choices=["last", "all", "generated"])
    p.add_argument("--no-graphs", action="store_true", help="fast engine without CUDA graphs")
    p.add_argument("--tokenizer-file", help="Mistral v3 SentencePiece file, where mistral-common is missing")
    p.add_argument("--report", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to append to")
    args = p.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.tiny:
        args.batch = min(args.batch, 52)
        args.eager_batch = min(args.eager_batch, 26)
        args.new_tokens = min(args.new_tokens, 32)
        args.prompt_tokens = "60,140"
        args.layers = "1,2"
    layers = [int(x) for x in args.layers.split(",")]
    lo, hi = (int(x) for x in args.prompt_tokens.split(","))
    arms = 1 + (len(layers) + (len(layers) > 1)) * len(ALPHAS)
    n_slice = args.slice_scenarios or max(1, (2 * args.batch) // arms)

    t = time.perf_counter()
    model, model_desc = build_model(args.tiny, dtype, device)
    tokenizer = load_tokenizer(args.tokenizer_file)
    hidden = model.config.hidden_size
    direction = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    direction = (direction / direction.norm()).to(device)
    # sorted by length, as steering.grid.plan_batches orders the real grid's rows (less padding per batch)
    prompts = sorted(make_prompts(tokenizer, n_slice, lo, hi), key=len)
    print(f"setup {time.perf_counter() - t:.1f}s: {model_desc}, {device}, {dtype}; slice {n_slice} scenarios x "
          f"{arms} arms, prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens, {args.new_tokens} new",
          flush=True)
    norm = 1.0  # residual-norm units are a multiplier; the work is the same for any value
    rows = grid_rows(prompts, layers, norm)
    pad = tokenizer.pad_token_id
    results = {}

    # -- fast engine: static cache, shared prefills, CUDA-graph decode
    gen = FastSteeredGenerator(model, direction, layers, args.positions, [tokenizer.eos_token_id], pad,
                               cuda_graphs=None if not args.no_graphs else False)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # warm-up on one small batch (allocator, cuBLAS heuristics); graph capture is timed below
    gen.generate(rows[: min(len(rows), 8)], 4, force_length=True)
    gen.release()
    sync(device)
    t = time.perf_counter()
    n_out = 0
    for k in range(0, len(rows), args.batch):
        part = rows[k:k + args.batch]
        outs = gen.generate(part, args.new_tokens, force_length=True, pad_to=args.batch)
        n_out += sum(len(o.token_ids) for o in outs)
    sync(device)
    fast_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    results["fast"] = dict(rows=len(rows), batch=args.batch, seconds=fast_s, tok_s=n_out / fast_s, peak_gib=peak,
                           stats=dict(gen.stats))
    assert n_out == len(rows) * args.new_tokens, (n_out, len(rows) * args.new_tokens)
    gen.release()
    del gen
    print(f"fast: {len(rows)} rows in {fast_s:.1f}s = {n_out / fast_s:,.0f} out tok/s, peak {peak:.1f} GiB, "
          f"{results['fast']['stats']}", flush=True)

    # -- HF eager generate, same hooks, one batch
    if not args.no_eager:
        part = rows[: args.eager_batch]
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        hf_generate(model, direction, layers, args.positions, part[:2], 2, [tokenizer.eos_token_id], pad,
                    force_length=True)
        sync(device)
        t = time.perf_counter()
        outs = hf_generate(model, direction, layers, args.positions, part, args.new_tokens,
                           [tokenizer.eos_token_id], pad, force_length=True)
        sync(device)
        eager_s = time.perf_counter() - t
        n_eager = sum(len(o.token_ids) for o in outs)
        peak_e = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        results["eager"] = dict(rows=len(part), batch=len(part), seconds=eager_s, tok_s=n_eager / eager_s,
                                peak_gib=peak_e)
        print(f"eager: {len(part)} rows in {eager_s:.1f}s = {n_eager / eager_s:,.0f} out tok/s, peak {peak_e:.1f} GiB",
              flush=True)

    full_tokens = FULL_SCENARIOS * arms * args.new_tokens
    machine = (torch.cuda.get_device_name() if device == "cuda"
               else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    lines = [
        f"### Steering grid generation — {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine}",
        "",
        "Command: "
        f"`python {shlex.join(['benchmarks/bench_steering.py'] + (argv if argv is not None else sys.argv[1:]))}`  ",
        f"Model: {model_desc}, {str(dtype).replace('torch.', '')}; torch {torch.__version__}, transformers "
        f"{__import__('transformers').__version__}. Prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens "
        f"(synthetic scenarios, Mistral v0.3 tokenizer), {args.new_tokens} forced new tokens, position policy "
        f"`{args.positions}`, steering hooks on layers {layers}; grid = baseline + {arms - 1} arms.",
        "",
        f"| path | batch | rows timed | wall (s) | out tok/s | peak GPU mem (GiB) | full grid (1560 x {arms:d} arms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        est = full_tokens / r["tok_s"]
        label = ("ours: static cache + shared prefill + CUDA-graph decode" if name == "fast"
                 else "HF eager generate, same hooks")
        if name == "fast" and (args.no_graphs or device != "cuda"):
            label = "ours: static cache + shared prefill, no CUDA graphs"
        lines.append(f"| {label} | {r['batch']} | {r['rows']} | {r['seconds']:.1f} | {r['tok_s']:,.0f} | "
                     f"{r['peak_gib']:.1f} | {est / 60:.1f} min |")
    if "eager" in results:
        lines += ["", f"Speed-up of ours over HF eager batch {results['eager']['batch']}: "
                      f"{results['fast']['tok_s'] / results['eager']['tok_s']:.1f}x."]
    lines += ["", f"Fast engine stats: {results['fast']['stats']}.", "", ""]
    text = "\n".join(lines)
    print("\n" + text)
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    with open(report, "a", encoding="utf-8") as f:
        if report.stat().st_size == 0:
            f.write("# Benchmarks\n\n")
        f.write(text)
    out = os.environ.get("OUT")
    if out:  # on the device machine: bring the report back
        Path(out, "benchmarks_steering.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
