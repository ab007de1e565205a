"""One writer per output folder: an exclusive lock held for the whole run.

`fcntl.flock` on `<out>/.lock`: the kernel releases it when the process ends, however it ends, so a lock
left by a killed run is never stale; the holder's pid is written into the file for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from records.errors import InputError

LOCK_NAME = ".lock"


def remove_stale_temp_files(out: Path) -> None:
    """Temporary files of atomic writes (`.<name>.<pid>.tmp`) that a kill left behind; with the lock held no
    other writer can own one."""
    for path in out.rglob(".*.tmp"):
        if path.is_file():
            path.unlink()


@contextlib.contextmanager
def output_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold `out_dir`'s lock (creating the folder) or refuse at once with one line naming the holder.

    A run refused under the lock (InputError) in a folder the lock created, before writing anything else,
    leaves no folder behind: a refusal writes nothing."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: output folder is a file")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{out}: another run (pid {holder}) is writing into this folder; wait for it to "
                             "finish, or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temp_files(out)
        try:
            yield
        except InputError:
            if created and [p.name for p in out.iterdir()] == [LOCK_NAME]:
                (out / LOCK_NAME).unlink()
                out.rmdir()
            raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock
