"""Resolve a model argument to a local folder: the toy organism, a local path, or a cached hub id."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from records.errors import InputError
from records.provenance import model_weights_id

TOY = "toy"
TOY_TWIN = "toy-twin"  # the toy organism's twin: same triggers, another secret assignment (cross control)
# Builds (or finds) a toy organism ("toy" or "toy-twin") and returns its folder. The organism is a test and
# demo fixture that production code never imports: the CLI edge, the demo and the tests hand its builder in.
_toy_builder: Callable[[str], str] | None = None


def is_toy(name: str) -> bool:
    """Whether `name` names the toy organism or its twin (resolved to a built folder, not a hub id)."""
    return name in (TOY, TOY_TWIN)


def provide_toy_organism(builder: Callable[[str], str] | None) -> None:
    """Let `resolve_model("toy" | "toy-twin")` build the toy organism with `builder` (None: refuse them)."""
    global _toy_builder
    _toy_builder = builder


def toy_builder() -> Callable[[str], str] | None:
    """The builder `provide_toy_organism` was given (for a spawned worker to be given it too)."""
    return _toy_builder


def resolve_model(name: str, what: str = "model") -> str:
    """Local folder for `name`: "toy" / "toy-twin" build or reuse the toy organism / its twin; a hub id
    must be in the HF cache.

    Nothing is downloaded here: `preflight --fetch-models` is the one place that fetches weights.
    """
    if is_toy(name):
        if _toy_builder is None:
            raise InputError(f"{what} {name}: the toy organism is available through the af-introspect command "
                             "and the tests only; pass a model folder or hub id")
        return str(_toy_builder(name))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"{what} {name}: folder has no config.json; not a transformers model folder")
        return str(path)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, local_files_only=True)
        except Exception:
            raise InputError(f"{what} {name}: not a local folder and not in the local HF cache; "
                             "run `af-introspect preflight --fetch-models` or pass a local path") from None
    raise InputError(f"{what} {name}: path does not exist")


def model_identity(name: str) -> str:
    """What tells two models apart: the weights' fingerprint of the folder `name` resolves to
    (records/provenance.py), or `name` as given when it is not at hand here."""
    try:
        return model_weights_id(resolve_model(name))
    except InputError:
        return name


def same_model(a: str, b: str) -> bool:
    """Whether two model arguments (ids, folders, "toy") name the same weights."""
    return a == b or model_identity(a) == model_identity(b)


def model_layers(name: str) -> int | None:
    """The model's decoder layer count (num_hidden_layers of its config.json, or of its text_config), read
    without loading weights or the network; None when the folder or that field is not there."""
    try:
        config = json.loads((Path(resolve_model(name)) / "config.json").read_text())
    except (InputError, OSError, ValueError):
        return None
    for part in (config, config.get("text_config") or {}):
        if isinstance(part.get("num_hidden_layers"), int):
            return part["num_hidden_layers"]
    return None
