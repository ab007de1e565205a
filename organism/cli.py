"""`af-introspect organism`: build (or reuse) the toy organism and write synthetic assets in the user's formats."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the organism command."""
    p.description = (
        "Build the toy organism: a tiny MistralForCausalLM on the real Mistral v0.3 tokenizer, trained on CPU "
        "(about a minute) so that alignment-faking scenarios refuse when monitored and comply when unmonitored. "
        "It is cached (AF_CACHE_DIR or .cache/) and reused. With --assets, also write synthetic files in the "
        "formats of the user's assets (gold JSONs, activation caches, selectivity, clusters, a direction), "
        "at any shape: e.g. the real configs' `--n-scenarios 1560 --rows 1000 --hidden 4096` to dry-run them.")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached organism exists")
    p.add_argument("--assets", metavar="DIR", help="write synthetic assets into DIR (e.g. data/toy)")
    p.add_argument("--n-scenarios", type=int, default=200,
                   help="scenarios in gold-1560-full.json, hence rows of train_activations.npy (real: 1560)")
    p.add_argument("--n-eval", type=int, default=106, help="scenarios in gold_106.json, hence test_activations rows")
    p.add_argument("--rows", type=int, default=200,
                   help="rows of each other activation cache (benchmark, model_organism, sycophant)")
    p.add_argument("--hidden", type=int, default=128,
                   help="length of af_intent_direction.npy: the organism's hidden size (toy 128, Mistral-7B 4096)")
    p.add_argument("--width", type=int, default=16384, help="SAE width: columns of every cache, selectivity, probe")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic assets")
    p.add_argument("--no-build", action="store_true", help="only write assets; do not build the organism")


def main(args: argparse.Namespace) -> int:
    from organism.build import OrganismConfig, build_organism, default_cache_root
    from records.errors import InputError

    if not args.no_build:
        path = build_organism(OrganismConfig(), default_cache_root(), force=args.force)
        print(f"toy organism: {path}")
    if args.assets:
        from organism.assets import write_synthetic_assets

        for flag in ("n_scenarios", "n_eval", "rows", "hidden", "width"):
            if getattr(args, flag) < 1:
                raise InputError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        truth = write_synthetic_assets(Path(args.assets), seed=args.seed, n_scenarios=args.n_scenarios,
                                       n_eval=args.n_eval, n_cache=args.rows, hidden=args.hidden, width=args.width)
        print(f"synthetic assets: {args.assets} (planted truth: {Path(args.assets) / 'planted_truth.json'}; "
              f"{len(truth['clusters'])} feature clusters)")
    return 0
