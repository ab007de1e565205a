"""Task 2 on several seeds: held-out scenarios (whole triggers) and the held-out direction, per recipe.

    python tests/steering/task2_seeds.py --seeds 0 1 2 --recipe base --recipe nulls --out /tmp/task2_seeds
    python tests/steering/task2_seeds.py --seeds 0 --recipe nulls --train-set train.num_epochs=6 --out DIR
    python tests/steering/task2_seeds.py --seeds 0 --recipe nulls --train-config my_recipe.yaml --out DIR

The steering grid is configs/steer_cpu.yaml's on the demo's scenarios (40, about 10 held out by trigger),
the explainer recipe configs/af_steering_cpu.yaml; a seed sets the steering seed (random directions, the
split) and the training seed. Recipes (steer --set overrides):
- base: random_directions 2, random1 held out (the demo's grid): one random direction in training;
- nulls: random_directions 4, random3 held out: three random directions, each with its true "no change",
  in training, so that a vector that moves nothing is something the explainer has seen.
Writes <out>/<recipe>-<seed>/... and prints one JSON line per run (also <out>/results.jsonl): strict exact
match of each method on both splits, the paired gaps, and how many held-out-direction items the explainer
said would change. The numbers go to docs/evidence.md (Task 2) with the date and this command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

RECIPES = {"base": ["random_directions=2", "test_directions=[random1]"],
           "nulls": ["random_directions=4", "test_directions=[random3]"]}
SCENARIOS, TEST = 40, 10


def run(recipe: str, seed: int, out: Path, organism_dir: str, train_sets: list[str], train_config: Path) -> dict:
    import torch

    from app import cli
    from organism.assets import write_synthetic_assets
    from training import train as T
    from training.config import load_train_config
    from training.evaluate import HELD_OUT_DIRECTION, run_evaluation
    from training.scoring import parse_change

    root = out / f"{recipe}-{seed}"
    assets = root / "assets"
    write_synthetic_assets(assets, n_scenarios=200, seed=1)  # the demo's scenarios
    paths = root / "paths.yaml"
    paths.write_text(f"data_root: {assets}\n")
    sets = [x for s in RECIPES[recipe] + [f"seed={seed}", f"progress_log={root / 'P.md'}"] for x in ("--set", s)]
    common = ["--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model", organism_dir,
              "--limit", str(SCENARIOS), "--test-size", str(TEST)]
    t0 = time.time()
    assert cli.main(["steer", *common, "--derive-direction", "--layer", "2", "--out", str(root / "dirs")]) == 0
    records = root / "task2"
    assert cli.main(["steer", *common, "--direction", str(root / "dirs" / "direction_monitoring_L2.npy"),
                     "--output-dir", str(records), *sets]) == 0
    torch.set_num_threads(1)
    cfg = load_train_config(str(train_config),
                            [f"train.dataset={records}", f"train.paths={paths}", f"train.seed={seed}", *train_sets],
                            str(root / "explainer"))
    T.main(cfg, debug=True)
    T.main(cfg)
    result = run_evaluation(cfg, untrained=False)
    row = {"recipe": recipe, "seed": seed, "train_config": str(train_config), "train_sets": train_sets,
           "steps": trained_steps(root / "explainer"), "wall_s": round(time.time() - t0)}
    for split, name in (("test", "test"), (HELD_OUT_DIRECTION, "held_out_direction")):
        methods = result["splits"].get(split, {}).get("generative_explanation", {})
        row[name] = {m: _flat(v) for m, v in methods.items()}
    preds = [json.loads(x) for x in (Path(result["out_dir"]) / "predictions.jsonl").read_text().splitlines()]
    said = [parse_change(p["prediction"]) for p in preds
            if p["split"] == HELD_OUT_DIRECTION and p["method"] == "explainer"
            and p["question_type"] == "generative_explanation"]
    row["held_out_direction_predicted_change"] = f"{sum(bool(s and s[1]) for s in said)}/{len(said)}"
    return row


def trained_steps(explainer: Path) -> int:
    """Optimizer steps the explainer trained (the last training row of its metrics.jsonl)."""
    rows = [json.loads(x) for x in (explainer / "metrics.jsonl").read_text().splitlines()]
    return max(r["step"] for r in rows if "loss" in r)


def _flat(v: dict) -> dict:
    """A metrics row's n, strict score and gap as the flat numbers this script prints (n, strict_exact_match,
    gap, gap_lo, gap_hi), rounded."""
    out = {"n": v["n"]} if "n" in v else {}
    if "strict_exact_match" in v:
        out["strict_exact_match"] = v["strict_exact_match"].value
    if "gap" in v:
        out.update(gap=v["gap"].value, gap_lo=v["gap"].lo, gap_hi=v["gap"].hi)
    return {k: round(x, 3) for k, x in out.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipe", action="append", choices=sorted(RECIPES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-config", type=Path, default=REPO / "configs/af_steering_cpu.yaml",
                   help="the explainer recipe (default: configs/af_steering_cpu.yaml)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the explainer recipe, e.g. train.num_epochs=6 (repeatable)")
    args = p.parse_args()
    from organism.build import OrganismConfig, build_organism, default_cache_root

    organism_dir = str(build_organism(OrganismConfig(), default_cache_root()))  # reused from AF_CACHE_DIR
    args.out.mkdir(parents=True, exist_ok=True)
    for recipe in args.recipe or ["base", "nulls"]:
        for seed in args.seeds:
            row = run(recipe, seed, args.out, organism_dir, args.train_set, args.train_config)
            print(json.dumps(row), flush=True)
            with open(args.out / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
