"""The autointerp clustering's JSON files: cluster summaries, feature -> cluster assignments and the
clusters' attributes, each validated whole (integer keys, non-empty texts) with every problem reported at once."""

from __future__ import annotations

import re
from pathlib import Path

from records.errors import Problems
from records.jsonfile import json_object, load_json, short

_INT_KEY = re.compile(r"-?\d+")


def load_cluster_summaries(path: str | Path) -> dict[int, str]:
    """Cluster id -> summary text, from {"<cluster_id>": "<text>"}.

    Also accepts the autointerp clustering's list form, [{"cluster_id": 3, "summary" | "description" |
    "representative_desc": "..."}], taking the first of those text fields present. Keys must be
    integers; every summary must be non-empty text.
    """
    path = Path(path)
    data = load_json(path)
    problems = Problems()
    where = str(path)
    if isinstance(data, list):
        data = _summaries_from_list(data, problems, where)
    elif not isinstance(data, dict):
        problems.add(where, f"expected an object {{cluster_id: summary}}, got {type(data).__name__}")
        data = {}
    out: dict[int, str] = {}
    for key, text in data.items():
        cid = _int_key(key, "cluster id", out, problems, where)
        if not isinstance(text, str):
            problems.add(where, f"cluster {key}: summary must be a string, got {type(text).__name__} {short(text)}")
        elif not text.strip():
            problems.add(where, f"cluster {key}: summary is empty")
        elif cid is not None:
            out[cid] = text
    if not data and not problems:
        problems.add(where, "contains no clusters")
    problems.raise_if_any()
    return out


def _summaries_from_list(items: list, problems: Problems, where: str) -> dict:
    data = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("cluster_id"), (int, str)):
            problems.add(where, f"item {i}: expected an object with an integer `cluster_id`, got {short(item)}")
            continue
        field = next((f for f in ("summary", "description", "representative_desc") if f in item), None)
        if field is None:
            problems.add(where, f"item {i}: no `summary`, `description` or `representative_desc` field")
            continue
        if item["cluster_id"] in data:
            problems.add(where, f"item {i}: cluster_id {item['cluster_id']} appears twice (which summary is meant is "
                                "unknown)")
            continue
        data[item["cluster_id"]] = item[field]
    return data


def load_cluster_assignments(path: str | Path) -> dict[int, int]:
    """Feature index -> cluster id, from {"<feature_idx>": <cluster_id>}.

    Keys must be non-negative integers (or int-like strings, as JSON writes them); values must be
    integers (-1, the usual "no cluster", is allowed).
    """
    data, problems, where = json_object(path, "{feature_idx: cluster_id}")
    out: dict[int, int] = {}
    for key, cid in data.items():
        fidx = _int_key(key, "feature index", out, problems, where)
        if fidx is not None and fidx < 0:
            problems.add(where, f"key {key!r}: feature index must be >= 0")
            fidx = None
        if isinstance(cid, bool) or not isinstance(cid, int):
            problems.add(where, f"feature {key}: cluster id must be an integer, got {type(cid).__name__} {short(cid)}")
        elif fidx is not None:
            out[fidx] = cid
    if not data:
        problems.add(where, "contains no assignments")
    problems.raise_if_any()
    return out


def load_cluster_attributes(path: str | Path) -> dict[int, dict[str, str]]:
    """Cluster id -> {attribute: value}, from {"<cluster_id>": {"<attribute>": "<value>", ...}} (the toy's
    cluster_attributes.json: trigger and modifier). The features stage copies it beside its splits
    (CLUSTER_ATTRIBUTES in records/schema/), where evaluation reads it for per-attribute accuracy."""
    data, problems, where = json_object(path, "{cluster_id: {attribute: value}}")
    out: dict[int, dict[str, str]] = {}
    for key, attrs in data.items():
        cid = _int_key(key, "cluster id", out, problems, where)
        # values may be numbers (a bucket id, say): they name a value all the same, compared as text
        if not isinstance(attrs, dict) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                  and str(v).strip() for v in attrs.values()):
            problems.add(where, f"cluster {key}: expected {{attribute: value}} with non-empty text or numbers, "
                                f"got {short(attrs)}")
        elif cid is not None:
            out[cid] = {str(a): str(v) for a, v in attrs.items()}
    if not data:
        problems.add(where, "contains no clusters")
    problems.raise_if_any()
    return out


def _int_key(key: object, what: str, seen: dict, problems: Problems, where: str) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        value = key
    elif isinstance(key, str) and _INT_KEY.fullmatch(key.strip()):
        value = int(key)
    else:
        problems.add(where, f"key {key!r}: {what} must be an integer")
        return None
    if value in seen:
        problems.add(where, f"key {key!r}: {what} {value} appears twice")
        return None
    return value

