"""A resumed steering run (Task 2) never reuses a row whose inputs changed.

Between a first run and a second one on the same output folder one input is edited. The documented
outcome (steering/run.py): each row's key carries its scenario's prompt digest, so an edited scenario
outside the residual-norm sample regenerates exactly its own rows and the records equal a clean run on
the new inputs; what changes every row (the alpha grid, the direction file's bytes, the prompts the
residual norms are measured on, the labels a derived direction is computed from) is refused with one
line and nothing in the folder changes. A relabelled scenario changes no generation: no row is
generated again, and the records carry the new label.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest

from organism.scenarios import AF_LABEL, ALIGNED_LABEL, generate_scenarios
from records.errors import InputError
from records.jsonl import read_records
from records.schema import RawCompletion, Scenario, content_id
from records.split import train_first_order
from steering.config import DeriveConfig, SteerConfig
from steering.run import main as run_steer

N, TEST_SIZE, NORM_PROMPTS = 6, 2, 2
AF_LABELS = [AF_LABEL]
EDITED = 4  # an input index; its position in the run (training scenarios first) is outside the norm sample


def position(scen: list[Scenario], index: int) -> int:
    """Where the run puts input scenario `index`: the grouped split's order, training scenarios first."""
    seed = cfg(Path("out"), "model", Path("d.npy")).seed
    order, _ = train_first_order([s.text for s in scen], [s.label for s in scen], TEST_SIZE, seed)
    return order.index(index)


def scenarios(edit: int | None = None, relabel: int | None = None) -> list[Scenario]:
    raw = generate_scenarios(N, seed=223)
    if edit is not None:
        raw[edit] = dict(raw[edit], text=raw[edit]["text"] + " Please answer briefly.")
    if relabel is not None:
        raw[relabel] = dict(raw[relabel], label=ALIGNED_LABEL if raw[relabel]["label"] == AF_LABEL else AF_LABEL)
    return [Scenario(id=content_id(s["text"]), text=s["text"], label=s["label"], source=s["source"]) for s in raw]


def cfg(out: Path, model, direction: Path, **kw) -> SteerConfig:
    base = dict(output_dir=str(out), model=str(model), direction=str(direction), dtype="float32", layers=[2],
                alphas=[1.0], norm_prompts=NORM_PROMPTS, max_new_tokens=6, batch_size=2, test_size=TEST_SIZE,
                cuda_graphs="off", heatmap=False, progress_log=str(out.parent / "P.md"),
                noise_floor=False)  # 2 rows per scenario; the noise floor's resume: tests/steering/test_steering_run.py
    return SteerConfig(**{**base, **kw})


def steer(c: SteerConfig, scen: list[Scenario], direction: Path, src: Path):
    return run_steer(c, scen, [src], str(direction), AF_LABELS)


def records_of(out: Path) -> list[dict]:
    return [msgspec.to_builtins(r) for split in ("train.jsonl", "test.jsonl") for r in read_records(out / split)]


def shard(out: Path) -> list[RawCompletion]:
    return read_records(out / "_work" / "completions.jsonl", RawCompletion)


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run folder but the lock (which holds the last holder's pid)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != ".lock"}


@pytest.fixture(scope="module")
def direction(tmp_path_factory) -> Path:
    """A fixed random direction of the toy's hidden size (128): what it steers toward does not matter here."""
    path = tmp_path_factory.mktemp("dir") / "d.npy"
    np.save(path, np.random.default_rng(5).standard_normal(128).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def first_run(organism_dir, direction, tmp_path_factory) -> Path:
    """One run on the unedited inputs (2 rows per scenario: the baseline and L2@a1), copied by each test."""
    out = tmp_path_factory.mktemp("first") / "out"
    steer(cfg(out, organism_dir, direction), scenarios(), direction, out.parent / "src")
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "out"))


@pytest.mark.parametrize("batch", [2, 4], ids=["one-scenario-batches", "two-scenario-batches"])
def test_an_edited_scenario_regenerates_exactly_its_rows(organism_dir, direction, first_run, tmp_path, batch):
    # Breaking it: a row key without the prompt digest (positional keys) reuses the old scenario's rows (no
    # new keys, records differ from the clean run); a key that changed for every row regenerates all 12.
    src = tmp_path / "src"
    if batch == 2:
        out = copy_of(first_run, tmp_path)
    else:  # batch size is part of the resume key: a first run of its own
        out = tmp_path / "out"
        steer(cfg(out, organism_dir, direction, batch_size=batch), scenarios(), direction, src)
    first = shard(out)
    steer(cfg(out, organism_dir, direction, batch_size=batch), scenarios(edit=EDITED), direction, src)
    new = shard(out)[len(first):]
    # the baseline and the arm of the edited scenario, in its one context; with one scenario per batch nothing
    # else. A batch is generated whole, so a larger one also regenerates the edited rows' batch-mates:
    # unchanged prompts, whose new completions must equal the saved ones.
    at = position(scenarios(edit=EDITED), EDITED)
    assert at == position(scenarios(), EDITED) >= NORM_PROMPTS  # the edit moves no scenario, and not into the norms
    assert sorted(c.key.split(":")[:3] for c in new if c.key.startswith(f"{at}:")) == [
        [str(at), "unmonitored", "L2@a1"], [str(at), "unmonitored", "baseline"]]
    mates = [c for c in new if not c.key.startswith(f"{at}:")]
    assert len(mates) == batch - 2
    saved = {c.key: c for c in first}
    assert all(c.token_ids == saved[c.key].token_ids for c in mates)
    clean = tmp_path / "clean"
    steer(cfg(clean, organism_dir, direction, batch_size=batch), scenarios(edit=EDITED), direction, src)
    assert records_of(out) == records_of(clean)


