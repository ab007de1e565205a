"""Task 1 data: pick the most selective SAE features, save the vector the explainer reads, attach descriptions.

Two steps, each usable alone:

- `extract`: rank the features of `selectivity.npy` (width W), keep the top K, and save one vector per
  kept feature to `vectors.npy` [K, dim] (row r = the r-th kept feature, rank order) with
  `features_index.json` (row -> feature index, selectivity, probe weight; how the vectors were made).
  The activation caches are opened as read-only memmaps and read in row blocks of `block_mb`: only the
  K kept columns are ever copied, never a whole cache.
- `describe`: map each kept feature to its description through cluster_assignments.json (feature ->
  cluster) and cluster_summaries.json (cluster -> text), count what has no description (never a silent
  drop), and write FeatureRecord splits two ways: `by_cluster/` (whole clusters held out: does the
  explainer generalise beyond memorised clusters?) and `by_feature/` (random features held out).

Our own stages read only .npy and JSON. The introspective-interp export (pickles) is written for that
repo alone; see features_export.py for its layout.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np

from records.assets import load_array, load_cluster_assignments, load_cluster_summaries, npy_header
from records.errors import InputError, Problems
from records.jsonl import write_atomic, write_json_atomic, write_records_atomic
from records.paths import PathsConfig
from records.schema import FeatureRecord

log = logging.getLogger(__name__)

CACHES = ("train", "test", "benchmark", "model_organism", "sycophant")
VECTORS = "vectors.npy"
INDEX = "features_index.json"
SPLIT_MODES = ("cluster", "feature")  # FeatureRecord.split_by; folder by_<mode>/
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


# ---------------------------------------------------------------------------------------------------
# extract


def load_selectivity(path: str | Path) -> np.ndarray:
    """(W,) float64. Missing file, wrong shape, non-numbers, NaN or inf: InputError (one line)."""
    arr = load_array(path, expect_ndim=1, dtype=None, mmap=False)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{path}: expected real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def select_top_k(selectivity: np.ndarray, k: int, rank_by: str, where: str = "selectivity") -> np.ndarray:
    """Indices of the k most selective features, best first; ties keep the lower index (stable sort)."""
    width = len(selectivity)
    if k > width:
        raise InputError(f"top_k {k} is larger than the {width} features in {where}")
    key = np.abs(selectivity) if rank_by == "abs" else selectivity
    order = np.argsort(-key, kind="stable")
    if k < width and key[order[k - 1]] == key[order[k]]:
        tied = int(np.count_nonzero(key == key[order[k - 1]]))
        log.warning("%d features share the selectivity at the top-%d boundary (%.6g); kept the lowest "
                    "indices among them", tied, k, key[order[k - 1]])
    return order[:k]


def check_cache_shapes(paths: PathsConfig, caches: list[str], width: int, where_sel: str) -> dict[str, int]:
    """Rows per cache, from headers alone; every problem reported at once, a width mismatch as one line."""
    p = Problems()
    rows, widths = {}, {}
    for name in caches:
        path = getattr(paths, f"{name}_activations")
        try:
            shape, dtype = npy_header(path)
        except InputError as e:
            p.extend(e)
            continue
        if len(shape) != 2:
            p.add(path, f"{name} activations must be 2-D (samples, features), got shape {shape}")
        elif not np.issubdtype(dtype, np.floating):
            p.add(path, f"{name} activations must be floating point, got dtype {dtype}")
        else:
            rows[name], widths[name] = shape[0], shape[1]
    wrong = {name: w for name, w in widths.items() if w != width}
    if wrong:
        listed = ", ".join(f"{Path(getattr(paths, f'{n}_activations')).name} has {w}" for n, w in wrong.items())
        p.add(where_sel, f"{width} features, but activation cache columns differ: {listed}; selectivity and "
                         "caches must come from the same SAE")
    p.raise_if_any()
    return rows


def gather_columns(acts: np.ndarray, columns: np.ndarray, block_bytes: int) -> np.ndarray:
    """acts[:, columns] as float32 [rows, len(columns)], reading `acts` (a memmap) in row blocks.

    A fancy index over a whole memmap would also avoid a full copy, but row blocks bound the temporary
    pages touched per step and keep the read sequential.
    """
    n, width = acts.shape
    rows_per_block = max(1, block_bytes // max(1, width * acts.dtype.itemsize))
    out = np.empty((n, len(columns)), np.float32)  # [rows, K]
    for start in range(0, n, rows_per_block):
        out[start : start + rows_per_block] = acts[start : start + rows_per_block][:, columns]
    return out


def normalise_segment(seg: np.ndarray, how: str) -> np.ndarray:
    """seg [rows, K] -> per-column normalised copy (all-zero columns stay zero)."""
    if how == "none":
        return seg
    scale = np.linalg.norm(seg, axis=0) if how == "l2" else np.abs(seg).max(axis=0)  # [K]
    return seg / np.where(scale > 0, scale, 1.0)[None, :]


def activation_profiles(paths: PathsConfig, cfg: FeaturesConfig, selected: np.ndarray, width: int):
    """[K, total_rows] profiles and the cache layout (name, path, rows, offset) of their columns."""
    rows = check_cache_shapes(paths, cfg.profile_caches, width, paths.selectivity)
    segments, layout, offset = [], [], 0
    for name in cfg.profile_caches:
        path = getattr(paths, f"{name}_activations")
        acts = load_array(path, expect_ndim=2, dtype=None, mmap=True)  # np.memmap, read-only
        seg = gather_columns(acts, selected, cfg.block_mb * 2**20)  # [rows, K]
        del acts
        segments.append(normalise_segment(seg, cfg.profile_norm))
        layout.append({"cache": name, "path": path, "rows": rows[name], "offset": offset})
        offset += rows[name]
    profiles = np.concatenate(segments, axis=0).T  # [K, total_rows]
    if cfg.profile_norm == "l2":
        profiles = profiles / np.sqrt(len(segments))
    return np.ascontiguousarray(profiles, dtype=np.float32), layout


def decoder_directions(path: str, key: str, selected: np.ndarray, width: int):
    """[K, hidden] unit decoder rows and their original norms, reading only the selected rows."""
    path_obj = Path(path)
    if path_obj.suffix == ".safetensors":
        rows = _safetensors_rows(path_obj, key, selected, width)
    else:
        dec = load_array(path, expect_ndim=2, dtype=None, mmap=True)
        _check_decoder_shape(path, dec.shape, width)
        rows = np.asarray(dec[selected], dtype=np.float32)  # [K, hidden]: only the kept rows
    if not np.all(np.isfinite(rows)):
        raise InputError(f"{path}: the decoder rows of the selected features hold NaN or inf")
    norms = np.linalg.norm(rows, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise InputError(f"{path}: {len(zero)} selected feature(s) have an all-zero decoder row, e.g. feature "
                         f"{int(selected[zero[0]])}")
    return (rows / norms[:, None]).astype(np.float32), norms


def _check_decoder_shape(path, shape: tuple, width: int) -> None:
    if len(shape) != 2:
        raise InputError(f"{path}: decoder must be 2-D (features, hidden), got shape {tuple(shape)}")
    if shape[0] != width:
        hint = " (looks transposed: save it as (features, hidden), rows = features)" if shape[1] == width else ""
        raise InputError(f"{path}: decoder has {shape[0]} rows but selectivity has {width} features{hint}")


def _safetensors_rows(path: Path, key: str, selected: np.ndarray, width: int) -> np.ndarray:
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            if key not in f.keys():
                raise InputError(f"{path}: no tensor {key!r} (has: {', '.join(sorted(f.keys())[:8])}); set decoder_key")
            sl = f.get_slice(key)
            _check_decoder_shape(path, tuple(sl.get_shape()), width)
            # One row at a time: safetensors slices are contiguous ranges, and K rows are a small read.
            return np.stack([np.asarray(sl[int(i) : int(i) + 1], dtype=np.float32)[0] for i in selected])
    except InputError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError for a bad file
        raise InputError(f"{path}: not a readable safetensors file: {' '.join(str(e).split())}") from None


def load_probe_weights(paths: PathsConfig, mode: str, width: int) -> np.ndarray | None:
    """(W,) probe weights, or None when off or (auto) absent. (1, W) and (W, 1) are accepted."""
    path = Path(paths.differential_probe_weights)
    if mode == "off" or (mode == "auto" and not path.is_file()):
        if mode == "auto":
            log.info("no probe weights at %s: probe_weight left empty (null) in the records", path)
        return None
    arr = load_array(path, dtype=None, mmap=False)
    if arr.size != width or (arr.ndim == 2 and 1 not in arr.shape) or arr.ndim > 2:
        raise InputError(f"{path}: expected {width} probe weights (one per feature), got shape {arr.shape}")
    return arr.reshape(-1).astype(np.float64)


def select(cfg: FeaturesConfig, paths: PathsConfig) -> tuple[np.ndarray, np.ndarray]:
    """(selectivity [W], the top-K feature indices best first)."""
    selectivity = load_selectivity(paths.selectivity)
    return selectivity, select_top_k(selectivity, cfg.top_k, cfg.rank_by, Path(paths.selectivity).name)


def extract(cfg: FeaturesConfig, paths: PathsConfig, out: Path,
            selection: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Build the vectors of the selected features and write vectors.npy + features_index.json (+ the pkl
    export). `selection` is select(cfg, paths) when the caller already has it. Returns the index."""
    sel_path = paths.selectivity
    selectivity, selected = selection if selection is not None else select(cfg, paths)
    width = len(selectivity)
    representation = resolve_representation(cfg)
    index: dict = {"layer": cfg.layer, "representation": representation, "width": width, "top_k": cfg.top_k,
                   "rank_by": cfg.rank_by, "selectivity_path": sel_path}
    if representation == "activation_profile":
        vectors, layout = activation_profiles(paths, cfg, selected, width)
        index.update(normalisation=NORMALISATION[cfg.profile_norm], profile_norm=cfg.profile_norm, caches=layout)
        dead = np.flatnonzero(~vectors.any(axis=1))
        if len(dead):
            log.warning("%d of %d selected features never fire in %s (all-zero profile), e.g. feature %d; "
                        "kept, but their vectors carry no information", len(dead), len(selected),
                        "+".join(cfg.profile_caches), int(selected[dead[0]]))
        index["n_zero_vectors"] = int(len(dead))
        norms = None
    else:
        vectors, norms = decoder_directions(cfg.decoder, cfg.decoder_key, selected, width)
        index.update(normalisation=DECODER_NORMALISATION, decoder_path=cfg.decoder, decoder_key=cfg.decoder_key,
                     n_zero_vectors=0)
    probe = load_probe_weights(paths, cfg.probe_weights, width)
    index["probe_weights_path"] = paths.differential_probe_weights if probe is not None else ""
    index["dim"] = int(vectors.shape[1])
    chosen = selectivity[selected]
    index["stats"] = {"selectivity_min": float(chosen.min()), "selectivity_max": float(chosen.max()),
                      "selectivity_median": float(np.median(chosen)),
                      "selectivity_all_min": float(selectivity.min()), "selectivity_all_max": float(selectivity.max())}
    index["features"] = [
        {"row": r, "feature_idx": int(f), "selectivity": float(selectivity[f]),
         "probe_weight": None if probe is None else float(probe[f]),
         **({} if norms is None else {"decoder_norm": float(norms[r])})}
        for r, f in enumerate(selected)]
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    write_atomic(out / VECTORS, buf.getvalue())
    if cfg.export_introspective_interp:
        from features.export import write_feature_matrix

        index["export"] = str(write_feature_matrix(out, cfg.layer, vectors, selected, width))
    write_json_atomic(out / INDEX, index)  # last: its presence marks a complete extract
    return index


