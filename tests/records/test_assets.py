"""Asset loaders (records/assets.py), paths config (records/paths.py) and synthetic assets (organism/assets.py).

Every bad input has its own test: the error is an InputError whose line names the file, the place and
the problem, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from organism.assets import write_synthetic_assets
from records import assets
from records.assets import (
    check_output_dir,
    load_array,
    load_cluster_assignments,
    load_cluster_attributes,
    load_cluster_summaries,
    load_hf_dataset,
    load_scenarios,
    npy_header,
)
from records.config import load_config
from records.errors import InputError
from records.paths import (
    FILE_FIELDS,
    PathsConfig,
    add_path_arguments,
    env_var,
    expand,
    overrides_from_args,
    resolve_paths,
)
from records.schema import content_id

REPO = Path(__file__).resolve().parents[2]
LABELS = PathsConfig().known_labels


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("assets")
    return out, write_synthetic_assets(out, seed=0)


def problems_of(excinfo) -> list[str]:
    return excinfo.value.problems


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def write_json(path: Path, data) -> Path:
    return write(path, json.dumps(data))


def only_problem(excinfo) -> str:
    problems = problems_of(excinfo)
    assert len(problems) == 1, problems
    return problems[0]


# --- load_scenarios: accepted forms -----------------------------------------------------------------


def test_loads_synthetic_gold_files(synthetic):
    out, _ = synthetic
    full = load_scenarios(out / "gold-1560-full.json", LABELS)
    half = load_scenarios(out / "gold-770.json", LABELS)
    held_out = load_scenarios(out / "gold_106.json", LABELS)
    assert len(full) == 200 and len(half) == 100 and len(held_out) == 106
    assert all(s.id == content_id(s.text) for s in full)
    assert full[0].source.startswith("toy_organism:")
    assert half[0].source == full[0].source  # `category` is read as source
    assert {s.source for s in held_out} == {"gold_106"}  # no source field: the file's stem
    for pattern_match in expand(out / PathsConfig().vocab_constrained):
        assert load_scenarios(pattern_match, LABELS)


def test_source_default_overrides_stem(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a", "label": "aligned"}])
    assert load_scenarios(path, LABELS, source_default="gold")[0].source == "gold"


def test_jsonl_by_suffix(tmp_path):
    path = write(tmp_path / "g.jsonl", '{"text": "a", "label": "aligned"}\n\n{"text": "b", "label": "refusal"}\n')
    assert [s.text for s in load_scenarios(path, LABELS)] == ["a", "b"]


def test_jsonl_saved_as_json(tmp_path):
    path = write(tmp_path / "g.json", '{"text": "a", "label": "aligned"}\n{"text": "b", "label": "aligned"}\n')
    assert len(load_scenarios(path, LABELS)) == 2


@pytest.mark.parametrize("key", ["samples", "data"])
def test_list_under_samples_or_data(tmp_path, key):
    path = write_json(tmp_path / "g.json", {"meta": 1, key: [{"text": "a", "label": "aligned"}]})
    assert len(load_scenarios(path, LABELS)) == 1


def test_utf8_bom_tolerated(tmp_path):
    path = write(tmp_path / "g.json", '[{"text": "caf\u00e9", "label": "aligned"}]', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_scenarios(path, LABELS)[0].text == "caf\u00e9"


def test_duplicates_warn_once_and_keep_first(tmp_path, caplog):
    items = [{"text": "Same text", "label": "aligned", "source": "first"},
             {"text": "other", "label": "aligned"},
             {"text": "  same   TEXT ", "label": "aligned", "source": "second"},
             {"text": "Same text", "label": "aligned"}]
    path = write_json(tmp_path / "g.json", items)
    with caplog.at_level(logging.WARNING, logger="records.assets"):
        scenarios = load_scenarios(path, LABELS)
    assert [s.source for s in scenarios] == ["first", "g"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 duplicate" in warnings[0] and "item 2 repeats item 0" in warnings[0] and str(path) in warnings[0]


def test_a_duplicate_with_another_label_is_refused_naming_both(tmp_path):
    items = [{"text": "Same text", "label": "aligned"}, {"text": "  same   TEXT ", "label": "refusal"}]
    path = write_json(tmp_path / "g.json", items)
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == (f"{path}: item 1 repeats the text of item 0 with another label ('refusal' vs "
                               "'aligned'): which one is true is unknown")


def test_a_key_given_twice_in_one_item_is_refused(tmp_path):
    path = write(tmp_path / "g.json", '[{"text": "x", "label": "aligned", "label": "refusal"}]')
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: an object gives the key label twice (which value was meant is unknown)"


# --- load_scenarios: one test per bad input ------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        load_scenarios(tmp_path / "nope.json", LABELS)
    assert only_problem(e) == f"{tmp_path / 'nope.json'}: file not found"


def test_malformed_json_names_line_and_col(tmp_path):
    path = write(tmp_path / "g.json", '[\n  {"text": "a", "label": "aligned"},\n  {"text": "b" "label": 1}\n]')
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e).startswith(f"{path}: malformed JSON at line 3 col 16: Expecting ',' delimiter")


def test_malformed_jsonl_lines_all_reported(tmp_path):
    path = write(tmp_path / "g.jsonl", '{"text": "a", "label": "aligned"}\n{"text": \n{oops}\n')
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    problems = problems_of(e)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: line 2: malformed JSON at col")
    assert problems[1].startswith(f"{path}: line 3: malformed JSON at col")


def test_not_utf8(tmp_path):
    path = tmp_path / "g.json"
    path.write_bytes(b'[{"text": "\xff\xfe", "label": "aligned"}]')
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: not UTF-8 text (byte 11)"


@pytest.mark.parametrize("data, kind", [(5, "int"), ("text", "str")])
def test_top_level_not_a_list(tmp_path, data, kind):
    path = write_json(tmp_path / "g.json", data)
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: top level must be a list of objects, got {kind}"


def test_object_without_samples_list(tmp_path):
    path = write_json(tmp_path / "g.json", {"items": [], "version": 2})
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == (f"{path}: top level is an object without a `samples` or `data` list "
                               "(keys: items, version)")


def test_item_not_an_object(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a", "label": "aligned"}, "just text"])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 1: expected an object, got str 'just text'"


def test_missing_text(tmp_path):
    path = write_json(tmp_path / "g.json", [{"label": "aligned"}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `text` is missing"


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_or_whitespace_text(tmp_path, text):
    path = write_json(tmp_path / "g.json", [{"text": text, "label": "aligned"}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `text` is empty or whitespace only ({text!r})"


def test_non_string_text(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": 42, "label": "aligned"}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `text` must be a string, got int 42"


def test_missing_label(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a"}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `label` is missing"


def test_unknown_label_lists_allowed(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a", "label": "AF"}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, ["alignment_faking", "aligned"])
    assert only_problem(e) == (f"{path}: item 0: `label` 'AF' is not a known label (known: alignment_faking, "
                               "aligned; edit known_labels in configs/paths.yaml)")


def test_non_string_label(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a", "label": 1}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `label` must be a string, got int 1"


def test_non_string_source(tmp_path):
    path = write_json(tmp_path / "g.json", [{"text": "a", "label": "aligned", "category": ["x"]}])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: item 0: `category` must be a string, got list ['x']"


def test_empty_list(tmp_path):
    path = write_json(tmp_path / "g.json", [])
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    assert only_problem(e) == f"{path}: contains no scenarios"


def test_all_problems_of_a_file_reported_together_and_nothing_written(tmp_path):
    items = [{"text": "ok", "label": "aligned"}, {"label": "aligned"}, {"text": "b", "label": "nope"},
             {"text": " ", "label": 3}, 7]
    path = write_json(tmp_path / "g.json", items)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    problems = problems_of(e)
    assert [p.split(": ")[1] for p in problems] == ["item 1", "item 2", "item 3", "item 3", "item 4"]
    assert sorted(tmp_path.iterdir()) == before


# --- load_array --------------------------------------------------------------------------------------


def test_loads_synthetic_cache_as_memmap(synthetic):
    out, _ = synthetic
    arr = load_array(out / "train_activations.npy", expect_shape=(None, 16384))
    assert isinstance(arr, np.memmap) and Path(arr.filename) == out / "train_activations.npy"
    assert arr.shape == (200, 16384) and arr.dtype == np.float32
    assert not arr.flags.writeable  # read-only map: a stage cannot corrupt the user's cache
    assert isinstance(load_array(out / "train_activations.npy", mmap=False), np.ndarray)


def test_finite_check_reads_in_blocks_not_a_full_copy(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((64, 65536), np.float32))  # 16 MiB
    monkeypatch.setattr(assets, "_CHECK_BYTES", 2**20)
    tracemalloc.start()
    try:
        arr = load_array(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(arr, np.memmap)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB while checking a 16 MiB memmap"


def test_array_missing(tmp_path):
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: file not found"


def test_array_not_npy(tmp_path):
    path = write(tmp_path / "x.npy", "hello, I am text")
    with pytest.raises(InputError) as e:
        load_array(path)
    assert only_problem(e).startswith(f"{path}: not a .npy file: the magic string is not correct")


def test_array_npz_gets_a_hint(tmp_path):
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(3))
    with pytest.raises(InputError) as e:
        load_array(path)
    assert only_problem(e).startswith(f"{path}: not a .npy file (an .npz archive: save each array with np.save)")


def test_array_wrong_ndim(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(8, np.float32))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy", expect_ndim=2)
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: expected 2-D array, got 1-D with shape (8,)"


def test_array_wrong_shape(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy", expect_shape=(None, 16384))
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: expected shape (any, 16384), got (3, 8)"


def test_array_wrong_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(4, np.float64))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: expected dtype float32, got float64"
    assert load_array(tmp_path / "x.npy", dtype=None).dtype == np.float64


def test_array_shape_and_dtype_problems_together(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy", expect_shape=(2, 3))
    assert len(problems_of(e)) == 2


def test_array_nan(tmp_path):
    data = np.zeros((4, 5), np.float32)
    data[2, 3] = np.nan
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: 1 non-finite value(s) (NaN or inf), first at index (2, 3)"


def test_array_inf_across_blocks(tmp_path, monkeypatch):
    data = np.zeros((10, 4), np.float32)
    data[1, 0], data[7, 2] = np.inf, -np.inf
    np.save(tmp_path / "x.npy", data)
    monkeypatch.setattr(assets, "_CHECK_BYTES", 32)  # two rows per block
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e).endswith("2 non-finite value(s) (NaN or inf), first at index (1, 0)")


def test_array_zero_size(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: array is empty (shape (0, 8))"


def test_array_of_objects(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert f"{tmp_path / 'x.npy'}: holds Python objects, not numbers" in problems_of(e)


def test_npy_header_reads_shape_without_loading(synthetic):
    out, truth = synthetic
    assert npy_header(out / "af_intent_direction.npy") == ((truth["hidden"],), np.dtype(np.float32))


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


# --- hub datasets ------------------------------------------------------------------------------------


def test_hf_dataset_offline_not_cached_is_one_line(tmp_path):
    # A fresh process: `datasets` reads HF_HUB_OFFLINE when it is imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(REPO)}
    code = ("from records.assets import load_hf_dataset\nfrom records.errors import InputError\n"
            "try:\n    load_hf_dataset('vincentoh/af-detection-benchmark', 'train')\n"
            "except InputError as e:\n    import json\n    print('PROBLEMS', json.dumps(e.problems))\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    line = next(x for x in result.stdout.splitlines() if x.startswith("PROBLEMS"))
    problems = json.loads(line[len("PROBLEMS "):])
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith("vincentoh/af-detection-benchmark: not in the local datasets cache and offline")


def test_hf_dataset_from_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", '{"text": "a", "label": "aligned"}\n{"text": "b", "label": "refusal"}\n')
    ds = load_hf_dataset(str(folder), "train", cache_dir=tmp_path / "cache")
    assert ds.num_rows == 2 and ds[1]["label"] == "refusal"
    with pytest.raises(InputError) as e:
        load_hf_dataset(str(folder), "test", cache_dir=tmp_path / "cache")
    assert only_problem(e).startswith(f"{folder} (split 'test'): could not load: ValueError: Unknown split")


# --- output folder guard -----------------------------------------------------------------------------


def test_output_dir_outside_sources_is_accepted(tmp_path):
    (tmp_path / "data").mkdir()
    assert check_output_dir(tmp_path / "runs" / "a", [tmp_path / "data"]) == (tmp_path / "runs" / "a").resolve()


def test_output_dir_equal_to_source(tmp_path):
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path, [tmp_path])
    assert "inside source data folder" in only_problem(e)


def test_output_dir_nested_in_source(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "data" / "out" / "deeper", [tmp_path / "data"])
    assert only_problem(e).startswith(f"{tmp_path / 'data' / 'out' / 'deeper'}: output folder resolves to")


def test_output_dir_symlink_into_source(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data" / "sub")
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "link" / "out", [tmp_path / "data"])
    assert f"inside source data folder {(tmp_path / 'data').resolve()}" in only_problem(e)


def test_output_dir_inside_symlinked_source(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "real")
    with pytest.raises(InputError):
        check_output_dir(tmp_path / "real" / "out", [tmp_path / "data"])


def test_an_input_file_guards_itself_not_its_folder(tmp_path):
    """gold.json in a working folder: an output beside it is fine, the folder that holds it is not."""
    gold = write_json(tmp_path / "gold.json", [])
    assert check_output_dir(tmp_path / "out", [gold]) == (tmp_path / "out").resolve()
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path, [gold])
    assert "holds the input file" in only_problem(e)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "out", [tmp_path / "data"])
    assert only_problem(e) == f"{tmp_path / 'out'}: output folder is a file; choose a folder"


# --- paths config --------------------------------------------------------------------------------------


def test_resolve_joins_data_root_and_is_idempotent(tmp_path):
    paths = resolve_paths(PathsConfig(data_root=str(tmp_path)), env={})
    assert paths.gold_1560 == str(tmp_path / "gold-1560-full.json")
    assert paths.organism_model == "vincentoh/mistral-7b-af-organism"
    assert resolve_paths(paths, env={}) == paths


def test_env_beats_file_and_flag_beats_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {env_var("gold_1560"): "from_env.json", env_var("data_root"): "root", env_var("gold_106"): ""}
    paths = resolve_paths(PathsConfig(), env=env, overrides={"gold_106": None})
    assert paths.gold_1560 == str(tmp_path / "from_env.json")  # as typed: relative to the working dir
    assert paths.gold_106 == str(tmp_path / "root" / "gold_106.json")  # empty env value = unset
    paths = resolve_paths(PathsConfig(), env=env, overrides={"gold_1560": "/abs/flag.json"})
    assert paths.gold_1560 == "/abs/flag.json"


def test_unknown_override_rejected():
    with pytest.raises(InputError) as e:
        resolve_paths(PathsConfig(), env={}, overrides={"gold_9000": "x"})
    assert only_problem(e).startswith("paths override `gold_9000`: not a settable field")


def test_af_labels_must_be_known(tmp_path):
    path = write(tmp_path / "paths.yaml", "known_labels: [aligned]\naf_labels: [alignment_faking]\n")
    with pytest.raises(InputError) as e:
        load_config(path, PathsConfig)
    assert only_problem(e).startswith(f"{path}: af_labels ['alignment_faking'] are not in known_labels")


def test_unknown_yaml_field_rejected(tmp_path):
    path = write(tmp_path / "paths.yaml", "gold_1650: x.json\n")
    with pytest.raises(InputError) as e:
        load_config(path, PathsConfig)
    assert "gold_1650" in only_problem(e)


def test_cli_flags_become_overrides():
    parser = argparse.ArgumentParser()
    add_path_arguments(parser)
    args = parser.parse_args(["--gold-1560", "g.json", "--base-model", "local/base"])
    assert overrides_from_args(args) == {"gold_1560": "g.json", "base_model": "local/base"}


# --- synthetic assets --------------------------------------------------------------------------------


def test_synthetic_assets_match_paths_config(synthetic):
    out, truth = synthetic
    paths = resolve_paths(PathsConfig(data_root=str(out)), env={})
    for field in FILE_FIELDS:
        assert expand(getattr(paths, field)), field
    assert json.loads((out / "planted_truth.json").read_text()) == truth


def test_synthetic_assets_are_deterministic(synthetic, tmp_path):
    out, truth = synthetic
    again = write_synthetic_assets(tmp_path, seed=0)
    assert again == truth
    for name in ("train_activations.npy", "gold_106.json", "cluster_summaries.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    assert write_synthetic_assets(tmp_path / "other", seed=1)["top_k"] != truth["top_k"]


def test_held_out_set_is_disjoint(synthetic):
    out, _ = synthetic
    held_out = {s.id for s in load_scenarios(out / "gold_106.json", LABELS)}
    for name in ("gold-1560-full.json", "gold-770.json", "validated_pool.json", "vocab_constrained_a.json"):
        assert not held_out & {s.id for s in load_scenarios(out / name, LABELS)}, name


def test_planted_top_k_and_clusters(synthetic):
    out, truth = synthetic
    selectivity = load_array(out / "selectivity.npy", expect_shape=(truth["width"],))
    assert truth["top_k"] == [int(f) for f in np.argsort(-selectivity, kind="stable")[: len(truth["top_k"])]]
    assert set(truth["top_k"]) <= set(truth["af_selective_features"])
    probe = load_array(out / "differential_probe_weights.npy", expect_shape=(truth["width"],))
    assert sorted(np.flatnonzero(probe).tolist()) == truth["probe_nonzero"]
    # The planted pattern: features of one cluster have far more alike profiles than features of two.
    acts = load_array(out / "train_activations.npy")
    a, b = truth["clusters"][0]["features"], truth["clusters"][1]["features"]
    corr = np.corrcoef(np.asarray(acts[:, a + b]).T)
    n = len(a)
    within = corr[:n, :n][~np.eye(n, dtype=bool)].mean()
    across = corr[:n, n:].mean()
    assert within > 0.6 and within > across + 0.3


@pytest.mark.parametrize("seed", [0, 1])
def test_small_synthetic_sets_keep_the_top_k_guarantee(tmp_path, seed):
    truth = write_synthetic_assets(tmp_path, seed=seed, n_scenarios=20, n_eval=10, n_vocab=6, n_cache=15,
                                   width=256, hidden=32)
    assert truth["top_k"] and set(truth["top_k"]) <= set(truth["af_selective_features"])
    assert load_array(tmp_path / "benchmark_activations.npy", expect_shape=(15, 256)).shape == (15, 256)
