"""The user's .npy arrays (activation caches, selectivity, probe weights, steering directions): header,
shape, dtype and finiteness checked, memory-mapped read-only, every problem of a file reported at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from records.errors import InputError, Problems
from records.jsonfile import one_line

# Finite-check block size: big enough to be fast, small enough that a memmap never becomes a full copy.
_CHECK_BYTES = 64 * 2**20


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file from its header alone (reads a few hundred bytes).

    Raises InputError when the file is missing or is not a .npy file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                # Format 3.0 (utf-8 field names) has no public header reader: let np.load map it.
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
        except (ValueError, OSError, EOFError) as e:
            hint = " (an .npz archive: save each array with np.save)" if _is_zip(path) else ""
            raise InputError(f"{path}: not a .npy file{hint}: {one_line(e)}") from None
    return tuple(shape), np.dtype(dtype)


def load_array(
    path: str | Path,
    expect_ndim: int | None = None,
    expect_shape: tuple[int | None, ...] | None = None,
    dtype: np.dtype | type | None = np.float32,
    mmap: bool = True,
) -> np.ndarray:
    """Load a .npy array, memory-mapped read-only by default, after checking it.

    Checks: the file exists and is a .npy; ndim, shape (None entries match any size) and dtype (None =
    any) as expected; not empty; no NaN or inf (checked block by block, so a memmap is never copied
    whole). With `mmap` the result is an np.memmap backed by the file: slice it, do not modify it.
    """
    path = Path(path)
    shape, got_dtype = npy_header(path)
    problems = Problems()
    where = str(path)
    if expect_shape is not None and expect_ndim is None:
        expect_ndim = len(expect_shape)
    if expect_ndim is not None and len(shape) != expect_ndim:
        problems.add(where, f"expected {expect_ndim}-D array, got {len(shape)}-D with shape {shape}")
    elif expect_shape is not None and any(e is not None and e != g for e, g in zip(expect_shape, shape)):
        want = "(" + ", ".join("any" if e is None else str(e) for e in expect_shape) + ")"
        problems.add(where, f"expected shape {want}, got {shape}")
    if dtype is not None and got_dtype != np.dtype(dtype):
        problems.add(where, f"expected dtype {np.dtype(dtype)}, got {got_dtype}")
    if got_dtype.hasobject:
        problems.add(where, "holds Python objects, not numbers")
    if int(np.prod(shape)) == 0:
        problems.add(where, f"array is empty (shape {shape})")
    problems.raise_if_any()
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # the header promises more data than the file holds
        raise InputError(f"{path}: truncated or unreadable .npy (shape {shape} in its header; "
                         f"{' '.join(str(e).split())[:100]})") from None
    if np.issubdtype(arr.dtype, np.inexact):
        bad, first = _count_nonfinite(arr)
        if bad:
            problems.add(where, f"{bad} non-finite value(s) (NaN or inf), first at index {first}")
    problems.raise_if_any()
    return arr


def _count_nonfinite(arr: np.ndarray) -> tuple[int, tuple[int, ...] | None]:
    """Non-finite count and first index, reading `arr` in blocks of rows along axis 0."""
    if arr.ndim == 0:
        return (0, None) if np.isfinite(arr) else (1, ())
    rows = max(1, _CHECK_BYTES // max(1, arr[0].nbytes))
    bad, first = 0, None
    for start in range(0, arr.shape[0], rows):
        finite = np.isfinite(arr[start : start + rows])
        n_bad = finite.size - int(np.count_nonzero(finite))
        if n_bad and first is None:
            idx = np.argwhere(~finite)[0]
            first = (start + int(idx[0]),) + tuple(int(i) for i in idx[1:])
        bad += n_bad
    return bad, first



def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
