"""What a resumed stage checks before it reuses the completions an earlier run of it saved."""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Iterable

from records.errors import InputError


def check_resume_key(work: Path, key: str, settings: str) -> None:
    """Refuse a work folder made with other settings; record `key` for a fresh one.

    `settings` names what the key covers, for the message ("model, prompts, input, ...").
    """
    marker = work / "resume_key"
    if marker.exists() and marker.read_text().strip() != key:
        raise InputError(f"{work.parent}: holds a run made with different settings ({settings}); use another "
                         "--output-dir or delete it")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def require_completions(keys: Iterable[str], done: Collection[str], what: str) -> None:
    """After a pass every planned key must have its completion; a gap is a bug, never silently skipped."""
    missing = [k for k in keys if k not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} {what} have no completion after the pass (first: {missing[0]})")