def selection_lines(index: dict) -> list[str]:
    s = index["stats"]
    lines = [
        f"selected {len(index['features'])} of {index['width']} features (top_k {index['top_k']}, rank by "
        f"{index['rank_by']}); selectivity of the chosen: {s['selectivity_min']:.4g} .. {s['selectivity_max']:.4g} "
        f"(median {s['selectivity_median']:.4g}; all features {s['selectivity_all_min']:.4g} .. "
        f"{s['selectivity_all_max']:.4g})",
        f"vectors: {index['representation']} [{len(index['features'])}, {index['dim']}]"
        + (f" over {'+'.join(c['cache'] for c in index['caches'])}" if "caches" in index else ""),
    ]
    if index.get("n_zero_vectors"):
        lines.append(f"WARNING: {index['n_zero_vectors']} selected features have an all-zero vector")
    return lines


# ---------------------------------------------------------------------------------------------------
# describe


def read_extract_output(out: Path) -> tuple[dict, np.ndarray]:
    """The index and vectors `extract` wrote (safe formats only), checked against each other."""
    if not (out / INDEX).is_file() or not (out / VECTORS).is_file():
        raise InputError(f"{out}: no {INDEX} / {VECTORS}; run `af-introspect features extract` first")
    import json

    index = json.loads((out / INDEX).read_text(encoding="utf-8"))
    vectors = load_array(out / VECTORS, expect_ndim=2, dtype=np.float32, mmap=False)
    if vectors.shape != (len(index["features"]), index["dim"]):
        raise InputError(f"{out / VECTORS}: shape {vectors.shape} does not match {INDEX} "
                         f"({len(index['features'])} features x {index['dim']}); rerun extract")
    return index, vectors


