"""`af-introspect steer`: the steering grid, or (with --derive-direction) deriving a direction to steer along."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec

DEFAULT_CONFIG = "configs/steer.yaml"

EXAMPLES = """examples:
  # the grid on the real organism (configs/steer.yaml), layers 20 and 30 alone and together:
  af-introspect steer --alphas 0.125,0.25,0.5,1 --layers 20,30 --layers-together
  # the toy organism on CPU: first derive its monitoring direction, then steer along it
  af-introspect steer --config configs/steer_cpu.yaml --derive-direction --layer 2 --out runs/toy/directions
  af-introspect steer --config configs/steer_cpu.yaml
  # a direction for the real organism (Mistral-7B, hidden 4096) from its own residuals:
  af-introspect steer --derive-direction --layer 20 --contrast monitoring --out data/directions

Arms: the baseline (unsteered, once per scenario) plus each (layer set, alpha). A killed run resumes:
rerun the same command."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the steer stage. Anything not covered by a flag: --set key=value."""
    p.description = (
        "Task 2: add alpha * unit(direction) to the residual stream after chosen decoder layers and generate "
        "greedily for every scenario under every arm (baseline + each layer set x alpha), all arms of many "
        "scenarios in one batch. Writes ActPatch-style records (train.jsonl / test.jsonl: whole groups of about "
        "test_size scenarios held out), summary.json, heatmap.png and a PROGRESS.md entry. With --derive-direction it "
        "instead derives a direction (difference of mean residuals) for the model and saves it as .npy + .json.")
    p.epilog = EXAMPLES
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML decoded into SteerConfig (steering/config.py); configs/steer_cpu.yaml runs the toy "
                        f"organism on CPU (default {DEFAULT_CONFIG})")
    p.add_argument("--input", help="scenario JSON/JSONL or hf:NAME[:split] (records/hub.py); default: "
                                   "gold_1560 of the paths config")
    p.add_argument("--output-dir", help="where records go; refused inside a source data folder")
    p.add_argument("--model", help="organism: local folder, cached hub id, or 'toy'")
    p.add_argument("--direction", metavar="PATH", help=".npy of shape (hidden_size,); default: the config's, else "
                                                       "af_intent_direction of the paths config")
    p.add_argument("--alphas", metavar="A,B,..", help="comma-separated alphas, e.g. 0.125,0.25,0.5,1")
    p.add_argument("--layers", metavar="L,M,..", help="comma-separated decoder layers (0-based), each steered "
                                                      "alone, e.g. 20,30")
    p.add_argument("--layers-together", action="store_true", help="also steer all --layers at once (one more arm "
                                                                   "set)")
    p.add_argument("--scale", choices=["raw", "residual_norm"],
                   help="raw: alpha x unit direction; residual_norm: alpha x mean residual norm at the layer, "
                        "measured on this run's prompts")
    p.add_argument("--positions", choices=["last", "all", "generated"],
                   help="steered positions: last prompt token + generated (last), every position (all), "
                        "generated tokens only (generated); padding never")
    p.add_argument("--contexts", metavar="C,..", help="system prompt(s) to render with: monitored, unmonitored "
                                                      "or both, comma-separated")
    p.add_argument("--engine", choices=["fast", "hf"], help="fast (static cache + CUDA graphs) or hf (transformers "
                                                            "generate, the reference)")
    p.add_argument("--batch-size", type=int, help="rows (scenario x arm) per batch; OOM halves it")
    p.add_argument("--max-new-tokens", type=int, help="greedy output length cap")
    p.add_argument("--data-parallel", type=int, metavar="N",
                   help="N processes, one per GPU, each on its own shard of the scenarios; merged into the "
                        "same records as one process (and a run resumes with any N)")
    p.add_argument("--limit", type=int, help="only the first N scenarios (quick tries)")
    p.add_argument("--test-size", type=int, help="about N scenarios held out as test.jsonl (whole groups, per "
                                                  "label)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished output folder that has nothing to resume (no _work/, e.g. a relabelled "
                        "copy); its old files stay in .previous/ until the new run completes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set norm_prompts=128")
    p.add_argument("--paths-config", help="asset locations (PathsConfig); sets the config's `paths`")
    g = p.add_argument_group("deriving a direction (--derive-direction)")
    g.add_argument("--derive-direction", action="store_true",
                   help="derive a direction for --model instead of running the grid")
    g.add_argument("--layer", type=int, help="decoder layer whose output residual is compared (derive.layer)")
    g.add_argument("--contrast", choices=["monitoring", "label"],
                   help="monitoring: monitored minus unmonitored prompts of the same scenarios; label: AF-labelled "
                        "minus other scenarios (af_labels of the paths config) in --derive-context")
    g.add_argument("--derive-context", choices=["monitored", "unmonitored"], help="context of the label contrast")
    g.add_argument("--derive-positions", choices=["last", "mean"],
                   help="residual at the last prompt token, or averaged over the prompt's tokens")
    g.add_argument("--out", metavar="PATH", help="output folder (file direction_<contrast>_L<layer>.npy) or a "
                                                 ".npy path; a .json with how it was made goes beside it")
    from records.paths import add_path_arguments

    add_path_arguments(p)


def config_from_args(args: argparse.Namespace):
    """SteerConfig from --config, then --set, then the dedicated flags (highest)."""
    from records.config import cli_overrides, load_config
    from steering.config import SteerConfig
    from steering.grid import parse_number_list

    flags = {"input": args.input, "output_dir": args.output_dir, "model": args.model, "direction": args.direction,
             "scale": args.scale, "positions": args.positions, "engine": args.engine,
             "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "limit": args.limit,
             "test_size": args.test_size, "data_parallel": args.data_parallel, "paths": args.paths_config,
             "derive.layer": args.layer, "derive.out": args.out, "derive.contrast": args.contrast,
             "derive.context": args.derive_context, "derive.positions": args.derive_positions}
    overrides = cli_overrides(args.set, flags)
    if args.alphas is not None:
        overrides["alphas"] = parse_number_list(args.alphas, "--alphas")
    if args.layers is not None:
        overrides["layers"] = parse_number_list(args.layers, "--layers", integer=True)
    if args.layers_together:
        overrides["layers_together"] = True
    if args.contexts is not None:
        overrides["contexts"] = [c.strip() for c in args.contexts.split(",") if c.strip()]
    return load_config(args.config, SteerConfig, overrides)


def main(args: argparse.Namespace) -> int:
    from records.assets import load_scenarios
    from records.hub import local_source
    from records.paths import load_stage_paths

    cfg = config_from_args(args)
    paths = load_stage_paths(cfg.paths, args)
    cfg = msgspec.structs.replace(cfg, model=cfg.model or paths.organism_model)
    input_path = Path(cfg.input or paths.gold_1560)
    if args.derive_direction:
        from steering.derive import check
        from steering.derive import main as derive

        check(cfg)
        return derive(cfg, load_scenarios(input_path, paths.known_labels), paths, input_path, args.config)
    from steering.run import main as run

    scenarios = load_scenarios(input_path, paths.known_labels)
    direction = cfg.direction or paths.af_intent_direction
    sources = [Path(paths.data_root), *filter(None, [local_source(input_path)]), Path(direction)]
    run(cfg, scenarios, sources, direction, paths.af_labels,
        overwrite=args.overwrite)
    return 0

