"""The export through introspective-interp's own dataset classes (needs a checkout of that project).

    INTROSPECTIVE_INTERP_CHECKOUT=/path/to/introspective-interp pytest tests/interop/test_ii_reference.py

Skipped without it: CI has no copy of that project. docs/interop.md has the run on the demo's splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHECKOUT = os.environ.get("INTROSPECTIVE_INTERP_CHECKOUT", "")
pytestmark = pytest.mark.skipif(not CHECKOUT, reason="INTROSPECTIVE_INTERP_CHECKOUT is not set")


def test_reference_classes_yield_every_example_except_the_counted_long_ones(tmp_path):
    import reference_loaders
    import yaml
    from interop_run import write_run
    from toy_records import organism_tokenizer

    from interop import ii_export

    tok = organism_tokenizer()
    write_run(tmp_path / "run", tok)
    summary = ii_export.export(tmp_path / "run", tmp_path / "out", tok, tok, target="toy", tokenizer_name="toy")
    for stem in reference_loaders.CONFIGS.values():  # keep the datasets cache inside the test's folder
        path = tmp_path / "out" / "config" / "af" / f"{stem}.yaml"
        cfg = yaml.safe_load(path.read_text())
        cfg["train"]["hf_data_cache_dir"] = str(tmp_path / "hf")
        path.write_text(yaml.safe_dump(cfg))
    for task, info in summary["tasks"].items():
        counts = reference_loaders.load_task(Path(CHECKOUT).resolve(), tmp_path / "out", task, tok, tok)
        for split in ("train", "test"):
            if task == "features_explain":
                expected = info[f"cluster_{split}_features"]
            else:
                over = sum(o["split"] == split for o in info["over_token_limit"])
                expected = 3 * info[f"{split}_rows"] - over
            assert counts[split]["examples"] == expected, (task, split, counts[split])
