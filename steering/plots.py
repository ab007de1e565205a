"""The heatmap of a steering run: behaviour change rate, layer set x alpha (heatmap.png, and the report's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from records.schema import SteeringSummary


def save_heatmap(summary: SteeringSummary, path: Path, title: str) -> None:
    """Behaviour change rate, layer set x alpha, as a labelled heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.array([[np.nan if v is None else v for v in row] for row in summary.behavior_changed_rate])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(summary.alphas), 1.4 + 0.6 * len(summary.layer_sets)))
    im = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(summary.alphas)), [f"{a:g}" for a in summary.alphas])
    ax.set_yticks(range(len(summary.layer_sets)), summary.layer_sets)
    unit = "x mean residual norm" if summary.scale == "residual_norm" else "raw, unit direction"
    ax.set_xlabel(f"alpha ({unit})")
    ax.set_ylabel("steered layer(s)")
    ax.set_title(title, fontsize=9)
    for y in range(table.shape[0]):
        for x in range(table.shape[1]):
            if not np.isnan(table[y, x]):
                ax.text(x, y, f"{table[y, x]:.0%}", ha="center", va="center",
                        color="black" if table[y, x] > 0.6 else "white", fontsize=8)
    fig.colorbar(im, ax=ax, label="behaviour change rate")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
