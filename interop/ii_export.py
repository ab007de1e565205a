"""Assemble the introspective-interp export of a run folder: data, config/af/*.yaml, README, summary.

Layout under OUT (the folders mirror an introspective-interp checkout, so `--to` may be one):

    config/af/af_context_ablation.yaml        Task 3 (hint_attribution)
    config/af/af_steering.yaml                Task 2 (act_patch)
    config/af/af_feature_descriptions.yaml    Task 1 (features_explain)
    data/af/context_ablation/{train,test}.jsonl   a folder `datasets.load_dataset` reads by split name
    data/af/steering/{train,test}.jsonl
    data/af/feature_descriptions/features/layer_<L>.pkl                 torch.float32 [dim, W]: column f = feature f
    data/af/feature_descriptions/explanations/by_<mode>/<split>_explanations.pkl
    README.md, export_summary.json

Every file is planned in memory first; if any of them exists already, nothing is written.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from interop import ii_configs, ii_markers, ii_rows
from records.errors import InputError
from records.jsonl import read_records, write_atomic
from records.schema import ContextAblationRecord, FeatureRecord, RunManifest, SteeringRecord

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
SPLIT_FILE = "{}.jsonl"  # our finished splits (JSON Lines)
STAGE_TASK = {"generate": "hint_attribution", "steer": "act_patch", "features": "features_explain"}
DATA_DIRS = {"hint_attribution": "data/af/context_ablation", "act_patch": "data/af/steering",
             "features_explain": "data/af/feature_descriptions"}
FEATURE_MODES = ("cluster", "feature")


@dataclass
class Plan:
    """Files to write (path relative to OUT -> bytes) and what the summary reports per task."""

    files: dict[str, bytes] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def find_tasks(run: Path) -> dict[str, Path]:
    """Task name -> records folder: `run` itself when it is one stage's output, else its subfolders."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run}: run folder not found")
    folders = [run] if (run / "manifest.json").is_file() else sorted(p for p in run.iterdir() if p.is_dir())
    found: dict[str, list[Path]] = {}
    for folder in folders:
        task = _task_of(folder)
        if task:
            found.setdefault(task, []).append(folder)
    problems = [f"{run}: {len(v)} {k} folders ({', '.join(p.name for p in v)}); export them one at a time "
                f"with --run <folder>" for k, v in found.items() if len(v) > 1]
    if problems:
        raise InputError(problems)
    if not found:
        raise InputError(f"{run}: no records of generate, steer or features (describe) found here or in its "
                         "subfolders (a records folder holds manifest.json with train/test splits)")
    return {k: v[0] for k, v in found.items()}


def _task_of(folder: Path) -> str | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        stage = msgspec.json.decode(path.read_bytes(), type=RunManifest).stage.split()[0]
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InputError(f"{path}: not a stage manifest: {e}") from None
    task = STAGE_TASK.get(stage)
    if task == "features_explain" and not any((folder / f"by_{m}").is_dir() for m in FEATURE_MODES):
        return None  # `features extract` only, or a by_<mode> folder itself: no feature records here
    return task


def read_split(folder: Path, split: str, record_type: type) -> list:
    path = folder / SPLIT_FILE.format(split)
    if not path.is_file():
        raise InputError(f"{path}: split not found")
    return read_records(path, record_type, strict=True)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def count_over_limit(task: str, split: str, rows: list[dict], tokenizer, slots_of, target_of) -> list[dict]:
    """Examples (row x question type) whose prompt with its answer exceeds the reference's limit; each is
    logged as a warning, since the reference drops them without a word."""
    over = []
    for row in rows:
        for q in ii_configs.PROMPTS[task]:
            n = ii_rows.prompt_length(tokenizer, ii_configs.messages(task, q), slots_of(row), target_of(row, q))
            if n > ii_rows.REFERENCE_TOKEN_LIMIT:
                over.append({"split": split, "sample_id": row["sample_id"], "question_type": q, "tokens": n})
                log.warning("%s %s sample %s %s: prompt is %d explainer tokens > %d; introspective-interp "
                            "skips this example", task, split, row["sample_id"], q, n, ii_rows.REFERENCE_TOKEN_LIMIT)
    return over