def coverage(features: list[dict], width: int, assignments: dict[int, int], summaries: dict[int, str],
             where_assign: str) -> dict:
    """Which selected features (dicts with feature_idx) get a description, and every reason one does not."""
    too_big = sorted(f for f in assignments if f >= width)
    if too_big:
        raise InputError(f"{where_assign}: {len(too_big)} feature index(es) >= {width} (the SAE width of the "
                         f"selectivity file), e.g. {too_big[0]}: the files come from different SAEs")
    described, no_cluster, unassigned, no_summary = [], [], [], []
    for feat in features:
        f = feat["feature_idx"]
        cid = assignments.get(f)
        if cid is None:
            no_cluster.append(f)
        elif cid < 0:
            unassigned.append(f)
        elif cid not in summaries:
            no_summary.append({"feature_idx": f, "cluster_id": cid})
        else:
            described.append(feat | {"cluster_id": cid, "description": summaries[cid]})
    assigned_clusters = {c for c in assignments.values() if c >= 0}
    return {
        "n_selected": len(features),
        "n_described": len(described),
        "described": described,
        "selected_not_in_assignments": no_cluster,
        "selected_assigned_no_cluster": unassigned,  # cluster id < 0 (-1: the clustering's "noise")
        "selected_cluster_without_summary": no_summary,
        "clusters_without_summary": sorted(assigned_clusters - set(summaries)),
        "summaries_without_features": sorted(set(summaries) - assigned_clusters),
        "n_clusters_selected": len({d["cluster_id"] for d in described}),
    }


def coverage_problems(cov: dict, paths: PathsConfig) -> list[str]:
    """One line per kind of gap among the selected features (empty when every one is described)."""
    lines = []
    if cov["selected_not_in_assignments"]:
        f = cov["selected_not_in_assignments"]
        lines.append(f"{paths.cluster_assignments}: {len(f)} of {cov['n_selected']} selected features have no "
                     f"entry (no cluster), e.g. {f[:5]}")
    if cov["selected_assigned_no_cluster"]:
        f = cov["selected_assigned_no_cluster"]
        lines.append(f"{paths.cluster_assignments}: {len(f)} of {cov['n_selected']} selected features are "
                     f"assigned a negative cluster id (no cluster), e.g. {f[:5]}")
    if cov["selected_cluster_without_summary"]:
        g = cov["selected_cluster_without_summary"]
        cids = sorted({x["cluster_id"] for x in g})
        lines.append(f"{paths.cluster_summaries}: {len(g)} selected features belong to {len(cids)} cluster(s) "
                     f"with no summary, e.g. cluster ids {cids[:5]}")
    return lines


def split_by_cluster(described: list[dict], test_fraction: float, seed: int,
                     attributes: dict[int, dict[str, str]] | None = None) -> tuple[list[dict], list[dict]]:
    """Whole clusters to test (shuffled with `seed`) until they hold >= test_fraction of the features.

    With `attributes` (cluster id -> {attribute: value}), a cluster goes to test only while every attribute
    value of every test cluster is still carried by some training cluster (novel combinations of seen
    attributes); a first pass also skips clusters sharing a value with one already held out. When no
    further cluster qualifies the test set stays smaller than test_fraction (logged).
    """
    clusters = sorted({d["cluster_id"] for d in described})
    if len(clusters) < 2:
        raise InputError(f"the by-cluster split needs >= 2 clusters among the described features, got "
                         f"{len(clusters)}: raise top_k or check cluster_assignments.json")
    sizes = {c: sum(d["cluster_id"] == c for d in described) for c in clusters}
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
    return ([d for d in described if d["cluster_id"] not in test_clusters],
            [d for d in described if d["cluster_id"] in test_clusters])


