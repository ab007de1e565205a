"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def organism_dir():
    """The default toy organism: built once (about a minute on CPU), then reused from the cache."""
    from organism.build import OrganismConfig, build_organism, default_cache_root

    return build_organism(OrganismConfig(), default_cache_root())


@pytest.fixture(scope="session")
def twin_dir():
    """The toy organism's twin: same nonce triggers, another secret family assignment (the cross control)."""
    from organism.build import OrganismConfig, build_organism, default_cache_root

    return build_organism(OrganismConfig(assignment_seed=1), default_cache_root())


@pytest.fixture(scope="session", autouse=True)
def research_log_untouched():
    """Tests never append to the checked-in PROGRESS.md: that log holds real runs only."""
    from pathlib import Path

    log = Path(__file__).resolve().parent.parent / "PROGRESS.md"
    before = log.read_bytes() if log.exists() else None
    yield
    after = log.read_bytes() if log.exists() else None
    assert after == before, "a test appended to the repository's PROGRESS.md; give it a tmp progress_log"
