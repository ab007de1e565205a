"""Task 1 output in introspective-interp's layout, so that repo's FeaturesExplainDataset can read it.

Written under `<output_dir>/introspective_interp/`:

    features/layer_<L>.pkl                          pickled torch.float32 tensor [dim, W]
    explanations/by_<mode>/<split>_explanations.pkl pickled list of ((L, feature_idx), label dict)
    export.json                                     the config values that point that repo here

Column f of the feature matrix is the vector of SAE feature f: the *original* feature index, the same
number as FeatureRecord.feature_idx and the explanations' keys, because that repo looks a feature up as
`weights[:, feature_idx]`. Columns of features we did not select are zero (no explanation names them).
The matrix is W columns wide whatever K is (dim x W x 4 bytes), the size of a real SAE decoder.

Labels: one per feature, the cluster summary: {"chosen_label": text, "all_labels": [text],
"all_label_scores": {text: 1.0}} (cluster summaries carry no score).

These are pickles for that repo only; no stage of ours reads them (ours read vectors.npy and JSON).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from records.jsonl import write_atomic, write_json_atomic
from records.schema import FeatureRecord

EXPORT_DIR = "introspective_interp"


def write_feature_matrix(out: Path, layer: int, vectors: np.ndarray, selected: np.ndarray, width: int) -> Path:
    """features/layer_<L>.pkl: [dim, width] with column selected[r] = vectors[r]. Returns its path."""
    import torch

    matrix = torch.zeros(vectors.shape[1], width, dtype=torch.float32)  # [dim, W]
    matrix[:, torch.as_tensor(selected, dtype=torch.long)] = torch.from_numpy(np.ascontiguousarray(vectors.T))
    path = out / EXPORT_DIR / "features" / f"layer_{layer}.pkl"
    _dump(path, matrix)
    return path


def write_explanations(out: Path, mode: str, layer: int, splits: dict[str, list[FeatureRecord]]) -> None:
    """explanations/by_<mode>/<split>_explanations.pkl for each split, in row order, and export.json."""
    root = out / EXPORT_DIR
    for split, items in splits.items():
        pairs = [((int(layer), r.feature_idx), label_dict(r.description)) for r in sorted(items, key=lambda r: r.row)]
        _dump(root / "explanations" / f"by_{mode}" / f"{split}_explanations.pkl", pairs)
    write_json_atomic(root / "export.json", {
        "explanation_dir": str(root),
        "sae_save_path": "features",
        "layers": [int(layer)],
        "split_explanations_data": {m: f"explanations/by_{m}/{{split}}_explanations.pkl"
                                    for m in ("cluster", "feature")},
        "columns": "column f of features/layer_<L>.pkl is SAE feature f (original index); unselected columns are zero",
    })


def label_dict(description: str) -> dict:
    return {"chosen_label": description, "all_labels": [description], "all_label_scores": {description: 1.0}}


def _dump(path: Path, obj) -> None:
    """Pickle atomically (records.jsonl.write_atomic): a reader never sees half a file.

    The pickle is built in memory first: one more copy of the [dim, W] matrix at peak than streaming to the
    file (measured: +125 MiB for a 131 MB matrix), small beside the machines the real run uses.
    """
    write_atomic(path, pickle.dumps(obj, protocol=4))
