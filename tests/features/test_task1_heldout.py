"""Task 1 done-when: the toy explainer trained on the Task 1 records beats the nearest-neighbour baseline on
held-out clusters, by the MiniLM embedding-similarity judge.

The synthetic assets plant compositional clusters (trigger x modifier; organism/assets.py) and the toy
features config holds out novel combinations (cluster_attributes), so every held-out description is made
of phrases seen in training while no held-out profile has a training twin: the nearest neighbour gets one
attribute right at best. Measured (seed 0, 60 epochs): explainer 0.773, nearest neighbour 0.732, majority
0.448, untrained 0.033; the explainer names the trigger right but still tends to pair it with a modifier
it saw it with in training, so its margin comes from always reading the trigger.

Per-attribute accuracy (training/attributes.py) says which part of a description is right. On a fresh toy
build (2026-12-03, docs/task1-judge.md) the nearest neighbour names every held-out trigger and no modifier
(similarity 0.799), the explainer 40% of triggers and 35% of modifiers (0.749): the similarity assertion
below fails there, while the attribute assertions hold.
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
    # is 0 for the trigger: the novel-combination split leaves the most common training trigger out of test,
    # while a shuffled vector still names some held-out trigger, another item's (measured 2026-12-03:
    # explainer trigger 0.40, modifier 0.35; shuffled 0.15, 0.15; chance 0.00, 0.20).
    chance = sum(scoring.chance.values()) / len(scoring.chance)
    assert set(scoring.chance) == {"trigger", "modifier"} and scoring.n == len(test)
    assert methods["shuffled_vectors"]["attribute_mean"] <= chance + 0.10
    assert methods["explainer"]["attribute_mean"] > chance + 0.10
    assert sim["explainer"] > sim["nearest_neighbour"]
    assert sim["explainer"] > sim["untrained"]
    # bug injection: the same explainer with its feature vectors zeroed, or swapped between features, loses
    # what it read from them and falls to the vector-free majority baseline (measured: explainer 0.87,
    # zeroed 0.66, shuffled 0.63, majority 0.67; 2026-12-03, fresh toy build: 0.749, 0.645, 0.581, 0.670)
    for broken in ("zeroed_vectors", "shuffled_vectors"):
        assert sim[broken] <= sim["majority"] + 0.05 and sim[broken] <= sim["explainer"] - 0.10, broken
