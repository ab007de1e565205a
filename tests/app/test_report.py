"""`af-introspect report` on a damaged run folder: one line naming the file, exit 2, no traceback."""

from __future__ import annotations

import pytest

from app.cli import main as cli


@pytest.mark.parametrize("name,content,needle", [
    ("task2/summary.json", b'{"n_records": 3, "scale"', "not a valid SteeringSummary"),
    ("task3/summary.json", b"[1, 2]", "not a valid ContextAblationSummary"),
    ("task3/train.jsonl", b'{"sample_id": "a", "ind', "train.jsonl"),
])
def test_a_corrupt_summary_or_torn_split_is_one_line(tmp_path, capsys, name, content, needle):
    run = tmp_path / "run"
    (run / name).parent.mkdir(parents=True)
    if name.startswith("task3"):  # a Task 3 folder: both splits (empty), the damaged file replaces one
        for split in ("train.jsonl", "test.jsonl"):
            (run / "task3" / split).write_bytes(b"")
    (run / name).write_bytes(content)
    assert cli(["report", str(run), "--progress-log", str(tmp_path / "P.md")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
