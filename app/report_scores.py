"""The explainer's held-out scores as report.md, the demo's table and the summary print them: its strict
score beside every baseline with a NOTE where one reaches it, the peers' baselines and calibration, the
held-out steering direction, and Task 1's judges (app/report.py assembles the report).

Reads metrics.json's rows (records.schema.EvalMetrics): a score with an interval is an `Interval`.
"""

from __future__ import annotations

import numpy as np

from records.schema import EvalMetrics, Interval

Scores = dict[str, float | Interval]  # one method's metrics row: metric -> a number or a score with its interval

PEERS_NOTE = ("The peers' baselines: few-shot in context (`fewshot_k<k>`: the explainer's base, adapter off, given k "
              "solved training examples before the question; scores pooled over seeded draws of the examples, "
              "intervals resample each item with all its draws), the vector nearest neighbour "
              "(`vector_nearest_neighbour`: the most common answer among the training items whose vector is the most "
              "cosine-similar). Calibration: confidence is the explainer's probability of its own answer under "
              "teacher forcing; P(changed) is read where the two answer forms part (training/calibration.py).")


def _ci(score: Interval, f: str = ".2f") -> str:
    return f"{score.value:{f}} [{score.lo:{f}}, {score.hi:{f}}]"


def _cell(x: float) -> str:
    return f"{x:.3f}" if x == x else "-"  # NaN -> "-"


def metrics_table(metrics: EvalMetrics) -> list[str]:
    """Held-out scores per split, question type and method: ours (lenient) and the paper's strict ones
    with their bootstrap 95% intervals. Splits: the held-out scenarios ("test"), and for steering a
    direction never trained on (HELD_OUT_DIRECTION) where the run held one out."""
    lines = ["| split | question type | method | n | exact match | strict exact match [95% CI] | strict changed F1 "
             "[95% CI] | content match | similarity |", "|---|---|---|---|---|---|---|---|---|"]
    for split, qs in metrics.splits.items():
        if split.startswith("eval:"):
            continue
        for q, methods in qs.items():
            for method, m in methods.items():
                def cell(k: str, m: Scores = m) -> str:
                    return _cell(m[k]) if k in m else "-"

                def ci(k: str, m: Scores = m) -> str:
                    return f"{_cell(m[k].value)} [{_cell(m[k].lo)}, {_cell(m[k].hi)}]" if k in m else "-"

                lines.append(f"| {split} | {q} | {method} | {int(m['n'])} | {cell('exact_match')} | "
                             f"{ci('strict_exact_match')} | {ci('strict_changed_f1')} | {cell('content_match')} | "
                             f"{cell('semantic_similarity')} |")
    return lines


def strict_lines(methods: dict[str, Scores], indent: str = "") -> list[str]:
    """The paper's strict exact match with its 95% interval per method, and a NOTE for every baseline that
    reaches the explainer: the paired interval of explainer - baseline (same items, same resamples)
    reaches 0, or, where no paired gap was computed, the baseline's interval reaches the explainer's
    score. Then the score does not show that the explainer reads the organism (the demo's table and the
    report's summary say so in these words)."""
    if "strict_exact_match" not in methods.get("explainer", {}):
        return []
    ci = {m: v["strict_exact_match"] for m, v in methods.items() if "strict_exact_match" in v}
    lines = [indent + "strict exact match [95% CI]: " + "; ".join(f"{m} {_ci(s)}" for m, s in ci.items())]
    from training.metrics import baseline_reaches

    explainer = ci["explainer"].value
    for m, s in ci.items():
        gap = methods[m].get("gap")
        if m == "explainer" or not baseline_reaches(explainer, s.hi, gap.lo if gap is not None else None):
            continue
        if gap is not None:
            lines.append(f"{indent}NOTE: the {m} baseline reaches the explainer (explainer - {m} = "
                         f"{_ci(gap, '+.2f')}, paired): this score does not show that the explainer reads the organism")
        else:
            lines.append(f"{indent}NOTE: the {m} baseline reaches the explainer ({_ci(s)} vs {explainer:.2f}): this "
                         "score does not show that the explainer reads the organism")
    return lines


