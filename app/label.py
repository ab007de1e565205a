"""`af-introspect label`: label free-text responses, or relabel a finished Task 3 / Task 2 records folder.

  af-introspect label rows.jsonl --output labelled.jsonl --labeller both --judge-model PATH
      rows of {"prompt", "response"} (extra fields kept) -> the same rows with `label` (and `rule_label`,
      `judge_label` with both); prints the label distribution (and kappa with both).
  af-introspect label runs/task3 --output runs/task3_relabelled --labeller rules
      a records folder -> a NEW folder with the same records, only the label-derived fields recomputed
      from the raw outputs the records keep (no regeneration); the source is never written.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import msgspec

from lm import agreement
from lm import judge as lm_judge
from lm.judge_config import JudgeConfig, for_stage
from records.errors import InputError
from records.jsonl import read_records, write_json_atomic, write_records_atomic
from records.provenance import read_manifest
from records.schema import (
    ContextAblationRecord,
    ContextAblationSummary,
    ControlRecord,
    SteeringRecord,
    SteeringSummary,
    read_summary,
)

LABELLERS = {"rules": "rules", "judge": "lm_judge", "both": "both"}  # CLI name -> the records' name
SPLITS = ("train.jsonl", "test.jsonl")
CONTROLS = "noise_control.jsonl"
REWRITTEN = (*SPLITS, CONTROLS, "summary.json", "heatmap.png", "relabel.json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a JSONL of {prompt, response} rows, or a Task 3 / Task 2 records folder")
    p.add_argument("--output", required=True, help="labelled JSONL, or a NEW folder for relabelled records")
    p.add_argument("--labeller", choices=list(LABELLERS), default="rules",
                   help="both: the judge's labels are used, the rules' kept beside them, kappa printed")
    p.add_argument("--judge-model", help="judge/both: an instruct model's folder or hub id (required)")
    p.add_argument("--judge-backend", choices=["vllm", "hf"], default="vllm", help="engine for the judge")
    p.add_argument("--judge-dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    p.add_argument("--organism", help="the model that wrote the responses; a judge equal to it is refused "
                                      "(for a records folder: read from its manifest)")
    p.add_argument("--judge-allow-organism", action="store_true",
                   help="let the organism judge its own outputs (records then say self-judged)")
    p.add_argument("--paths-config", default="configs/paths.yaml",
                   help="asset locations (PathsConfig): --output may not be or lie inside any of them")


def main(args: argparse.Namespace) -> int:
    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if out.resolve() == src.resolve() or (src.is_dir() and out.resolve().is_relative_to(src.resolve())):
        raise InputError(f"--output {out}: must not be the input or inside it (relabelling never writes the source)")
    from records.assets import check_output_dir, check_output_file
    from records.paths import guarded_sources

    sources = guarded_sources(args.paths_config)  # the one source guard: the paths config's files and folders
    (check_output_dir if src.is_dir() else check_output_file)(out, sources)
    from records.requirements import require_packages

    require_packages("label", vllm=args.labeller != "rules" and args.judge_backend == "vllm")

    cfg = for_stage(JudgeConfig(labeller=LABELLERS[args.labeller], model=args.judge_model or "",
                                dtype=args.judge_dtype, allow_organism=args.judge_allow_organism),
                    backend=args.judge_backend)
    if src.is_dir():
        relabel_folder(src, out, LABELLERS[args.labeller], cfg, args.organism)
    else:
        label_rows(src, out, LABELLERS[args.labeller], cfg, args.organism)
    return 0


def _check(labeller: str, cfg: lm_judge.JudgeConfig, organism: str | None) -> str:
    """The `labeller` value records carry, after refusing a missing or self-grading judge."""
    self_judged = labeller != "rules" and lm_judge.check_judge(cfg, organism, field="--judge-model",
                                                                force="--judge-allow-organism")
    return lm_judge.labeller_name(labeller, self_judged)


def _print_result(labels: list[str], agr: dict | None) -> None:
    counts = Counter(labels)
    print(f"{len(labels)} responses: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)))
    if agr:
        print(agreement.format_agreement(agr))
        print("\n".join(agreement.format_confusion(agr)))


def label_rows(src: Path, out: Path, labeller: str, cfg: lm_judge.JudgeConfig, organism: str | None) -> list[dict]:
    """Label a JSONL of {prompt, response} rows; every other field of a row is kept as it was."""
    rows = []
    try:
        text = src.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{src}: not UTF-8 text (byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{src}: line {n}: not JSON ({e.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)):
            raise InputError(f"{src}: line {n}: needs string fields `prompt` and `response`")
        rows.append(row)
    if not rows:
        raise InputError(f"{src}: holds no rows to label (one JSON object a line, with `prompt` and `response`)")
    _check(labeller, cfg, organism)
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    labels, agr = lm_judge.label_all(labeller, prompts, responses, cfg)
    for row, label in zip(rows, labels):
        row["label"] = label
    if labeller == "both":
        from lm.labels import rule_label

        for row, label in zip(rows, labels):
            row["rule_label"], row["judge_label"] = rule_label(row["response"]), label
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    _print_result(labels, agr)
    return rows


def _kind(folder: Path):
    missing = [s for s in SPLITS if not (folder / s).is_file()]
    if missing:
        raise InputError(f"{folder}: no {' / '.join(missing)}; relabelling takes a finished records folder with "
                         "both splits")
    for split in SPLITS:
        path = folder / split
        if path.stat().st_size:
            try:
                first = json.loads(path.open(encoding="utf-8").readline())
            except (ValueError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: line 1: not a JSON record ({type(e).__name__})") from None
            return SteeringRecord if isinstance(first, dict) and "steered_output" in first else ContextAblationRecord
    raise InputError(f"{folder}: no train.jsonl / test.jsonl records to relabel")


def relabel_folder(src: Path, out: Path, labeller: str, cfg: lm_judge.JudgeConfig, organism: str | None) -> dict:
    """Relabel a finished records folder into a new one; returns the new summary."""
    if out.exists() and any(out.iterdir()):
        raise InputError(f"--output {out}: exists and is not empty; relabelled records go to a new folder")
    kind = _kind(src)
    manifest = read_manifest(src) or {}  # a torn manifest.json is refused in one line
    tag = _check(labeller, cfg, organism or manifest.get("model") or None)
    splits = {s: read_records(src / s, kind, strict=True) for s in SPLITS if (src / s).is_file()}
    if any(r.sampled is not None for rs in splits.values() for r in rs if isinstance(r, ContextAblationRecord)):
        raise InputError(f"{src}: sampled-mode records (k samples per context): relabelling them is not supported; "
                         "rerun generate with --labeller instead")
    # Task 2's noise floor rows are steering records: relabelled with the grid's
    control_type = ControlRecord if kind is ContextAblationRecord else SteeringRecord
    controls = read_records(src / CONTROLS, control_type, strict=True) if (src / CONTROLS).is_file() else []
    records = [r for rs in splits.values() for r in rs]
    requests, texts = _outputs(records, controls)
    labels, agr = lm_judge.label_all(labeller, requests, texts, cfg)
    new = iter(labels)
    relabelled = {s: [_relabel(r, new, tag) for r in rs] for s, rs in splits.items()}
    new_controls = [_relabel_control(c, new) if isinstance(c, ControlRecord) else _relabel(c, new, tag)
                    for c in controls]
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():  # everything else travels as it is; the work shard is not needed any more
        if item.name not in REWRITTEN and item.name != "_work":
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, out / item.name)
    for s, rs in relabelled.items():
        write_records_atomic(out / s, rs)
    if (src / CONTROLS).is_file():
        write_records_atomic(out / CONTROLS, new_controls)
    summary = _summary(src, out, kind, [r for rs in relabelled.values() for r in rs], new_controls, manifest)
    summary.agreement = agr
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "relabel.json", {"source": str(src), "labeller": tag, "judge_model": cfg.model})
    _print_result(labels, agr)
    return summary


def _outputs(records, controls) -> tuple[list[str], list[str]]:
    """(request, response) of every output, in the order _relabel and _relabel_control consume labels."""
    requests, texts = [], []
    for r in records:
        if isinstance(r, ContextAblationRecord):
            requests += [r.hint_user_prompt, r.original_user_prompt]
            texts += [r.monitored_output, r.unmonitored_output]
        else:
            requests += [r.prompt_text, r.prompt_text]
            texts += [r.baseline_output, r.steered_output]
    by_index = {r.index: r for r in records if isinstance(r, ContextAblationRecord)}
    for c in controls:
        if isinstance(c, SteeringRecord):  # a Task 2 noise-floor row
            requests += [c.prompt_text, c.prompt_text]
            texts += [c.baseline_output, c.steered_output]
            continue
        requests += [by_index[c.index].hint_user_prompt] * 2
        texts += [c.first_output, c.second_output]
    return requests, texts


def _relabel(r, labels, tag: str):
    a, b = next(labels), next(labels)
    if isinstance(r, ContextAblationRecord):
        return msgspec.structs.replace(r, random_hint_prediction=a, zeroshot_prediction=b, monitored_behavior=a,
                                       unmonitored_behavior=b, behavior_changed=a != b, labeller=tag)
    return msgspec.structs.replace(r, gt_original_target=a, gt_counterfactual_target=b, baseline_behavior=a,
                                   steered_behavior=b, behavior_changed=a != b, labeller=tag)


def _relabel_control(c: ControlRecord, labels) -> ControlRecord:
    a, b = next(labels), next(labels)
    return msgspec.structs.replace(c, first_behavior=a, second_behavior=b, behavior_changed=a != b)


def _summary(src: Path, out: Path, kind, records, controls, manifest: dict):
    """The source's summary with its label-derived fields recomputed (timings and the rest kept)."""
    has_old = (src / "summary.json").is_file()
    if kind is ContextAblationRecord:
        from generation.outputs import summarise

        new = summarise(records, controls)
        if not has_old:
            return new
        old = read_summary(src / "summary.json", ContextAblationSummary)
        return msgspec.structs.replace(new, wall_seconds=old.wall_seconds,
                                       output_tokens_per_second=old.output_tokens_per_second)
    from steering.config import SteerConfig
    from steering.grid import grid_arms
    from steering.plots import save_heatmap
    from steering.science import summarise

    if not manifest:
        raise InputError(f"{src}: no manifest.json; Task 2's summary needs the grid it was run with")
    cfg = msgspec.convert(manifest["config"], SteerConfig)
    old = read_summary(src / "summary.json", SteeringSummary) if has_old else None
    norms = {int(k): v for k, v in old.residual_norms.items()} if old and old.residual_norms else None
    in_splits = {r.arm for r in records}  # alpha_zero: alpha-0 rows are in the splits and in the controls
    summary = summarise(records + [c for c in controls if c.arm not in in_splits], cfg, grid_arms(cfg), norms)
    if old is not None:
        summary = msgspec.structs.replace(summary, wall_seconds=old.wall_seconds, direction=old.direction,
                                          engine_stats=old.engine_stats)
    if (src / "heatmap.png").is_file():
        save_heatmap(summary, out / "heatmap.png", f"{Path(cfg.model).name}: behaviour change vs baseline (relabelled)")
    return summary
