"""Strict JSON reading shared by the asset loaders: a key given twice, nesting too deep or an unpaired
surrogate is refused (json.loads would accept or crash), and the helpers that word their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from records.errors import InputError, Problems


class DuplicateKey(ValueError):
    """A JSON object gives one key twice: json.loads would silently keep the last value."""


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def strict_json(text: str) -> object:
    """json.loads that refuses a key given twice in one object (DuplicateKey), and turns nesting too deep
    for the parser, and unpaired surrogate escapes (text that can never be written as UTF-8), into
    ValueError with what went wrong."""
    try:
        data = json.loads(text, object_pairs_hook=_strict_object)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read (thousands of levels)") from None
    bad = _first_surrogate(data)
    if bad is not None:
        raise ValueError(f"string {bad!r} holds an unpaired surrogate escape (\\ud800-\\udfff): not valid Unicode")
    return data


def _first_surrogate(node: object) -> str | None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item[:40]
        elif isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item
    return None


def read_text(path: Path) -> str:
    """A file's UTF-8 text (a BOM tolerated), refusing a folder, a missing file or other bytes in one line."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the path of a file in it")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None


def json_object(path: str | Path, shape: str) -> tuple[dict, Problems, str]:
    """A JSON file that must hold one object (`shape` says which, for the message): the object, the
    Problems collector its entries report to, and the file's name for those reports."""
    data, problems, where = load_json(Path(path)), Problems(), str(path)
    if not isinstance(data, dict):
        problems.add(where, f"expected an object {shape}, got {type(data).__name__}")
        problems.raise_if_any()
    return data, problems, where


def load_json(path: Path) -> object:
    """The JSON in `path`, read strictly (strict_json); any failure is one InputError line naming the file."""
    text = read_text(path)
    try:
        return strict_json(text)
    except DuplicateKey as e:
        raise InputError(f"{path}: an object gives the key {e} twice (which value was meant is unknown)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} col {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


def short(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters for an error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(e: BaseException) -> str:
    """An exception's message on one line (a library's multi-line message would break the report's format)."""
    return " ".join(str(e).split())

