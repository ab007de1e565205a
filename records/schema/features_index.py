"""Task 1: what `features extract` / `describe` write beside the FeatureRecord splits."""

from __future__ import annotations

import msgspec

# --- Task 1 (features): what `features extract` / `describe` write beside the FeatureRecord splits -------
# omit_defaults: fields that only one representation (or the export) has stay off the other's JSON, the
# shape features_index.json has always had, so earlier runs still decode.


class CacheSegment(msgspec.Struct, forbid_unknown_fields=True):
    """Where one activation cache's rows sit in an activation profile: columns offset .. offset+rows."""

    cache: str  # "train" | "test" | "benchmark" | "model_organism" | "sycophant"
    path: str
    rows: int
    offset: int


class SelectedFeature(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One kept feature: row `row` of vectors.npy is the vector of SAE feature `feature_idx`."""

    row: int
    feature_idx: int
    selectivity: float
    probe_weight: float | None  # None: no probe weights (written as null)
    decoder_norm: float | None = None  # decoder_direction: the decoder row's norm before unit scaling


class SelectionStats(msgspec.Struct, forbid_unknown_fields=True):
    """Selectivity of the kept features and of all W features."""

    selectivity_min: float
    selectivity_max: float
    selectivity_median: float
    selectivity_all_min: float
    selectivity_all_max: float


class FeaturesIndex(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """features_index.json: how vectors.npy [len(features), dim] was made, row by row."""

    layer: int
    representation: str  # "activation_profile" | "decoder_direction"
    width: int  # W, the SAE's feature count (selectivity.npy's length)
    top_k: int
    rank_by: str  # "value" | "abs"
    selectivity_path: str
    normalisation: str  # in words
    n_zero_vectors: int  # features whose vector is all zero (never fired in the profile caches)
    probe_weights_path: str  # "" when no probe weights were read
    dim: int
    stats: SelectionStats
    features: list[SelectedFeature]
    profile_norm: str = ""  # activation_profile only: "l2" | "max" | "none"
    caches: list[CacheSegment] = []  # activation_profile only, in profile order
    decoder_path: str = ""  # decoder_direction only
    decoder_key: str = ""  # decoder_direction only
    export: str = ""  # the introspective-interp feature matrix, when exported


class FeatureInCluster(msgspec.Struct, forbid_unknown_fields=True):
    feature_idx: int
    cluster_id: int


class Coverage(msgspec.Struct, forbid_unknown_fields=True):
    """coverage.json: which selected features got a description, and every reason one did not."""

    n_selected: int
    n_described: int
    selected_not_in_assignments: list[int]
    selected_assigned_no_cluster: list[int]  # cluster id < 0 (-1: the clustering's "noise")
    selected_cluster_without_summary: list[FeatureInCluster]
    clusters_without_summary: list[int]  # assigned a feature, but no summary
    summaries_without_features: list[int]
    n_clusters_selected: int  # distinct clusters among the described features
    n_clusters_without_summary: int
    n_summaries_without_features: int
