"""Resolve a model argument to a local folder: the toy organism, a local path, or a cached hub id."""

from __future__ import annotations

from pathlib import Path

from records.errors import InputError

TOY = "toy"
TOY_TWIN = "toy-twin"  # the toy organism's twin: same triggers, another secret assignment (cross control)


def resolve_model(name: str, what: str = "model") -> str:
    """Local folder for `name`: "toy" / "toy-twin" build or reuse the toy organism / its twin; a hub id
    must be in the HF cache.

    Nothing is downloaded here: `preflight --fetch-models` is the one place that fetches weights.
    """
    if name in (TOY, TOY_TWIN):
        from organism.build import OrganismConfig, build_organism, default_cache_root

        return str(build_organism(OrganismConfig(assignment_seed=int(name == TOY_TWIN)), default_cache_root()))
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
