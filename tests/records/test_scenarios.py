"""Scenario sets (records/scenarios.py): every accepted form, one test per bad input (an InputError whose
line names the file, the place and the problem; nothing written).
"""

from __future__ import annotations

import logging

import pytest
from asset_files import LABELS, only_problem, problems_of, write, write_json

from records.errors import InputError
from records.paths import PathsConfig, expand
from records.scenarios import load_scenarios
from records.schema import content_id

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
    with caplog.at_level(logging.WARNING, logger="records.scenarios"):
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
