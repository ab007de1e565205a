"""Task 1 splits: hold out whole clusters (by_cluster) or random features (by_feature), seeded.

by_cluster asks whether the explainer generalises beyond memorised clusters; with cluster_attributes it
holds out novel combinations of attribute values seen in training. by_feature holds out random features.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from features.config import FeaturesConfig
from features.describe import Described, SplitCounts
from records.assets import load_cluster_attributes as read_cluster_attributes
from records.errors import InputError
from records.paths import PathsConfig
from records.schema import FeatureRecord, FeaturesIndex

log = logging.getLogger(__name__)

Split = tuple[list[Described], list[Described]]  # (train, test)


def split_by_cluster(described: list[Described], test_fraction: float, seed: int,
                     attributes: dict[int, dict[str, str]] | None = None) -> Split:
    """Whole clusters to test (shuffled with `seed`) until they hold >= test_fraction of the features.

    With `attributes` (cluster id -> {attribute: value}), a cluster goes to test only while every attribute
    value of every test cluster is still carried by some training cluster (novel combinations of seen
    attributes); a first pass also skips clusters sharing a value with one already held out. When no
    further cluster qualifies the test set stays smaller than test_fraction (logged).
    """
    clusters = sorted({d.cluster_id for d in described})
    if len(clusters) < 2:
        raise InputError(f"the by-cluster split needs >= 2 clusters among the described features, got "
                         f"{len(clusters)}: raise top_k or check cluster_assignments.json")
    sizes = {c: sum(d.cluster_id == c for d in described) for c in clusters}
    target = test_fraction * len(described)
    order = [int(c) for c in np.random.default_rng(seed).permutation(clusters)]
    test_clusters: set[int] = set()
    if attributes is None:
        for c in order:
            if sum(sizes[t] for t in test_clusters) >= target or len(test_clusters) == len(clusters) - 1:
                break
            test_clusters.add(c)
    else:
        missing = [c for c in clusters if c not in attributes]
        if missing:
            raise InputError(f"cluster_attributes: no attributes for {len(missing)} described cluster(s), e.g. "
                             f"{missing[:5]}")

        def seen_in_train(test: set[int]) -> bool:
            train = [c for c in clusters if c not in test]
            return all(any(attributes[u].get(k) == v for u in train) for t in test for k, v in attributes[t].items())

        for distinct in (True, False):
            for c in order:
                if sum(sizes[t] for t in test_clusters) >= target or len(test_clusters) == len(clusters) - 1:
                    break
                if c in test_clusters:
                    continue
                if distinct and any(attributes[t].get(k) == v for t in test_clusters for k, v in attributes[c].items()):
                    continue
                if seen_in_train(test_clusters | {c}):
                    test_clusters.add(c)
        if not test_clusters:
            raise InputError("cluster_attributes: no cluster can be held out with all its attribute values seen "
                             "in training; use more clusters or leave cluster_attributes empty")
        held = sum(sizes[t] for t in test_clusters)
        if held < target:
            log.warning("by_cluster: only %d of %d features (%d clusters) can be held out as novel attribute "
                        "combinations; test_fraction %.2f asked for %.0f", held, len(described), len(test_clusters),
                        test_fraction, target)
    return ([d for d in described if d.cluster_id not in test_clusters],
            [d for d in described if d.cluster_id in test_clusters])


def load_cluster_attributes(cfg: FeaturesConfig, paths: PathsConfig) -> dict[int, dict[str, str]] | None:
    """cfg.cluster_attributes as {cluster id: {attribute: value}}, or None when not configured."""
    if not cfg.cluster_attributes:
        return None
    path = Path(cfg.cluster_attributes).expanduser()
    if not path.is_absolute():
        path = Path(paths.data_root) / path
    if not path.is_file():
        raise InputError(f"{path}: cluster_attributes file not found")
    return read_cluster_attributes(path)


def split_by_feature(described: list[Described], test_fraction: float, seed: int) -> Split:
    """A random test_fraction of the features (at least one, never all) to test."""
    if len(described) < 2:
        raise InputError(f"the by-feature split needs >= 2 described features, got {len(described)}")
    n_test = min(len(described) - 1, max(1, round(test_fraction * len(described))))
    test_rows = set(np.random.default_rng(seed).permutation(len(described))[:n_test].tolist())
    return ([d for i, d in enumerate(described) if i not in test_rows],
            [d for i, d in enumerate(described) if i in test_rows])


def make_splits(cfg: FeaturesConfig, described: list[Described],
                attributes: dict[int, dict[str, str]] | None) -> tuple[dict[str, Split], str]:
    """Both split modes ({"cluster": (train, test), "feature": ...}) and how clusters were held out."""
    splits = {"cluster": split_by_cluster(described, cfg.test_fraction, cfg.seed, attributes),
              "feature": split_by_feature(described, cfg.test_fraction, cfg.seed)}
    return splits, "novel attribute combinations" if attributes is not None else "random"


def to_records(items: list[Described], index: FeaturesIndex, split_by: str, vectors_path: str) -> list[FeatureRecord]:
    """FeatureRecords in row order; `vectors_path` relative to the records folder."""
    return [FeatureRecord(layer=index.layer, feature_idx=d.feature.feature_idx, row=d.feature.row,
                          vectors_path=vectors_path, representation=index.representation, description=d.description,
                          cluster_id=d.cluster_id, selectivity=d.feature.selectivity, split_by=split_by,
                          probe_weight=d.feature.probe_weight)
            for d in sorted(items, key=lambda d: d.feature.row)]


def split_counts(train: list[Described], test: list[Described]) -> SplitCounts:
    return SplitCounts(train=len(train), test=len(test), train_clusters=len({d.cluster_id for d in train}),
                       test_clusters=len({d.cluster_id for d in test}))
