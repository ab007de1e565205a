"""Scenario sets (records/scenarios.py): every accepted form, one case per bad input (an InputError whose
line names the file, the place and the problem; nothing written).
"""

from __future__ import annotations

import json
import logging
import operator

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


# --- load_scenarios: one case per bad input ------------------------------------------------------------


def case(name: str, content, expected: str, compare=operator.eq, labels=LABELS):
    """A bad file (None: absent; bytes: written as is; else written as JSON) and its one-line problem, in which
    `{path}` stands for the file's path; compare: operator.eq (the whole line) or str.startswith."""
    return pytest.param(content, labels, compare, expected, id=name)


BAD_SCENARIO_FILES = [
    case("missing-file", None, "{path}: file not found"),
    case("malformed-json-names-line-and-col", b'[\n  {"text": "a", "label": "aligned"},\n  {"text": "b" "label": 1}\n]',
         "{path}: malformed JSON at line 3 col 16: Expecting ',' delimiter", str.startswith),
    case("not-utf8", b'[{"text": "\xff\xfe", "label": "aligned"}]', "{path}: not UTF-8 text (byte 11)"),
    case("top-level-int", 5, "{path}: top level must be a list of objects, got int"),
    case("top-level-str", "text", "{path}: top level must be a list of objects, got str"),
    case("object-without-samples-list", {"items": [], "version": 2},
         "{path}: top level is an object without a `samples` or `data` list (keys: items, version)"),
    case("item-not-an-object", [{"text": "a", "label": "aligned"}, "just text"],
         "{path}: item 1: expected an object, got str 'just text'"),
    case("missing-text", [{"label": "aligned"}], "{path}: item 0: `text` is missing"),
    case("empty-text", [{"text": "", "label": "aligned"}],
         "{path}: item 0: `text` is empty or whitespace only ('')"),
    case("whitespace-text", [{"text": "   \n\t", "label": "aligned"}],
         "{path}: item 0: `text` is empty or whitespace only ('   \\n\\t')"),
    case("non-string-text", [{"text": 42, "label": "aligned"}], "{path}: item 0: `text` must be a string, got int 42"),
    case("missing-label", [{"text": "a"}], "{path}: item 0: `label` is missing"),
    case("unknown-label-lists-allowed", [{"text": "a", "label": "AF"}],
         "{path}: item 0: `label` 'AF' is not a known label (known: alignment_faking, aligned; edit known_labels "
         "in configs/paths.yaml)", labels=["alignment_faking", "aligned"]),
    case("non-string-label", [{"text": "a", "label": 1}], "{path}: item 0: `label` must be a string, got int 1"),
    case("non-string-source", [{"text": "a", "label": "aligned", "category": ["x"]}],
         "{path}: item 0: `category` must be a string, got list ['x']"),
    case("empty-list", [], "{path}: contains no scenarios"),
    case("duplicate-text-with-another-label-names-both",
         [{"text": "Same text", "label": "aligned"}, {"text": "  same   TEXT ", "label": "refusal"}],
         "{path}: item 1 repeats the text of item 0 with another label ('refusal' vs 'aligned'): which one is "
         "true is unknown"),
    case("key-given-twice-in-one-item", b'[{"text": "x", "label": "aligned", "label": "refusal"}]',
         "{path}: an object gives the key label twice (which value was meant is unknown)"),
]


@pytest.mark.parametrize("content, labels, compare, expected", BAD_SCENARIO_FILES)
def test_bad_scenario_file_is_one_line(tmp_path, content, labels, compare, expected):
    path = tmp_path / "g.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(InputError) as e:
        load_scenarios(path, labels)
    assert compare(only_problem(e), expected.replace("{path}", str(path)))


def test_malformed_jsonl_lines_all_reported(tmp_path):
    path = write(tmp_path / "g.jsonl", '{"text": "a", "label": "aligned"}\n{"text": \n{oops}\n')
    with pytest.raises(InputError) as e:
        load_scenarios(path, LABELS)
    problems = problems_of(e)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: line 2: malformed JSON at col")
    assert problems[1].startswith(f"{path}: line 3: malformed JSON at col")


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
