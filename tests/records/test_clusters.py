"""The clustering's JSON files (records/clusters.py): both summary forms, one case per bad file."""

from __future__ import annotations

import operator

import pytest
from asset_files import only_problem, problems_of, write_json

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


def test_assignments_non_integer_and_negative_keys(tmp_path):
    path = write_json(tmp_path / "a.json", {"12": 0, "feat_3": 1, "-4": 2})
    with pytest.raises(InputError) as e:
        load_cluster_assignments(path)
    assert problems_of(e) == [f"{path}: key 'feat_3': feature index must be an integer",
                              f"{path}: key '-4': feature index must be >= 0"]


def test_assignments_allow_noise_cluster(tmp_path):
    assert load_cluster_assignments(write_json(tmp_path / "a.json", {"5": -1})) == {5: -1}


# --- one case per bad file: (case id, the file's content (None: absent; bytes: written as is; else written as
# JSON), its one-line problem with `{path}` for the file's path, how the line must match it)
BAD_SUMMARIES = [
    ("empty-text", {"0": "fires on x", "3": "  "}, "{path}: cluster 3: summary is empty", operator.eq),
    ("non-string-text", {"0": {"text": "x"}}, "{path}: cluster 0: summary must be a string, got dict {'text': 'x'}",
     operator.eq),
    ("repeated-id", {"1": "a", "01": "b"}, "{path}: key '01': cluster id 1 appears twice", operator.eq),
    ("wrong-top-level", "fires on x", "{path}: expected an object {cluster_id: summary}, got str", operator.eq),
    ("empty", {}, "{path}: contains no clusters", operator.eq),
    ("malformed", b'{"0": "a",}', "{path}: malformed JSON at line 1 col 11", str.startswith),
    ("missing", None, "s.json: file not found", str.endswith),
]
BAD_ASSIGNMENTS = [
    *[(f"non-integer-cluster-{type(value).__name__}", {"12": value},
       f"{{path}}: feature 12: cluster id must be an integer, got {shown}", operator.eq)
      for value, shown in [("3", "str '3'"), (1.5, "float 1.5"), (True, "bool True"), (None, "NoneType None")]],
    ("wrong-top-level", [1, 2], "{path}: expected an object {feature_idx: cluster_id}, got list", operator.eq),
    ("empty", {}, "{path}: contains no assignments", operator.eq),
]


def bad_file(tmp_path, content):
    path = tmp_path / "s.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write_json(path, content)
    return path


@pytest.mark.parametrize(
    "loader, content, expected, compare",
    [pytest.param(load_cluster_summaries, *rest, id=f"summaries-{name}") for name, *rest in BAD_SUMMARIES]
    + [pytest.param(load_cluster_assignments, *rest, id=f"assignments-{name}") for name, *rest in BAD_ASSIGNMENTS],
)
def test_bad_cluster_file_is_one_line(tmp_path, loader, content, expected, compare):
    path = bad_file(tmp_path, content)
    with pytest.raises(InputError) as e:
        loader(path)
    assert compare(only_problem(e), expected.replace("{path}", str(path)))


