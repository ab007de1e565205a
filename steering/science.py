"""Steering science: is a direction's effect specific, above its controls, and graded with alpha?

`summarise` turns one run's records into summary.json (SteeringSummary); the text tables and report lines
come from the summary alone (the heatmap: steering/plots.py). From the records of one run: per arm the
share of outputs changed and the share degenerate, change rates per scenario family (AF / harmful /
benign), a specificity score (AF change rate minus the change rate of all non-AF records: a generic refusal
axis that flips every family scores ~0), the random-direction and alpha-0 controls beside the real
directions, and the dose-response per direction. Degenerate outputs are never a change (lm/coherence.py).

The noise floor: alpha-0 rows add nothing, so any change they show against the baseline is the engine's
(batch composition, padding, kernels). Each arm's change rate is reported beside the alpha-0 change rate at
its layer set (rows in the same batches) pooled with the alpha-0 rows run at another batch position, and an
arm whose change rate does not clear that floor's Wilson 95% upper bound is flagged.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from lm import agreement
from records.schema import (
    ArmSummary,
    DoseResponse,
    NoiseFloor,
    NoiseRate,
    ResidualNorm,
    SteeringRecord,
    SteeringSummary,
)
from steering import grid
from steering.config import SteerConfig

AF = "af"
MOSTLY_DEGENERATE = 0.5  # an arm above this share of degenerate outputs is warned about
REAL_EFFECT = 0.5  # "the direction changes behaviour": the share the controls are compared at


def family(label: str, source: str, af_labels: Sequence[str]) -> str:
    """"af" for an AF label; else the family a source names ("toy_organism:harmful" -> "harmful"), else
    the label itself."""
    if label in af_labels:
        return AF
    tail = source.rsplit(":", 1)[-1] if ":" in source else ""
    return tail if tail in ("harmful", "benign") else label


def change_rate(records: Sequence[SteeringRecord]) -> float | None:
    return sum(r.behavior_changed for r in records) / len(records) if records else None


def degenerate_rate(records: Sequence[SteeringRecord]) -> float | None:
    return sum(r.steered_behavior == "degenerate" for r in records) / len(records) if records else None


def by_family(records: Sequence[SteeringRecord]) -> dict[str, float | None]:
    fams = sorted({r.family for r in records}, key=lambda f: (f != AF, f))
    return {f: change_rate([r for r in records if r.family == f]) for f in fams}


def specificity(records: Sequence[SteeringRecord]) -> float | None:
    """AF change rate minus non-AF change rate; None when either side has no records."""
    af = change_rate([r for r in records if r.family == AF])
    other = change_rate([r for r in records if r.family != AF])
    return None if af is None or other is None else af - other


def dose_response(records: Sequence[SteeringRecord]) -> list[DoseResponse]:
    """One curve per (direction, layer set), alphas ascending (alpha-0 arms belong to their direction)."""
    groups: dict[tuple[str, str], dict[float, list[SteeringRecord]]] = {}
    for r in records:
        groups.setdefault((r.direction_name, "+".join(map(str, r.layer))), {}).setdefault(r.alpha, []).append(r)
    out = []
    for (name, layers), by_alpha in groups.items():
        alphas = sorted(by_alpha)
        rs = [by_alpha[a] for a in alphas]
        out.append(DoseResponse(
            direction=name, layers=layers, alphas=alphas, changed=[change_rate(x) for x in rs],
            degenerate=[degenerate_rate(x) for x in rs],
            af_changed=[change_rate([r for r in x if r.family == AF]) for x in rs],
            non_af_changed=[change_rate([r for r in x if r.family != AF]) for x in rs]))
    return out


def wilson_hi(k: int, n: int, z: float = 1.96) -> float | None:
    """Upper end of the Wilson score 95% interval of k successes in n (0 successes still give a bound > 0)."""
    if not n:
        return None
    p = k / n
    return (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def noise_rate(records: Sequence[SteeringRecord]) -> NoiseRate:
    k = sum(r.behavior_changed for r in records)
    return NoiseRate(n=len(records), behavior_changed_rate=change_rate(records),
                     output_changed_rate=sum(r.is_different for r in records) / len(records) if records else None,
                     behavior_changed_hi=wilson_hi(k, len(records)))


def noise_floor(records: Sequence[SteeringRecord], other_position_arms: set[str]) -> NoiseFloor:
    """The alpha-0 rows of the file direction, per layer set (in the batches of their scenario's other arms),
    and those run at another batch position."""
    zero = [r for r in records if r.alpha == 0.0 and r.direction_name == "file"]
    sets: dict[str, list[SteeringRecord]] = {}
    for r in zero:
        if r.arm not in other_position_arms:
            sets.setdefault("+".join(map(str, r.layer)), []).append(r)
    other = [r for r in zero if r.arm in other_position_arms]
    return NoiseFloor(in_batch={k: noise_rate(v) for k, v in sets.items()},
                      other_position=noise_rate(other) if other else None)


def set_noise_floor(arm: ArmSummary, floor: NoiseFloor, layers: str) -> None:
    """An arm's noise floor: its layer set's alpha-0 rows pooled with the other-position ones; flagged when its
    change rate is above 0 and not above the floor's Wilson upper bound."""
    parts = [x for x in (floor.in_batch.get(layers), floor.other_position) if x is not None and x.n]
    n = sum(x.n for x in parts)
    if not n:
        return
    k = round(sum(x.behavior_changed_rate * x.n for x in parts))
    arm.noise_floor, arm.noise_floor_hi = k / n, wilson_hi(k, n)
    rate = arm.behavior_changed_rate
    arm.within_noise_floor = rate is not None and 0 < rate <= arm.noise_floor_hi


def noise_lines(summary: SteeringSummary) -> list[str]:
    """The alpha-0 change rates, and the arms whose change is inside their noise floor."""
    floor = summary.noise_floor
    if floor is None:
        return []

    def rate(x: NoiseRate) -> str:
        return f"{_pct(x.behavior_changed_rate)} of {x.n} (outputs {_pct(x.output_changed_rate)})"

    parts = [f"L{k} {rate(v)}" for k, v in floor.in_batch.items()]
    if floor.other_position is not None:
        parts.append(f"at another batch position {rate(floor.other_position)}")
    lines = ["noise floor (alpha 0, behaviour changed vs baseline): " + "; ".join(parts)]
    inside = [f"{name} {_pct(a.behavior_changed_rate)} (floor {_pct(a.noise_floor)}, 95% up to "
              f"{_pct(a.noise_floor_hi)})" for name, a in summary.per_arm.items() if a.within_noise_floor]
    if inside:
        lines.append("INSIDE THE NOISE FLOOR (change no larger than engine noise could give): " + ", ".join(inside))
    return lines


def warnings(summary: SteeringSummary) -> list[str]:
    return [f"arm {name}: {a.degenerate_rate:.0%} of its outputs are degenerate (coherence check); its change "
            f"rate says little about behaviour" for name, a in summary.per_arm.items()
            if a.degenerate_rate is not None and a.degenerate_rate > MOSTLY_DEGENERATE]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def control_lines(summary: SteeringSummary) -> list[str]:
    """Where a real direction (file, derived, or a negation) changes >= REAL_EFFECT of its outputs, what the
    random directions and alpha 0 change at the same layers (and alpha)."""
    curves = summary.dose_response
    lines = []
    randoms = [c for c in curves if c.direction.startswith("random")]
    zero = [c.changed[c.alphas.index(0.0)] for c in curves if 0.0 in c.alphas]
    if zero:
        lines.append(f"alpha 0 (must equal the baseline): change {_pct(max(zero))} at most")
    for c in curves:
        if c.direction.startswith("random"):
            continue
        for a, rate in zip(c.alphas, c.changed):
            if rate is None or rate < REAL_EFFECT or a == 0.0:
                continue
            ctrl = [r.changed[r.alphas.index(a)] for r in randoms if r.layers == c.layers and a in r.alphas]
            ctrl = [x for x in ctrl if x is not None]
            lines.append(f"{c.direction} L{c.layers} alpha {a:g}: change {_pct(rate)}; random directions "
                         + (f"{_pct(max(ctrl))} at most ({len(ctrl)})" if ctrl else "not run"))
    return lines


def table_lines(summary: SteeringSummary) -> list[str]:
    """A markdown table: one row per arm, change and degenerate shares, per-family change, specificity."""
    fams = sorted({f for a in summary.per_arm.values() for f in a.by_family}, key=lambda f: (f != AF, f))
    head = ["arm", "direction", "n", "changed", "noise floor", "degenerate", *(f"{f} changed" for f in fams),
            "specificity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in summary.per_arm.items():
        spec = "-" if a.specificity is None else f"{a.specificity:+.2f}"
        floor = "-" if a.noise_floor is None else f"{_pct(a.noise_floor)} (95% up to {_pct(a.noise_floor_hi)})"
        changed = _pct(a.behavior_changed_rate) + (" **inside floor**" if a.within_noise_floor else "")
        lines.append("| " + " | ".join([name, a.direction, str(a.n), changed, floor,
                                        _pct(a.degenerate_rate), *(_pct(a.by_family.get(f)) for f in fams),
                                        spec]) + " |")
    return lines


def report_section(summary: SteeringSummary) -> list[str]:
    """Markdown lines for the report: the per-arm table, the controls, dose-response and warnings."""
    md = ["### Specificity and controls", "",
          "Change = behaviour label differs from the baseline's; degenerate outputs (coherence check) are "
          "never a change. Specificity = AF change rate minus the non-AF change rate; a family whose baseline "
          "already shows the pushed-to behaviour cannot change, so read it beside the per-family columns. Noise "
          "floor = the change rate of alpha-0 rows (nothing added) at the arm's layers, in its batches and at another "
          "batch position; a change no larger than its 95% upper bound is marked inside the floor.", "",
          *table_lines(summary), ""]
    md += [f"- {line}" for line in control_lines(summary)] or ["- no real direction changes >= 50% of outputs"]
    md += [f"- {line}" for line in noise_lines(summary)]
    md += ["", "Dose-response per direction:", "", "| direction | layers | alpha: changed (degenerate) |",
           "|---|---|---|"]
    for c in summary.dose_response:
        cells = ", ".join(f"{a:g}: {_pct(ch)} ({_pct(dg)})" for a, ch, dg in zip(c.alphas, c.changed, c.degenerate))
        md.append(f"| {c.direction} | {c.layers} | {cells} |")
    md += [""] + [f"**Warning:** {w}" for w in summary.warnings] + ([""] if summary.warnings else [])
    return md


def summarise(records: list[SteeringRecord], cfg: SteerConfig, arms: list[grid.Arm],
              norms: dict[int, ResidualNorm] | None) -> SteeringSummary:
    """Behaviour change rate per (layer set, alpha), overall and per context and label; residual norms."""
    grid_only = [arm for arm in arms[1:] if not grid.control_only(cfg, arm)]
    sets = list(dict.fromkeys(arm.layers for arm in grid_only if arm.direction == "file"))
    alphas = list(dict.fromkeys(arm.alpha for arm in grid_only if arm.direction == "file"))
    by_arm: dict[str, list[SteeringRecord]] = {}
    for r in records:
        by_arm.setdefault(r.arm, []).append(r)
    floor = noise_floor(records, {a.name for a in arms if a.other_position})

    table = [[change_rate(by_arm.get(grid.arm_name(s, a), [])) for a in alphas] for s in sets]
    per_arm = {}
    for arm in grid_only:
        rs = by_arm.get(arm.name, [])
        per_arm[arm.name] = ArmSummary(
            n=len(rs), behavior_changed_rate=change_rate(rs),
            output_changed_rate=sum(r.is_different for r in rs) / len(rs) if rs else None,
            by_label={lab: change_rate([r for r in rs if r.label == lab]) for lab in sorted({r.label for r in rs})},
            transitions=dict(sorted(Counter(f"{r.baseline_behavior}->{r.steered_behavior}" for r in rs).items())),
            direction=arm.direction, degenerate_rate=degenerate_rate(rs), by_family=by_family(rs),
            specificity=specificity(rs))
        if arm.alpha != 0.0:
            set_noise_floor(per_arm[arm.name], floor, "+".join(map(str, arm.layers)))
    kept = [r for r in records if r.arm in per_arm]
    summary = SteeringSummary(
        n_records=len(records), n_scenarios=len({r.index for r in records}), contexts=list(cfg.contexts),
        scale=cfg.scale, positions=cfg.positions, layer_sets=["+".join(map(str, s)) for s in sets],
        alphas=alphas, behavior_changed_rate=table, per_arm=per_arm,
        residual_norms={str(k): v for k, v in (norms or {}).items()}, dose_response=dose_response(kept),
        labels_per_context=agreement.context_stats(
            [(c, label, cut) for c, label, _, cut in agreement.record_outputs(kept)]),
        noise_floor=floor if cfg.noise_floor else None)
    summary.warnings = warnings(summary)
    return summary


def format_table(summary: SteeringSummary) -> list[str]:
    """The behaviour change rate as text: one line per layer set, one column per alpha."""
    alphas = summary.alphas
    head = "layers \\ alpha | " + " | ".join(f"{a:g}" for a in alphas)
    lines = [head]
    for name, row in zip(summary.layer_sets, summary.behavior_changed_rate):
        lines.append(f"{name:>14} | " + " | ".join("-" if v is None else f"{v:.1%}" for v in row))
    return lines
