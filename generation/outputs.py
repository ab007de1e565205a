"""What the paired pass writes: one record per scenario, the noise-floor control records, the split into
train.jsonl / test.jsonl, summary.json with its printed form, the manifest and a PROGRESS.md entry."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from generation import sampled
from generation.config import GenerateConfig
from generation.pairs import CONTROLS, SIDES, control_indices
from lm import agreement
from lm.labels import degenerate_problem
from records.errors import StageFailure
from records.jsonl import write_json_atomic, write_records_atomic
from records.progress import append_phase
from records.provenance import drop_set_aside, make_manifest
from records.schema import (
    ContextAblationRecord,
    ContextAblationSummary,
    ControlRate,
    ControlRecord,
    EngineInfo,
    LabelChange,
    RawCompletion,
    Scenario,
)
from records.split import group_keys, grouped_split

LOW_CHANGE_WARNING = 0.20


def records_and_controls(cfg: GenerateConfig, scenarios: list[Scenario], rendered, keys: dict,
                         completions: dict[str, RawCompletion], behaviour: dict[str, str], engine: EngineInfo,
                         labeller: str) -> tuple[list[ContextAblationRecord], list[ControlRecord]]:
    """The records (sampled mode: each context's majority label, with every sample's label beside it) and the
    noise-floor controls (sampled mode: from each prompt's first sample)."""
    record_keys, samples = keys, {}
    if cfg.sampling:  # the records' own fields describe each context's majority label
        record_keys, samples = sampled.representatives(scenarios, keys, completions, behaviour, cfg.sampling.k,
                                                       SIDES)
    records = build_records(scenarios, rendered, record_keys, completions, behaviour, cfg, engine, labeller)
    for r in records if cfg.sampling else []:
        r.sampled = sampled.pair(cfg.sampling, samples[(r.index, "monitored")], samples[(r.index, "unmonitored")])
    control_keys = {ik: sampled.sample_key(key, 0) for ik, key in keys.items()} if cfg.sampling else keys
    return records, build_controls(scenarios, control_keys, completions, behaviour, cfg, engine)


def build_records(scenarios, rendered, keys: dict, completions: dict[str, RawCompletion], behaviour: dict[str, str],
                  cfg: GenerateConfig, engine: EngineInfo, labeller: str) -> list[ContextAblationRecord]:
    """One record per scenario, in input order."""
    out = []
    for i, s in enumerate(scenarios):
        m, u = completions[keys[(i, "monitored")]], completions[keys[(i, "unmonitored")]]
        bm, bu = behaviour[m.key], behaviour[u.key]
        rm, ru = rendered[i]["monitored"], rendered[i]["unmonitored"]
        out.append(ContextAblationRecord(
            ablation_prompt=ru.text, hint_prompt_full=rm.text, original_prompt_full=ru.text,
            system_prompt=cfg.prompts.monitored, hint=cfg.prompts.unmonitored,
            random_hint_prediction=bm, zeroshot_prediction=bu, changed_pred_bc_hint=m.token_ids != u.token_ids,
            hint_user_prompt=rm.user_turn, original_user_prompt=ru.user_turn, label=s.label,
            sample_id=s.id, index=i, source=s.source, monitored_output=m.text, unmonitored_output=u.text,
            monitored_behavior=bm, unmonitored_behavior=bu, behavior_changed=bm != bu,
            monitored_output_tokens=len(m.token_ids), unmonitored_output_tokens=len(u.token_ids),
            monitored_prompt_tokens=m.prompt_tokens, unmonitored_prompt_tokens=u.prompt_tokens,
            monitored_finish_reason=m.finish_reason, unmonitored_finish_reason=u.finish_reason,
            labeller=labeller, engine=engine, output_changed=m.token_ids != u.token_ids))
    return out


def build_controls(scenarios, keys, completions, behaviour, cfg, engine) -> list[ControlRecord]:
    out = []
    for side in SIDES:
        for i in control_indices(len(scenarios), cfg.control_size):
            a, b = completions[keys[(i, side)]], completions[keys[(i, CONTROLS[side])]]
            out.append(ControlRecord(
                sample_id=scenarios[i].id, index=i, context=side, first_output=a.text,
                second_output=b.text, output_changed=a.token_ids != b.token_ids, first_behavior=behaviour[a.key],
                second_behavior=behaviour[b.key], behavior_changed=behaviour[a.key] != behaviour[b.key],
                engine=engine))
    return out


def summarise(records: list[ContextAblationRecord], controls: list[ControlRecord]) -> ContextAblationSummary:
    """Totals, change rates overall and by label, response lengths, and the noise floor."""
    n = len(records)
    by_label: dict[str, list[ContextAblationRecord]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    tokens = [t for r in records for t in (r.monitored_output_tokens, r.unmonitored_output_tokens)]
    chars = [len(t) for r in records for t in (r.monitored_output, r.unmonitored_output)]
    return ContextAblationSummary(
        n_pairs=n,
        output_changed_rate=sum(r.changed_pred_bc_hint for r in records) / n,
        behavior_changed_rate=sum(r.behavior_changed for r in records) / n,
        behavior_changed_by_label={k: LabelChange(n=len(v), rate=sum(r.behavior_changed for r in v) / len(v))
                                   for k, v in sorted(by_label.items())},
        transitions=dict(sorted(Counter(f"{r.monitored_behavior}->{r.unmonitored_behavior}" for r in records).items())),
        mean_output_tokens=sum(tokens) / len(tokens),
        mean_output_chars=sum(chars) / len(chars),
        truncated_outputs=sum(r.monitored_finish_reason == "length" for r in records)
        + sum(r.unmonitored_finish_reason == "length" for r in records),
        labels_per_context=agreement.context_stats(
            [(c, label, cut) for c, label, _, cut in agreement.record_outputs(records)]),
        control_n=len(controls),
        control_output_changed_rate=sum(c.output_changed for c in controls) / len(controls) if controls else None,
        control_behavior_changed_rate=(sum(c.behavior_changed for c in controls) / len(controls)
                                       if controls else None),
        control_by_context={side: ControlRate(n=len(cs),
                                              output_changed_rate=sum(c.output_changed for c in cs) / len(cs),
                                              behavior_changed_rate=sum(c.behavior_changed for c in cs) / len(cs))
                            for side in SIDES if (cs := [c for c in controls if c.context == side])},
    )


def format_summary(s: ContextAblationSummary, engine: EngineInfo, wall: dict) -> list[str]:
    lines = [
        f"pairs: {s.n_pairs}  (backend {engine.backend} {engine.engine_version}, {engine.dtype}, "
        f"batch-invariant {engine.batch_invariant}, {engine.device})",
        f"outputs changed (monitored vs unmonitored): {s.output_changed_rate:.1%}",
        f"behaviour changed: {s.behavior_changed_rate:.1%}",
    ]
    lines += [f"  label {k}: {v.rate:.1%} of {v.n}" for k, v in s.behavior_changed_by_label.items()]
    lines.append("  transitions monitored->unmonitored: " + ", ".join(f"{k} {v}" for k, v in s.transitions.items()))
    if s.control_n:
        lines.append(f"noise floor (same prompt, other batch position, no shared prefix cache; both contexts, "
                     f"n={s.control_n}): outputs changed "
                     f"{s.control_output_changed_rate:.1%}, behaviour changed {s.control_behavior_changed_rate:.1%}")
    lines.append("labels per context:")
    lines += agreement.format_context_stats(s.labels_per_context)
    if s.agreement is not None:
        lines.append(agreement.format_agreement(s.agreement))
    lines.append(f"mean response length: {s.mean_output_tokens:.1f} tokens, {s.mean_output_chars:.0f} chars; "
                 f"{s.truncated_outputs} outputs hit max_new_tokens")
    lines.append("wall: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items()))
    if s.sampled is not None:
        lines[-1:-1] = sampled.format_summary(s.sampled)
        if sampled.warning(s.sampled):
            lines.append(sampled.warning(s.sampled))
    elif s.behavior_changed_rate < LOW_CHANGE_WARNING:
        lines.append(f"WARNING: behaviour changed in only {s.behavior_changed_rate:.1%} of pairs (< 20%): "
                     "first audit the labels (report.md's samples, or af-introspect label --labeller both), then try "
                     "stronger system-prompt wording (prompts: in the config) before training on this; a probabilistic "
                     "behaviour shows in greedy pairs rarely: sampled mode (sampling: {k: 8}) measures its rate")
    return lines




def finish(cfg: GenerateConfig, out: Path, model_dir: str, engine: EngineInfo, scenarios: list[Scenario],
           records: list[ContextAblationRecord], controls: list[ControlRecord], agr, wall: dict,
           finalise_from: float) -> ContextAblationSummary:
    """Split and write the records, the summary and the manifest; print the summary and log the phase.

    `wall`: the seconds so far by phase; "finalise" (from the `finalise_from` perf_counter time, labelling
    included) is added here. Raises StageFailure when the labels are
    degenerate (the organism answers one way whatever the context), after writing everything.
    """
    train_idx, test_idx = grouped_split(group_keys([s.text for s in scenarios], cfg.group_pattern),
                                        [f"{r.monitored_behavior}->{r.unmonitored_behavior}" for r in records],
                                        cfg.test_size, cfg.seed)
    write_records_atomic(out / "train.jsonl", [records[i] for i in train_idx])
    write_records_atomic(out / "test.jsonl", [records[i] for i in test_idx])
    write_records_atomic(out / "noise_control.jsonl", controls)
    summary = summarise(records, controls)
    summary.agreement = agr
    if cfg.sampling:
        summary.sampled = sampled.summarise(cfg.sampling, [r.sampled for r in records], [r.label for r in records])
    wall = {**wall, "finalise": time.perf_counter() - finalise_from}
    summary.wall_seconds = wall
    produced = sum(sum(r.sampled.monitored.output_tokens) + sum(r.sampled.unmonitored.output_tokens)
                   if r.sampled else r.monitored_output_tokens + r.unmonitored_output_tokens for r in records)
    summary.output_tokens_per_second = produced / max(wall["generation"], 1e-9)
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "manifest.json", make_manifest("generate", cfg, model_dir, {"scenarios": cfg.input}))
    drop_set_aside(out)
    lines = format_summary(summary, engine, wall)
    print("\n".join(lines))
    broken = degenerate_problem([b for r in records for b in (r.monitored_behavior, r.unmonitored_behavior)],
                                str(out))
    warning = [lines[-1]] if lines[-1].startswith("WARNING") else []
    append_phase(cfg.progress_log, "2", "Task 3 context-ablation pairs (generate)",
                 "BLOCKED" if broken else "DONE",
                 done=[f"{len(records)} scenarios x 2 contexts through {cfg.backend} -> {out}/"
                       f"train.jsonl ({len(train_idx)}) and test.jsonl ({len(test_idx)}, grouped)"],
                 findings=lines[1:-1], issues=[broken] if broken else warning,
                 next_step="check the organism checkpoint" if broken else
                 "train the explainer on these records (af-introspect train)")
    if broken:
        raise StageFailure(broken)
    return summary
