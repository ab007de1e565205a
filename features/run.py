"""The features stage, top to bottom: extract (vectors + index), describe (cluster summaries, coverage),
split (by_cluster/, by_feature/), write the records, the manifest and the research-log entry.

Files under the output folder:

    vectors.npy, features_index.json        extract (FeaturesIndex; the index last: it marks a complete extract)
    coverage.json                           describe (Coverage)
    by_{cluster,feature}/{train,test}.json  FeatureRecord splits, each folder with its own vectors.npy
    by_{cluster,feature}/cluster_attributes.json  with cluster_attributes: a copy, for per-attribute scores
    introspective_interp/                   the pickles for that repo (features/export.py)
    manifest.json                           how it was made (also in each by_<mode>/)
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from features.config import FeaturesConfig, depth_warning
from features.describe import (
    DescribeSummary,
    check_descriptions,
    describe,
    describe_lines,
    label_stats,
    load_cluster_files,
)
from features.extract import VECTORS, extract, read_extract_output, select, selection_lines
from features.splits import load_cluster_attributes, make_splits, split_counts, to_records
from records.assets import check_output_dir
from records.errors import InputError
from records.jsonl import write_atomic, write_json_atomic, write_records_atomic
from records.lock import output_lock
from records.paths import PathsConfig
from records.progress import append_phase
from records.provenance import check_stage_folder, make_manifest
from records.schema import CLUSTER_ATTRIBUTES, FeaturesIndex

MODES = ("extract", "describe", "all")


class FeaturesResult(msgspec.Struct):
    index: FeaturesIndex
    describe: DescribeSummary | None = None  # None after `extract` alone


def source_dirs(cfg: FeaturesConfig, paths: PathsConfig) -> list[Path]:
    """Folders the stage reads from: the output may not sit in any of them."""
    files = [paths.selectivity, paths.cluster_assignments, paths.cluster_summaries, paths.differential_probe_weights]
    files += [getattr(paths, f"{c}_activations") for c in cfg.profile_caches]
    if cfg.decoder:
        files.append(cfg.decoder)
    dirs = {Path(paths.data_root).resolve()} | {Path(f).parent.resolve() for f in files}
    return sorted(dirs)  # resolved and deduplicated: one refusal line per folder


def run(cfg: FeaturesConfig, paths: PathsConfig, mode: str = "all") -> FeaturesResult:
    """Run `mode` (extract | describe | all) on a validated config, print what it found, log it."""
    out = check_output_dir(cfg.output_dir, source_dirs(cfg, paths))
    check_stage_folder(out, f"features {mode}")  # another stage's folder is never written into
    describing = mode in ("describe", "all")
    clusters = load_cluster_files(paths) if describing else None
    # a missing or bad attributes file stops the run before any write
    attributes = load_cluster_attributes(cfg, paths) if describing else None
    selection = None
    if mode in ("extract", "all"):
        selection = select(cfg, paths)
        if clusters is not None:  # bad cluster files or (strict) gaps stop the run before anything is written
            selectivity, selected = selection
            cluster_of = check_descriptions(cfg, paths, [int(f) for f in selected], len(selectivity), clusters)[0]
            check_splittable(cluster_of)
    with output_lock(out):  # one writer per output folder, from the first write on
        return _write(cfg, paths, mode, out, clusters, attributes, selection)


def check_splittable(cluster_of: dict[int, int]) -> None:
    """The splits need two described features in two clusters: refused here, before extract writes."""
    n_clusters = len(set(cluster_of.values()))
    if cluster_of and (len(cluster_of) < 2 or n_clusters < 2):
        raise InputError(f"the selected features fall into {n_clusters} cluster(s) ({len(cluster_of)} described "
                         "feature(s)); the by-cluster split needs >= 2 clusters: select more features (--top-k) or "
                         "check cluster_assignments")


def _write(cfg: FeaturesConfig, paths: PathsConfig, mode: str, out: Path, clusters, attributes,
           selection) -> FeaturesResult:
    """Everything `run` writes, under the folder's lock: extract (or read its output), describe, splits."""
    describing = mode in ("describe", "all")
    index = extract(cfg, paths, out, selection) if selection is not None else read_extract_output(out)[0]
    result = FeaturesResult(index=index)
    lines = selection_lines(index)
    depth = depth_warning(index.layer, paths.organism_model)  # None (depth unknown offline): no guess
    if depth:
        lines.append(depth)
    gaps: list[str] = []
    if describing:
        described, cov, gaps = describe(cfg, paths, index, clusters)
        vector_bytes = (out / VECTORS).read_bytes()
        splits, heldout = make_splits(cfg, described, attributes)
        records = {}
        for split_mode, (train, test) in splits.items():
            folder = out / f"by_{split_mode}"
            records[split_mode] = {"train": to_records(train, index, split_mode, VECTORS),
                                   "test": to_records(test, index, split_mode, VECTORS)}
            for split, recs in records[split_mode].items():
                write_records_atomic(folder / f"{split}.jsonl", recs)
            write_atomic(folder / VECTORS, vector_bytes)  # each split folder is self-contained
            if attributes is not None:  # evaluation scores each attribute of the descriptions with it
                write_json_atomic(folder / CLUSTER_ATTRIBUTES, attributes)
        if cfg.export_introspective_interp:
            from features.export import write_explanations

            for split_mode, recs in records.items():
                write_explanations(out, split_mode, index.layer, recs)
        write_json_atomic(out / "coverage.json", cov)
        result.describe = DescribeSummary(
            coverage=cov, labels=label_stats(described), test_fraction=cfg.test_fraction, seed=cfg.seed,
            splits={m: split_counts(train, test) for m, (train, test) in splits.items()}, heldout_clusters=heldout,
            gaps=gaps)
        lines += describe_lines(result.describe)

    inputs = {"selectivity": paths.selectivity, "cluster_assignments": paths.cluster_assignments,
              "cluster_summaries": paths.cluster_summaries}
    inputs.update({f"{c}_activations": getattr(paths, f"{c}_activations") for c in cfg.profile_caches})
    if cfg.decoder:
        inputs["decoder"] = cfg.decoder
    manifest = make_manifest(f"features {mode}", cfg, inputs=inputs)
    write_json_atomic(out / "manifest.json", manifest)
    if describing:
        for split_mode in ("cluster", "feature"):
            write_json_atomic(out / f"by_{split_mode}" / "manifest.json", manifest)
    print("\n".join(lines))
    append_phase(cfg.progress_log, "4", "Task 1 feature selection", "DONE",
                 done=[f"features {mode} -> {out}/ ({index.representation} vectors"
                       + (", records in by_cluster/ and by_feature/)" if describing else ")")],
                 findings=lines, issues=[f"{g}: left out of the records" for g in gaps] + ([depth] if depth else []),
                 next_step="train the explainer on by_cluster/ (af-introspect train) and compare with the "
                           "nearest-neighbour baseline on held-out clusters" if describing
                           else "af-introspect features describe")
    return result