def plan_hint(folder: Path, tokenizer, plan: Plan) -> None:
    """Task 3 rows, one per record, per split."""
    chat = tokenizer.chat_template is not None
    info = {"records": folder.as_posix(), "over_token_limit": []}
    for split in SPLITS:
        records = read_split(folder, split, ContextAblationRecord)
        rows = [ii_rows.hint_row(r) for r in records]
        info[f"{split}_rows"] = len(rows)
        info[f"{split}_raw_changed_label_same"] = sum(r["output_changed"] and not r["changed_pred_bc_hint"]
                                                      for r in rows)
        info["over_token_limit"] += count_over_limit(
            "hint_attribution", split, rows, tokenizer, lambda row: {"user_prompt": row["hint_user_prompt"]},
            lambda row, q: ii_rows.hint_target(row, q, chat))
        plan.files[f"{DATA_DIRS['hint_attribution']}/{split}.jsonl"] = jsonl(rows)
    plan.summary["hint_attribution"] = info


def plan_act_patch(folder: Path, tokenizer, target_tokenizer, plan: Plan, chosen: dict[str, str]) -> None:
    """Task 2 rows with inline vectors; arms with differing per-layer alphas split into per-layer rows."""
    markers = {"begin_continuous": chosen["begin_continuous"], "end_continuous": chosen["end_continuous"],
               "feature": chosen["continuous_rep"]}
    info = {"records": folder.as_posix(), "over_token_limit": [], "split_records": 0}
    units: dict[str, np.ndarray] = {}

    def slots(row: dict) -> dict:
        token = target_tokenizer.convert_tokens_to_string([row["patch_position"]["orig_text_token"]])
        return {**markers, "layer": ", ".join(map(str, row["layer"])), "tokens": f"<{token}>",
                "input": tokenizer.convert_tokens_to_string(row["input_tokens"])}

    def target(row: dict, q: str) -> str:
        return ii_rows.act_patch_target(row, q, tokenizer.convert_tokens_to_string)

    for split in SPLITS:
        rows = []
        for r in read_split(folder, split, SteeringRecord):
            if r.direction_path not in units:
                path = folder / r.direction_path
                if not path.is_file():
                    raise InputError(f"{path}: steering direction not found (records name it as direction_path)")
                units[r.direction_path] = ii_rows.unit_direction(np.load(path, allow_pickle=False))
            ids = tokenizer(r.prompt_text, add_special_tokens=False)["input_ids"]
            made = ii_rows.act_patch_rows(r, units[r.direction_path], tokenizer.convert_ids_to_tokens(ids))
            info["split_records"] += len(made) > 1
            rows += made
        info[f"{split}_rows"] = len(rows)
        info["over_token_limit"] += count_over_limit("act_patch", split, rows, tokenizer, slots, target)
        plan.files[f"{DATA_DIRS['act_patch']}/{split}.jsonl"] = jsonl(rows)
    info["vector_dim"] = int(next(iter(units.values())).shape[0]) if units else 0
    plan.summary["act_patch"] = info