def _relabel_keeping_split() -> int:
    """An input scenario whose relabelling leaves the grouped, stratified split (and so every position) as it was."""
    same = [j for j in range(N) if [position(scenarios(relabel=j), i) for i in range(N)]
            == [position(scenarios(), i) for i in range(N)]]
    assert same, "every relabel moves the split: pick another seed for scenarios()"
    return same[0]


def test_a_relabelled_scenario_changes_its_records_and_generates_nothing(organism_dir, direction, first_run,
                                                                         tmp_path):
    # Breaking it: labels or records cached from the first run keep the old label; a label in the row key
    # would regenerate rows whose prompt did not change.
    j = _relabel_keeping_split()
    at = position(scenarios(), j)
    out, src = copy_of(first_run, tmp_path), tmp_path / "src"
    n_first = len(shard(out))
    steer(cfg(out, organism_dir, direction), scenarios(relabel=j), direction, src)
    assert len(shard(out)) == n_first
    relabelled = [r for r in records_of(out) if r["index"] == at]
    assert relabelled and {r["label"] for r in relabelled} == {scenarios(relabel=j)[j].label} != {
        scenarios()[j].label}
    clean = tmp_path / "clean"
    steer(cfg(clean, organism_dir, direction), scenarios(relabel=j), direction, src)
    assert records_of(out) == records_of(clean)


def test_a_relabel_that_moves_the_split_is_refused(organism_dir, direction, first_run, tmp_path):
    """Labels are strata of the grouped split: a relabel that moves scenarios between train and test is
    another experiment (other positions, other norm prompts), refused with one line, nothing changed."""
    moved = next(j for j in range(N) if j != _relabel_keeping_split() and [position(scenarios(relabel=j), i)
                                                                           for i in range(N)]
                 != [position(scenarios(), i) for i in range(N)])
    out, src = copy_of(first_run, tmp_path), tmp_path / "src"
    before = snapshot(out)
    with pytest.raises(InputError, match="train/test split"):
        steer(cfg(out, organism_dir, direction), scenarios(relabel=moved), direction, src)
    assert snapshot(out) == before


def _new_direction(path: Path) -> Path:
    np.save(path, np.random.default_rng(6).standard_normal(128).astype(np.float32))  # same path, new bytes
    return path


# (name, first run's own settings or None for the shared first run, the second run's (settings, scenarios,
# direction), a word the refusal names)
REFUSED = [
    ("alpha grid", None, lambda d, tmp: ({"alphas": [1.0, 2.0]}, scenarios(), d), "grid"),
    ("scenario in the residual-norm sample", None, lambda d, tmp: ({}, scenarios(edit=0), d), "norms"),
    ("direction file edited in place", {}, lambda d, tmp: ({}, scenarios(), _new_direction(d)), "direction"),
    # the derived direction's label contrast: a relabelled TRAINING scenario moves it, so every derived row
    ("label of a scenario the derived direction comes from",
     {"derived": True, "derive": DeriveConfig(contrast="label", context="unmonitored")},
     lambda d, tmp: ({}, scenarios(relabel=1), d), "labels a derived direction comes from"),
]


@pytest.mark.parametrize("name,first,second,names", REFUSED, ids=[r[0] for r in REFUSED])
def test_an_edit_that_changes_every_row_is_refused_and_the_folder_is_untouched(organism_dir, direction, first_run,
                                                                              tmp_path, name, first, second, names):
    # Breaking it: drop the edited input from steering/run.py's resume_key and the second run "resumes" with
    # every row of the first run: no refusal, the folder rewritten. (Measured: before the derived direction's
    # labels were in the key, the last case resumed "30 of 30 rows" along the stale direction.)
    src = tmp_path / "src"
    if first is None:
        out, own = copy_of(first_run, tmp_path), direction
    else:  # a first run of its own, on a direction file of its own (edited in place by one case)
        out, own = tmp_path / "out", tmp_path / "d.npy"
        own.write_bytes(direction.read_bytes())
        steer(cfg(out, organism_dir, own, **first), scenarios(), own, src)
    before = snapshot(out)
    changes, scen, d = second(own, tmp_path)
    with pytest.raises(InputError, match="holds a run made with different settings") as e:
        steer(cfg(out, organism_dir, d, **(first or {}), **changes), scen, d, src)
    assert "\n" not in str(e.value) and names in str(e.value)
    assert snapshot(out) == before
