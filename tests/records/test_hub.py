"""`hf:NAME[:split]` scenario inputs (records/hub.py): read from a datasets folder or the local HF caches,
never downloaded, mapped to the same Scenario structs as the JSON files and checked by the same rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from asset_files import LABELS, REPO, only_problem, write, write_json

from records.errors import InputError
from records.hub import load_hf_dataset, local_source, parse_hf_input
from records.scenarios import load_scenarios

ROWS = [{"text": f"Scenario {i}: a request to weigh.", "label": label, "source": "benchmark"}
        for i, label in enumerate(["alignment_faking", "hard_negative", "aligned", "genuine_compliance"])]
# Any network use inside the child process prints NETWORK USED (datasets words a failed connection the
# same as a missing dataset, so the error alone would not tell), then fails.
NO_NETWORK = ("import socket\n"
              "def refuse(*a, **k):\n    print('NETWORK USED', flush=True)\n    raise OSError('NETWORK USED')\n"
              "socket.socket.connect = refuse\nsocket.create_connection = refuse\n")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """The Arrow files `datasets` prepares go under the test's folder, not the user's cache."""
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def dataset_folder(tmp_path, splits: dict[str, list[dict]]):
    folder = tmp_path / "af-benchmark"
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        write(folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_hf_input_gives_the_scenarios_of_the_same_rows_as_json(tmp_path):
    folder = dataset_folder(tmp_path, {"train": ROWS, "test": ROWS[:1]})
    from_json = load_scenarios(write_json(tmp_path / "rows.json", ROWS), LABELS)
    assert load_scenarios(f"hf:{folder}", LABELS) == from_json and len(from_json) == 4
    assert load_scenarios(f"hf:{folder}:test", LABELS) == from_json[:1]
    no_source = dataset_folder(tmp_path / "b", {"train": [{"text": "t", "label": "aligned"}]})
    assert load_scenarios(f"hf:{no_source}", LABELS)[0].source == "af-benchmark"  # the dataset's name
    assert parse_hf_input("hf:vincentoh/af-model-organisms") == ("vincentoh/af-model-organisms", "train")
    assert local_source(f"hf:{folder}:test") == folder and local_source("hf:vincentoh/af-model-organisms") is None


def test_hf_rows_are_checked_like_json_items(tmp_path):
    rows = [*ROWS[:2], {"text": "", "label": "sneaky"}, {**ROWS[3], "label": 3}]
    folder = dataset_folder(tmp_path, {"train": rows})
    with pytest.raises(InputError) as e:
        load_scenarios(f"hf:{folder}", LABELS)
    empty, unknown, wrong_type = e.value.problems  # every row's every problem, at once
    assert empty == f"{folder}: row 2: `text` is empty or whitespace only ('')"
    assert unknown.startswith(f"{folder}: row 2: `label` 'sneaky' is not a known label (known: alignment_faking")
    assert wrong_type == f"{folder}: row 3: `label` must be a string, got int 3"
    other = dataset_folder(tmp_path / "c", {"train": [{"prompt": "p", "class": "aligned"}]})
    with pytest.raises(InputError) as e:
        load_scenarios(f"hf:{other}", LABELS)
    assert only_problem(e) == (f"{other} (split 'train'): no `text` or `label` column (columns: prompt, class); "
                               "scenario inputs need `text` and `label`")


def test_hub_datasets_are_read_from_the_hub_cache_and_never_fetched(tmp_path):
    # the layout `hf download --repo-type dataset` leaves: refs/main names the snapshot folder
    repo = tmp_path / "hub" / "datasets--vincentoh--af-model-organisms"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    dataset_folder(repo / "snapshots", {"train": ROWS}).rename(repo / "snapshots" / ("0" * 40))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # offline by itself, whatever the environment says
        env.pop(flag, None)
    code = NO_NETWORK + (
        "import json\nfrom records.scenarios import load_scenarios\nfrom records.paths import PathsConfig\n"
        "from records.errors import InputError\nknown = PathsConfig().known_labels\n"
        "print('LABELS', [s.label for s in load_scenarios('hf:vincentoh/af-model-organisms', known)])\n"
        "try:\n    load_scenarios('hf:vincentoh/af-detection-benchmark', known)\n"
        "except InputError as e:\n    print('PROBLEMS', json.dumps(e.problems))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert f"LABELS {[r['label'] for r in ROWS]}" in done.stdout, done.stderr[-2000:]
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBLEMS")), done.stderr[-2000:])
    problems = json.loads(line[len("PROBLEMS "):])
    assert len(problems) == 1 and "\n" not in problems[0] and "NETWORK USED" not in done.stdout
    assert problems[0].startswith("vincentoh/af-detection-benchmark: not on this machine")
    assert "hf download --repo-type dataset vincentoh/af-detection-benchmark" in problems[0]


def test_hf_dataset_from_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", '{"text": "a", "label": "aligned"}\n{"text": "b", "label": "refusal"}\n')
    ds = load_hf_dataset(str(folder), "train", cache_dir=tmp_path / "cache")
    assert ds.num_rows == 2 and ds[1]["label"] == "refusal"
    with pytest.raises(InputError) as e:
        load_hf_dataset(str(folder), "test", cache_dir=tmp_path / "cache")
    assert only_problem(e).startswith(f"{folder} (split 'test'): could not load: ValueError: Unknown split")
