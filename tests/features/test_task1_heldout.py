"""Task 1 on held-out clusters: the toy explainer trained on the Task 1 records, beside every baseline that
could fake its score, on >= 15 whole held-out clusters (issue #28).

The synthetic assets plant compositional clusters (10 triggers x 4 modifiers, 2 features each;
organism/assets.py) and the toy features config holds out 16 novel combinations (cluster_attributes), so every
held-out description is made of phrases seen in training while no held-out profile has a training twin.

What the test asserts is what was measured on three asset seeds (docs/evidence.md, "Task 1 with 16 held-out
clusters"): the explainer reads its vectors (it beats its zeroed and shuffled controls on attribute accuracy),
and it does NOT beat the vector probe, which the report says in a NOTE. A recipe that beats the probe changes
the last assertions.
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
METHODS = ("explainer", "untrained", "nearest_neighbour", "vector_probe", "majority", "zeroed_vectors",
           "shuffled_vectors")


def test_toy_explainer_on_heldout_clusters_beside_its_baselines(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the toy is tiny: one thread is as fast, and far faster on a busy machine
    try:
        _run(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _records(tmp_path: Path) -> tuple[dict, Path, Path, list[FeatureRecord]]:
    """Assets (seed 0) and the features stage's by_cluster records; held-out clusters checked."""
    truth = write_synthetic_assets(tmp_path / "assets", seed=0)
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
    assert len(test_ids) >= 15 and train_ids.isdisjoint(test_ids)  # whole clusters, one side each
    for cid in test_ids:  # novel combinations: each attribute of a held-out cluster is seen in training
        for key, value in attrs[cid].items():
            assert any(attrs[u][key] == value for u in train_ids), (cid, key, value)
    return truth, folder, paths, test


def _run(tmp_path: Path) -> None:
    from training import train as T
    from training.config import load_train_config
    from training.evaluate import run_evaluation
    from training.task1_evidence import gap_lines

    start = time.perf_counter()
    truth, folder, paths, test = _records(tmp_path)
    cfg = load_train_config(str(TRAIN_CONFIG), [f"train.dataset={folder}", f"train.paths={paths}"],
                            str(tmp_path / "explainer"))
    T.main(cfg, debug=True)
    T.main(cfg)
    result = run_evaluation(cfg)
    methods = result["splits"]["test"]["generative_explanation"]
    sim = {m: methods[m]["semantic_similarity"] for m in METHODS}
    attr = {m: methods[m]["attribute_mean"] for m in METHODS if "attribute_mean" in methods[m]}
    print("\n" + result["table"], *gap_lines(methods), sep="\n")
    print(f"{time.perf_counter() - start:.0f}s in all;", json.dumps({"similarity": sim, "attribute_mean": attr}))
    metrics = msgspec.json.decode((Path(result["out_dir"]) / "metrics.json").read_bytes(), type=EvalMetrics)
    scoring = metrics.attributes["test"]["generative_explanation"]
    assert set(scoring.chance) == {"trigger", "modifier"} and scoring.n == len(test)
    assert metrics.feature_judge == "" and "LM judge: not configured" in result["table"]
    n_clusters = len({r.cluster_id for r in test})
    assert {int(m["n_clusters"]) for k, m in methods.items() if "n_clusters" in m} == {n_clusters}
    assert not any(line.startswith("NOTE: only") for line in gap_lines(methods))  # >= 15 held-out clusters
    assert sim["explainer"] > sim["untrained"] + 0.5
    # The explainer reads its vectors: with them zeroed, or each item given a vector of ANOTHER cluster, its
    # attribute accuracy falls (measured on three asset seeds, docs/evidence.md).
    for broken in ("zeroed_vectors", "shuffled_vectors"):
        assert attr["explainer"] >= attr[broken] + 0.10, broken
        assert sim[broken] <= sim["explainer"], broken
    # As measured (issue #28): the vector probe (a logistic probe per attribute on the standardised vectors,
    # the training descriptions' template filled with its answers, no language model) beats the explainer on
    # both judges, and the report says so.
    assert attr["vector_probe"] > attr["explainer"] and sim["vector_probe"] > sim["explainer"]
    assert any(line.startswith("NOTE: the vector_probe baseline reaches the explainer") for line in gap_lines(methods))
