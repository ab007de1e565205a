"""Helpers shared by the features tests (tests/features/): paths, configs, records and the CLI on the toy."""

from __future__ import annotations

from pathlib import Path

from app import cli
from features.config import FeaturesConfig, validate_config
from features.describe import Described
from records.jsonl import read_records
from records.paths import PathsConfig, resolve_paths
from records.schema import FeatureRecord, SelectedFeature

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "features_cpu.yaml"


def paths_for(root: Path, **overrides) -> PathsConfig:
    return resolve_paths(PathsConfig(data_root=str(root)), env={}, overrides={k: str(v) for k, v in overrides.items()})


def config(tmp_path: Path, **fields) -> FeaturesConfig:
    cfg = FeaturesConfig(output_dir=str(tmp_path / "out"), progress_log=str(tmp_path / "PROGRESS.md"), **fields)
    validate_config(cfg)
    return cfg


def planted(truth: dict) -> set[int]:
    return {f for c in truth["clusters"] for f in c["features"]}


def records(folder: Path, split: str) -> list[FeatureRecord]:
    return read_records(folder / f"{split}.jsonl", FeatureRecord)


def _described(feature_idx: int, cluster_id: int) -> Described:
    return Described(SelectedFeature(row=feature_idx, feature_idx=feature_idx, selectivity=0.0, probe_weight=None),
                     cluster_id=cluster_id, description=f"cluster {cluster_id}")


def features_cli(capsys, tmp_path: Path, root: Path, *argv: str) -> tuple[int, list[str]]:
    """Run `af-introspect features` on the toy config; returns (exit code, stderr error lines)."""
    rc = cli.main(["features", *argv, "--config", str(CPU_CONFIG), "--data-root", str(root),
                   "--set", f"progress_log={tmp_path / 'PROGRESS.md'}",
                   *([] if "--output-dir" in argv else ["--output-dir", str(tmp_path / "out")])])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("error:")]
