"""Task 2: the steering grid, from scenarios to ActPatch-style records.

The stage, top to bottom (`main`):
  check the config (steering/config.py's types, `check_config`) -> split the scenarios (whole groups,
  training first) -> resolve the model, the file direction and the run's directions (steering/direction.py),
  arms (steering/grid.py) and every prompt rendered in each configured context (Task 3's rendering) into one
  `SteerPlan` -> generate every planned batch, each batch's completions fsynced to `_work/completions.jsonl`
  as it finishes (steering/batches.py, engine: steering/engine.py) -> label behaviours -> records ->
  `train.jsonl` / `test.jsonl` (the test scenarios: whole held-out groups, about `test_size`, and every row
  of a `test_directions` direction), `noise_control.jsonl`, `summary.json` (steering/science.py),
  `heatmap.png` (steering/plots.py), a PROGRESS.md entry.

A killed run resumes from the shard: the batch plan depends only on the inputs and the config, so the
batches still to run are exactly those of a clean run, and the final files are rebuilt from the shard.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import NamedTuple

import msgspec

from lm import agreement, backends, chat, coherence
from lm import judge as lm_judge
from lm.judge_config import for_stage
from lm.labels import DEGENERATE
from lm.models import is_toy
from records.config import config_hash, revalidate
from records.errors import InputError
from records.jsonl import write_atomic, write_json_atomic, write_records_atomic
from records.lock import output_lock
from records.parallel import check_world, read_all_shards
from records.resume import check_resume_key, model_fingerprint, prompt_digest, require_completions
from records.schema import (
    DirectionInfo,
    DirectionSummary,
    EngineInfo,
    PatchPosition,
    RawCompletion,
    ResidualNorm,
    Scenario,
    SteeringRecord,
    SteeringSummary,
)
from records.split import train_first_order
from steering import batches, grid, plots, science
from steering import direction as dirmod
from steering.config import SteerConfig

RESUMES_WITH = ("model or its weights, direction, grid, scale and the prompts its norms come from, positions, "
                "length or batch size, the scenarios and labels a derived direction comes from, or the train/test "
                "split that labels and groups decide")


def check_config(cfg: SteerConfig) -> None:
    """The config's type bounds (also for a config built in Python, which msgspec does not check), then what a
    type cannot say: the held-out directions must be directions of this run and leave some to train on, and
    no context may be listed twice."""
    revalidate(cfg, "steer config")
    names = [n for n, _ in dirmod.direction_names(cfg)]
    for name in cfg.test_directions:
        if name not in names:
            raise InputError(f"test_directions: {name!r} is not a direction of this run ({', '.join(names)})")
    if set(names) <= set(cfg.test_directions):
        raise InputError(f"test_directions {cfg.test_directions}: every direction would be held out; no training "
                         "record would be left")
    if len(set(cfg.contexts)) != len(cfg.contexts):
        raise InputError(f"contexts {cfg.contexts}: a context is listed twice (every record would be written twice)")


def resume_key(plan: grid.SteerPlan, tokenizer) -> str:
    """What changes every row: a resumed run with another value is refused. The residual norms scale every
    arm, so the prompts they are measured on count too, and the derived direction's prompts, and which of
    its scenarios are AF-labelled where the derivation reads labels. (What changes one prompt is in its
    rows' keys.)"""
    cfg, job = plan.cfg, plan.job
    derive_sample = ([chat.render(tokenizer, cfg.prompts.system(c), s.text, job.rendering).token_ids
                      for s in job.scenarios for c in ("monitored", "unmonitored")] if job else [])
    # a relabelled training scenario moves a derived direction that reads labels (every derived row changes)
    reads_labels = job is not None and (cfg.derive.contrast == "label" or cfg.derive.af_only)
    derive_sides = [s.label in plan.af_labels for s in job.scenarios] if reads_labels else []
    controls = {"directions": dirmod.direction_names(cfg), "seed": cfg.seed, "alpha_zero": cfg.alpha_zero,
                "derive": [cfg.derive.contrast, cfg.derive.context, cfg.derive.positions, cfg.derive.af_only,
                           [prompt_digest(p) for p in derive_sample]]
                + ([derive_sides] if derive_sides else [])}
    extra = {"controls": controls} if cfg.derived or cfg.negate or cfg.random_directions or cfg.alpha_zero else {}
    if cfg.noise_floor:  # its rows join the batches: every row's batch changes
        extra["noise_floor"] = True
    norm_sample = grid.norm_sample(cfg, plan.groups) if cfg.scale == "residual_norm" else []
    return config_hash({**extra, "model": plan.model_dir, "weights": model_fingerprint(plan.model_dir),
                        "direction": plan.dir_info["id"], "layers": cfg.layers, "together": cfg.layers_together,
                        "alphas": cfg.alphas, "scale": cfg.scale, "positions": cfg.positions,
                        "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size,
                        "dtype": backends.resolve_dtype(cfg.dtype), "engine": cfg.engine,
                        "norm_sample": [prompt_digest(ids) for ids in norm_sample]})


def resolve(cfg: SteerConfig, scenarios: list[Scenario], n_train: int, af_labels: list[str],
            direction_path: str, work: Path) -> tuple[grid.SteerPlan, object]:
    """The run's plan and the model's tokenizer; every check that needs the model's config (not its weights)
    refuses here, before anything is written."""
    from transformers import AutoTokenizer

    from lm.models import resolve_model
    from steering.direction import load_direction

    model_dir = resolve_model(cfg.model)
    depth, hidden = grid.model_depth(model_dir)
    grid.check_depth(cfg.layers, depth, cfg.model)
    unit, dir_info = load_direction(direction_path, hidden, cfg.model)
    arms = grid.grid_arms(cfg)
    fixed = dirmod.fixed_directions(cfg, unit, dir_info)
    judge_cfg = for_stage(cfg.judge, dtype=cfg.dtype, seed=cfg.seed)
    self_judged = cfg.judge.labeller != "rules" and lm_judge.check_judge(judge_cfg, model_dir)

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    rendering = chat.detect_chat_rendering(tokenizer, cfg.model)
    rendered = {(i, c): chat.render(tokenizer, cfg.prompts.system(c), s.text, rendering)
                for i, s in enumerate(scenarios) for c in cfg.contexts}
    job = dirmod.DeriveJob(scenarios[:n_train], list(af_labels), rendering) if cfg.derived else None
    plan = grid.SteerPlan(cfg, model_dir, scenarios, n_train, list(af_labels), rendered, arms, unit, dir_info, fixed,
                          job, work, rendering, judge_cfg, lm_judge.labeller_name(cfg.judge.labeller, self_judged))
    return plan, tokenizer


class Generated(NamedTuple):
    """What generation left for the records."""

    completions: dict[str, RawCompletion]  # by row key
    keys: list[str]  # the rows of this run's plan, in plan-group order (stale rows of an edited input left out)
    directions: list[dirmod.Direction]  # every direction of the run, in direction_names order
    norms: dict[int, ResidualNorm] | None
    engine: EngineInfo


def collect(plan: grid.SteerPlan, device_name: str) -> Generated:
    """The finished shards, the directions and residual norms they were generated with, and the engine."""
    import transformers

    cfg = plan.cfg
    directions = dirmod.sort_directions(cfg, plan.fixed + dirmod.derived_directions(cfg, plan.work))
    completions = {c.key: c for c in read_all_shards(plan.work, batches.SHARD_STEM, RawCompletion)}
    keys = [grid.row_key(i, c, a.name, prompt_digest(ids)) for i, c, ids in plan.groups for a in plan.arms
            if not grid.held_out_row(cfg, plan.n_train, i, a)]
    require_completions(keys, completions, "rows")
    engine = EngineInfo(backend="hf", model=plan.model_dir if is_toy(cfg.model) else cfg.model,
                        dtype=backends.resolve_dtype(cfg.dtype), max_tokens=cfg.max_new_tokens,
                        engine_version=f"transformers {transformers.__version__} ({cfg.engine} engine)",
                        chat_rendering=plan.rendering, device=device_name)
    return Generated(completions, keys, directions, batches.load_norms(plan.work), engine)


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def _patch_position(plan: grid.SteerPlan, tokenizer, prompt_ids: list[int], base_ids: list[int], eff: list[float],
                    arm: grid.Arm, d: dirmod.Direction) -> PatchPosition:
    """Where the steering starts (the last prompt token, or the first generated one) and, with
    inline_vectors, the vector added at each layer of the arm."""
    if plan.cfg.positions == "generated":
        pos = len(prompt_ids)
        tok = _tokens(tokenizer, base_ids[:1])[0] if base_ids else ""
    else:
        pos = len(prompt_ids) - 1
        tok = _tokens(tokenizer, prompt_ids[-1:])[0]
    vector, per_layer = None, None
    if plan.cfg.inline_vectors:
        per_layer = [[float(x) for x in (a * d.vectors[layer])] for a, layer in zip(eff, arm.layers)]
        vector = per_layer[0] if len(set(eff)) == 1 else None
    return PatchPosition(orig_pos=pos, orig_text_token=tok, counterfact_pos=pos, counterfact_text_token=tok,
                         intervention_vector=vector, intervention_vectors=per_layer)


def build_records(plan: grid.SteerPlan, gen: Generated, tokenizer, behaviour: dict[str, str]) -> list[SteeringRecord]:
    """One record per (scenario, context, steered arm), in input order, then context, then arm order; a
    held-out direction's arms on the training scenarios are not steered (grid.held_out_row).
    A steered output that differs from the baseline and fails the coherence check is `degenerate`."""
    cfg = plan.cfg
    by_name = {d.name: d for d in gen.directions}
    out = []
    for i, s in enumerate(plan.scenarios):
        for context in cfg.contexts:
            prompt = plan.rendered[(i, context)]
            digest = prompt_digest(prompt.token_ids)
            base = gen.completions[grid.row_key(i, context, grid.BASELINE, digest)]
            base_text = tokenizer.decode(base.token_ids, skip_special_tokens=True)
            base_beh = behaviour[base.key]
            for arm in plan.arms[1:]:
                if grid.held_out_row(cfg, plan.n_train, i, arm):
                    continue
                c = gen.completions[grid.row_key(i, context, arm.name, digest)]
                text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
                beh = behaviour[c.key]
                check = coherence.check(c.token_ids, text, c.median_loss, cfg.coherence)
                if check.degenerate and c.token_ids != base.token_ids:
                    beh = DEGENERATE
                else:  # an output the steering left as it was is not broken by it, whatever it looks like
                    check = msgspec.structs.replace(check, degenerate=False, reasons=[])
                d = by_name[arm.direction]
                eff = grid.effective_alphas(arm, cfg.scale, gen.norms)
                along = (f"{Path(plan.dir_info['path']).name if d.name == 'file' else d.name}"
                         f"{'' if d.name == 'file' else f' ({d.kind} direction)'}")
                out.append(SteeringRecord(
                    layer=list(arm.layers), input_tokens=_tokens(tokenizer, prompt.token_ids),
                    original_continuation=_tokens(tokenizer, base.token_ids),
                    ablated_continuation=_tokens(tokenizer, c.token_ids), is_different=base.token_ids != c.token_ids,
                    patch_position=_patch_position(plan, tokenizer, prompt.token_ids, base.token_ids, eff, arm, d),
                    counterfactual_text=(f"steered along {along} at layer(s) {', '.join(map(str, arm.layers))} with "
                                         f"alpha {arm.alpha:g} ({cfg.scale}), positions: {cfg.positions}"),
                    gt_original_target=base_beh, gt_counterfactual_target=beh,
                    sample_id=s.id, index=i, arm=arm.name, label=s.label, source=s.source, context=context,
                    alpha=arm.alpha, alpha_effective=eff, scale_mode=cfg.scale, position_policy=cfg.positions,
                    direction_id=d.ids[arm.layers[0]], direction_path=dirmod.direction_file(d, arm.layers[0]),
                    direction_norm=d.norms[arm.layers[0]],
                    input_token_ids=list(prompt.token_ids), prompt_text=prompt.text, baseline_output=base_text,
                    steered_output=text, baseline_behavior=base_beh, steered_behavior=beh,
                    behavior_changed=beh not in (base_beh, DEGENERATE), baseline_output_tokens=len(base.token_ids),
                    steered_output_tokens=len(c.token_ids), baseline_finish_reason=base.finish_reason,
                    steered_finish_reason=c.finish_reason, labeller=plan.labeller, engine=gen.engine,
                    direction_name=d.name, direction_kind=d.kind,
                    family=science.family(s.label, s.source, plan.af_labels), coherence=check))
    return out


def write_splits(plan: grid.SteerPlan, out: Path, records: list[SteeringRecord]) -> tuple[int, int]:
    """noise_control.jsonl (the alpha-0 rows, with the noise floor), train.jsonl and test.jsonl (the rows of
    the grid, split by scenario); returns the sizes of train and test."""
    noise_arms = {a.name for a in plan.arms if grid.control_only(plan.cfg, a)}
    if plan.cfg.noise_floor:
        write_records_atomic(out / "noise_control.jsonl", [r for r in records if r.alpha == 0.0])
    records = [r for r in records if r.arm not in noise_arms]
    train = [r for r in records if grid.in_training(r, plan.n_train)]
    write_records_atomic(out / "train.jsonl", train)
    write_records_atomic(out / "test.jsonl", [r for r in records if not grid.in_training(r, plan.n_train)])
    return len(train), len(records) - len(train)


def report_lines(plan: grid.SteerPlan, gen: Generated, summary: SteeringSummary) -> list[str]:
    """What the run prints and logs: the grid, the change-rate table, agreement, norms, wall, controls."""
    cfg, norms = plan.cfg, gen.norms
    n_noise = sum(grid.control_only(cfg, a) for a in plan.arms)
    norm_line = ("residual norms (mean over prompt tokens after BOS): " + ", ".join(
        f"L{k} {v.mean:.2f}" for k, v in sorted(norms.items()))) if norms else "scale raw: alpha x unit direction"
    noise = f" + {n_noise} alpha-0 noise-floor rows" if n_noise else ""
    lines = [f"{len(plan.scenarios)} scenarios x {len(cfg.contexts)} context(s) x {len(plan.arms) - 1 - n_noise} "
             f"arms + baseline{noise} ({cfg.engine} engine, {gen.engine.dtype}, {gen.engine.device}); behaviour "
             "change rate vs baseline:"]
    lines += science.format_table(summary) + ([agreement.format_agreement(summary.agreement)]
                                              if summary.agreement else [])
    lines += [norm_line, "wall: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.wall_seconds.items())]
    lines += ["per arm (change / degenerate / by family / specificity):", *science.table_lines(summary)]
    lines += science.control_lines(summary) + science.noise_lines(summary)
    return lines + [f"WARNING: {w}" for w in summary.warnings]


def main(cfg: SteerConfig, scenarios: list[Scenario], source_dirs: list[Path], direction_path: str,
         af_labels: list[str] = (), overwrite: bool = False) -> SteeringSummary:
    """Run the grid on already-validated scenarios; returns the summary. `overwrite`: replace a finished
    folder that has nothing to resume (kept aside until this run completes)."""
    from records.assets import check_output_dir, select_scenarios
    from records.progress import append_phase
    from records.provenance import check_finished_folder, drop_set_aside, make_manifest, set_aside

    t0 = time.perf_counter()
    check_config(cfg)
    scenarios = select_scenarios(scenarios, cfg.limit, cfg.test_size, cfg.input)
    # whole groups (the toy's trigger: group_pattern; else near-duplicate texts) on one side, training first
    order, n_train = train_first_order([s.text for s in scenarios], [s.label for s in scenarios],
                                       cfg.test_size, cfg.seed, cfg.group_pattern)
    scenarios = [scenarios[i] for i in order]
    out = Path(cfg.output_dir)
    check_output_dir(out, source_dirs)
    replacing = check_finished_folder(out, "steer", overwrite)  # refused before any model is touched
    plan, tokenizer = resolve(cfg, scenarios, n_train, af_labels, direction_path, out / "_work")
    check_world(cfg.data_parallel)
    with output_lock(out):  # one writer per output folder, from the first write on
        if replacing and check_finished_folder(out, "steer", overwrite):  # still finished, now under the lock
            set_aside(out)
        check_resume_key(plan.work, resume_key(plan, tokenizer), RESUMES_WITH)
        if not (plan.work / "direction.npy").exists():  # the records point at this copy, not at the user's file
            shutil.copyfile(direction_path, plan.work / "direction.npy")

        t_setup = time.perf_counter()
        engine_stats, device_name = batches.generate(plan)
        gen = collect(plan, device_name)
        t_gen = time.perf_counter()
        judged, agr = lm_judge.label_all(cfg.judge.labeller, [plan.rendered[_row(k)].text for k in gen.keys],
                                         [tokenizer.decode(gen.completions[k].token_ids, skip_special_tokens=True)
                                          for k in gen.keys], plan.judge)
        records = build_records(plan, gen, tokenizer, dict(zip(gen.keys, judged)))
        write_atomic(out / "direction.npy", (plan.work / "direction.npy").read_bytes())
        dirmod.save_directions(out, gen.directions)
        summary = science.summarise(records, cfg, plan.arms, gen.norms)
        n_train_records, n_test_records = write_splits(plan, out, records)
        summary.agreement = agr
        summary.wall_seconds = {"setup": t_setup - t0, "generation": t_gen - t_setup,
                                "finalise": time.perf_counter() - t_gen}
        summary.direction = DirectionInfo(path=plan.dir_info["path"], id=plan.dir_info["id"],
                                          norm=plan.dir_info["norm"])
        summary.engine_stats = engine_stats
        summary.directions = [DirectionSummary(d.name, d.kind, {str(k): v for k, v in d.ids.items()},
                                               {str(k): v for k, v in d.norms.items()}) for d in gen.directions]
        write_json_atomic(out / "summary.json", summary)
        inputs = {"scenarios": cfg.input, "direction": str(direction_path)}
        write_json_atomic(out / "manifest.json", make_manifest("steer", cfg, plan.model_dir, inputs))
        drop_set_aside(out)
        if cfg.heatmap:
            plots.save_heatmap(summary, out / "heatmap.png", f"{Path(cfg.model).name}: behaviour change vs baseline "
                                                              f"({', '.join(cfg.contexts)}, {cfg.positions})")
        lines = report_lines(plan, gen, summary)
        print("\n".join(lines))
        held = f", and every row of {', '.join(cfg.test_directions)}" if cfg.test_directions else ""
        append_phase(cfg.progress_log, "3", "Task 2 steering grid", "DONE",
                     done=[f"{n_train_records + n_test_records} steered records -> {out}/train.jsonl "
                           f"({n_train_records}) and test.jsonl ({n_test_records}: {len(scenarios) - n_train} "
                           f"scenarios of held-out groups"
                           f"{held}); heatmap {out}/heatmap.png"],
                     findings=lines, next_step="train the explainer on these records (af-introspect train)")
        return summary


def _row(key: str) -> tuple[int, str]:
    """(scenario index, context) of a row key (grid.row_key)."""
    index, context = key.split(":")[:2]
    return int(index), context
