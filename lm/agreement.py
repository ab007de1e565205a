"""Agreement you can read: Cohen's kappa and the confusion matrix between two labellers, label
distribution and truncation rate per context, and per-label samples for report.md (collapsed)."""

from __future__ import annotations

import html
import random
from collections import Counter
from collections.abc import Sequence

from lm.labels import BEHAVIOURS
from records.schema import ContextLabels, LabelAgreement


def confusion(a: Sequence[str], b: Sequence[str], labels: Sequence[str] = BEHAVIOURS) -> list[list[int]]:
    """matrix[i][j]: how many items `a` labelled labels[i] and `b` labelled labels[j]."""
    index = {label: k for k, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for x, y in zip(a, b, strict=True):
        matrix[index[x]][index[y]] += 1
    return matrix


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """(observed - chance agreement) / (1 - chance); 1.0 when both labellers give one same label throughout."""
    n = len(a)
    if n == 0:
        raise ValueError("cohen_kappa: no items")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    chance = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return 1.0 if chance == 1.0 else (observed - chance) / (1.0 - chance)


def agreement(rules: Sequence[str], judge: Sequence[str]) -> LabelAgreement:
    """Both labellers on the same outputs: n, observed agreement, kappa, and the confusion matrix
    (rows: rules, columns: judge) over the labels either used."""
    used = [label for label in BEHAVIOURS if label in set(rules) | set(judge)]
    return LabelAgreement(n=len(rules), observed=sum(x == y for x, y in zip(rules, judge)) / len(rules),
                          kappa=cohen_kappa(rules, judge), labels=used, matrix=confusion(rules, judge, used))


def format_confusion(agr: LabelAgreement, rows: str = "rules", cols: str = "judge") -> list[str]:
    """The confusion matrix as a markdown table."""
    labels = agr.labels
    lines = [f"| {rows} \\ {cols} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(labels, agr.matrix)]
    return lines


def format_agreement(agr: LabelAgreement) -> str:
    return f"rules vs judge: kappa {agr.kappa:.3f}, agreement {agr.observed:.1%} of {agr.n} outputs"


def context_stats(outputs: Sequence[tuple[str, str, bool]]) -> dict[str, ContextLabels]:
    """Per context, from (context, label, truncated) triples: label counts and the truncation rate."""
    by: dict[str, list[tuple[str, bool]]] = {}
    for context, label, truncated in outputs:
        by.setdefault(context, []).append((label, truncated))
    return {ctx: ContextLabels(n=len(v), labels=dict(sorted(Counter(lab for lab, _ in v).items())),
                               truncated_rate=sum(t for _, t in v) / len(v)) for ctx, v in by.items()}


def format_context_stats(stats: dict[str, ContextLabels]) -> list[str]:
    return [f"  {ctx}: " + ", ".join(f"{k} {v}" for k, v in s.labels.items())
            + f"; truncated {s.truncated_rate:.1%} of {s.n}" for ctx, s in stats.items()]


def samples_section(outputs: Sequence[tuple[str, str, str]], per_label: int = 10, seed: int = 0,
                    max_chars: int = 600) -> list[str]:
    """Markdown lines: for each context and label, up to `per_label` random outputs in a collapsed block,
    so a researcher can audit the labels by eye. `outputs`: (context, label, text) triples."""
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[str]] = {}
    for context, label, text in outputs:
        groups.setdefault((context, label), []).append(text)
    lines = []
    for (context, label), texts in sorted(groups.items()):
        picked = rng.sample(texts, min(per_label, len(texts)))
        lines += [f"<details><summary>{context} / {label}: {len(picked)} of {len(texts)} outputs</summary>", ""]
        for text in picked:
            short = text if len(text) <= max_chars else text[:max_chars] + " [...]"
            lines.append(f"<pre>{html.escape(short) or '(empty)'}</pre>")
        lines += ["", "</details>", ""]
    return lines


def record_outputs(records) -> list[tuple[str, str, str, bool]]:
    """(context, label, text, truncated) of every output in Task 3 or Task 2 records; a Task 2 baseline,
    shared by a scenario's arms, counts once."""
    from records.schema import ContextAblationRecord, SteeringRecord

    out, seen = [], set()
    for r in records:
        if isinstance(r, ContextAblationRecord):
            out.append(("monitored", r.monitored_behavior, r.monitored_output, r.monitored_finish_reason == "length"))
            out.append(("unmonitored", r.unmonitored_behavior, r.unmonitored_output,
                        r.unmonitored_finish_reason == "length"))
        elif isinstance(r, SteeringRecord):
            if (r.index, r.context) not in seen:
                seen.add((r.index, r.context))
                out.append((f"{r.context} baseline", r.baseline_behavior, r.baseline_output,
                            r.baseline_finish_reason == "length"))
            out.append((f"{r.context} steered", r.steered_behavior, r.steered_output,
                        r.steered_finish_reason == "length"))
    return out


def report_section(records, agr: LabelAgreement | None, per_label: int = 10) -> list[str]:
    """report.md lines: labels and truncation per context, kappa with its confusion matrix when both
    labellers ran, and per-label samples (collapsed)."""
    outputs = record_outputs(records)
    stats = context_stats([(c, lab, t) for c, lab, _, t in outputs])
    md = ["### Behaviour labels", "", "| context | n | " + " | ".join(BEHAVIOURS) + " | truncated |",
          "|---" * (len(BEHAVIOURS) + 3) + "|"]
    md += [f"| {ctx} | {s.n} | " + " | ".join(str(s.labels.get(b, 0)) for b in BEHAVIOURS)
           + f" | {s.truncated_rate:.1%} |" for ctx, s in stats.items()]
    md.append("")
    if agr:
        md += [format_agreement(agr) + " (rows: rules, columns: judge)", "", *format_confusion(agr), ""]
    md += [f"Random outputs per label and context (up to {per_label} each), to audit the labels by eye:", ""]
    return md + samples_section([(c, lab, text) for c, lab, text, _ in outputs], per_label)
