"""The synthetic assets every features test reads (organism/assets.py, seed 0), written once per module."""

from __future__ import annotations

import pytest

from organism.assets import write_synthetic_assets


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return root, write_synthetic_assets(root, seed=0)