def peer_lines(methods: dict[str, Scores], indent: str = "") -> list[str]:
    """The peers' baselines and the explainer's calibration, beside strict_lines (training/peers.py,
    training/calibration.py, training/templates.py): the few-shot draws' spread, a similarity line where
    there is no strict score (feature descriptions), the explainer's confidence scored against the truth, and
    its score under each prompt template."""
    lines = []
    fewshot = {m: v for m, v in methods.items() if m.startswith("fewshot_k")}
    free = {m: v for m, v in fewshot.items() if not m.endswith("_ranked")}  # ranked choice: ranked_lines
    if any("strict_exact_match_draw_min" in v for v in free.values()):
        lines.append(indent + "few-shot in context (the untrained explainer, k solved training examples; strict exact "
                     "match of each draw): " + "; ".join(
                         f"{m} {v['strict_exact_match_draw_min']:.2f}-{v['strict_exact_match_draw_max']:.2f} over "
                         f"{int(v['draws'])} draws, n {int(v['n'])}" for m, v in free.items()
                         if "strict_exact_match_draw_min" in v)
                     + _below_majority(free, methods.get("majority", {})))
        lines += ranked_lines(methods, indent)  # the same k-shot prompt, the training answers ranked
    if "strict_exact_match" not in methods.get("explainer", {}):
        shown = {m: v["semantic_similarity"] for m, v in methods.items()
                 if (m in fewshot or m == "vector_nearest_neighbour") and "semantic_similarity" in v}
        if shown:
            lines.append(indent + "peers' baselines, similarity: " + ", ".join(f"{m} {x:.2f}" for m, x in shown.items())
                         + f"; explainer {methods['explainer'].get('semantic_similarity', float('nan')):.2f}")
    ex = methods.get("explainer", {})
    if "brier" in ex:
        lines.append(indent + f"calibration (the explainer's probability of its own answer, mean "
                     f"{ex['confidence_mean']:.2f}, against the answer being right): Brier {_ci(ex['brier'], '.3f')}; "
                     f"ECE ({int(ex['ece_bins'])} bins) {_ci(ex['ece'], '.3f')}"
                     + (f"; AUROC of 'changed' by P(changed) {_ci(ex['auroc_changed'], '.3f')}"
                        if "auroc_changed" in ex else ""))
    templates = sorted((k for k in ex if k.startswith("template:")), key=lambda k: int(k.split(":")[1]))
    if templates:
        lines.append(indent + "per prompt template (each item asked in every wording): " + ", ".join(
            f"{k.split(':')[1]}: {ex[k]:.2f}" for k in templates) + f"; spread {ex['template_spread']:.2f}")
    return lines


def _below_majority(fewshot: dict[str, Scores], majority: Scores) -> str:
    """Where every few-shot score's interval lies below the majority answer's score: the base did not use the
    solved examples at all (it answered outside the answer format)."""
    if "strict_exact_match" not in majority or not all("strict_exact_match" in v for v in fewshot.values()):
        return ""
    bar = majority["strict_exact_match"].value
    if all(v["strict_exact_match"].hi < bar for v in fewshot.values()):
        return (f" (below the majority answer's {bar:.2f}: the untrained base does not take up the solved examples' "
                "answer format)")
    return ""


def held_out_direction_lines(splits: dict, indent: str = "") -> list[str]:
    """Task 2 on a steering direction no training item added: every method's strict score with its interval,
    the paired gap explainer - no-effect bound (along a direction that moves nothing, every target is
    "unchanged", so the bound is the score to reach), and a NOTE when the explainer falls below it."""
    from training.evaluate import HELD_OUT_DIRECTION

    methods = splits.get(HELD_OUT_DIRECTION, {}).get("generative_explanation", {})
    if "strict_exact_match" not in methods.get("explainer", {}):
        return []
    lines = [indent + "held-out direction (never trained on), strict exact match [95% CI]: " + "; ".join(
        f"{m} {_ci(v['strict_exact_match'])}" for m, v in methods.items() if "strict_exact_match" in v)]
    gap = methods.get("no_effect", {}).get("gap")
    if gap is not None:
        lines.append(f"{indent}held-out direction: explainer - no-effect bound = {_ci(gap, '+.2f')} (paired, whole "
                     "scenarios)")
        if gap.value < 0:
            lines.append(f"{indent}NOTE: on the held-out direction the explainer falls below the no-effect bound "
                         f"({_ci(gap, '+.2f')}): it predicts effects this direction does not have")
    return lines


