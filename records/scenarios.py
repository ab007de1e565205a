"""Scenario sets: the gold-style JSON / JSONL files and `hf:` datasets (records/hub.py), each validated
whole into Scenario structs. Problems are InputError lines of the form `<file>: <where>: <what>` (item
index for JSON lists, line number for JSONL, row for datasets), so the user can fix a whole file in one pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from records.errors import InputError, Problems
from records.hub import hf_rows, is_hf_input, parse_hf_input
from records.jsonfile import DuplicateKey, read_text, short, strict_json
from records.schema import Scenario, content_id

log = logging.getLogger(__name__)


def load_scenarios(
    path: str | Path, known_labels: list[str], source_default: str | None = None
) -> list[Scenario]:
    """Load a gold-style scenario set: a JSON list of {"text", "label", optional "source"/"category"}.

    Also accepts JSONL (by `.jsonl` suffix, or a `.json` file holding one object per line), a JSON
    object with the list under "samples" or "data", and `hf:NAME[:split]`: a datasets folder or a hub
    dataset already on this machine (records/hub.py) with the same columns. A UTF-8 BOM is tolerated.
    `source` falls back to `category`, then to `source_default`, then to the file's stem (the dataset's
    name), so every scenario keeps where it came from. Texts are kept exactly as written; ids are
    `content_id(text)`. Repeated texts (same id) are dropped after the first with one warning line.
    """
    problems = Problems()
    if is_hf_input(path):
        where, items = hf_rows(path)
        stem = Path(parse_hf_input(path)[0]).name
    else:
        path = Path(path)
        where, stem = str(path), path.stem
        items = _parse_records(path, read_text(path), problems)
        problems.raise_if_any()
    return _validated(items, where, known_labels, stem if source_default is None else source_default, problems)


def _validated(items: list[tuple[str, object]], file: str, known_labels: list[str], default: str,
               problems: Problems) -> list[Scenario]:
    """The items as Scenarios, a repeated text kept once; every problem of every item raised together."""
    scenarios: list[Scenario] = []
    first_seen: dict[str, tuple[str, Scenario]] = {}
    duplicates: list[tuple[str, str]] = []
    for where, item in items:
        scenario = _scenario(where, item, known_labels, default, problems, file)
        if scenario is None:
            continue
        if scenario.id in first_seen:
            first_where, first = first_seen[scenario.id]
            if first.label != scenario.label:
                problems.add(file, f"{where} repeats the text of {first_where} with another label "
                                   f"({scenario.label!r} vs {first.label!r}): which one is true is unknown")
            duplicates.append((where, first_where))
            continue
        first_seen[scenario.id] = (where, scenario)
        scenarios.append(scenario)
    if not items:
        problems.add(file, "contains no scenarios")
    problems.raise_if_any()
    if duplicates:
        where, first = duplicates[0]
        log.warning(
            "%s: %d duplicate text(s) with the same label dropped (same content id), kept the first of each; "
            "e.g. %s repeats %s",
            file, len(duplicates), where, first,
        )
    return scenarios


def _parse_records(path: Path, text: str, problems: Problems) -> list[tuple[str, object]]:
    """(where, item) pairs from a JSON list, a {"samples"|"data": [...]} object or JSONL."""
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, text, problems)
    try:
        data = strict_json(text)
    except DuplicateKey as e:
        problems.add(str(path), f"an object gives the key {e} twice (which value was meant is unknown)")
        return []
    except json.JSONDecodeError as e:
        # "Extra data" after a first complete object is the signature of JSONL saved as .json.
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(path, text, problems)
        problems.add(str(path), f"malformed JSON at line {e.lineno} col {e.colno}: {e.msg}")
        return []
    except ValueError as e:
        problems.add(str(path), str(e))
        return []
    if isinstance(data, dict):
        key = next((k for k in ("samples", "data") if isinstance(data.get(k), list)), None)
        if key is None:
            keys = ", ".join(list(data)[:8])
            problems.add(str(path), f"top level is an object without a `samples` or `data` list (keys: {keys})")
            return []
        data = data[key]
    if not isinstance(data, list):
        problems.add(str(path), f"top level must be a list of objects, got {type(data).__name__}")
        return []
    return [(f"item {i}", item) for i, item in enumerate(data)]


def _parse_jsonl(path: Path, text: str, problems: Problems) -> list[tuple[str, object]]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {n}", strict_json(line)))
        except DuplicateKey as e:
            problems.add(str(path), f"line {n}: the key {e} is given twice")
        except json.JSONDecodeError as e:
            problems.add(str(path), f"line {n}: malformed JSON at col {e.colno}: {e.msg}")
        except ValueError as e:
            problems.add(str(path), f"line {n}: {e}")
    return items


def _scenario(
    where: str, item: object, known_labels: list[str], default_source: str, problems: Problems, file: str
) -> Scenario | None:
    """One validated Scenario, or None after adding every problem the item has."""
    if not isinstance(item, dict):
        problems.add(file, f"{where}: expected an object, got {type(item).__name__} {short(item)}")
        return None
    n_before = len(problems.items)
    text = item.get("text")
    if "text" not in item:
        problems.add(file, f"{where}: `text` is missing")
    elif not isinstance(text, str):
        problems.add(file, f"{where}: `text` must be a string, got {type(text).__name__} {short(text)}")
    elif not text.strip():
        problems.add(file, f"{where}: `text` is empty or whitespace only ({text!r})")
    label = item.get("label")
    if "label" not in item:
        problems.add(file, f"{where}: `label` is missing")
    elif not isinstance(label, str):
        problems.add(file, f"{where}: `label` must be a string, got {type(label).__name__} {short(label)}")
    elif label not in known_labels:
        problems.add(
            file,
            f"{where}: `label` {label!r} is not a known label (known: {', '.join(known_labels)}; "
            "edit known_labels in configs/paths.yaml)",
        )
    source_key = "source" if "source" in item else "category"
    source = item.get(source_key, default_source)
    if not isinstance(source, str):
        problems.add(file, f"{where}: `{source_key}` must be a string, got {type(source).__name__} {short(source)}")
    if len(problems.items) > n_before:
        return None
    return Scenario(id=content_id(text), text=text, label=label, source=source)



def select_scenarios(scenarios: list[Scenario], limit: int, test_size: int, where: str = "") -> list[Scenario]:
    """The first `limit` scenarios (0: all), refusing a set that is empty or leaves nothing to train on."""
    if limit < 0:
        raise InputError(f"limit {limit}: must be 0 (all scenarios) or a positive count")
    if test_size < 0:
        raise InputError(f"test_size {test_size}: must be 0 or a positive count of held-out scenarios")
    if limit:
        scenarios = scenarios[:limit]
    if not scenarios:
        raise InputError(f"{where or 'input'}: no scenarios to run")
    if test_size >= len(scenarios):
        raise InputError(f"test_size {test_size} leaves no training scenarios out of {len(scenarios)}; "
                         "lower test_size or raise limit")
    return scenarios
