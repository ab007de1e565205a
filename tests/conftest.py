"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def organism_dir():
    """The default toy organism: built once (about a minute on CPU), then reused from the cache."""
    from organism.build import OrganismConfig, build_organism, default_cache_root

    return build_organism(OrganismConfig(), default_cache_root())


@pytest.fixture(scope="session", autouse=True)
def toy_model_name():
    """`model: toy` in configs means the default toy organism, as on the command line."""
    from app.cli import toy_organism_dir
    from lm.models import provide_toy_organism

    provide_toy_organism(toy_organism_dir)
    yield
    provide_toy_organism(None)


@pytest.fixture(scope="session", autouse=True)
def research_log_untouched():
    """Tests never append to the checked-in PROGRESS.md: that log holds real runs only."""
    from pathlib import Path

    log = Path(__file__).resolve().parent.parent / "PROGRESS.md"
    before = log.read_bytes() if log.exists() else None
    yield
    after = log.read_bytes() if log.exists() else None
    assert after == before, "a test appended to the repository's PROGRESS.md; give it a tmp progress_log"
