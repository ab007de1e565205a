"""Task 1 describe: give each kept feature its cluster's summary, and count every feature left without one.

cluster_assignments.json maps feature -> cluster, cluster_summaries.json cluster -> text. A selected
feature with no cluster, a negative cluster id or a cluster without a summary is never dropped silently:
it is counted and listed in Coverage (coverage.json), warned about, or (missing_description: error) an
InputError.
"""

from __future__ import annotations

import logging

import msgspec
import numpy as np

from features.config import FeaturesConfig
from records.assets import load_cluster_assignments, load_cluster_summaries
from records.errors import InputError, Problems
from records.paths import PathsConfig
from records.schema import Coverage, FeatureInCluster, FeaturesIndex, SelectedFeature

log = logging.getLogger(__name__)

SPLIT_MODES = ("cluster", "feature")  # FeatureRecord.split_by; folder by_<mode>/


class Described(msgspec.Struct, frozen=True):
    """A kept feature with its cluster and that cluster's summary (the explainer's target)."""

    feature: SelectedFeature
    cluster_id: int
    description: str


class LabelStats(msgspec.Struct):
    n_distinct: int
    words_min: int
    words_median: float
    words_max: int
    chars_mean: float


class SplitCounts(msgspec.Struct):
    train: int
    test: int
    train_clusters: int
    test_clusters: int


class DescribeSummary(msgspec.Struct):
    """What `describe` found and wrote: printed, and returned by features.run.run."""

    coverage: Coverage
    labels: LabelStats
    splits: dict[str, SplitCounts]  # by SPLIT_MODES
    test_fraction: float
    seed: int
    heldout_clusters: str  # "random" | "novel attribute combinations"
    gaps: list[str]  # one line per kind of gap (empty when every selected feature is described)


def load_cluster_files(paths: PathsConfig) -> tuple[dict[int, int], dict[int, str]]:
    """Assignments and summaries, every problem of both files reported at once."""
    p = Problems()
    loaded = []
    for loader, path in ((load_cluster_assignments, paths.cluster_assignments),
                         (load_cluster_summaries, paths.cluster_summaries)):
        try:
            loaded.append(loader(path))
        except InputError as e:
            p.extend(e)
    p.raise_if_any()
    return loaded[0], loaded[1]


def coverage(features: list[int], width: int, assignments: dict[int, int], summaries: dict[int, str],
             where_assign: str) -> tuple[dict[int, int], Coverage]:
    """Which selected features get a description (feature -> cluster id, in `features` order), and every
    reason one does not."""
    too_big = sorted(f for f in assignments if f >= width)
    if too_big:
        raise InputError(f"{where_assign}: {len(too_big)} feature index(es) >= {width} (the SAE width of the "
                         f"selectivity file), e.g. {too_big[0]}: the files come from different SAEs")
    described, no_cluster, unassigned, no_summary = {}, [], [], []
    for f in features:
        cid = assignments.get(f)
        if cid is None:
            no_cluster.append(f)
        elif cid < 0:
            unassigned.append(f)
        elif cid not in summaries:
            no_summary.append(FeatureInCluster(feature_idx=f, cluster_id=cid))
        else:
            described[f] = cid
    assigned_clusters = {c for c in assignments.values() if c >= 0}
    without_summary = sorted(assigned_clusters - set(summaries))
    without_features = sorted(set(summaries) - assigned_clusters)
    return described, Coverage(
        n_selected=len(features), n_described=len(described), selected_not_in_assignments=no_cluster,
        selected_assigned_no_cluster=unassigned, selected_cluster_without_summary=no_summary,
        clusters_without_summary=without_summary, summaries_without_features=without_features,
        n_clusters_selected=len(set(described.values())), n_clusters_without_summary=len(without_summary),
        n_summaries_without_features=len(without_features))


