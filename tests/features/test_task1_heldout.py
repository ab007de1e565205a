"""Task 1 done-when: the toy explainer trained on the Task 1 records beats the nearest-neighbour baseline on
held-out clusters, by the MiniLM embedding-similarity judge.

The synthetic assets plant compositional clusters (trigger x modifier; organism/assets.py) and the toy
features config holds out novel combinations (cluster_attributes), so every held-out description is made
of phrases seen in training while no held-out profile has a training twin: the nearest neighbour gets one
attribute right at best. Measured (seed 0, 60 epochs): explainer 0.773, nearest neighbour 0.732, majority
0.448, untrained 0.033; the explainer names the trigger right but still tends to pair it with a modifier
it saw it with in training, so its margin comes from always reading the trigger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from app import cli
from organism.assets import write_synthetic_assets
from records.jsonl import read_records
from records.schema import FeatureRecord

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
    assert sim["explainer"] > sim["nearest_neighbour"]
    assert sim["explainer"] > sim["untrained"]
    # bug injection: the same explainer with its feature vectors zeroed, or swapped between features, loses
    # what it read from them and falls to the vector-free majority baseline (measured: explainer 0.87,
    # zeroed 0.66, shuffled 0.63, majority 0.67)
    for broken in ("zeroed_vectors", "shuffled_vectors"):
        assert sim[broken] <= sim["majority"] + 0.05 and sim[broken] <= sim["explainer"] - 0.10, broken
