"""Time the Task 3 paired pass: our whole pass vs the bare vLLM engine vs HF `generate`, same prompts.

    python benchmarks/bench_generation.py --tiny            # CPU: toy organism, vLLM vs HF, one run each
    python benchmarks/bench_generation.py --model-dir /tmp/m7b --make-random-model   # GPU: Mistral-7B shape
    python benchmarks/bench_generation.py --model-dir /tmp/m7b --make-random-model --skip-hf --skip-bare \
        --scenarios 390 --sample-k 8      # GPU: sampled mode (k=8, T=1) against the greedy pass, same engine

GPU mode builds (once) a random-weight Mistral-7B-shaped model (32 layers, hidden 4096, bf16) on the real
Mistral v0.3 tokenizer, renders 1560 scenarios of ~240-440 tokens under both system prompts (3120
prompts) and forces every output to `--max-tokens` (ignore_eos + min_tokens), so timings do not depend on
when random weights happen to emit EOS. Engine start is timed separately from generation. Results are
printed as a table and appended to docs/benchmarks.md with the date, machine and command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def long_scenarios(n: int, seed: int, tokenizer, lo: int = 240, hi: int = 440) -> list[dict]:
    """Gold-style scenarios of lo..hi tokens: toy scenario sentences joined until the drawn length."""
    from organism.scenarios import generate_scenarios

    pool = [s["text"] for s in generate_scenarios(400, seed)]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        target, parts, length = rng.randint(lo, hi), [], 0
        while length < target:
            sentence = rng.choice(pool)
            parts.append(sentence)
            length += len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
        out.append({"text": " ".join(parts), "label": "alignment_faking" if i % 2 else "aligned", "source": "bench"})
    return out


def make_random_model(model_dir: Path, layers: int, hidden: int) -> None:
    """Save a random-weight Mistral-7B-shaped model (bf16) with the real v0.3 tokenizer; no download."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from organism.tokenizer import load_tokenizer

    if (model_dir / "config.json").exists():
        return
    cfg = MistralConfig(vocab_size=32768, hidden_size=hidden, intermediate_size=int(hidden * 3.5),
                        num_hidden_layers=layers, num_attention_heads=hidden // 128, num_key_value_heads=8,
                        head_dim=128, max_position_embeddings=32768, rope_theta=1e6, sliding_window=None,
                        torch_dtype="bfloat16", tie_word_embeddings=False)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = MistralForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True)
    tok = load_tokenizer(model_dir / "_tok")
    tok.save_pretrained(model_dir)
    shutil.rmtree(model_dir / "_tok", ignore_errors=True)
    del model
    gc.collect()
    if torch.cuda.is_available():  # hand the ~28 GiB back: the engine that starts next sizes itself by free memory
        torch.cuda.empty_cache()


def render_all(tokenizer, scenarios) -> list[tuple[str, list[int]]]:
    from lm import chat
    from lm.chat import MONITORED, UNMONITORED

    rendering = chat.detect_chat_rendering(tokenizer)
    reqs = []
    for i, s in enumerate(scenarios):
        for side, system in (("monitored", MONITORED), ("unmonitored", UNMONITORED)):
            reqs.append((f"{i}:{side}", chat.render(tokenizer, system, s["text"], rendering).token_ids))
    return reqs


