"""The synthetic assets the loader tests read, written once per session (about 1 s)."""

import pytest

from organism.assets import write_synthetic_assets


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    return out, write_synthetic_assets(out, seed=0)
