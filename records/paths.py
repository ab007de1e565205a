"""Where the user's assets live: one typed config, overridable by env vars and CLI flags.

Which paths file a stage reads, one rule for every stage: the stage config's `paths` field (training:
`train.paths`), which `--paths-config` on the command line sets; the file must exist.

Precedence, lowest to highest: defaults in `PathsConfig` < configs/paths.yaml < `AF_<FIELD>` env vars <
`--<field>` CLI flags. File fields given in the YAML (or left at their defaults) are relative to
`data_root`; values from env vars or flags are taken as typed, relative to the working directory, as a
shell user expects. `resolve_paths` turns every file field into an absolute path, so a resolved config
can be resolved again without change and stages never join paths themselves.
"""

from __future__ import annotations

import argparse
import glob
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from records.errors import InputError

ENV_PREFIX = "AF_"
DEFAULT_PATHS = "configs/paths.yaml"


class PathsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Asset locations (the seed's file names), hub ids and the label vocabulary."""

    data_root: str = "data/assets"
    # Gold-style JSON lists of {"text", "label", optional "source" or "category"}.
    gold_106: str = "gold_106.json"  # held-out evaluation set: never trained on
    gold_770: str = "gold-770.json"
    gold_1560: str = "gold-1560-full.json"
    vocab_constrained: str = "vocab_constrained_*.json"  # a glob: every match is loaded
    validated_pool: str = "validated_pool.json"
    # Layer-40 SAE activation caches, each (n_samples, 16384) float32.
    train_activations: str = "train_activations.npy"
    test_activations: str = "test_activations.npy"
    benchmark_activations: str = "benchmark_activations.npy"
    model_organism_activations: str = "model_organism_activations.npy"
    sycophant_activations: str = "sycophant_activations.npy"
    # Per-feature results of the autointerp run.
    differential_probe_weights: str = "differential_probe_weights.npy"
    selectivity: str = "selectivity.npy"  # (16384,)
    cluster_assignments: str = "cluster_assignments.json"  # {"feature_idx": cluster_id}
    cluster_summaries: str = "cluster_summaries.json"  # {"cluster_id": "summary text"}
    af_intent_direction: str = "af_intent_direction.npy"  # (hidden_size,) steering direction
    # Hugging Face hub ids (or local folders); never joined with data_root.
    benchmark_dataset: str = "vincentoh/af-detection-benchmark"
    organisms_dataset: str = "vincentoh/af-model-organisms"
    organism_model: str = "vincentoh/mistral-7b-af-organism"
    base_model: str = "mistralai/Mistral-7B-v0.3"
    # USER EDITS HERE (or in configs/paths.yaml): every label the gold files may use. A label outside
    # this list stops loading with an error that lists it, instead of silently becoming a new class.
    known_labels: list[str] = msgspec.field(
        default_factory=lambda: [
            "alignment_faking",
            "potential_faking",
            "faking",
            "scheming",
            "aligned",
            "not_alignment_faking",
            "genuine_compliance",
            "hard_negative",
            "compliant_hard_negative",
            "compliant",
            "refusal",
        ]
    )
    # The labels that count as alignment faking (the positive class); a subset of known_labels.
    af_labels: list[str] = msgspec.field(
        default_factory=lambda: ["alignment_faking", "potential_faking", "faking", "scheming"]
    )

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError, so load_config reports it with the file.
        if not self.known_labels:
            raise ValueError("known_labels must not be empty")
        if len(set(self.known_labels)) != len(self.known_labels):
            raise ValueError(f"known_labels has duplicates: {self.known_labels}")
        unknown = [label for label in self.af_labels if label not in self.known_labels]
        if unknown:
            raise ValueError(f"af_labels {unknown} are not in known_labels {self.known_labels}")


# Fields naming files under data_root; preflight checks each, the synthetic writer writes each.
FILE_FIELDS = (
    "gold_106",
    "gold_770",
    "gold_1560",
    "vocab_constrained",
    "validated_pool",
    "train_activations",
    "test_activations",
    "benchmark_activations",
    "model_organism_activations",
    "sycophant_activations",
    "differential_probe_weights",
    "selectivity",
    "cluster_assignments",
    "cluster_summaries",
    "af_intent_direction",
)
HUB_FIELDS = ("benchmark_dataset", "organisms_dataset", "organism_model", "base_model")
# Fields settable from env vars and flags: every plain string; label lists are edited in the YAML.
STRING_FIELDS = ("data_root",) + FILE_FIELDS + HUB_FIELDS


def env_var(field: str) -> str:
    """Name of the env var that overrides `field`, e.g. gold_1560 -> AF_GOLD_1560."""
    return ENV_PREFIX + field.upper()


def resolve_paths(
    cfg: PathsConfig, env: Mapping[str, str] = os.environ, overrides: dict | None = None
) -> PathsConfig:
    """Apply env vars and CLI overrides to `cfg` and make every file field an absolute path.

    `overrides` maps field names to values (None = not given, as argparse leaves unset flags). Empty env
    values count as unset, so `AF_GOLD_106= cmd` does not blank a path. Unknown override keys raise
    InputError.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(STRING_FIELDS))
    if unknown:
        raise InputError([f"paths override `{k}`: not a settable field ({', '.join(STRING_FIELDS)})" for k in unknown])
    given = {f: env[env_var(f)] for f in STRING_FIELDS if env.get(env_var(f))}
    given.update(overrides)
    values = msgspec.structs.asdict(cfg)
    root = _absolute(given.get("data_root", cfg.data_root))
    values["data_root"] = str(root)
    for field in FILE_FIELDS:
        # From the file: relative to data_root (an absolute value ignores it). Given by hand: as typed.
        path = given[field] if field in given else root / Path(values[field]).expanduser()
        values[field] = str(_absolute(path))
    for field in HUB_FIELDS:
        values[field] = given.get(field, values[field])
    try:
        return msgspec.convert(values, PathsConfig)
    except msgspec.ValidationError as e:
        raise InputError(f"paths config: {e}") from None


def load_stage_paths(paths_file: str, args: argparse.Namespace | None = None,
                     env: Mapping[str, str] = os.environ) -> PathsConfig:
    """The resolved paths of a stage whose config names `paths_file`, with the `--<field>` flags in `args`."""
    from records.config import load_config

    return resolve_paths(load_config(paths_file, PathsConfig), env, overrides_from_args(args) if args else None)


def source_paths(paths: PathsConfig) -> list[Path]:
    """The user's source data a writer must never touch: data_root and every file field (globs expanded)."""
    found = [Path(paths.data_root)]
    for field in FILE_FIELDS:
        value = getattr(paths, field)
        found += expand(value) if glob.has_magic(value) else [Path(value)]
    return found


def guarded_sources(paths_file: str | None, args: argparse.Namespace | None = None) -> list[Path]:
    """source_paths of a paths config (env vars and flags applied) for stages that take no stage config
    (label, export); the default configs/paths.yaml may be absent (then PathsConfig's defaults)."""
    if paths_file and (Path(paths_file).is_file() or paths_file != DEFAULT_PATHS):
        return source_paths(load_stage_paths(paths_file, args))
    return source_paths(resolve_paths(PathsConfig(), overrides=overrides_from_args(args) if args else None))


def expand(pattern: str | Path) -> list[Path]:
    """Files matching a path that may hold a glob (sorted, so runs see them in one order)."""
    return sorted(Path(p) for p in glob.glob(str(pattern)))


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--<field>` flag per settable field (dashes for underscores: --gold-1560)."""
    group = parser.add_argument_group("asset paths (override configs/paths.yaml and AF_* env vars)")
    for field in STRING_FIELDS:
        group.add_argument(
            "--" + field.replace("_", "-"),
            dest=field,
            default=None,
            metavar="PATH" if field not in HUB_FIELDS else "ID",
            help=f"default from configs/paths.yaml; env {env_var(field)}",
        )


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The path flags the user actually gave, for `resolve_paths(..., overrides=)`."""
    return {f: getattr(args, f) for f in STRING_FIELDS if getattr(args, f, None) is not None}


def _absolute(path: str | Path) -> Path:
    # expanduser so "~/autointerp/..." works from YAML; no resolve(): symlinks stay as the user wrote them.
    return Path(os.path.abspath(Path(path).expanduser()))
