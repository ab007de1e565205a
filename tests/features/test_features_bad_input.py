"""Task 1 data (features/): each bad input stops with one line and writes nothing; refusals say what to do."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest
from features_common import features_cli

from features.config import FeaturesConfig, validate_config
from records.config import load_config
from records.errors import InputError
from records.schema import Coverage

# --- bad input: one line each --------------------------------------------------------------------


def _nan_selectivity(root: Path, tmp: Path) -> list[str]:
    sel = np.load(root / "selectivity.npy")
    sel[5] = np.nan
    np.save(tmp / "sel.npy", sel)
    return ["--selectivity", str(tmp / "sel.npy")]


def _narrow_selectivity(root: Path, tmp: Path) -> list[str]:
    # extract alone: under `all`, the assignments naming features >= 16000 would be a second true problem
    np.save(tmp / "sel.npy", np.load(root / "selectivity.npy")[:16000])
    return ["extract", "--selectivity", str(tmp / "sel.npy")]


def _with_assignment(key: str):
    """Assignments with one more entry, `key` -> cluster 0."""
    def make(root: Path, tmp: Path) -> list[str]:
        assign = json.loads((root / "cluster_assignments.json").read_text())
        assign[key] = 0
        (tmp / "a.json").write_text(json.dumps(assign))
        return ["--cluster-assignments", str(tmp / "a.json")]
    return make


def _missing_summary(root: Path, tmp: Path) -> list[str]:
    summaries = json.loads((root / "cluster_summaries.json").read_text())
    del summaries["0"]
    (tmp / "s.json").write_text(json.dumps(summaries))
    return ["--cluster-summaries", str(tmp / "s.json"), "--strict", "--top-k", "80"]


def _transposed_decoder(root: Path, tmp: Path) -> list[str]:
    np.save(tmp / "dec.npy", np.ones((32, 16384), np.float32))
    return ["--decoder", str(tmp / "dec.npy")]


BAD_INPUTS = {
    "width mismatch": (_narrow_selectivity, "16000 features, but activation cache columns differ: "
                                            "train_activations.npy has 16384"),
    "k > width": (lambda r, t: ["--top-k", "20000"], "top_k 20000 is larger than the 16384 features"),
    "nan in selectivity": (_nan_selectivity, "1 non-finite value(s) (NaN or inf), first at index (5,)"),
    "non-integer key": (_with_assignment("feature_12"), "key 'feature_12': feature index must be an integer"),
    "index beyond width": (_with_assignment("20000"), "1 feature index(es) >= 16384"),
    "cluster without summary, strict": (_missing_summary, "2 selected features belong to 1 cluster(s) with no summary"),
    "transposed decoder": (_transposed_decoder, "looks transposed"),
    "bad test_fraction": (lambda r, t: ["--test-fraction", "1.5"], "test_fraction must be between 0 and 1"),
    "unknown cache": (lambda r, t: ["--caches", "train,validation"], "unknown cache(s) ['validation']"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_stops_with_one_line_and_writes_nothing(synthetic, tmp_path, capsys, case):
    root, _ = synthetic
    make, expected = BAD_INPUTS[case]
    (tmp_path / "in").mkdir()
    rc, errors = features_cli(capsys, tmp_path, root, *make(root, tmp_path / "in"))
    assert rc == 2
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_cluster_without_summary_warns_with_counts_by_default(synthetic, tmp_path, capsys, caplog):
    root, _ = synthetic
    (tmp_path / "in").mkdir()
    args = [a for a in _missing_summary(root, tmp_path / "in") if a != "--strict"]
    with caplog.at_level(logging.WARNING):
        rc, errors = features_cli(capsys, tmp_path, root, *args)
    assert (rc, errors) == (0, [])
    assert any("2 selected features belong to 1 cluster(s) with no summary" in r.getMessage() for r in caplog.records)
    cov = msgspec.json.decode((tmp_path / "out" / "coverage.json").read_bytes(), type=Coverage)
    assert cov.n_described == 78 and cov.clusters_without_summary == [0]


def test_output_inside_a_source_folder_is_refused(synthetic, tmp_path, capsys):
    root, _ = synthetic
    rc, errors = features_cli(capsys, tmp_path, root, "--output-dir", str(root / "features_out"))
    assert rc == 2 and len(errors) == 1 and "inside source data folder" in errors[0]
    assert not (root / "features_out").exists()


def test_describe_before_extract_says_what_to_run(synthetic, tmp_path, capsys):
    root, _ = synthetic
    rc, errors = features_cli(capsys, tmp_path, root, "describe")
    assert rc == 2 and len(errors) == 1 and "run `af-introspect features extract` first" in errors[0]


def test_unknown_config_key_stops_with_one_line_and_writes_nothing(synthetic, tmp_path, capsys):
    root, _ = synthetic
    rc, errors = features_cli(capsys, tmp_path, root, "--set", "top_kk=3")
    assert rc == 2 and len(errors) == 1 and "unknown field `top_kk`" in errors[0], errors
    assert not (tmp_path / "out").exists()
    (tmp_path / "typo.yaml").write_text("top_k: 10\nprofile_cache: [train]\n")
    with pytest.raises(InputError, match="unknown field `profile_cache`"):
        load_config(tmp_path / "typo.yaml", FeaturesConfig)
    with pytest.raises(InputError, match="top_k must be >= 1"):
        validate_config(FeaturesConfig(top_k=0))


def test_an_sae_layer_deeper_than_the_organism_is_called_out(tmp_path):
    from features.config import depth_warning

    model = tmp_path / "mistral-shape"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 32}')
    assert "SAE layer 40 is not a layer of the organism" in depth_warning(40, str(model))
    assert "(32 layers, 0-31)" in depth_warning(40, str(model))
    assert depth_warning(32, str(model)).startswith("WARNING")  # layers count from 0, as steering's do
    assert depth_warning(31, str(model)) == "" and depth_warning(20, str(model)) == ""
    assert depth_warning(40, "someone/not-cached-here") is None  # depth unknown offline: no guess
    (model / "config.json").write_text('{"text_config": {"num_hidden_layers": 32}}')  # a multimodal config
    assert depth_warning(40, str(model)).startswith("WARNING")
