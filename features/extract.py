"""Task 1 extract: rank the SAE features, keep the top K, save the vector the explainer reads per feature.

Ranks the features of `selectivity.npy` (width W), keeps the top K and writes `vectors.npy` [K, dim]
(row r = the r-th kept feature, rank order) with `features_index.json` (FeaturesIndex: row -> feature
index, selectivity, probe weight; how the vectors were made). The activation caches are opened as
read-only memmaps and read in row blocks of `block_mb`: only the K kept columns are ever copied, never a
whole cache.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import msgspec
import numpy as np

from features.config import DECODER_NORMALISATION, NORMALISATION, FeaturesConfig, resolve_representation
from records.assets import load_array, npy_header
from records.errors import InputError, Problems
from records.jsonl import write_atomic, write_json_atomic
from records.paths import PathsConfig
from records.schema import CacheSegment, FeaturesIndex, SelectedFeature, SelectionStats

log = logging.getLogger(__name__)

VECTORS = "vectors.npy"
INDEX = "features_index.json"


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


def activation_profiles(paths: PathsConfig, cfg: FeaturesConfig, selected: np.ndarray,
                        width: int) -> tuple[np.ndarray, list[CacheSegment]]:
    """[K, total_rows] profiles and the cache layout (name, path, rows, offset) of their columns."""
    rows = check_cache_shapes(paths, cfg.profile_caches, width, paths.selectivity)
    segments, layout, offset = [], [], 0
    for name in cfg.profile_caches:
        path = getattr(paths, f"{name}_activations")
        acts = load_array(path, expect_ndim=2, dtype=None, mmap=True)  # np.memmap, read-only
        seg = gather_columns(acts, selected, cfg.block_mb * 2**20)  # [rows, K]
        del acts
        segments.append(normalise_segment(seg, cfg.profile_norm))
        layout.append(CacheSegment(cache=name, path=path, rows=rows[name], offset=offset))
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
            selection: tuple[np.ndarray, np.ndarray] | None = None) -> FeaturesIndex:
    """Build the vectors of the selected features and write vectors.npy + features_index.json (+ the pkl
    export). `selection` is select(cfg, paths) when the caller already has it. Returns the index."""
    selectivity, selected = selection if selection is not None else select(cfg, paths)
    width = len(selectivity)
    representation = resolve_representation(cfg)
    if representation == "activation_profile":
        vectors, layout = activation_profiles(paths, cfg, selected, width)
        dead = np.flatnonzero(~vectors.any(axis=1))
        if len(dead):
            log.warning("%d of %d selected features never fire in %s (all-zero profile), e.g. feature %d; "
                        "kept, but their vectors carry no information", len(dead), len(selected),
                        "+".join(cfg.profile_caches), int(selected[dead[0]]))
        norms = None
        made = dict(normalisation=NORMALISATION[cfg.profile_norm], profile_norm=cfg.profile_norm, caches=layout,
                    n_zero_vectors=int(len(dead)))
    else:
        vectors, norms = decoder_directions(cfg.decoder, cfg.decoder_key, selected, width)
        made = dict(normalisation=DECODER_NORMALISATION, decoder_path=cfg.decoder, decoder_key=cfg.decoder_key,
                    n_zero_vectors=0)
    probe = load_probe_weights(paths, cfg.probe_weights, width)
    chosen = selectivity[selected]
    stats = SelectionStats(selectivity_min=float(chosen.min()), selectivity_max=float(chosen.max()),
                           selectivity_median=float(np.median(chosen)),
                           selectivity_all_min=float(selectivity.min()), selectivity_all_max=float(selectivity.max()))
    features = [SelectedFeature(row=r, feature_idx=int(f), selectivity=float(selectivity[f]),
                                probe_weight=None if probe is None else float(probe[f]),
                                decoder_norm=None if norms is None else float(norms[r]))
                for r, f in enumerate(selected)]
    buf = io.BytesIO()
    np.save(buf, vectors, allow_pickle=False)
    write_atomic(out / VECTORS, buf.getvalue())
    export = ""
    if cfg.export_introspective_interp:
        from features.export import write_feature_matrix

        export = str(write_feature_matrix(out, cfg.layer, vectors, selected, width))
    index = FeaturesIndex(layer=cfg.layer, representation=representation, width=width, top_k=cfg.top_k,
                          rank_by=cfg.rank_by, selectivity_path=paths.selectivity,
                          probe_weights_path=paths.differential_probe_weights if probe is not None else "",
                          dim=int(vectors.shape[1]), stats=stats, features=features, export=export, **made)
    write_json_atomic(out / INDEX, index)  # last: its presence marks a complete extract
    return index


def selection_lines(index: FeaturesIndex) -> list[str]:
    s = index.stats
    lines = [
        f"selected {len(index.features)} of {index.width} features (top_k {index.top_k}, rank by "
        f"{index.rank_by}); selectivity of the chosen: {s.selectivity_min:.4g} .. {s.selectivity_max:.4g} "
        f"(median {s.selectivity_median:.4g}; all features {s.selectivity_all_min:.4g} .. "
        f"{s.selectivity_all_max:.4g})",
        f"vectors: {index.representation} [{len(index.features)}, {index.dim}]"
        + (f" over {'+'.join(c.cache for c in index.caches)}" if index.caches else ""),
    ]
    if index.n_zero_vectors:
        lines.append(f"WARNING: {index.n_zero_vectors} selected features have an all-zero vector")
    return lines


def read_extract_output(out: Path) -> tuple[FeaturesIndex, np.ndarray]:
    """The index and vectors `extract` wrote (safe formats only), checked against each other."""
    if not (out / INDEX).is_file() or not (out / VECTORS).is_file():
        raise InputError(f"{out}: no {INDEX} / {VECTORS}; run `af-introspect features extract` first")
    try:
        index = msgspec.json.decode((out / INDEX).read_bytes(), type=FeaturesIndex)
    except msgspec.DecodeError as e:  # ValidationError included: a torn or foreign file
        raise InputError(f"{out / INDEX}: not a features index ({e}); rerun extract") from None
    vectors = load_array(out / VECTORS, expect_ndim=2, dtype=np.float32, mmap=False)
    if vectors.shape != (len(index.features), index.dim):
        raise InputError(f"{out / VECTORS}: shape {vectors.shape} does not match {INDEX} "
                         f"({len(index.features)} features x {index.dim}); rerun extract")
    return index, vectors
