"""Output guards (records/guards.py): no stage writes into, or over, the user's inputs."""

from __future__ import annotations

import pytest
from asset_files import only_problem, write_json

from records.errors import InputError
from records.guards import check_output_dir

# --- output folder guard -----------------------------------------------------------------------------


def test_output_dir_outside_sources_is_accepted(tmp_path):
    (tmp_path / "data").mkdir()
    assert check_output_dir(tmp_path / "runs" / "a", [tmp_path / "data"]) == (tmp_path / "runs" / "a").resolve()


def test_output_dir_equal_to_source(tmp_path):
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path, [tmp_path])
    assert "inside source data folder" in only_problem(e)


def test_output_dir_nested_in_source(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "data" / "out" / "deeper", [tmp_path / "data"])
    assert only_problem(e).startswith(f"{tmp_path / 'data' / 'out' / 'deeper'}: output folder resolves to")


def test_output_dir_symlink_into_source(tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data" / "sub")
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "link" / "out", [tmp_path / "data"])
    assert f"inside source data folder {(tmp_path / 'data').resolve()}" in only_problem(e)


def test_output_dir_inside_symlinked_source(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "real")
    with pytest.raises(InputError):
        check_output_dir(tmp_path / "real" / "out", [tmp_path / "data"])


def test_an_input_file_guards_itself_not_its_folder(tmp_path):
    """gold.json in a working folder: an output beside it is fine, the folder that holds it is not."""
    gold = write_json(tmp_path / "gold.json", [])
    assert check_output_dir(tmp_path / "out", [gold]) == (tmp_path / "out").resolve()
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path, [gold])
    assert "holds the input file" in only_problem(e)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(InputError) as e:
        check_output_dir(tmp_path / "out", [tmp_path / "data"])
    assert only_problem(e) == f"{tmp_path / 'out'}: output folder is a file; choose a folder"