def plan_features(folder: Path, plan: Plan) -> None:
    """Task 1: one feature matrix per layer and, per split mode present, the split explanation pickles."""
    import torch

    vectors: dict[tuple[int, int], np.ndarray] = {}
    info: dict = {"records": folder.as_posix(), "modes": [], "representations": []}
    for mode in FEATURE_MODES:
        sub = folder / f"by_{mode}"
        if not (sub / SPLIT_FILE.format("train")).is_file():
            continue
        info["modes"].append(mode)
        arrays: dict[str, np.ndarray] = {}
        for split in SPLITS:
            records = read_split(sub, split, FeatureRecord)
            for r in records:
                if r.representation not in info["representations"]:
                    info["representations"].append(r.representation)
                if r.vectors_path not in arrays:
                    arrays[r.vectors_path] = np.load(sub / r.vectors_path, mmap_mode="r", allow_pickle=False)
                vec = np.array(arrays[r.vectors_path][r.row], dtype=np.float32)  # a copy: the file is mmapped
                seen = vectors.setdefault((r.layer, r.feature_idx), vec)
                if not np.array_equal(seen, vec):
                    raise InputError(f"{sub}: feature {r.feature_idx} at layer {r.layer} has a different vector "
                                     "than in the other split mode; export one mode with --run <its folder>")
            pairs = [((int(r.layer), int(r.feature_idx)), ii_rows.feature_label(r.description))
                     for r in sorted(records, key=lambda r: r.row)]
            info[f"{mode}_{split}_features"] = len(pairs)
            plan.files[f"{DATA_DIRS['features_explain']}/explanations/by_{mode}/{split}_explanations.pkl"] = \
                pickle.dumps(pairs, protocol=4)
    if not info["modes"]:
        raise InputError(f"{folder}: no by_cluster/ or by_feature/ feature records")
    layers = sorted({layer for layer, _ in vectors})
    dim = len(next(iter(vectors.values())))
    for layer in layers:
        width = 1 + max(f for (vec_layer, f) in vectors if vec_layer == layer)
        matrix = torch.zeros(dim, width, dtype=torch.float32)  # [dim, W]; features not selected stay zero
        for (vec_layer, f), vec in vectors.items():
            if vec_layer == layer:
                matrix[:, f] = torch.from_numpy(vec)
        buf = io.BytesIO()
        pickle.dump(matrix, buf, protocol=4)
        plan.files[f"{DATA_DIRS['features_explain']}/features/layer_{layer}.pkl"] = buf.getvalue()
    info.update(layers=layers, vector_dim=dim)
    plan.summary["features_explain"] = info


def plan_configs(out: Path, plan: Plan, explainer: str, target: str, markers: dict[str, str], how: str) -> list[Path]:
    """config/af/<stem>.yaml for each exported task; returns their absolute paths."""
    written = []
    for task, info in plan.summary.items():
        data_dir = (out / DATA_DIRS[task]).as_posix()
        if task == "hint_attribution":
            data = {"dataset": ["hint"], "hint_path": data_dir}
            n_test = info["test_rows"] * len(ii_configs.PROMPTS[task])
        elif task == "act_patch":
            data = {"dataset": ["af_steering"], "intervention_path": data_dir}
            n_test = info["test_rows"] * len(ii_configs.PROMPTS[task])
        else:
            mode = info["modes"][0]
            data = {"dataset": ["sae_explanations"], "explanation_dir": data_dir, "sae_save_path": "features",
                    "split_explanations_data": f"explanations/by_{mode}/{{split}}_explanations.pkl",
                    "layers": info["layers"]}
            n_test = info[f"{mode}_test_features"]
        config = ii_configs.train_config(task, data, explainer, target, out / "checkpoints", n_test, markers)
        rel = f"config/af/{ii_configs.STEMS[task]}.yaml"
        plan.files[rel] = ii_configs.dump_yaml(config, f"introspective-interp config written by af-introspect export "
                                                       f"({task}); commands: {out / 'README.md'}\n"
                                                       "continuous_tokens: picked from the explainer tokenizer "
                                                       f"({how})")
        written.append(out / rel)
    return written