def coverage_problems(cov: Coverage, paths: PathsConfig) -> list[str]:
    """One line per kind of gap among the selected features (empty when every one is described)."""
    lines = []
    if cov.selected_not_in_assignments:
        f = cov.selected_not_in_assignments
        lines.append(f"{paths.cluster_assignments}: {len(f)} of {cov.n_selected} selected features have no "
                     f"entry (no cluster), e.g. {f[:5]}")
    if cov.selected_assigned_no_cluster:
        f = cov.selected_assigned_no_cluster
        lines.append(f"{paths.cluster_assignments}: {len(f)} of {cov.n_selected} selected features are "
                     f"assigned a negative cluster id (no cluster), e.g. {f[:5]}")
    if cov.selected_cluster_without_summary:
        g = cov.selected_cluster_without_summary
        cids = sorted({x.cluster_id for x in g})
        lines.append(f"{paths.cluster_summaries}: {len(g)} selected features belong to {len(cids)} cluster(s) "
                     f"with no summary, e.g. cluster ids {cids[:5]}")
    return lines


def check_descriptions(cfg: FeaturesConfig, paths: PathsConfig, features: list[int], width: int,
                       clusters: tuple[dict, dict]) -> tuple[dict[int, int], Coverage, list[str]]:
    """coverage() of `features` and its gap lines; with missing_description: error, gaps are an InputError."""
    assignments, summaries = clusters
    described, cov = coverage(features, width, assignments, summaries, paths.cluster_assignments)
    gaps = coverage_problems(cov, paths)
    if gaps and cfg.missing_description == "error":
        raise InputError([g + " (missing_description: error)" for g in gaps])
    return described, cov, gaps


def describe(cfg: FeaturesConfig, paths: PathsConfig, index: FeaturesIndex,
             clusters: tuple[dict, dict]) -> tuple[list[Described], Coverage, list[str]]:
    """The described features of `index` in row order, the coverage and its gap lines (logged as warnings).

    `clusters` is load_cluster_files(paths): loaded by the caller first, so bad cluster files stop the
    run before extract writes anything.
    """
    cluster_of, cov, gaps = check_descriptions(cfg, paths, [f.feature_idx for f in index.features], index.width,
                                               clusters)
    for g in gaps:
        log.warning("%s: left out of the records (listed in coverage.json)", g)
    if not cluster_of:
        raise InputError(f"none of the {cov.n_selected} selected features has a description: check that "
                         f"{paths.cluster_assignments} and {paths.selectivity} come from the same SAE")
    summaries = clusters[1]
    described = [Described(feature=f, cluster_id=cluster_of[f.feature_idx],
                           description=summaries[cluster_of[f.feature_idx]])
                 for f in index.features if f.feature_idx in cluster_of]
    return described, cov, gaps


def label_stats(described: list[Described]) -> LabelStats:
    words = [len(d.description.split()) for d in described]
    chars = [len(d.description) for d in described]
    return LabelStats(n_distinct=len({d.description for d in described}), words_min=min(words),
                      words_median=float(np.median(words)), words_max=max(words), chars_mean=sum(chars) / len(chars))


def describe_lines(summary: DescribeSummary) -> list[str]:
    c, lab, s = summary.coverage, summary.labels, summary.splits
    n_missing = c.n_selected - c.n_described
    lines = [
        f"described {c.n_described} of {c.n_selected} selected features ({c.n_clusters_selected} clusters); "
        f"{n_missing} without a description: {len(c.selected_not_in_assignments)} not in the assignments, "
        f"{len(c.selected_assigned_no_cluster)} assigned no cluster (id < 0), "
        f"{len(c.selected_cluster_without_summary)} in a cluster with no summary",
        f"clusters: {c.n_clusters_without_summary} assigned but without a summary, "
        f"{c.n_summaries_without_features} summaries with no assigned feature",
        f"descriptions: {lab.n_distinct} distinct; {lab.words_min}-{lab.words_max} words "
        f"(median {lab.words_median:g}), {lab.chars_mean:.0f} chars on average",
    ]
    for mode in SPLIT_MODES:
        m = s[mode]
        lines.append(f"split by {mode}: train {m.train} features / {m.train_clusters} clusters, test "
                     f"{m.test} features / {m.test_clusters} clusters"
                     + (f" (held out: {summary.heldout_clusters})" if mode == "cluster" else ""))
    return lines
