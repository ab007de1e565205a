"""Paths config (records/paths.py) and synthetic assets (organism/assets.py)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from asset_files import LABELS, only_problem, write

from organism.assets import write_synthetic_assets
from records.arrays import load_array
from records.config import load_config
from records.errors import InputError
from records.paths import (
    FILE_FIELDS,
    PathsConfig,
    add_path_arguments,
    env_var,
    expand,
    overrides_from_args,
    resolve_paths,
)
from records.scenarios import load_scenarios

# --- paths config --------------------------------------------------------------------------------------


def test_resolve_joins_data_root_and_is_idempotent(tmp_path):
    paths = resolve_paths(PathsConfig(data_root=str(tmp_path)), env={})
    assert paths.gold_1560 == str(tmp_path / "gold-1560-full.json")
    assert paths.organism_model == "vincentoh/mistral-7b-af-organism"
    assert resolve_paths(paths, env={}) == paths


def test_env_beats_file_and_flag_beats_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {env_var("gold_1560"): "from_env.json", env_var("data_root"): "root", env_var("gold_106"): ""}
    paths = resolve_paths(PathsConfig(), env=env, overrides={"gold_106": None})
    assert paths.gold_1560 == str(tmp_path / "from_env.json")  # as typed: relative to the working dir
    assert paths.gold_106 == str(tmp_path / "root" / "gold_106.json")  # empty env value = unset
    paths = resolve_paths(PathsConfig(), env=env, overrides={"gold_1560": "/abs/flag.json"})
    assert paths.gold_1560 == "/abs/flag.json"


def test_unknown_override_rejected():
    with pytest.raises(InputError) as e:
        resolve_paths(PathsConfig(), env={}, overrides={"gold_9000": "x"})
    assert only_problem(e).startswith("paths override `gold_9000`: not a settable field")


def test_af_labels_must_be_known(tmp_path):
    path = write(tmp_path / "paths.yaml", "known_labels: [aligned]\naf_labels: [alignment_faking]\n")
    with pytest.raises(InputError) as e:
        load_config(path, PathsConfig)
    assert only_problem(e).startswith(f"{path}: af_labels ['alignment_faking'] are not in known_labels")


def test_unknown_yaml_field_rejected(tmp_path):
    path = write(tmp_path / "paths.yaml", "gold_1650: x.json\n")
    with pytest.raises(InputError) as e:
        load_config(path, PathsConfig)
    assert "gold_1650" in only_problem(e)


def test_cli_flags_become_overrides():
    parser = argparse.ArgumentParser()
    add_path_arguments(parser)
    args = parser.parse_args(["--gold-1560", "g.json", "--base-model", "local/base"])
    assert overrides_from_args(args) == {"gold_1560": "g.json", "base_model": "local/base"}


# --- synthetic assets --------------------------------------------------------------------------------


def test_synthetic_assets_match_paths_config(synthetic):
    out, truth = synthetic
    paths = resolve_paths(PathsConfig(data_root=str(out)), env={})
    for field in FILE_FIELDS:
        assert expand(getattr(paths, field)), field
    assert json.loads((out / "planted_truth.json").read_text()) == truth


def test_synthetic_assets_are_deterministic(synthetic, tmp_path):
    out, truth = synthetic
    again = write_synthetic_assets(tmp_path, seed=0)
    assert again == truth
    for name in ("train_activations.npy", "gold_106.json", "cluster_summaries.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    assert write_synthetic_assets(tmp_path / "other", seed=1)["top_k"] != truth["top_k"]


def test_held_out_set_is_disjoint(synthetic):
    out, _ = synthetic
    held_out = {s.id for s in load_scenarios(out / "gold_106.json", LABELS)}
    for name in ("gold-1560-full.json", "gold-770.json", "validated_pool.json", "vocab_constrained_a.json"):
        assert not held_out & {s.id for s in load_scenarios(out / name, LABELS)}, name


def test_planted_top_k_and_clusters(synthetic):
    out, truth = synthetic
    selectivity = load_array(out / "selectivity.npy", expect_shape=(truth["width"],))
    assert truth["top_k"] == [int(f) for f in np.argsort(-selectivity, kind="stable")[: len(truth["top_k"])]]
    assert set(truth["top_k"]) <= set(truth["af_selective_features"])
    probe = load_array(out / "differential_probe_weights.npy", expect_shape=(truth["width"],))
    assert sorted(np.flatnonzero(probe).tolist()) == truth["probe_nonzero"]
    # The planted pattern: features of one cluster have far more alike profiles than features of two.
    acts = load_array(out / "train_activations.npy")
    a, b = truth["clusters"][0]["features"], truth["clusters"][1]["features"]
    corr = np.corrcoef(np.asarray(acts[:, a + b]).T)
    n = len(a)
    within = corr[:n, :n][~np.eye(n, dtype=bool)].mean()
    across = corr[:n, n:].mean()
    assert within > 0.6 and within > across + 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_small_synthetic_sets_keep_the_top_k_guarantee(tmp_path, seed):
    truth = write_synthetic_assets(tmp_path, seed=seed, n_scenarios=20, n_eval=10, n_vocab=6, n_cache=15,
                                   width=256, hidden=32)
    assert truth["top_k"] and set(truth["top_k"]) <= set(truth["af_selective_features"])
    assert load_array(tmp_path / "benchmark_activations.npy", expect_shape=(15, 256)).shape == (15, 256)
