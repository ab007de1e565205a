"""Task 1 done-when: the toy explainer trained on the Task 1 records beats the nearest-neighbour baseline on
held-out clusters, by the MiniLM embedding-similarity judge.

The synthetic assets plant compositional clusters (trigger x modifier; organism/assets.py) and the toy
features config holds out novel combinations (cluster_attributes), so every held-out description is made
of phrases seen in training while no held-out profile has a training twin: the nearest neighbour gets one
attribute right at best (it names every held-out trigger and no modifier).

Measured (2026-12-03, fresh toy build, configs/af_feature_descriptions_cpu.yaml: LoRA r=4, 60 epochs; seed
0): explainer 0.908, nearest neighbour 0.799, majority 0.670, zeroed vectors 0.555, shuffled 0.631,
untrained 0.011; per attribute (trigger / modifier) explainer 1.00 / 0.60, nearest neighbour 1.00 / 0.00,
zeroed 0.20 / 0.20, shuffled 0.25 / 0.15, chance 0.00 / 0.20. With r=16 the explainer memorised the training
clusters' whole descriptions and lost to the nearest neighbour on this build (0.749 vs 0.799); training
seed 1 gives 0.901, asset seed 1 0.818 and 0.846 vs 0.768 (docs/evidence.md, "Task 1 recipe").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import torch

from app import cli
from organism.assets import write_synthetic_assets
from records.jsonl import read_records
from records.schema import EvalMetrics, FeatureRecord

REPO = Path(__file__).resolve().parents[2]
FEATURES_CONFIG = REPO / "configs" / "features_cpu.yaml"
TRAIN_CONFIG = REPO / "configs" / "af_feature_descriptions_cpu.yaml"
PER_CLUSTER = 4  # 5 triggers x 4 modifiers x 4 features: 60 training and 20 held-out records


def test_toy_explainer_beats_nearest_neighbour_on_heldout_clusters(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the toy is tiny: one thread is as fast, and far faster on a busy machine
    try:
        _run(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _run(tmp_path: Path) -> None:
    from training import train as T
    from training.config import load_train_config
    from training.evaluate import run_evaluation

    start = time.perf_counter()
    truth = write_synthetic_assets(tmp_path / "assets", seed=0, features_per_cluster=PER_CLUSTER)
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"data_root: {tmp_path / 'assets'}\n")
    n_planted = sum(len(c["features"]) for c in truth["clusters"])
    rc = cli.main(["features", "--config", str(FEATURES_CONFIG), "--paths-config", str(paths), "--output-dir",
                   str(tmp_path / "task1"), "--top-k", str(n_planted), "--set", f"progress_log={tmp_path / 'P.md'}"])
    assert rc == 0
    folder = tmp_path / "task1" / "by_cluster"
    train = read_records(folder / "train.jsonl", FeatureRecord)
    test = read_records(folder / "test.jsonl", FeatureRecord)
    attrs = {c["cluster_id"]: c["attributes"] for c in truth["clusters"]}
    train_ids, test_ids = {r.cluster_id for r in train}, {r.cluster_id for r in test}
    assert test_ids and train_ids.isdisjoint(test_ids)
    for cid in test_ids:  # novel combinations: each attribute of a held-out cluster is seen in training
        for key, value in attrs[cid].items():
            assert any(attrs[u][key] == value for u in train_ids), (cid, key, value)

    cfg = load_train_config(str(TRAIN_CONFIG), [f"train.dataset={folder}", f"train.paths={paths}"],
                            str(tmp_path / "explainer"))
    T.main(cfg, debug=True)
    T.main(cfg)
    trained = time.perf_counter()
    result = run_evaluation(cfg)
    methods = result["splits"]["test"]["generative_explanation"]
    sim = {m: methods[m]["semantic_similarity"] for m in ("explainer", "untrained", "nearest_neighbour", "majority",
                                                          "zeroed_vectors", "shuffled_vectors")}
    print("\n" + result["table"])
    print(f"held-out clusters {sorted(test_ids)}: " + ", ".join(f"{m} {v:.3f}" for m, v in sim.items())
          + f"; {trained - start:.0f}s to train, {time.perf_counter() - start:.0f}s in all")
    print(json.dumps(sim))
    metrics = msgspec.json.decode((Path(result["out_dir"]) / "metrics.json").read_bytes(), type=EvalMetrics)
    scoring = metrics.attributes["test"]["generative_explanation"]
    accuracy = {m: {k: v for k, v in methods[m].items() if k.startswith("attribute")} for m in sim}
    print("attribute accuracy:", json.dumps(accuracy), "chance:", json.dumps(scoring.chance))
    assert metrics.feature_judge == "" and "LM judge: not configured" in result["table"]
    # Per-attribute accuracy, AVERAGED over trigger and modifier: the explainer names the right values well
    # above chance, the shuffled-vector control does not. Averaged, as chance (the training majority value)
    # is 0 for the trigger: the novel-combination split leaves the most common training trigger out of test.
    chance = sum(scoring.chance.values()) / len(scoring.chance)
    assert set(scoring.chance) == {"trigger", "modifier"} and scoring.n == len(test)
    # The shuffled control's floor is not chance: an explainer that reads every vector right names another
    # held-out item's values, right with probability sum_v p_v^2 over the held-out values of each attribute
    # (0.28 here: one trigger and one modifier each cover 8 of the 20 items), above chance + 0.10 = 0.20.
    # Measured 2026-12-03 with the r=4 recipe: shuffled 0.20 (train seed 0), 0.30 (seed 1); asset seed 1:
    # 0.275, 0.275. So the control is bounded by that level + 0.10 and the explainer must clear it.
    held = {a: [attrs[r.cluster_id][a] for r in test] for a in scoring.chance}  # attribute -> value per item
    shuffled_level = sum(sum((vals.count(v) / len(vals)) ** 2 for v in set(vals)) for vals in held.values()) / len(held)
    floor = max(chance, shuffled_level) + 0.10
    print(f"attribute floor: chance {chance:.3f}, shuffled-reader level {shuffled_level:.3f}")
    assert methods["shuffled_vectors"]["attribute_mean"] <= floor
    assert methods["explainer"]["attribute_mean"] > floor
    assert sim["explainer"] > sim["nearest_neighbour"]
    assert sim["explainer"] > sim["untrained"]
    # bug injection: the same explainer with its feature vectors zeroed, or swapped between features, loses
    # what it read from them and falls to the vector-free majority baseline (measured 2026-12-03, fresh toy
    # build, r=4: explainer 0.908, zeroed 0.555, shuffled 0.631, majority 0.670; train seed 1: 0.901, 0.555,
    # 0.664). An explainer that reads every vector right scores 0.669 on average with shuffled ones here (the
    # mean MiniLM similarity of two held-out descriptions), at the majority baseline.
    for broken in ("zeroed_vectors", "shuffled_vectors"):
        assert sim[broken] <= sim["majority"] + 0.05 and sim[broken] <= sim["explainer"] - 0.10, broken
