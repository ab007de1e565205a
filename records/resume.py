"""What a resumed stage checks before it reuses the completions an earlier run of it saved.

Two layers: the resume key covers what changes every output (the model and its weights, decoding
settings) and a mismatch is refused with one line; each completion's own key carries a digest of its
exact prompt token ids (scenario text, system prompt, chat template, tokenizer), so after an edit of the
input only the prompts that changed are generated again and a stale completion is never reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

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


def prompt_digest(token_ids: Sequence[int]) -> str:
    """A short content digest of a prompt's token ids (part of its completion's key)."""
    return hashlib.sha256(json.dumps(list(token_ids)).encode()).hexdigest()[:16]


def model_fingerprint(model_dir: str | Path) -> str:
    """What identifies a model folder's weights without reading them: its config and each weight file's
    name, size and modification time (a retrained model saved to the same folder changes it)."""
    folder = Path(model_dir)
    parts = [(folder / "config.json").read_text() if (folder / "config.json").is_file() else ""]
    for f in sorted(folder.glob("*")):
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf") and f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