def summary_lines(summary: dict) -> list[str]:
    lines = []
    for task, info in summary["tasks"].items():
        if task == "features_explain":
            splits = ", ".join(f"by_{m}: {info[f'{m}_train_features']} train / {info[f'{m}_test_features']} test"
                               for m in info["modes"])
            lines.append(f"{task}: {splits} features; layers {info['layers']}, vectors {info['vector_dim']}-wide "
                         f"({', '.join(info['representations'])})")
            if "activation_profile" in info["representations"]:
                lines.append(f"{task}: NOTE the reference feeds a feature vector in as the target model's hidden "
                             "state (straight, or through a per-layer projection sized by the target's hidden size "
                             "and layer count): activation profiles only fit a target whose hidden size is "
                             f"{info['vector_dim']}; export decoder_direction vectors (features --decoder) to train "
                             "Task 1 there")
            continue
        extra = (f"; {info['train_raw_changed_label_same'] + info['test_raw_changed_label_same']} rows with raw "
                 "outputs changed but the label the same" if task == "hint_attribution"
                 else f"; {info['split_records']} records split into one row per layer (their arm's layers got "
                 f"different multipliers); vectors {info['vector_dim']}-wide")
        lines.append(f"{task}: {info['train_rows']} train / {info['test_rows']} test rows{extra}; "
                     f"{len(info['over_token_limit'])} examples over {ii_rows.REFERENCE_TOKEN_LIMIT} tokens "
                     "(the reference skips them)")
    marks = summary["continuous_tokens"]
    return lines + [f"token counts: {summary['tokenizer']}",
                    f"continuous tokens (begin, rep, end): {marks['begin_continuous']} {marks['continuous_rep']} "
                    f"{marks['end_continuous']}, from the explainer tokenizer: {marks['chosen_by']}"]


def export(run: Path, out: Path, tokenizer=None, target_tokenizer=None, explainer: str = ii_configs.DEFAULT_EXPLAINER,
           target: str = "", tokenizer_name: str = "") -> dict:
    """Plan every file for the tasks found in `run`, refuse if any exists under `out`, then write them.

    `tokenizer`: the explainer's (token counts, Task 2 input tokens); `target_tokenizer`: the target
    model's (Task 2 patched-token text). Returns the summary (also written as export_summary.json).
    """
    out = Path(out).expanduser().resolve()
    tasks = find_tasks(run)
    if tokenizer is None:
        raise InputError("the export needs the explainer's tokenizer: its continuous-token markers come from it")
    markers, how = ii_markers.continuous_markers(tokenizer)
    plan = Plan()
    if "hint_attribution" in tasks:
        plan_hint(tasks["hint_attribution"], tokenizer, plan)
    if "act_patch" in tasks:
        plan_act_patch(tasks["act_patch"], tokenizer, target_tokenizer, plan, markers)
    if "features_explain" in tasks:
        plan_features(tasks["features_explain"], plan)
    configs = plan_configs(out, plan, explainer, target, markers, how)
    summary = {"run": str(Path(run).resolve()), "explainer": explainer, "target": target,
               "tokenizer": tokenizer_name, "token_limit": ii_rows.REFERENCE_TOKEN_LIMIT,
               "continuous_tokens": {**markers, "chosen_by": how},
               "tasks": plan.summary, "configs": [str(c) for c in configs]}
    lines = summary_lines(summary)
    summary["summary"] = lines
    plan.files["README.md"] = ii_configs.readme(out, configs, lines)
    plan.files["export_summary.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    existing = [str(out / rel) for rel in plan.files if (out / rel).exists()]
    if existing:
        raise InputError([f"{p}: exists; the export never overwrites (choose another --to or remove it)"
                          for p in existing])
    for rel, data in plan.files.items():
        write_atomic(out / rel, data)
    return summary


def recorded_target(tasks: dict[str, Path]) -> str:
    """The model the Task 3 or Task 2 records were made with (the target the explainer explains), or ""."""
    for task, record_type in (("hint_attribution", ContextAblationRecord), ("act_patch", SteeringRecord)):
        if task in tasks:
            records = read_split(tasks[task], "train", record_type)
            if records:
                return records[0].engine.model
    return ""
