"""The features stage's config: FeaturesConfig (YAML in configs/features*.yaml) and its checks."""

from __future__ import annotations

from typing import Literal

import msgspec

from lm.models import model_layers
from records.errors import Problems

CACHES = ("train", "test", "benchmark", "model_organism", "sycophant")
NORMALISATION = {
    "l2": "each cache's segment of the feature's column divided by its L2 norm (an all-zero segment stays "
          "zero), segments concatenated in profile_caches order, then divided by sqrt(number of caches): "
          "unit norm when the feature fires in every cache, and every cache weighs the same whatever its "
          "scale (benchmark activations run 10-100x smaller) or row count",
    "max": "each cache's segment divided by its largest absolute value (an all-zero segment stays zero), "
           "segments concatenated in profile_caches order",
    "none": "raw activations, segments concatenated in profile_caches order",
}
DECODER_NORMALISATION = "decoder row divided by its L2 norm (unit length; the original norm is in the index)"


class FeaturesConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything `af-introspect features` needs; YAML in configs/features*.yaml."""

    output_dir: str = "data/af_feature_descriptions"
    paths: str = "configs/paths.yaml"  # asset locations (PathsConfig)
    layer: int = 40  # the SAE's layer: recorded in every record and names the export's layer_<L>.pkl
    top_k: int = 500  # features kept, most selective first
    # "value": highest selectivity first (most AF-selective, the seed's choice); "abs": largest |selectivity|,
    # so features selective for the aligned side are kept too. Ties keep the lower feature index.
    rank_by: Literal["value", "abs"] = "value"
    # auto: decoder_direction when `decoder` is set, else activation_profile.
    representation: Literal["auto", "activation_profile", "decoder_direction"] = "auto"
    # activation_profile: caches whose rows make up the profile, in this order. `test` (rows follow gold_106)
    # is left out by default so the held-out evaluation set never enters a training input.
    profile_caches: list[str] = msgspec.field(
        default_factory=lambda: ["train", "benchmark", "model_organism", "sycophant"])
    profile_norm: Literal["l2", "max", "none"] = "l2"
    decoder: str = ""  # SAE decoder, rows = features: .npy (W, hidden) or .safetensors holding `decoder_key`
    decoder_key: str = "W_dec"
    probe_weights: Literal["auto", "on", "off"] = "auto"  # auto: use differential_probe_weights if it exists
    test_fraction: float = 0.2  # share of described features held out, in both split modes
    seed: int = 0
    # by_cluster held-out clusters. "": seeded random whole clusters. A JSON file {cluster_id: {attribute:
    # value}} (the toy's cluster_attributes.json: trigger and modifier; relative paths are under the paths
    # config's data_root): held-out clusters must be NOVEL COMBINATIONS, every attribute value of each
    # appears in some training cluster (and distinct values are preferred among the held-out ones), so the
    # held-out descriptions can be composed from what training saw.
    cluster_attributes: str = ""
    # warn: features without a description are counted, listed in coverage.json and left out of the records;
    # error: any such feature stops `describe` with one line per kind of gap.
    missing_description: Literal["warn", "error"] = "warn"
    export_introspective_interp: bool = True
    block_mb: int = 64  # cache rows read per block (MiB): bounds memory whatever the cache size
    progress_log: str = "PROGRESS.md"


def validate_config(cfg: FeaturesConfig, where: str = "config") -> None:
    p = Problems()
    if cfg.top_k < 1:
        p.add(where, f"top_k must be >= 1, got {cfg.top_k}")
    if not 0 < cfg.test_fraction < 1:
        p.add(where, f"test_fraction must be between 0 and 1 (exclusive), got {cfg.test_fraction}")
    if cfg.block_mb < 1:
        p.add(where, f"block_mb must be >= 1, got {cfg.block_mb}")
    unknown = [c for c in cfg.profile_caches if c not in CACHES]
    if unknown:
        p.add(where, f"profile_caches: unknown cache(s) {unknown} (known: {', '.join(CACHES)})")
    if len(set(cfg.profile_caches)) != len(cfg.profile_caches):
        p.add(where, f"profile_caches has duplicates: {cfg.profile_caches}")
    if not cfg.profile_caches and cfg.representation != "decoder_direction":
        p.add(where, "profile_caches is empty: the activation profile needs at least one cache")
    if cfg.representation == "activation_profile" and cfg.decoder:
        p.add(where, "decoder is set but representation is activation_profile, so it would be ignored; use "
                     "representation auto or decoder_direction, or drop decoder")
    if cfg.representation == "decoder_direction" and not cfg.decoder:
        p.add(where, "representation decoder_direction needs `decoder` (path to the SAE decoder matrix)")
    p.raise_if_any()


def resolve_representation(cfg: FeaturesConfig) -> str:
    if cfg.representation == "auto":
        return "decoder_direction" if cfg.decoder else "activation_profile"
    return cfg.representation


def depth_warning(layer: int, model: str) -> str | None:
    """A loud line when SAE layer `layer` is not a layer of the organism `model`: layers count from 0 as in
    the steering stage (a 32-layer Mistral-7B has layers 0-31), so layer 40 there means the SAE likely comes
    from another model. "" when the layer fits; None when the organism's depth cannot be read offline."""
    depth = model_layers(model)
    if depth is None:
        return None
    if layer < depth:
        return ""
    return (f"WARNING: SAE layer {layer} is not a layer of the organism {model} ({depth} layers, 0-{depth - 1}): "
            "these features likely come from another model's SAE; check `layer` and the activation caches before "
            "reading the explainer's descriptions as the organism's")
