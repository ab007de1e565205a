"""Records on disk: append-only JSONL shards that survive a kill, and atomic final files.

A record counts as written only once its line, newline included, has been flushed and fsynced. A run
killed mid-write leaves at most one torn last line; on reopen it is cut back to the last complete
record, so new output is never fused onto half a line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import msgspec

from records.errors import InputError

T = TypeVar("T")
log = logging.getLogger(__name__)
BOM = b"\xef\xbb\xbf"


def _complete_prefix(data: bytes, record_type: type | None) -> tuple[int, list]:
    """Parse complete lines of `data`; return (byte length of the complete prefix, decoded records).

    A last line without its newline is torn and excluded. A complete line that does not decode is
    corruption, not a torn write, and raises (its line number is reported).
    """
    if data.startswith(BOM):
        raise InputError("starts with a UTF-8 byte-order mark (saved by an editor?); records files are plain "
                         "UTF-8 JSONL: remove the first 3 bytes")
    decoder = msgspec.json.Decoder(record_type) if record_type is not None else msgspec.json.Decoder()
    end = data.rfind(b"\n") + 1  # 0 when there is no complete line
    items = []
    for lineno, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(decoder.decode(line))
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise InputError(f"line {lineno}: {e}") from None
    return end, items


def read_records(path: str | Path, record_type: type[T] | None = None, strict: bool = False) -> list[T]:
    """All complete records in a JSONL file; a torn last line is ignored (and logged).

    `strict` (finished splits, which are written atomically and so are never torn): a last line without
    its newline is an error instead. A missing file reads as no records. Raises InputError naming the
    file and line for corruption.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    try:
        end, items = _complete_prefix(data, record_type)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    if end < len(data) and data[end:].strip():
        if strict:
            line = data.count(b"\n") + 1
            raise InputError(f"{path}: line {line}: incomplete last line (no newline, "
                             f"{len(data) - end} bytes): the file was cut short")
        log.warning("%s: ignoring a torn last line (%d bytes)", path, len(data) - end)
    return items


class ShardWriter:
    """Append-only JSONL writer: each `append` is flushed and fsynced before it returns.

    Opening repairs a torn tail by truncating back to the last complete line. The records already on
    disk are available as `.existing` so the caller can skip finished work.
    """

    def __init__(self, path: str | Path, record_type: type | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        try:
            end, self.existing = _complete_prefix(data, record_type)
        except InputError as e:
            raise InputError(f"{self.path}: {e}") from None
        self._file = open(self.path, "ab")
        if end < len(data):
            log.warning("%s: truncating a torn last line (%d bytes) left by an interrupted run",
                        self.path, len(data) - end)
            self._file.truncate(end)
            os.fsync(self._file.fileno())
        self._encoder = msgspec.json.Encoder()

    def append(self, records: Iterable) -> int:
        """Write records as one block, flush, fsync. Returns how many were written."""
        buf = bytearray()
        n = 0
        for record in records:
            self._encoder.encode_into(record, buf, len(buf))
            buf += b"\n"
            n += 1
        if n:
            self._file.write(buf)
            self._file.flush()
            os.fsync(self._file.fileno())
        return n

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes to `path` via a fsynced temporary file and a rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: parallel workers may race
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_records_atomic(path: str | Path, records: Iterable) -> int:
    """Write a whole JSONL file atomically (final splits). Returns the record count."""
    encoder = msgspec.json.Encoder()
    lines = [encoder.encode(r) for r in records]
    write_atomic(path, b"".join(line + b"\n" for line in lines))
    return len(lines)


def write_json_atomic(path: str | Path, obj) -> None:
    """Pretty JSON (manifests, summaries), written atomically."""
    write_atomic(path, (json.dumps(msgspec.to_builtins(obj), indent=2, sort_keys=False) + "\n").encode())
