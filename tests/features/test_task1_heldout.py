"""Task 1 done-when: the toy explainer trained on the Task 1 records beats the nearest-neighbour baseline on
held-out clusters, by the MiniLM embedding-similarity judge.

The synthetic assets plant compositional clusters (trigger x modifier; organism/assets.py) and the toy
features config holds out novel combinations (cluster_attributes), so every held-out description is made
of phrases seen in training while no held-out profile has a training twin: the nearest neighbour gets one
attribute right at best (it names every held-out trigger and no modifier).

Measured (2026-12-03, fresh toy build, configs/af_feature_descriptions_cpu.yaml: LoRA r=4, 60 epochs; seed 0):
explainer 0.908, nearest neighbour 0.799, majority 0.670, zeroed vectors 0.555, shuffled (each feature given
another cluster's vector) 0.641, untrained 0.011; per attribute (trigger / modifier) explainer 1.00 / 0.60,
nearest neighbour 1.00 / 0.00, zeroed 0.20 / 0.20, shuffled 0.15 / 0.25, chance 0.00 / 0.20. With r=16 the
explainer memorised the training clusters' whole descriptions and lost to the nearest neighbour on this build
(0.749 vs 0.799); training seed 1 gives 0.901, asset seed 1 0.818 and 0.846 vs 0.768 (docs/evidence.md, "Task
1 recipe").
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
    # Per-attribute accuracy, AVERAGED over trigger and modifier (chance, the training majority value, is 0
    # for the trigger: the novel-combination split leaves the most common training trigger out of test).
    chance = sum(scoring.chance.values()) / len(scoring.chance)
    assert set(scoring.chance) == {"trigger", "modifier"} and scoring.n == len(test)
    # The shuffled control gives each feature the vector of a feature of ANOTHER cluster (a cluster-mate
    # carries the same planted attributes). An explainer that reads every vector right then scores the share
    # of other-cluster held-out items with the same value: 0.10 on this split, the chance level. With 5
    # held-out clusters a vector-blind answer can do better by luck: 2 of the 5 share a modifier and 2 a
    # trigger, so a constant answer reaches 0.40 (`blind`). Measured 2026-12-03 (docs/evidence.md): shuffled
    # 0.20 (train seed 0; = chance + 0.10), 0.275 (train seed 1: its modifier guesses fall on the common
    # held-out modifier), 0.15 (asset seed 1); the explainer 0.80 / 0.80 / 0.60.
    held = {a: [attrs[r.cluster_id][a] for r in test] for a in scoring.chance}  # attribute -> value per item
    clusters = [r.cluster_id for r in test]

    def reader_level(vals: list[str]) -> float:
        others = [[j for j in range(len(vals)) if clusters[j] != clusters[i]] for i in range(len(vals))]
        return sum(sum(vals[j] == vals[i] for j in o) / len(o) for i, o in enumerate(others)) / len(vals)

    reader = sum(reader_level(vals) for vals in held.values()) / len(held)
    blind = sum(max(map(vals.count, vals)) / len(vals) for vals in held.values()) / len(held)
    print(f"attribute levels: chance {chance:.3f}, shuffled perfect reader {reader:.3f}, best constant {blind:.3f}")
    shuffled, explainer = methods["shuffled_vectors"]["attribute_mean"], methods["explainer"]["attribute_mean"]
    assert shuffled <= max(max(chance, reader) + 0.10, blind)  # no more than a vector-blind answer can get
    assert explainer - shuffled >= 0.25  # the same items, the vectors swapped: the explainer reads them
    assert explainer > blind + 0.10
    assert sim["explainer"] > sim["nearest_neighbour"]
    assert sim["explainer"] > sim["untrained"]
    # bug injection: the same explainer with its feature vectors zeroed, or given another cluster's, loses
    # what it read from them and falls to the vector-free majority baseline (measured 2026-12-03, fresh toy
    # build, r=4: explainer 0.908, zeroed 0.555, shuffled 0.641, majority 0.670; train seed 1: 0.901, 0.555,
    # 0.635).
    for broken in ("zeroed_vectors", "shuffled_vectors"):
        assert sim[broken] <= sim["majority"] + 0.05 and sim[broken] <= sim["explainer"] - 0.10, broken
    # Issue #28: the vector-probe baseline (a logistic probe per attribute on the standardised vectors, the
    # training descriptions' template filled with its answers, no language model) and the paired gaps over the
    # held-out clusters. Measured 2026-12-07 (this build, seed 0, docs/evidence.md "Evidence II"): probes name
    # trigger 1.00 / modifier 0.70 (attribute mean 0.85) at similarity 0.924; the explainer 0.625 at 0.848. The
    # explainer does NOT beat the probes, and the report says so (NOTE); a recipe that does changes this line.
    probe = methods["vector_probe"]
    # few-shot answers carry their own paired gap over items and draws (training/peers.py)
    assert {int(m["n_clusters"]) for k, m in methods.items()
            if k != "explainer" and not k.startswith("fewshot")} == {len(test_ids)}
    assert {"similarity_gap", "similarity_sign_p", "attribute_gap"} <= set(methods["nearest_neighbour"])
    assert probe["attribute_mean"] >= explainer and probe["semantic_similarity"] >= sim["explainer"] - 0.02
    from training.task1_evidence import gap_lines

    assert any(line.startswith("NOTE: the vector_probe baseline reaches the explainer") for line in gap_lines(methods))
