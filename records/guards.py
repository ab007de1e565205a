"""Guards of the user's data: no stage writes into a source folder, over a source file, or into a path that
is a file where a folder is meant."""

from __future__ import annotations

from pathlib import Path

from records.errors import InputError, Problems


def check_output_dir(out_dir: str | Path, source_dirs: list[str | Path]) -> Path:
    """Refuse an output folder equal to or inside a source data folder, or one holding a source file (the
    input scenario file, say: a stage's own files could overwrite it); return it resolved.

    Symlinks are resolved on both sides, so a link pointing into the data cannot slip past. A source given
    as a file guards itself only: outputs beside it are fine.
    """
    out = Path(out_dir).expanduser().resolve()
    problems = Problems()
    if out.exists() and not out.is_dir():
        problems.add(str(out_dir), "output folder is a file; choose a folder")
    for src in source_dirs:
        src_path = Path(src).expanduser().resolve()
        if src_path.is_file():
            if out in src_path.parents:
                problems.add(str(out_dir), f"output folder resolves to {out}, which holds the input file {src_path}; "
                                           "choose an output folder that does not contain the inputs")
            continue
        if out == src_path or src_path in out.parents:
            problems.add(
                str(out_dir),
                f"output folder resolves to {out}, inside source data folder {src_path}; "
                "choose an output folder outside the inputs so they are never overwritten",
            )
    problems.raise_if_any()
    return out


def check_output_file(out_file: str | Path, sources: list[str | Path]) -> Path:
    """Refuse an output file that is a source file or lies inside a source folder (the source guard of
    check_output_dir, for writers of one file); return it resolved."""
    out = Path(out_file).expanduser().resolve()
    if out.is_dir():
        raise InputError(f"{out_file}: is a folder; give the path of a file to write")
    for src in sources:
        src_path = Path(src).expanduser().resolve()
        if out == src_path or src_path in out.parents:
            what = "a source data file" if out == src_path else f"inside source data folder {src_path}"
            raise InputError(f"{out_file}: resolves to {out}, {what}; write it outside the inputs so they are "
                             "never overwritten")
    return out

