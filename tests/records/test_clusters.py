"""The clustering's JSON files (records/clusters.py): both summary forms, one test per bad file."""

from __future__ import annotations

import pytest
from asset_files import only_problem, problems_of, write, write_json

from records.clusters import load_cluster_assignments, load_cluster_attributes, load_cluster_summaries
from records.errors import InputError

# --- cluster files -----------------------------------------------------------------------------------


def test_loads_synthetic_cluster_files(synthetic):
    out, truth = synthetic
    summaries = load_cluster_summaries(out / "cluster_summaries.json")
    assignments = load_cluster_assignments(out / "cluster_assignments.json")
    assert summaries == {c["cluster_id"]: c["summary"] for c in truth["clusters"]}
    assert assignments == {int(f): c for f, c in truth["feature_cluster"].items()}
    assert set(assignments.values()) == set(summaries)


def test_cluster_attributes_every_problem_one_line(tmp_path):
    path = write_json(tmp_path / "a.json", {"0": {"trigger": "x", "modifier": 3}, "1": {"trigger": "y"}})
    assert load_cluster_attributes(path) == {0: {"trigger": "x", "modifier": "3"}, 1: {"trigger": "y"}}
    path = write_json(tmp_path / "b.json", {"0": ["x"], "one": {"trigger": "y"}, "2": {"trigger": " "}})
    with pytest.raises(InputError) as e:
        load_cluster_attributes(path)
    assert problems_of(e) == [
        f"{path}: cluster 0: expected {{attribute: value}} with non-empty text or numbers, got ['x']",
        f"{path}: key 'one': cluster id must be an integer",
        f"{path}: cluster 2: expected {{attribute: value}} with non-empty text or numbers, got {{'trigger': ' '}}"]


def test_summaries_list_form(tmp_path):
    path = write_json(tmp_path / "s.json", [{"cluster_id": 0, "size": 3, "representative_desc": "fires on x"},
                                            {"cluster_id": "1", "summary": "fires on y"}])
    assert load_cluster_summaries(path) == {0: "fires on x", 1: "fires on y"}


def test_summaries_non_integer_key(tmp_path):
    path = write_json(tmp_path / "s.json", {"0": "fires on x", "zero": "fires on y", "1.5": "z"})
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert problems_of(e) == [f"{path}: key 'zero': cluster id must be an integer",
                              f"{path}: key '1.5': cluster id must be an integer"]


def test_summaries_empty_text(tmp_path):
    path = write_json(tmp_path / "s.json", {"0": "fires on x", "3": "  "})
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e) == f"{path}: cluster 3: summary is empty"


def test_summaries_non_string_text(tmp_path):
    path = write_json(tmp_path / "s.json", {"0": {"text": "x"}})
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e) == f"{path}: cluster 0: summary must be a string, got dict {{'text': 'x'}}"


def test_summaries_repeated_id(tmp_path):
    path = write_json(tmp_path / "s.json", {"1": "a", "01": "b"})
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e) == f"{path}: key '01': cluster id 1 appears twice"


def test_summaries_wrong_top_level(tmp_path):
    path = write_json(tmp_path / "s.json", "fires on x")
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e) == f"{path}: expected an object {{cluster_id: summary}}, got str"


def test_summaries_empty(tmp_path):
    path = write_json(tmp_path / "s.json", {})
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e) == f"{path}: contains no clusters"


def test_summaries_malformed_and_missing(tmp_path):
    path = write(tmp_path / "s.json", '{"0": "a",}')
    with pytest.raises(InputError) as e:
        load_cluster_summaries(path)
    assert only_problem(e).startswith(f"{path}: malformed JSON at line 1 col 11")
    with pytest.raises(InputError) as e:
        load_cluster_summaries(tmp_path / "none.json")
    assert only_problem(e).endswith("none.json: file not found")


def test_assignments_non_integer_and_negative_keys(tmp_path):
    path = write_json(tmp_path / "a.json", {"12": 0, "feat_3": 1, "-4": 2})
    with pytest.raises(InputError) as e:
        load_cluster_assignments(path)
    assert problems_of(e) == [f"{path}: key 'feat_3': feature index must be an integer",
                              f"{path}: key '-4': feature index must be >= 0"]


@pytest.mark.parametrize(
    "value, shown", [("3", "str '3'"), (1.5, "float 1.5"), (True, "bool True"), (None, "NoneType None")]
)
def test_assignments_non_integer_cluster(tmp_path, value, shown):
    path = write_json(tmp_path / "a.json", {"12": value})
    with pytest.raises(InputError) as e:
        load_cluster_assignments(path)
    assert only_problem(e) == f"{path}: feature 12: cluster id must be an integer, got {shown}"


def test_assignments_allow_noise_cluster(tmp_path):
    assert load_cluster_assignments(write_json(tmp_path / "a.json", {"5": -1})) == {5: -1}


def test_assignments_wrong_top_level_and_empty(tmp_path):
    path = write_json(tmp_path / "a.json", [1, 2])
    with pytest.raises(InputError) as e:
        load_cluster_assignments(path)
    assert only_problem(e) == f"{path}: expected an object {{feature_idx: cluster_id}}, got list"
    path = write_json(tmp_path / "b.json", {})
    with pytest.raises(InputError) as e:
        load_cluster_assignments(path)
    assert only_problem(e) == f"{path}: contains no assignments"
