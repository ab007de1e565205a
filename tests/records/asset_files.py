"""Helpers of the asset-loader tests (tests/records/test_{scenarios,arrays,clusters,guards,assets}.py)."""

from __future__ import annotations

import json
from pathlib import Path

from records.paths import PathsConfig

REPO = Path(__file__).resolve().parents[2]
LABELS = PathsConfig().known_labels


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
