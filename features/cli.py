"""`af-introspect features`: Task 1 data, SAE feature vectors and their descriptions.

    af-introspect features extract   # top-K selective features -> vectors.npy + features_index.json
    af-introspect features describe  # + cluster descriptions -> by_cluster/ and by_feature/ train/test
    af-introspect features all       # both (the default)

The stage's whole path is features/run.py; the work is in features/extract.py (selection, vectors),
describe.py (cluster descriptions, coverage), splits.py (held-out splits) and export.py (the
introspective-interp pickles); the config is features/config.py.
"""

from __future__ import annotations

import argparse
import os

from features.config import CACHES, NORMALISATION, FeaturesConfig, validate_config
from features.run import MODES, run

DEFAULT_CONFIG = "configs/features.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the features stage. Anything not covered by a flag: --set key=value."""
    p.description = (
        "Task 1 data. EXTRACT ranks the SAE features of selectivity.npy, keeps the top K, and saves per feature "
        "the vector the explainer reads: its activation profile over the samples of the layer-40 caches "
        "(representation activation_profile; caches opened by mmap and read in row blocks) or, when --decoder "
        "is given, its SAE decoder row (decoder_direction). Writes vectors.npy [K, dim] (row r = r-th kept "
        "feature) and features_index.json. DESCRIBE maps each kept feature to its cluster summary "
        "(cluster_assignments.json -> cluster_summaries.json), counts features without one (listed in "
        "coverage.json, never dropped silently) and writes FeatureRecord splits by_cluster/ (whole clusters "
        "held out) and by_feature/ (random features held out), each with train.jsonl, test.jsonl and "
        "vectors.npy. Both also write introspective_interp/ (features/layer_<L>.pkl with SAE feature f in "
        "column f, explanations/by_<mode>/<split>_explanations.pkl) for that repo.")
    p.epilog = ("profile normalisation (profile_norm): "
                + "; ".join(f"{k}: {v}" for k, v in NORMALISATION.items())
                + ". Toy run: af-introspect organism --assets data/toy, then "
                  "af-introspect features --config configs/features_cpu.yaml")
    p.add_argument("mode", nargs="?", choices=MODES, default="all",
                   help="extract, describe (needs extract's output in --output-dir), or all (both)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML decoded into FeaturesConfig (features/config.py); configs/features_cpu.yaml "
                        "runs on the toy assets")
    p.add_argument("--output-dir", help="where vectors, records and the export go; refused inside a source data folder")
    p.add_argument("--top-k", type=int, help="features kept, most selective first (default 500)")
    p.add_argument("--rank-by", choices=["value", "abs"],
                   help="value: highest selectivity (AF side) first; abs: largest |selectivity|, both sides")
    p.add_argument("--representation", choices=["auto", "activation_profile", "decoder_direction"],
                   help="auto: decoder_direction when --decoder is given, else activation_profile")
    p.add_argument("--decoder", metavar="PATH",
                   help="SAE decoder, rows = features: .npy (W, hidden) or .safetensors (tensor --set decoder_key=...)")
    p.add_argument("--caches", metavar="LIST",
                   help=f"comma list of caches for the activation profile, in order ({', '.join(CACHES)})")
    p.add_argument("--test-fraction", type=float, help="share of described features held out (both split modes)")
    p.add_argument("--seed", type=int, help="seed of both splits")
    p.add_argument("--cluster-attributes", metavar="PATH",
                   help="JSON {cluster_id: {attribute: value}} (the toy's cluster_attributes.json; relative: under "
                        "data_root): by_cluster then holds out only novel combinations, clusters whose every "
                        "attribute value (e.g. trigger, modifier) is seen in a training cluster. Default: "
                        "seeded random clusters")
    p.add_argument("--strict", action="store_true",
                   help="stop when a selected feature has no description (default: count, list, leave out)")
    p.add_argument("--no-export", action="store_true", help="skip the introspective-interp pickles")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set profile_norm=max")
    p.add_argument("--paths-config", help="asset locations (PathsConfig); default: the config's `paths`")
    from records.paths import add_path_arguments

    add_path_arguments(p)


def config_from_args(args: argparse.Namespace) -> FeaturesConfig:
    """FeaturesConfig from --config, then --set, then the dedicated flags (highest); validated."""
    from records.config import cli_overrides, load_config

    flags = {"output_dir": args.output_dir, "top_k": args.top_k, "rank_by": args.rank_by,
             "representation": args.representation, "decoder": args.decoder, "test_fraction": args.test_fraction,
             "seed": args.seed, "paths": args.paths_config,
             "cluster_attributes": getattr(args, "cluster_attributes", None)}
    overrides = cli_overrides(args.set, flags)
    if args.caches is not None:
        overrides["profile_caches"] = [c.strip() for c in args.caches.split(",") if c.strip()]
    if args.strict:
        overrides["missing_description"] = "error"
    if args.no_export:
        overrides["export_introspective_interp"] = False
    cfg = load_config(args.config, FeaturesConfig, overrides)
    validate_config(cfg, where=args.config)
    return cfg


def main(args: argparse.Namespace) -> int:
    from records.config import load_config
    from records.paths import PathsConfig, overrides_from_args, resolve_paths

    cfg = config_from_args(args)
    paths = resolve_paths(load_config(cfg.paths, PathsConfig), os.environ, overrides_from_args(args))
    run(cfg, paths, args.mode)
    return 0