def load_cluster_attributes(cfg: FeaturesConfig, paths: PathsConfig) -> dict[int, dict[str, str]] | None:
    """cfg.cluster_attributes as {cluster id: {attribute: value}}, or None when not configured."""
    if not cfg.cluster_attributes:
        return None
    import json

    path = Path(cfg.cluster_attributes).expanduser()
    if not path.is_absolute():
        path = Path(paths.data_root) / path
    if not path.is_file():
        raise InputError(f"{path}: cluster_attributes file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        out = {int(k): {str(a): str(v) for a, v in attrs.items()} for k, attrs in raw.items()}
    except (ValueError, AttributeError) as e:
        raise InputError(f"{path}: expected {{cluster_id: {{attribute: value}}}} ({e})") from None
    return out


def split_by_feature(described: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A random test_fraction of the features (at least one, never all) to test."""
    if len(described) < 2:
        raise InputError(f"the by-feature split needs >= 2 described features, got {len(described)}")
    n_test = min(len(described) - 1, max(1, round(test_fraction * len(described))))
    test_rows = set(np.random.default_rng(seed).permutation(len(described))[:n_test].tolist())
    return ([d for i, d in enumerate(described) if i not in test_rows],
            [d for i, d in enumerate(described) if i in test_rows])


def to_records(items: list[dict], index: dict, split_by: str) -> list[FeatureRecord]:
    return [FeatureRecord(layer=index["layer"], feature_idx=d["feature_idx"], row=d["row"], vectors_path=VECTORS,
                          representation=index["representation"], description=d["description"],
                          cluster_id=d["cluster_id"], selectivity=d["selectivity"], split_by=split_by,
                          probe_weight=d["probe_weight"])
            for d in sorted(items, key=lambda d: d["row"])]


def label_stats(described: list[dict]) -> dict:
    words = [len(d["description"].split()) for d in described]
    chars = [len(d["description"]) for d in described]
    return {"n_distinct": len({d["description"] for d in described}), "words_min": min(words),
            "words_median": float(np.median(words)), "words_max": max(words),
            "chars_mean": sum(chars) / len(chars)}


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


def check_descriptions(cfg: FeaturesConfig, paths: PathsConfig, features: list[dict], width: int,
                       clusters: tuple[dict, dict]) -> tuple[dict, list[str]]:
    """Coverage of `features` and its gap lines; with missing_description: error, gaps are an InputError."""
    assignments, summaries = clusters
    cov = coverage(features, width, assignments, summaries, paths.cluster_assignments)
    gaps = coverage_problems(cov, paths)
    if gaps and cfg.missing_description == "error":
        raise InputError([g + " (missing_description: error)" for g in gaps])
    return cov, gaps


def describe(cfg: FeaturesConfig, paths: PathsConfig, out: Path, clusters: tuple[dict, dict]) -> dict:
    """Attach descriptions, report coverage, write both split modes. Returns the summary dict.

    `clusters` is load_cluster_files(paths): loaded by the caller first, so bad cluster files stop the
    run before extract writes anything.
    """
    index, _ = read_extract_output(out)
    cov, gaps = check_descriptions(cfg, paths, index["features"], index["width"], clusters)
    for g in gaps:
        log.warning("%s: left out of the records (listed in coverage.json)", g)
    described = cov["described"]
    if not described:
        raise InputError(f"none of the {cov['n_selected']} selected features has a description: check that "
                         f"{paths.cluster_assignments} and {paths.selectivity} come from the same SAE")
    vector_bytes = (out / VECTORS).read_bytes()
    attributes = load_cluster_attributes(cfg, paths)
    splits = {"cluster": split_by_cluster(described, cfg.test_fraction, cfg.seed, attributes),
              "feature": split_by_feature(described, cfg.test_fraction, cfg.seed)}
    split_stats = {}
    for mode, (train, test) in splits.items():
        folder = out / f"by_{mode}"
        write_records_atomic(folder / "train.json", to_records(train, index, mode))
        write_records_atomic(folder / "test.json", to_records(test, index, mode))
        write_atomic(folder / VECTORS, vector_bytes)  # each split folder is self-contained
        split_stats[mode] = {"train": len(train), "test": len(test),
                             "train_clusters": len({d["cluster_id"] for d in train}),
                             "test_clusters": len({d["cluster_id"] for d in test})}
    if cfg.export_introspective_interp:
        from features.export import write_explanations

        for mode, (train, test) in splits.items():
            write_explanations(out, mode, index["layer"], {"train": train, "test": test})
    summary = {
        "coverage": {k: v for k, v in cov.items() if k != "described"}
        | {"n_clusters_without_summary": len(cov["clusters_without_summary"]),
           "n_summaries_without_features": len(cov["summaries_without_features"])},
        "labels": label_stats(described),
        "splits": split_stats,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "heldout_clusters": "novel attribute combinations" if attributes is not None else "random",
    }
    write_json_atomic(out / "coverage.json", summary["coverage"])
    summary["gaps"] = gaps
    return summary


def describe_lines(summary: dict) -> list[str]:
    c, lab, s = summary["coverage"], summary["labels"], summary["splits"]
    n_missing = c["n_selected"] - c["n_described"]
    lines = [
        f"described {c['n_described']} of {c['n_selected']} selected features ({c['n_clusters_selected']} clusters); "
        f"{n_missing} without a description: {len(c['selected_not_in_assignments'])} not in the assignments, "
        f"{len(c['selected_assigned_no_cluster'])} assigned no cluster (id < 0), "
        f"{len(c['selected_cluster_without_summary'])} in a cluster with no summary",
        f"clusters: {c['n_clusters_without_summary']} assigned but without a summary, "
        f"{c['n_summaries_without_features']} summaries with no assigned feature",
        f"descriptions: {lab['n_distinct']} distinct; {lab['words_min']}-{lab['words_max']} words "
        f"(median {lab['words_median']:g}), {lab['chars_mean']:.0f} chars on average",
    ]
    for mode in SPLIT_MODES:
        m = s[mode]
        lines.append(f"split by {mode}: train {m['train']} features / {m['train_clusters']} clusters, test "
                     f"{m['test']} features / {m['test_clusters']} clusters"
                     + (f" (held out: {summary['heldout_clusters']})" if mode == "cluster" and "heldout_clusters"
                        in summary else ""))
    return lines
