"""The hand-labelled corpus of free-text responses (tests/data/label_corpus.jsonl), shared by the label tests."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "data" / "label_corpus.jsonl"


def corpus() -> list[dict]:
    """(case, prompt, response, label) rows, written and labelled by hand."""
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