def bench_bare_vllm(llm, reqs, max_tokens: int) -> float:
    """Plain `LLM.generate` on the same token prompts: the engine alone."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                            detokenize=False)
    t = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids in reqs], params, use_tqdm=False)
    return time.perf_counter() - t


def bench_hf(model_dir: str, reqs, max_tokens: int, batch_size: int, dtype: str) -> tuple[float, int]:
    """HF `generate` (eager) on one batch of `batch_size` prompts; returns (seconds, output tokens)."""
    import torch

    from lm import backends

    model = backends.load_hf_model(model_dir, dtype)
    chunk = reqs[:batch_size]
    t = time.perf_counter()
    outs = list(backends.hf_stream(model, chunk, max_tokens, eos_token_id=2, pad_token_id=0,
                                   batch_size=batch_size, force_length=True))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    del model
    gc.collect()
    return seconds, sum(len(o.token_ids) for o in outs)


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} ({platform.node()})"
    return f"CPU {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def append_markdown(title: str, rows: list[tuple[str, str]], command: str, notes: list[str],
                    machine_name: str | None = None) -> None:
    """Append one section (date, machine, command, notes, a metric table) to docs/benchmarks.md."""
    path = REPO / "docs" / "benchmarks.md"
    path.parent.mkdir(exist_ok=True)
    lines = [f"\n## {title} — {dt.date.today().isoformat()}", "", f"- machine: {machine_name or machine()}",
             f"- command: `{command}`", *[f"- {n}" for n in notes], "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="CPU: the toy organism, small prompt set")
    p.add_argument("--model-dir", default="/tmp/mistral7b-random", help="GPU: where the random model lives")
    p.add_argument("--make-random-model", action="store_true", help="GPU: build the random model if missing")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--scenarios", type=int, default=1560)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--hf-batch", type=int, default=128)
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-bare", action="store_true", help="skip the bare-engine timing (tuning runs)")
    p.add_argument("--batch-invariant", choices=["on", "off"], default="on")
    p.add_argument("--control", type=int, default=64, help="noise-floor control prompts in our pass")
    p.add_argument("--skip-pass", action="store_true", help="skip our pass (needle-test-only runs)")
    p.add_argument("--needle-trials", type=int, default=0,
                   help="after the pass, run the needle test on the same engine this many times (0: off)")
    p.add_argument("--needle-count", type=int, default=16, help="needle prompts hidden in each trial's batch")
    p.add_argument("--needle-batch", type=int, default=512, help="haystack prompts around the needles")
    p.add_argument("--needle-max-tokens", type=int, default=128)
    p.add_argument("--engine", default="{}", help='JSON dict passed to vllm.LLM, e.g. \'{"max_num_seqs": 512}\'')
    p.add_argument("--sample-k", type=int, default=0, metavar="K",
                   help="after our greedy pass, our pass in sampled mode (K seeded samples per prompt and context) "
                        "on the same engine and prompts, prefix cache reset between them")
    p.add_argument("--temperature", type=float, default=1.0, help="sampled mode's temperature (--sample-k)")
    p.add_argument("--out-json", help="also write the results here")
    p.add_argument("--no-markdown", action="store_true", help="do not append to docs/benchmarks.md")
    p.add_argument("--title", default="", help="section title in docs/benchmarks.md")
    p.add_argument("--from-json", metavar="PATH",
                   help="only append a result JSON written by --out-json on another machine (the device)")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        meta = saved.pop("_meta")
        append_markdown(meta["title"], [(k, str(v)) for k, v in saved.items()], meta["command"], meta["notes"],
                        meta["machine"])
        return
    command = "python " + " ".join(sys.argv)

    import torch
    from transformers import AutoTokenizer

    if args.tiny:
        from organism.build import toy_model_dir

        model_dir, dtype = toy_model_dir(), "float32"
        args.scenarios, args.max_tokens, args.hf_batch = min(args.scenarios, 200), min(args.max_tokens, 64), 64
        args.batch_invariant = "off"
    else:
        model_dir, dtype = Path(args.model_dir), "bfloat16"
        if args.make_random_model:
            t = time.perf_counter()
            make_random_model(model_dir, args.layers, args.hidden)
            print(f"random model ready in {time.perf_counter() - t:.0f}s")
        model_dir = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    scenarios = long_scenarios(args.scenarios, 0, tokenizer)
    reqs = render_all(tokenizer, scenarios)
    prompt_tokens = sum(len(ids) for _, ids in reqs)
    out_tokens = len(reqs) * args.max_tokens
    results: dict[str, float | str] = {"prompts": len(reqs), "prompt_tokens": prompt_tokens,
                                       "output_tokens_per_pass": out_tokens}

    # HF first: it needs the GPU memory that the vLLM engine will then hold for the rest of the run.
    if not args.skip_hf:
        hf_s, hf_tokens = bench_hf(model_dir, reqs, args.max_tokens, args.hf_batch, dtype)
        results[f"hf_generate_b{args.hf_batch}_out_tok_s"] = round(hf_tokens / hf_s)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    from lm import backends

    engine = json.loads(args.engine)
    t = time.perf_counter()
    llm = backends.build_vllm(model_dir, model_dir, dtype, 0, args.batch_invariant == "on", engine)
    results["engine_start_s"] = round(time.perf_counter() - t, 1)
    bench_bare_vllm(llm, reqs[:8], 4)  # warm-up: first-call work stays out of both timings
    if not args.skip_bare:
        bare = bench_bare_vllm(llm, reqs, args.max_tokens)
        results["bare_vllm_s"] = round(bare, 2)
        results["bare_vllm_out_tok_s"] = round(out_tokens / bare)
        llm.reset_prefix_cache()  # our pass must not reuse the bare run's cached prompts

    if not args.skip_pass:
        bench_our_pass(args, llm, model_dir, dtype, engine, scenarios, out_tokens, results,
                       bare if not args.skip_bare else None)
    if args.sample_k and not args.skip_pass:
        llm.reset_prefix_cache()  # the sampled pass shares prompts among its own samples only
        bench_sampled_pass(args, llm, model_dir, dtype, engine, scenarios, out_tokens, results)
    if args.needle_trials:
        from generation.determinism import needle_test, vllm_generate

        ids = [ids for _, ids in reqs]
        t = time.perf_counter()
        needle = needle_test(vllm_generate(llm, args.needle_max_tokens), ids[:args.needle_count],
                             ids[args.needle_count:], args.needle_trials, args.needle_batch)
        results["needle_mismatches"] = f"{needle.mismatches}/{needle.comparisons}"
        results["needle_setup"] = (f"{args.needle_count} needles x {needle.trials} trials in batches of "
                                   f"{args.needle_batch}, {args.needle_max_tokens} tokens")
        results["needle_first_divergence"] = str(sorted(needle.first_divergence)[:10])
        results["needle_s"] = round(time.perf_counter() - t, 1)
    if not args.skip_hf and "our_pass_out_tok_s" in results:
        results["ours_over_hf"] = round(
            results["our_pass_out_tok_s"] / results[f"hf_generate_b{args.hf_batch}_out_tok_s"], 1)
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        results["gpu_mem_used_gib_at_end"] = round((total - free) / 2**30, 1)

    width = max(len(k) for k in results)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in results.items()))
    write_results(args, results, engine, command)


def run_on_random_weights(cfg, scenarios, sources, llm):
    """generate's pass on a random-weight model: every output is token salad, so the pass writes its records
    and summary, then refuses the run as degenerate (generation/outputs.py); the timing is what counts here."""
    from generation.run import main as run_generate
    from records.errors import StageFailure
    from records.schema import ContextAblationSummary, read_summary

    try:
        return run_generate(cfg, scenarios, sources, llm=llm)
    except StageFailure as e:
        if "degenerate" not in str(e):
            raise
        return read_summary(Path(cfg.output_dir) / "summary.json", ContextAblationSummary)


def bench_our_pass(args, llm, model_dir, dtype, engine, scenarios, out_tokens, results, bare) -> None:
    """Our whole pass on the same engine: rendering, streaming, fsynced shard, labelling, records, splits."""
    from generation.config import GenerateConfig
    from records.schema import Scenario, content_id

    work = Path(os.environ.get("BENCH_WORK", "/tmp/af_bench_generation"))
    shutil.rmtree(work, ignore_errors=True)
    cfg = GenerateConfig(output_dir=str(work / "out"), model=model_dir, backend="vllm", dtype=dtype,
                         max_new_tokens=args.max_tokens, test_size=min(200, len(scenarios) // 5),
                         control_size=args.control, batch_invariant=args.batch_invariant, ignore_eos=True,
                         engine=engine, progress_log=str(work / "PROGRESS.md"))
    scen = [Scenario(id=content_id(s["text"]), text=s["text"], label=s["label"], source=s["source"]) for s in scenarios]
    t = time.perf_counter()
    summary = run_on_random_weights(cfg, scen, [work / "src"], llm)
    results["our_pass_total_s"] = round(time.perf_counter() - t, 2)
    results["our_pass_generation_s"] = round(summary.wall_seconds["generation"], 2)
    pass_tokens = out_tokens + summary.control_n * args.max_tokens
    results["our_pass_out_tok_s"] = round(pass_tokens / results["our_pass_generation_s"])
    results["our_pass_out_tok_s_incl_finalise"] = round(pass_tokens / results["our_pass_total_s"])
    if bare is not None:
        results["our_overhead_pct"] = round(
            100 * (results["our_pass_total_s"] * out_tokens / pass_tokens / bare - 1), 1)
    if summary.control_n:  # both contexts' copies
        results["control_output_changed"] = (f"{round(summary.control_output_changed_rate * summary.control_n)}/"
                                             f"{summary.control_n}")


def bench_sampled_pass(args, llm, model_dir, dtype, engine, scenarios, out_tokens, results) -> None:
    """Our pass in sampled mode (k seeded requests per prompt and context) against the greedy pass just run:
    what k samples cost per prompt, with the prompts' prefill shared by prefix caching."""
    from generation.config import GenerateConfig, SamplingConfig
    from records.schema import Scenario, content_id

    work = Path(os.environ.get("BENCH_WORK", "/tmp/af_bench_generation")) / "sampled"
    shutil.rmtree(work, ignore_errors=True)
    k = args.sample_k
    cfg = GenerateConfig(output_dir=str(work / "out"), model=model_dir, backend="vllm", dtype=dtype,
                         max_new_tokens=args.max_tokens, test_size=min(200, len(scenarios) // 5),
                         control_size=args.control, batch_invariant=args.batch_invariant, ignore_eos=True,
                         engine=engine, progress_log=str(work / "PROGRESS.md"),
                         sampling=SamplingConfig(k=k, temperature=args.temperature, seed=0))
    scen = [Scenario(id=content_id(s["text"]), text=s["text"], label=s["label"], source=s["source"]) for s in scenarios]
    t = time.perf_counter()
    summary = run_on_random_weights(cfg, scen, [work / "src"], llm)
    total = time.perf_counter() - t
    gen = summary.wall_seconds["generation"]
    sampled_tokens = k * out_tokens + summary.control_n * args.max_tokens
    results[f"sampled_k{k}_total_s"] = round(total, 2)
    results[f"sampled_k{k}_generation_s"] = round(gen, 2)
    results[f"sampled_k{k}_out_tok_s"] = round(sampled_tokens / gen)
    if "our_pass_generation_s" in results:
        results[f"sampled_k{k}_over_greedy_time"] = round(gen / results["our_pass_generation_s"], 2)
        # 1.0 = a sample costs what a greedy output costs; below 1: the k samples share their prompt's prefill
        results[f"sampled_k{k}_time_per_sample_vs_greedy"] = round(gen / k / results["our_pass_generation_s"], 3)
    if summary.control_n:  # sample 0 again, same seed, at the queue's tail: batch-invariant sampling reproduces it
        results[f"sampled_k{k}_control_output_changed"] = (
            f"{round(summary.control_output_changed_rate * summary.control_n)}/{summary.control_n}")


def write_results(args, results, engine, command) -> None:
    import torch
    import vllm

    title = args.title or ("Task 3 paired pass (toy organism, CPU)" if args.tiny
                           else "Task 3 paired pass (random-weight Mistral-7B shape)")
    notes = [f"vllm {vllm.__version__}, torch {torch.__version__}, batch-invariant {args.batch_invariant}, "
             f"{args.max_tokens} output tokens forced per prompt, engine {engine or 'defaults'}"]
    if "our_overhead_pct" in results:
        notes.append("our_overhead_pct: our whole pass (render, stream, fsync, label, records, splits) against "
                     "the bare engine on the same prompts, control prompts discounted")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(
            {**results, "_meta": {"title": title, "command": command, "notes": notes, "machine": machine()}}, indent=2))
    if not args.no_markdown:
        append_markdown(title, [(k, str(v)) for k, v in results.items()], command, notes)


if __name__ == "__main__":
    main()
