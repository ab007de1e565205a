"""`af-introspect generate`: flags on top of a YAML config; the config's own fields are the defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

DEFAULT_CONFIG = "configs/generate.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the generate stage. Anything not covered by a flag: --set key=value."""
    p.description = (
        "Render every scenario with the MONITORED and the UNMONITORED system prompt, run all prompts through "
        "one vLLM offline engine (greedy), and write HintAttribution-style records: train.jsonl / test.jsonl "
        "(last test_size scenarios held out), noise_control.jsonl, summary.json. A killed run resumes: rerun "
        "the same command.")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML decoded into GenerateConfig (generation/config.py); configs/generate_cpu.yaml "
                        "runs the toy organism on CPU")
    p.add_argument("--input", help="scenario JSON or JSONL (gold-style {text, label} items), or hf:NAME[:split]: a "
                                   "datasets folder or a hub dataset already in the local HF cache (e.g. "
                                   "hf:vincentoh/af-detection-benchmark; never downloaded); default: gold_1560 of "
                                   "the paths config")
    p.add_argument("--output-dir", help="where records go; refused inside a source data folder")
    p.add_argument("--model", help="organism: local folder, cached hub id, or 'toy'")
    p.add_argument("--backend", choices=["vllm", "hf"], help="vllm (main path) or hf (reference/fallback)")
    p.add_argument("--batch-size", type=int,
                   help="vllm: max_num_seqs (sequences in flight); hf: rows per generate() call")
    p.add_argument("--max-new-tokens", type=int, help="output length cap (max_new_tokens)")
    p.add_argument("--samples", type=int, metavar="K",
                   help="sampled mode: K seeded samples per prompt and context at temperature 1 (sampling.k; "
                        "--set sampling.temperature=T, sampling.seed=S): per-scenario compliance rates and the "
                        "compliance gap with a bootstrap 95%% interval; greedy (one output) without it")
    p.add_argument("--limit", type=int, help="only the first N scenarios (quick tries)")
    p.add_argument("--test-size", type=int, help="last N scenarios held out as test.jsonl")
    p.add_argument("--save-every", type=int, help="fsync progress every N finished pairs")
    p.add_argument("--no-batch-invariant", action="store_true",
                   help="GPU: trade batch invariance (VLLM_BATCH_INVARIANT=1) for ~13%% speed; the noise "
                        "floor in the summary then shows what that costs")
    p.add_argument("--data-parallel", type=int, metavar="N",
                   help="N engines, one per GPU, each on its own shard of the scenarios; the shards merge "
                        "into the same records as one engine (and a run resumes with any N)")
    p.add_argument("--tensor-parallel", type=int, metavar="N",
                   help="split one model over N GPUs (vLLM tensor_parallel_size), for models that do not fit "
                        "one; multi-node: --set engine.distributed_executor_backend=ray (see docs/scale-out.md)")
    p.add_argument("--labeller", choices=["rules", "lm_judge", "both"],
                   help="behaviour labeller; both: the judge's labels, with Cohen's kappa against the rules")
    p.add_argument("--judge-model", help="lm_judge/both: an instruct model of its own (required)")
    p.add_argument("--judge-allow-organism", action="store_true", default=None,
                   help="let the organism judge its own outputs (not independent; records say self-judged)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished output folder that has nothing to resume (no _work/, e.g. a relabelled "
                        "copy); its old files stay in .previous/ until the new run completes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set engine.max_num_batched_tokens=16384")
    p.add_argument("--paths-config", help="asset locations (PathsConfig); sets the config's `paths`")
    from records.paths import add_path_arguments

    add_path_arguments(p)


def config_from_args(args: argparse.Namespace):
    """GenerateConfig from --config, then --set, then the dedicated flags (highest)."""
    from generation.config import GenerateConfig
    from records.config import cli_overrides, load_config

    flags = {"input": args.input, "output_dir": args.output_dir, "model": args.model, "backend": args.backend,
             "max_new_tokens": args.max_new_tokens, "limit": args.limit, "test_size": args.test_size,
             "save_every": args.save_every, "judge.labeller": args.labeller, "judge.model": args.judge_model,
             "judge.allow_organism": args.judge_allow_organism, "data_parallel": args.data_parallel,
             "sampling.k": args.samples, "engine.tensor_parallel_size": args.tensor_parallel,
             "paths": args.paths_config}
    overrides = cli_overrides(args.set, flags)
    if args.no_batch_invariant:
        overrides["batch_invariant"] = "off"
    if args.batch_size is not None:
        backend = overrides.get("backend") or load_config(args.config, GenerateConfig).backend
        overrides["engine.max_num_seqs" if backend == "vllm" else "hf_batch_size"] = args.batch_size
    return load_config(args.config, GenerateConfig, overrides)


def main(args: argparse.Namespace) -> int:
    from generation.run import main as run
    from records.hub import local_source
    from records.paths import load_stage_paths
    from records.requirements import require_packages
    from records.scenarios import load_scenarios

    cfg = config_from_args(args)
    require_packages("generate", vllm=cfg.backend == "vllm")
    paths = load_stage_paths(cfg.paths, args)
    cfg = msgspec.structs.replace(cfg, model=cfg.model or paths.organism_model)
    input_path = cfg.input or paths.gold_1560  # a file, or hf:NAME[:split] (records/hub.py)
    scenarios = load_scenarios(input_path, paths.known_labels)
    source_dirs = [Path(paths.data_root), *filter(None, [local_source(input_path)])]
    run(cfg, scenarios, source_dirs, overwrite=args.overwrite)
    return 0
