"""The .npy loaders (records/arrays.py): memory-mapped, checked in blocks, one case per bad array."""

from __future__ import annotations

import operator
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from asset_files import only_problem, problems_of

from records import arrays
from records.arrays import load_array, npy_header
from records.errors import InputError

# --- load_array --------------------------------------------------------------------------------------


def test_loads_synthetic_cache_as_memmap(synthetic):
    out, _ = synthetic
    arr = load_array(out / "train_activations.npy", expect_shape=(None, 16384))
    assert isinstance(arr, np.memmap) and Path(arr.filename) == out / "train_activations.npy"
    assert arr.shape == (200, 16384) and arr.dtype == np.float32
    assert not arr.flags.writeable  # read-only map: a stage cannot corrupt the user's cache
    assert isinstance(load_array(out / "train_activations.npy", mmap=False), np.ndarray)


def test_finite_check_reads_in_blocks_not_a_full_copy(tmp_path, monkeypatch):
    path = tmp_path / "big.npy"
    np.save(path, np.ones((64, 65536), np.float32))  # 16 MiB
    monkeypatch.setattr(arrays, "_CHECK_BYTES", 2**20)
    tracemalloc.start()
    try:
        arr = load_array(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(arr, np.memmap)
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB while checking a 16 MiB memmap"


# --- one case per bad array: the file (None: absent; bytes: written as is; an array: np.save'd), load_array's
# arguments, its one-line problem with `{path}` for the file's path, how the line must match it
BAD_ARRAYS = [
    pytest.param(None, {}, "{path}: file not found", operator.eq, id="missing"),
    pytest.param(b"hello, I am text", {}, "{path}: not a .npy file: the magic string is not correct", str.startswith,
                 id="not-npy"),
    pytest.param(np.zeros(8, np.float32), {"expect_ndim": 2}, "{path}: expected 2-D array, got 1-D with shape (8,)",
                 operator.eq, id="wrong-ndim"),
    pytest.param(np.zeros((3, 8), np.float32), {"expect_shape": (None, 16384)},
                 "{path}: expected shape (any, 16384), got (3, 8)", operator.eq, id="wrong-shape"),
    pytest.param(np.zeros((0, 8), np.float32), {}, "{path}: array is empty (shape (0, 8))", operator.eq,
                 id="zero-size"),
]


@pytest.mark.parametrize("content, kwargs, expected, compare", BAD_ARRAYS)
def test_bad_array_is_one_line(tmp_path, content, kwargs, expected, compare):
    path = tmp_path / "x.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    with pytest.raises(InputError) as e:
        load_array(path, **kwargs)
    assert compare(only_problem(e), expected.replace("{path}", str(path)))


def test_array_npz_gets_a_hint(tmp_path):
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(3))
    with pytest.raises(InputError) as e:
        load_array(path)
    assert only_problem(e).startswith(f"{path}: not a .npy file (an .npz archive: save each array with np.save)")


def test_array_wrong_dtype(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros(4, np.float64))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: expected dtype float32, got float64"
    assert load_array(tmp_path / "x.npy", dtype=None).dtype == np.float64


def test_array_shape_and_dtype_problems_together(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy", expect_shape=(2, 3))
    assert len(problems_of(e)) == 2


def test_array_nan(tmp_path):
    data = np.zeros((4, 5), np.float32)
    data[2, 3] = np.nan
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e) == f"{tmp_path / 'x.npy'}: 1 non-finite value(s) (NaN or inf), first at index (2, 3)"


def test_array_inf_across_blocks(tmp_path, monkeypatch):
    data = np.zeros((10, 4), np.float32)
    data[1, 0], data[7, 2] = np.inf, -np.inf
    np.save(tmp_path / "x.npy", data)
    monkeypatch.setattr(arrays, "_CHECK_BYTES", 32)  # two rows per block
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert only_problem(e).endswith("2 non-finite value(s) (NaN or inf), first at index (1, 0)")


def test_array_of_objects(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as e:
        load_array(tmp_path / "x.npy")
    assert f"{tmp_path / 'x.npy'}: holds Python objects, not numbers" in problems_of(e)


def test_npy_header_reads_shape_without_loading(synthetic):
    out, truth = synthetic
    assert npy_header(out / "af_intent_direction.npy") == ((truth["hidden"],), np.dtype(np.float32))