def task1_scores(metrics: EvalMetrics) -> list[str]:
    """Task 1's held-out scores side by side: MiniLM similarity, the paper's LM judge, and per-attribute
    accuracy with its chance level, for the explainer and every baseline and control."""
    from training.task1_evidence import gap_lines

    lines = []
    for q, methods in metrics.splits.get("test", {}).items():
        scoring = metrics.attributes.get("test", {}).get(q)
        attrs = sorted(scoring.chance) if scoring else []
        lines += [f"Held-out `{q}`: similarity (all-MiniLM-L6-v2), LM judge ((rating - 1) / 4) and the share of "
                  "descriptions that name the right value of each cluster attribute:", "",
                  "| method | n | MiniLM similarity | LM judge | " + "".join(f"{a} | " for a in attrs)
                  + ("mean of attributes |" if attrs else ""), "|---" * (4 + len(attrs) + bool(attrs)) + "|"]
        for method, m in methods.items():
            def cell(k: str, m: Scores = m) -> str:
                return _cell(m[k]) if k in m else "-"

            lines.append(f"| {method} | {int(m['n'])} | {cell('semantic_similarity')} | {cell('lm_judge')} | "
                         + "".join(f"{cell('attribute:' + a)} | " for a in attrs)
                         + (f"{cell('attribute_mean')} |" if attrs else ""))
        lines += ["", *gap_lines(methods)]
        if scoring:
            chance = [scoring.chance[a] for a in attrs]
            lines.append(f"| chance | {scoring.n} | - | - | " + "".join(f"{c:.3f} | " for c in chance)
                         + f"{float(np.mean(chance)):.3f} |")
            lines += ["", "Chance: the most common value among the training features, scored on these (ties: "
                          "averaged). A description names a value when it holds one of the word n-grams found in "
                          "every training description with that value and in none with another "
                          "(training/attributes.py); none or several is wrong. Controls: the explainer with its "
                          "vectors zeroed, and shuffled (each feature given a feature's vector from another "
                          "cluster)."]
        else:
            lines += ["", "Per-attribute accuracy: not scored (the records came without cluster attributes: "
                          "`cluster_attributes` in the features config)."]
        lines += ["", f"LM judge: {metrics.feature_judge}" if metrics.feature_judge
                  else "LM judge: not configured (set test.feature_judge.model in the training config to score "
                       "descriptions with the paper's 1-5 judge)", ""]
    return lines


def ranked_lines(methods: dict[str, Scores], indent: str = "") -> list[str]:
    """The ranked-choice few-shot scores beside chance (the most common training answer, on the same items
    where known, else the majority baseline's score): near chance when chance lies inside the ranked score's
    interval. When the base gave the same answer to every item in every draw it is a constant, whatever it
    scores (its score is that answer's share of the items): said so, with no verdict against chance."""
    ranked = {m: v for m, v in methods.items() if m.endswith("_ranked") and "strict_exact_match" in v}
    first = next(iter(ranked.values()), {})
    majority = methods.get("majority", {}).get("strict_exact_match")
    chance = first.get("chance_same_items", majority.value if majority is not None else None)
    if not ranked or chance is None:
        return []

    def verdict(v: Scores) -> str:
        if v.get("distinct_answers") == 1:
            return "one answer for every item: a constant, reading nothing from the items"
        lo, hi = v["strict_exact_match"].lo, v["strict_exact_match"].hi
        return "near chance" if lo <= chance <= hi else "above chance" if lo > chance else "below chance"

    explainer = methods.get("explainer", {}).get("strict_exact_match")
    n = int(first.get("choices", 0))
    return [indent + f"few-shot ranked choice (the untrained base's most likely of the {n} training answers after "
            "the same k-shot prompt; strict exact match [95% CI]): "
            + "; ".join(f"{m} {_ci(v['strict_exact_match'])} ({verdict(v)})" for m, v in ranked.items())
            + f"; chance (the most common training answer{' on these items' if 'chance_same_items' in first else ''})"
            f" {chance:.2f}" + (f", explainer {explainer.value:.2f}" if explainer is not None else "")]
