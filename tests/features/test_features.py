"""Task 1 data (features/) on synthetic assets with planted feature clusters: extraction, export, splits.

Invariants: extraction keeps exactly the planted top-K; caches are memory-mapped and never copied whole;
the introspective-interp pickles give back our vectors and labels and are written atomically; coverage
counts every feature without a description; features_index.json and coverage.json decode as their structs
and keep their on-disk keys; held-out clusters never leak into train (bad inputs: test_features_bad_input.py).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat
import tracemalloc
from pathlib import Path

import msgspec
import numpy as np
import pytest
from features_common import REPO, _described, config, features_cli, paths_for, planted, records

from features import export as features_export
from features import extract as features_extract
from features.config import FeaturesConfig, validate_config
from features.extract import extract, normalise_segment
from features.run import run
from features.splits import split_by_cluster
from records.assets import load_cluster_attributes
from records.config import load_config
from records.errors import InputError
from records.schema import Coverage, FeatureRecord, FeaturesIndex

# --- extract -------------------------------------------------------------------------------------


def test_extract_keeps_exactly_the_planted_top_k(synthetic, tmp_path):
    root, truth = synthetic
    index = extract(config(tmp_path, top_k=len(truth["top_k"])), paths_for(root), tmp_path)
    assert [f.feature_idx for f in index.features] == truth["top_k"]  # same features, rank order
    assert [f.row for f in index.features] == list(range(len(truth["top_k"])))
    # by |selectivity|, the top len(planted) are exactly the planted features, AF side and aligned side
    n = len(planted(truth))
    index = extract(config(tmp_path, top_k=n, rank_by="abs"), paths_for(root), tmp_path)
    assert {f.feature_idx for f in index.features} == planted(truth)


@pytest.mark.parametrize("norm", ["l2", "max", "none"])
def test_activation_profile_is_the_normalised_columns_of_the_chosen_caches(synthetic, tmp_path, norm):
    root, truth = synthetic
    caches = ["train", "benchmark"]
    index = extract(config(tmp_path, top_k=20, profile_caches=caches, profile_norm=norm), paths_for(root), tmp_path)
    vectors = np.load(tmp_path / "vectors.npy")
    cols = [f.feature_idx for f in index.features]
    segments = [normalise_segment(np.load(root / f"{c}_activations.npy")[:, cols], norm) for c in caches]
    expected = np.concatenate(segments).T / (np.sqrt(len(caches)) if norm == "l2" else 1.0)
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)
    assert [(c.cache, c.offset) for c in index.caches] == [("train", 0), ("benchmark", 200)]
    if norm == "l2":  # every chosen feature fires in both caches: unit vectors, each cache half the mass
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(vectors[:, 200:], axis=1) ** 2, 0.5, rtol=1e-5)


def test_caches_are_memory_mapped_and_never_copied_whole(synthetic, tmp_path, monkeypatch):
    root, truth = synthetic
    # A cache 20x the synthetic one (262 MB): a full copy would dominate the traced peak. The budget
    # left is load_array's block-wise NaN check (64 MiB blocks -> ~32 MiB traced) plus our 4 MiB blocks.
    small = np.load(root / "train_activations.npy", mmap_mode="r")
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                    shape=(20 * small.shape[0], small.shape[1]))
    for i in range(20):
        big[i * small.shape[0] : (i + 1) * small.shape[0]] = small
    big.flush()
    cache_bytes = big.nbytes
    del big
    loaded = []
    real_load = features_extract.load_array

    def spy(path, *args, **kwargs):
        arr = real_load(path, *args, **kwargs)
        loaded.append((Path(path).name, type(arr)))
        return arr

    monkeypatch.setattr(features_extract, "load_array", spy)
    # The pickle export (a [dim, W] matrix by design) is not a cache read: left out of this measurement.
    cfg = config(tmp_path, top_k=10, profile_caches=["train"], block_mb=4, export_introspective_interp=False)
    tracemalloc.start()
    try:
        index = extract(cfg, paths_for(root, train_activations=tmp_path / "big.npy"), tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ("big.npy", np.memmap) in loaded
    assert peak < cache_bytes / 6, f"peak {peak / 2**20:.0f} MiB for a {cache_bytes / 2**20:.0f} MiB cache"
    vectors = np.load(tmp_path / "vectors.npy")
    assert vectors.shape == (10, 20 * small.shape[0])
    assert [f.feature_idx for f in index.features] == truth["top_k"]


def test_decoder_direction_reads_unit_decoder_rows(synthetic, tmp_path):
    root, truth = synthetic
    rng = np.random.default_rng(1)
    decoder = rng.standard_normal((truth["width"], 32)).astype(np.float32)  # [W, hidden]
    np.save(tmp_path / "W_dec.npy", decoder)
    index = extract(config(tmp_path, top_k=10, decoder=str(tmp_path / "W_dec.npy")), paths_for(root), tmp_path)
    assert index.representation == "decoder_direction"
    rows = decoder[truth["top_k"]]
    np.testing.assert_allclose(np.load(tmp_path / "vectors.npy"), rows / np.linalg.norm(rows, axis=1)[:, None],
                               rtol=1e-6)
    # the same from a safetensors file (the usual SAE release format)
    from safetensors.numpy import save_file

    save_file({"W_dec": decoder}, str(tmp_path / "sae.safetensors"))
    extract(config(tmp_path, top_k=10, decoder=str(tmp_path / "sae.safetensors")), paths_for(root), tmp_path / "st")
    np.testing.assert_allclose(np.load(tmp_path / "st" / "vectors.npy"), np.load(tmp_path / "vectors.npy"))


def test_probe_weights_recorded_per_feature_and_optional(synthetic, tmp_path):
    root, truth = synthetic
    probe = np.load(root / "differential_probe_weights.npy")
    index = extract(config(tmp_path, top_k=10), paths_for(root), tmp_path)
    assert [f.probe_weight for f in index.features] == pytest.approx([float(probe[f]) for f in truth["top_k"]])
    absent = paths_for(root, differential_probe_weights=tmp_path / "none.npy")
    index = extract(config(tmp_path, top_k=10), absent, tmp_path / "b")
    assert all(f.probe_weight is None for f in index.features)
    with pytest.raises(InputError, match="file not found"):
        extract(config(tmp_path, top_k=10, probe_weights="on"), absent, tmp_path / "c")


# --- the introspective-interp export -------------------------------------------------------------


def test_pickle_export_round_trips_to_our_vectors_and_labels(synthetic, tmp_path):
    root, truth = synthetic
    cfg = config(tmp_path, top_k=168, rank_by="abs")
    run(cfg, paths_for(root))
    out = Path(cfg.output_dir)
    vectors = np.load(out / "vectors.npy")
    weights = pickle.load(open(out / "introspective_interp" / "features" / "layer_40.pkl", "rb"))
    assert tuple(weights.shape) == (vectors.shape[1], truth["width"])  # [dim, W]: column f = SAE feature f
    # what introspective-interp's FeaturesExplainDataset builds from the file
    by_feature = {f: weights[:, f] for f in range(weights.shape[1])}
    index = msgspec.json.decode((out / "features_index.json").read_bytes(), type=FeaturesIndex)
    row_of = {f.feature_idx: f.row for f in index.features}
    zero = sorted(set(range(truth["width"])) - set(row_of))
    assert not weights[:, zero].any()
    for mode in ("cluster", "feature"):
        for split in ("train", "test"):
            pairs = pickle.load(open(out / "introspective_interp" / "explanations" / f"by_{mode}"
                                     / f"{split}_explanations.pkl", "rb"))
            recs = records(out / f"by_{mode}", split)
            assert [key for key, _ in pairs] == [(40, r.feature_idx) for r in recs]
            for ((_, f), label), rec in zip(pairs, recs):
                np.testing.assert_array_equal(by_feature[f].numpy(), vectors[row_of[f]])
                np.testing.assert_array_equal(np.load(out / f"by_{mode}" / rec.vectors_path)[rec.row],
                                              vectors[row_of[f]])
                assert label == {"chosen_label": rec.description, "all_labels": [rec.description],
                                 "all_label_scores": {rec.description: 1.0}}
    export = json.loads((out / "introspective_interp" / "export.json").read_text())
    assert (export["split_explanations_data"]["cluster"].format(split="train")
            == "explanations/by_cluster/train_explanations.pkl")


def test_export_writes_through_the_shared_atomic_writer(tmp_path, monkeypatch):
    """Per-process temp names (parallel workers may race) and a directory fsync (the rename is durable)."""
    renamed, synced_dirs = [], []
    real_replace, real_fsync = os.replace, os.fsync

    def spy_replace(src, dst):
        renamed.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst)

    def spy_fsync(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced_dirs.append(st.st_ino)
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3)  # [K=2, dim=3]
    path = features_export.write_feature_matrix(tmp_path, 40, vectors, np.array([4, 1]), width=6)
    rec = FeatureRecord(layer=40, feature_idx=4, row=0, vectors_path="vectors.npy", representation="activation_profile",
                        description="fires on x", cluster_id=0, selectivity=1.0, split_by="cluster")
    features_export.write_explanations(tmp_path, "cluster", 40, {"train": [rec]})
    pid = os.getpid()
    assert (f".layer_40.pkl.{pid}.tmp", "layer_40.pkl") in renamed
    assert (f".train_explanations.pkl.{pid}.tmp", "train_explanations.pkl") in renamed
    explained = tmp_path / "introspective_interp" / "explanations" / "by_cluster"
    assert {path.parent.stat().st_ino, explained.stat().st_ino} <= set(synced_dirs)
    assert sorted(p.name for p in path.parent.iterdir()) == ["layer_40.pkl"]  # no temp file left behind
    matrix = pickle.load(open(path, "rb"))  # [dim, W]: column 4 is row 0, column 1 is row 1, the rest zero
    np.testing.assert_array_equal(matrix[:, 4].numpy(), vectors[0])
    np.testing.assert_array_equal(matrix[:, 1].numpy(), vectors[1])
    assert not matrix[:, [0, 2, 3, 5]].any()
    pairs = pickle.load(open(explained / "train_explanations.pkl", "rb"))
    assert pairs == [((40, 4), features_export.label_dict("fires on x"))]


# --- the files another stage reads keep their shape -----------------------------------------------

INDEX_KEYS = {"layer", "representation", "width", "top_k", "rank_by", "selectivity_path", "normalisation",
              "n_zero_vectors", "probe_weights_path", "dim", "stats", "features"}


def test_index_and_coverage_on_disk_keep_their_shape(synthetic, tmp_path):
    """features_index.json and coverage.json have the keys they had as plain dicts, so earlier runs decode."""
    root, truth = synthetic
    cfg = config(tmp_path, top_k=20)
    run(cfg, paths_for(root))
    out = Path(cfg.output_dir)
    index = json.loads((out / "features_index.json").read_text())
    assert set(index) == INDEX_KEYS | {"profile_norm", "caches", "export"}
    assert set(index["caches"][0]) == {"cache", "path", "rows", "offset"}
    assert set(index["features"][0]) == {"row", "feature_idx", "selectivity", "probe_weight"}
    assert set(json.loads((out / "coverage.json").read_text())) == {
        "n_selected", "n_described", "selected_not_in_assignments", "selected_assigned_no_cluster",
        "selected_cluster_without_summary", "clusters_without_summary", "summaries_without_features",
        "n_clusters_selected", "n_clusters_without_summary", "n_summaries_without_features"}
    np.save(tmp_path / "W_dec.npy", np.ones((truth["width"], 8), np.float32))
    cfg = config(tmp_path, top_k=5, decoder=str(tmp_path / "W_dec.npy"), export_introspective_interp=False)
    extract(cfg, paths_for(root), tmp_path / "dec")
    index = json.loads((tmp_path / "dec" / "features_index.json").read_text())
    assert set(index) == INDEX_KEYS | {"decoder_path", "decoder_key"}
    assert set(index["features"][0]) == {"row", "feature_idx", "selectivity", "probe_weight", "decoder_norm"}
    assert index["features"][0]["decoder_norm"] == pytest.approx(np.sqrt(8))


def test_describe_reads_an_index_written_as_plain_json(synthetic, tmp_path, capsys):
    """A run made before the index was a struct (key order of the old dict, decoder_norm absent) describes."""
    root, _ = synthetic
    rc, errors = features_cli(capsys, tmp_path, root, "extract")
    assert (rc, errors) == (0, [])
    path = tmp_path / "out" / "features_index.json"
    old = json.loads(path.read_text())
    order = ["layer", "representation", "width", "top_k", "rank_by", "selectivity_path", "normalisation",
             "profile_norm", "caches", "n_zero_vectors", "probe_weights_path", "dim", "stats", "features", "export"]
    path.write_text(json.dumps({k: old[k] for k in order}, indent=2))
    rc, errors = features_cli(capsys, tmp_path, root, "describe")
    assert (rc, errors) == (0, [])
    rc, errors = features_cli(capsys, tmp_path, root, "--output-dir", str(tmp_path / "straight"))
    assert (rc, errors) == (0, [])
    for split in ("train.jsonl", "test.jsonl"):  # the same records as a straight run
        assert (tmp_path / "out" / "by_cluster" / split).read_bytes() == \
            (tmp_path / "straight" / "by_cluster" / split).read_bytes()
    path.write_text(path.read_text()[:200])  # a torn index: one line, not a traceback
    rc, errors = features_cli(capsys, tmp_path, root, "describe")
    assert rc == 2 and len(errors) == 1 and "not a features index" in errors[0], errors


# --- describe and the splits ---------------------------------------------------------------------


def test_describe_counts_every_feature_without_a_description(synthetic, tmp_path, caplog):
    root, truth = synthetic
    clusters = truth["clusters"]
    assign = json.loads((root / "cluster_assignments.json").read_text())
    summaries = json.loads((root / "cluster_summaries.json").read_text())
    gone, noise = clusters[0]["features"][0], clusters[1]["features"][0]
    del assign[str(gone)]  # a selected feature with no cluster
    assign[str(noise)] = -1  # the clustering's "noise" label
    no_summary = clusters[2]
    del summaries[str(no_summary["cluster_id"])]  # a cluster with no summary
    summaries["999"] = "fires on nothing anyone assigned"  # a summary no feature uses
    broken = tmp_path / "in"  # inputs in their own folder: the output may not sit inside a source folder
    broken.mkdir()
    (broken / "a.json").write_text(json.dumps(assign))
    (broken / "s.json").write_text(json.dumps(summaries))
    paths = paths_for(root, cluster_assignments=broken / "a.json", cluster_summaries=broken / "s.json")
    n = len(planted(truth))
    cfg = config(tmp_path, top_k=n, rank_by="abs")
    with caplog.at_level(logging.WARNING):
        result = run(cfg, paths)
    cov = result.describe.coverage
    assert cov.selected_not_in_assignments == [gone]
    assert cov.selected_assigned_no_cluster == [noise]
    assert sorted(x.feature_idx for x in cov.selected_cluster_without_summary) == no_summary["features"]
    assert cov.clusters_without_summary == [no_summary["cluster_id"]]
    assert cov.summaries_without_features == [999]
    assert cov.n_described == n - 2 - len(no_summary["features"])
    out = Path(cfg.output_dir)
    for mode in ("cluster", "feature"):
        recs = records(out / f"by_{mode}", "train") + records(out / f"by_{mode}", "test")
        assert len(recs) == cov.n_described
        assert not {gone, noise, *no_summary["features"]} & {r.feature_idx for r in recs}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"1 of {n} selected features have no entry" in warned
    assert f"{len(no_summary['features'])} selected features belong to 1 cluster(s) with no summary" in warned
    assert msgspec.json.decode((out / "coverage.json").read_bytes(), type=Coverage) == cov
    progress = Path(cfg.progress_log).read_text()
    assert "## Phase 4: Task 1 feature selection — DONE" in progress and "left out of the records" in progress


def test_by_cluster_split_holds_out_whole_clusters(synthetic, tmp_path):
    root, truth = synthetic
    cfg = config(tmp_path, top_k=len(planted(truth)), rank_by="abs", test_fraction=0.25, seed=3)
    run(cfg, paths_for(root))
    out = Path(cfg.output_dir)
    train, test = records(out / "by_cluster", "train"), records(out / "by_cluster", "test")
    assert {r.cluster_id for r in train}.isdisjoint({r.cluster_id for r in test})
    assert {r.feature_idx for r in train + test} == planted(truth)
    assert len(test) >= 0.25 * len(train + test) and {r.split_by for r in train + test} == {"cluster"}
    # every record's description is its planted cluster's summary
    summary = {c["cluster_id"]: c["summary"] for c in truth["clusters"]}
    assert all(r.description == summary[r.cluster_id] for r in train + test)
    ftrain, ftest = records(out / "by_feature", "train"), records(out / "by_feature", "test")
    assert {r.feature_idx for r in ftrain}.isdisjoint({r.feature_idx for r in ftest})
    assert {r.feature_idx for r in ftrain + ftest} == planted(truth)
    assert len(ftest) == round(0.25 * len(planted(truth))) and {r.split_by for r in ftrain} == {"feature"}
    # same seed, same split; the records load with datasets.load_dataset
    first = (out / "by_cluster" / "test.jsonl").read_bytes()
    run(cfg, paths_for(root))
    assert (out / "by_cluster" / "test.jsonl").read_bytes() == first
    import datasets

    ds = datasets.load_dataset(str(out / "by_cluster"), split="train")
    assert len(ds) == len(train) and set(FeatureRecord.__struct_fields__) <= set(ds.column_names)
    assert len(datasets.load_dataset(str(out / "by_cluster"), split="test")) == len(test)


def test_by_cluster_split_holds_out_novel_attribute_combinations(synthetic, tmp_path):
    root, truth = synthetic
    cfg = config(tmp_path, top_k=len(planted(truth)), rank_by="abs", test_fraction=0.25, seed=3,
                 cluster_attributes="cluster_attributes.json")  # relative: under data_root
    summary = run(cfg, paths_for(root)).describe
    assert summary.heldout_clusters == "novel attribute combinations"
    out = Path(cfg.output_dir) / "by_cluster"
    train, test = records(out, "train"), records(out, "test")
    attrs = {c["cluster_id"]: c["attributes"] for c in truth["clusters"]}
    train_ids, test_ids = {r.cluster_id for r in train}, {r.cluster_id for r in test}
    assert train_ids.isdisjoint(test_ids) and len(test) >= 0.25 * len(train + test)
    for key in ("trigger", "modifier"):
        held = [attrs[c][key] for c in test_ids]
        assert set(held) <= {attrs[c][key] for c in train_ids}  # every held-out value is seen in training
    # the planted summaries compose the two phrases, so each held-out one is made of seen phrases
    phrases = {c["summary"] for c in truth["clusters"] if c["cluster_id"] in train_ids}
    for c in truth["clusters"]:
        assert c["summary"] == f"{truth['modifiers'][c['attributes']['modifier']]['phrase']}, and " \
                               f"{truth['triggers'][c['attributes']['trigger']]}"
    assert not {r.description for r in test} & phrases
    # the attributes travel with both splits' records, for evaluation's per-attribute accuracy
    for mode in ("by_cluster", "by_feature"):
        assert load_cluster_attributes(Path(cfg.output_dir) / mode / "cluster_attributes.json") == attrs
    with pytest.raises(InputError, match="no attributes for 1 described cluster"):
        attributes = {c: a for c, a in attrs.items() if c != min(test_ids)}
        split_by_cluster([_described(f, c) for f, c in enumerate(attrs)], 0.25, 3, attributes)


def test_cli_runs_extract_then_describe(synthetic, tmp_path, capsys):
    root, truth = synthetic
    rc, errors = features_cli(capsys, tmp_path, root, "extract")
    assert (rc, errors) == (0, [])
    assert not (tmp_path / "out" / "by_cluster").exists()
    rc, errors = features_cli(capsys, tmp_path, root, "describe")
    assert (rc, errors) == (0, [])
    test = records(tmp_path / "out" / "by_cluster", "test")
    assert test and all(r.representation == "activation_profile" for r in test)


def test_configs_decode_and_validate():
    for name in ("features.yaml", "features_cpu.yaml"):
        validate_config(load_config(REPO / "configs" / name, FeaturesConfig), where=name)
