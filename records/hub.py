"""Hugging Face datasets as scenario inputs, offline only: `hf:NAME[:split]` names a dataset folder, or a
hub dataset (vincentoh/af-detection-benchmark, vincentoh/af-model-organisms) already on this machine, in
the hub cache (`hf download --repo-type dataset NAME`) or in the datasets cache (an earlier
`datasets.load_dataset(NAME)`). Nothing is ever downloaded here: a dataset that is not at hand is one
error line that says how to make it so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from records.errors import InputError
from records.jsonfile import one_line

HF_PREFIX = "hf:"
DEFAULT_SPLIT = "train"
SCENARIO_COLUMNS = ("text", "label")  # as in the scenario JSON files; `source` / `category` optional


def is_hf_input(spec: str | Path) -> bool:
    """Whether a scenario input names a datasets folder or hub dataset (`hf:NAME[:split]`), not a file."""
    return str(spec).startswith(HF_PREFIX)


def parse_hf_input(spec: str | Path) -> tuple[str, str]:
    """(dataset name or folder, split) of `hf:NAME[:split]`; the split defaults to "train"."""
    name, _, split = str(spec)[len(HF_PREFIX):].partition(":")
    if not name:
        raise InputError(f"{spec}: give a dataset after hf:, e.g. hf:vincentoh/af-detection-benchmark[:train]")
    return name, split or DEFAULT_SPLIT


def local_source(spec: str | Path) -> Path | None:
    """The folder or file an input reads from on this machine, for the guards that keep outputs out of
    the inputs: a dataset folder for `hf:FOLDER`, None for a hub dataset (it lives in a cache)."""
    if not is_hf_input(spec):
        return Path(spec)
    folder = Path(parse_hf_input(spec)[0]).expanduser()
    return folder if folder.exists() else None


def hf_rows(spec: str | Path) -> tuple[str, list[tuple[str, object]]]:
    """(the dataset's name for messages, [(`row <i>`, row)]) of `hf:NAME[:split]`, its columns checked."""
    name, split = parse_hf_input(spec)
    ds = load_hf_dataset(name, split)
    missing = [c for c in SCENARIO_COLUMNS if c not in ds.column_names]
    if missing:
        raise InputError(f"{name} (split {split!r}): no {' or '.join(f'`{c}`' for c in missing)} column (columns: "
                         f"{', '.join(ds.column_names)}); scenario inputs need `text` and `label`")
    # a column a row does not fill reads as None: the field is missing, as in a JSON item without it
    return name, [(f"row {i}", {k: v for k, v in row.items() if v is not None}) for i, row in enumerate(ds)]


def load_hf_dataset(name: str, split: str, cache_dir: str | Path | None = None):
    """`datasets.load_dataset` of a folder or a hub dataset already on this machine, never downloading.

    Tried in order: `name` as a local folder; the hub cache's snapshot of the dataset repository; the
    datasets cache (`cache_dir`, default HF_DATASETS_CACHE). Failures are one-line InputErrors.
    """
    import datasets  # slow import; only the stages that read hub datasets pay for it

    folder = Path(name).expanduser()
    if not folder.exists() and name.count("/") == 1:
        folder = _hub_snapshot(name) or folder
    cache = None if cache_dir is None else str(cache_dir)
    try:
        with _datasets_offline():
            return datasets.load_dataset(str(folder) if folder.exists() else name, split=split, cache_dir=cache)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
        # a local folder never needs the hub: its errors are about the folder
        if not folder.exists() and ("offline" in str(e).lower() or "not cached" in str(e).lower()
                                    or isinstance(e, ConnectionError)):
            raise InputError(
                f"{name}: not on this machine (no such folder, not in the HF hub or datasets cache), and inputs "
                f"are never downloaded here; fetch it once with network access (`hf download --repo-type dataset "
                f"{name}`), or give a local folder: hf:/path/to/folder") from None
        raise InputError(f"{name} (split {split!r}): could not load: {type(e).__name__}: {one_line(e)}") from None


def _hub_snapshot(repo: str) -> Path | None:
    """The hub cache's newest snapshot folder of dataset `repo`, looked up without the network, or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or a name that is no repo id
        return None


@contextlib.contextmanager
def _datasets_offline():
    """`datasets` reads its offline flag from datasets.config at call time: on for this load only, so a
    dataset missing from the cache is refused instead of fetched, whatever HF_HUB_OFFLINE says."""
    from datasets import config

    before = config.HF_HUB_OFFLINE
    config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        config.HF_HUB_OFFLINE = before
