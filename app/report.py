"""`af-introspect report`: turn a run directory into report.md with PNG plots (matplotlib, headless).

Run-directory layout (what `af-introspect demo` writes; any part may be missing and is then skipped):

    RUN/task3/                Task 3 records (generate): train.jsonl, test.jsonl, summary.json
    RUN/task2/                Task 2 records (steer): train.jsonl, test.jsonl, summary.json
    RUN/task1/                Task 1 records (features)
    RUN/explainer_task{1,2,3}/  training output: metrics.jsonl, final/eval/{metrics.json,predictions.jsonl}
    RUN/compare_task{3,2}/    self vs cross (af-introspect compare): compare.json, self/ (the task's explainer), cross/
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import numpy as np

from features.config import depth_warning
from records.jsonl import read_records, write_json_atomic
from records.schema import (
    ContextAblationRecord,
    ContextAblationSummary,
    EvalMetrics,
    FeaturesIndex,
    PredictionRow,
    RunManifest,
    SteeringRecord,
    SteeringSummary,
    read_summary,
)

TASKS = {"task3": "Task 3: context ablation", "task2": "Task 2: steering", "task1": "Task 1: feature descriptions"}
BASELINES = ("explainer", "untrained", "majority", "nearest_neighbour")
PEERS_NOTE = ("The peers' baselines: few-shot in context (`fewshot_k<k>`: the explainer's base, adapter off, given k "
              "solved training examples before the question; scores pooled over seeded draws of the examples, intervals "
              "resample each item with all its draws), the vector nearest neighbour (`vector_nearest_neighbour`: the "
              "most common answer among the training items whose vector is the most cosine-similar). Calibration: "
              "confidence is the explainer's probability of its own answer under teacher forcing; P(changed) is read "
              "where the two answer forms part (training/calibration.py).")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _save(fig, path: Path, data) -> None:
    """The PNG, and beside it (same stem, .json) the numbers it shows, so a reader or a test can check them."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    write_json_atomic(path.with_suffix(".json"), data)


def plot_change_by_label(records: list[ContextAblationRecord], path: Path) -> dict[str, tuple[int, float]]:
    """Bar chart: share of scenarios whose behaviour changed (monitored -> unmonitored), per scenario label."""
    by_label: dict[str, list[bool]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r.behavior_changed)
    rates = {k: (len(v), sum(v) / len(v)) for k, v in sorted(by_label.items())}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(rates), 3.4))
    bars = ax.bar(list(rates), [100 * r for _, r in rates.values()], color="#4472c4")
    for bar, (n, r) in zip(bars, rates.values()):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1.5, f"{r:.0%} of {n}", ha="center", fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_xlabel("scenario label")
    ax.set_ylabel("behaviour changed (%)")
    ax.set_title("Monitored -> unmonitored: behaviour change by label", fontsize=10)
    _save(fig, path, {k: {"n": n, "rate": r} for k, (n, r) in rates.items()})
    return rates


def plot_gap_histogram(s: ContextAblationSummary, path: Path) -> None:
    """Sampled mode: scenarios per bin of their own compliance gap (unmonitored - monitored rate)."""
    g = s.sampled
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    edges = g.histogram_edges
    ax.bar(edges[:-1], g.histogram, width=[b - a for a, b in zip(edges, edges[1:])], align="edge", color="#4472c4",
           edgecolor="white")
    ax.axvline(g.gap.value, color="black", linestyle="--", linewidth=1, label=f"mean {g.gap.value:+.2f}")
    ax.axvspan(g.gap.lo, g.gap.hi, color="grey", alpha=0.3, label="95% interval")
    ax.set_xlabel("compliance gap per scenario (unmonitored - monitored)")
    ax.set_ylabel("scenarios")
    ax.set_title(f"Compliance gap, k={g.k} samples per context, T={g.temperature:g}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path, {"edges": edges, "counts": g.histogram, "gap": [g.gap.value, g.gap.lo, g.gap.hi]})


def _sampled_section(folder: Path, plots: Path, name: str) -> list[str]:
    """A sampled-mode pass's rates, gap and histogram (the demo's `sampled/task3`, or a sampled `task3`)."""
    if not (folder / "summary.json").is_file():
        return []
    s = read_summary(folder / "summary.json", ContextAblationSummary)
    if s.sampled is None:
        return []
    from generation.sampled import format_summary

    png = f"{name.replace('/', '_')}_gap_histogram.png"
    plot_gap_histogram(s, plots / png)
    return [f"### Compliance gap (sampled mode, `{name}`)", "",
            f"{s.n_pairs} scenarios; behaviour changed (each context's majority label) {s.behavior_changed_rate:.1%}. "
            "The gap compares compliance rates, as the alignment-faking literature reports them.", "",
            *[f"- {line.strip()}" for line in format_summary(s.sampled)], "",
            f"![compliance gap histogram](plots/{png})", ""]


def plot_dose_response(summary: SteeringSummary, path: Path) -> None:
    """Behaviour change rate vs alpha, one line per steered layer set."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, row in zip(summary.layer_sets, summary.behavior_changed_rate):
        ax.plot(summary.alphas, [np.nan if v is None else 100 * v for v in row], marker="o", label=f"layers {name}")
    unit = "x mean residual norm" if summary.scale == "residual_norm" else "raw, unit direction"
    ax.set_xlabel(f"alpha ({unit})")
    ax.set_ylabel("behaviour changed (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Steering dose-response", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path, {"alphas": summary.alphas, "series": dict(zip(summary.layer_sets, summary.behavior_changed_rate))})


def plot_training(metrics: list[dict], path: Path, title: str) -> bool:
    """Training loss and eval exact match / similarity against the step; False if there is nothing to plot."""
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval_loss" in m]
    if not train:
        return False
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    a.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss")
    if evals:
        a.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], marker="o", label="eval loss")
    a.set_xlabel("optimizer step")
    a.set_ylabel("loss (answer tokens)")
    a.set_yscale("log")
    a.legend(fontsize=8)
    keys = sorted({k for m in evals for k in m if k.endswith(("/exact_match", "/semantic_similarity"))})
    for k in keys:
        pts = [(m["step"], m[k]) for m in evals if k in m]
        b.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=k)
    b.set_xlabel("optimizer step")
    b.set_ylabel("held-out score")
    b.set_ylim(-0.05, 1.05)
    if keys:
        b.legend(fontsize=7)
    else:
        b.text(0.5, 0.5, "no generation evals in this run", ha="center", va="center", transform=b.transAxes)
    fig.suptitle(title, fontsize=10)
    _save(fig, path, {"train_loss": [[m["step"], m["loss"]] for m in train],
                      "eval_loss": [[m["step"], m["eval_loss"]] for m in evals],
                      "eval_scores": {k: [[m["step"], m[k]] for m in evals if k in m] for k in keys}})
    return True


def plot_similarity(rows: list[dict], path: Path) -> dict[str, float]:
    """Histogram of per-description embedding similarity to the reference, explainer vs baselines."""
    from training.scoring import MiniLM

    embed = MiniLM("cpu")
    sims: dict[str, np.ndarray] = {}
    for method in BASELINES:
        rs = [r for r in rows if r.method == method and r.split == "test"]
        if rs:
            a, b = embed([r.prediction for r in rs]), embed([r.target for r in rs])
            sims[method] = (a * b).sum(-1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(-0.2, 1.0, 25)
    for method, s in sims.items():
        ax.hist(s, bins=bins, alpha=0.5, label=f"{method} (mean {s.mean():.2f})")
    ax.set_xlabel("cosine similarity to the reference description (all-MiniLM-L6-v2)")
    ax.set_ylabel("held-out features")
    ax.set_title("Task 1: description similarity, explainer vs baselines", fontsize=10)
    ax.legend(fontsize=8)
    means = {m: float(s.mean()) for m, s in sims.items()}
    _save(fig, path, {"mean_similarity": means, "n": {m: len(s) for m, s in sims.items()}})
    return means


def _metrics_table(metrics: EvalMetrics) -> list[str]:
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
                cell = lambda k: f"{m[k]:.3f}" if k in m and m[k] == m[k] else "-"  # noqa: E731 (NaN -> "-")
                ci = lambda k: f"{cell(k)} [{cell(k + '_lo')}, {cell(k + '_hi')}]" if k in m else "-"  # noqa: E731
                lines.append(f"| {split} | {q} | {method} | {int(m['n'])} | {cell('exact_match')} | "
                             f"{ci('strict_exact_match')} | {ci('strict_changed_f1')} | {cell('content_match')} | "
                             f"{cell('semantic_similarity')} |")
    return lines


def strict_lines(methods: dict[str, dict[str, float]], indent: str = "") -> list[str]:
    """The paper's strict exact match with its 95% interval per method, and a NOTE for every baseline that
    reaches the explainer: the paired interval of explainer - baseline (same items, same resamples)
    reaches 0, or, where no paired gap was computed, the baseline's interval reaches the explainer's
    score. Then the score does not show that the explainer reads the organism (the demo's table and the
    report's summary say so in these words)."""
    if "strict_exact_match" not in methods.get("explainer", {}):
        return []
    ci = {m: (v["strict_exact_match"], v["strict_exact_match_lo"], v["strict_exact_match_hi"])
          for m, v in methods.items() if "strict_exact_match" in v}
    lines = [indent + "strict exact match [95% CI]: " + "; ".join(f"{m} {x:.2f} [{lo:.2f}, {hi:.2f}]"
                                                                for m, (x, lo, hi) in ci.items())]
    from training.metrics import baseline_reaches

    explainer = ci["explainer"][0]
    for m, (x, lo, hi) in ci.items():
        v = methods[m]
        if m == "explainer" or not baseline_reaches(explainer, hi, v.get("gap_lo")):
            continue
        if "gap_lo" in v:
            lines.append(f"{indent}NOTE: the {m} baseline reaches the explainer (explainer - {m} = {v['gap']:+.2f} "
                         f"[{v['gap_lo']:+.2f}, {v['gap_hi']:+.2f}], paired): this score does not show that the "
                         "explainer reads the organism")
        else:
            lines.append(f"{indent}NOTE: the {m} baseline reaches the explainer ({x:.2f} [{lo:.2f}, {hi:.2f}] vs "
                         f"{explainer:.2f}): this score does not show that the explainer reads the organism")
    return lines


def peer_lines(methods: dict[str, dict[str, float]], indent: str = "") -> list[str]:
    """The peers' baselines and the explainer's calibration, beside strict_lines (training/peers.py,
    training/calibration.py, training/templates.py): the few-shot draws' spread, a similarity line where
    there is no strict score (feature descriptions), the explainer's confidence scored against the truth, and
    its score under each prompt template."""
    from training.peers import ranked_lines

    lines = []
    fewshot = {m: v for m, v in methods.items() if m.startswith("fewshot_k")}
    if any("strict_exact_match_draw_min" in v for v in fewshot.values()):
        lines.append(indent + "few-shot in context (the untrained explainer, k solved training examples; strict exact "
                     "match of each draw): " + "; ".join(
                         f"{m} {v['strict_exact_match_draw_min']:.2f}-{v['strict_exact_match_draw_max']:.2f} over "
                         f"{int(v['draws'])} draws, n {int(v['n'])}" for m, v in fewshot.items()
                         if "strict_exact_match_draw_min" in v)
                     + _below_majority({m: v for m, v in fewshot.items() if not m.endswith("_ranked")},
                                       methods.get("majority", {})))
        lines += ranked_lines(methods, indent)  # training/peers.py: the same k-shot prompt, answers ranked
    if "strict_exact_match" not in methods.get("explainer", {}):
        shown = {m: v["semantic_similarity"] for m, v in methods.items()
                 if (m in fewshot or m == "vector_nearest_neighbour") and "semantic_similarity" in v}
        if shown:
            lines.append(indent + "peers' baselines, similarity: " + ", ".join(f"{m} {x:.2f}" for m, x in shown.items())
                         + f"; explainer {methods['explainer'].get('semantic_similarity', float('nan')):.2f}")
    ex = methods.get("explainer", {})

    def ci(k: str) -> str:
        return f"{ex[k]:.3f} [{ex[k + '_lo']:.3f}, {ex[k + '_hi']:.3f}]"

    if "brier" in ex:
        lines.append(indent + f"calibration (the explainer's probability of its own answer, mean "
                     f"{ex['confidence_mean']:.2f}, against the answer being right): Brier {ci('brier')}; ECE "
                     f"({int(ex['ece_bins'])} bins) {ci('ece')}"
                     + (f"; AUROC of 'changed' by P(changed) {ci('auroc_changed')}" if "auroc_changed" in ex else ""))
    templates = sorted((k for k in ex if k.startswith("template:")), key=lambda k: int(k.split(":")[1]))
    if templates:
        lines.append(indent + "per prompt template (each item asked in every wording): " + ", ".join(
            f"{k.split(':')[1]}: {ex[k]:.2f}" for k in templates) + f"; spread {ex['template_spread']:.2f}")
    return lines


def _below_majority(fewshot: dict[str, dict[str, float]], majority: dict[str, float]) -> str:
    """Where every few-shot score's interval lies below the majority answer's score: the base did not use the
    solved examples at all (it answered outside the answer format)."""
    if "strict_exact_match" not in majority or not all("strict_exact_match_hi" in v for v in fewshot.values()):
        return ""
    if all(v["strict_exact_match_hi"] < majority["strict_exact_match"] for v in fewshot.values()):
        return (f" (below the majority answer's {majority['strict_exact_match']:.2f}: the untrained base does not take "
                "up the solved examples' answer format)")
    return ""


def explainer_dir(run: Path, task: str) -> Path:
    """Where a run keeps a task's explainer: explainer_<task>/, or the self arm of its comparison."""
    ex = run / f"explainer_{task}"
    return ex if ex.is_dir() else run / f"compare_{task}" / "self"


def _summary(run: Path) -> list[str]:
    """The report's first section: each task's held-out headline beside every baseline, with a NOTE for
    any baseline that reaches the explainer."""
    lines = []
    for task, title in TASKS.items():
        metrics = explainer_dir(run, task) / "final" / "eval" / "metrics.json"
        if not metrics.is_file():
            continue
        test = read_summary(metrics, EvalMetrics).splits.get("test", {})
        methods = test.get("generative_explanation", {})
        if "strict_exact_match" in methods.get("explainer", {}):
            lines += [f"- {title}, held-out scenarios (generative explanation):",
                      *strict_lines(methods, indent="  - "), *peer_lines(methods, indent="  - ")]
        elif "semantic_similarity" in methods.get("explainer", {}):
            lines.append(f"- {title}, held-out features, MiniLM similarity: " + ", ".join(
                f"{m} {v['semantic_similarity']:.2f}" for m, v in methods.items() if "semantic_similarity" in v))
            lines += peer_lines(methods, indent="  - ")
    for task in ("task3", "task2"):
        compare = run / f"compare_{task}" / "compare.json"
        if compare.is_file():
            from training.compare import read_result

            v = read_result(compare).verdict
            lines.append(f"- {TASKS[task]}, self - cross: {v.gap.value:+.2f} [{v.gap.lo:+.2f}, {v.gap.hi:+.2f}]: "
                         + ("privileged access shown" if v.privileged_access else "NO privileged access shown"))
    lines += evidence_lines(run)
    return ["## Summary", "", *lines, ""] if lines else []


def held_out_direction_lines(splits: dict, indent: str = "") -> list[str]:
    """Task 2 on a steering direction no training item added: every method's strict score with its interval,
    the paired gap explainer - no-effect bound (along a direction that moves nothing, every target is
    "unchanged", so the bound is the score to reach), and a NOTE when the explainer falls below it."""
    from training.evaluate import HELD_OUT_DIRECTION

    methods = splits.get(HELD_OUT_DIRECTION, {}).get("generative_explanation", {})
    if "strict_exact_match" not in methods.get("explainer", {}):
        return []
    lines = [indent + "held-out direction (never trained on), strict exact match [95% CI]: " + "; ".join(
        f"{m} {v['strict_exact_match']:.2f} [{v['strict_exact_match_lo']:.2f}, {v['strict_exact_match_hi']:.2f}]"
        for m, v in methods.items() if "strict_exact_match_lo" in v)]
    bound = methods.get("no_effect", {})
    if "gap_lo" in bound:
        gap = f"{bound['gap']:+.2f} [{bound['gap_lo']:+.2f}, {bound['gap_hi']:+.2f}]"
        lines.append(f"{indent}held-out direction: explainer - no-effect bound = {gap} (paired, whole scenarios)")
        if bound["gap"] < 0:
            lines.append(f"{indent}NOTE: on the held-out direction the explainer falls below the no-effect bound "
                         f"({gap}): it predicts effects this direction does not have")
    return lines


def evidence_lines(run: Path) -> list[str]:
    """Summary lines of issue #28: any collapse flag of a task's evaluation, and Task 2's held-out direction."""
    from training import collapse
    from training.task1_evidence import gap_lines

    lines = []
    for task, title in TASKS.items():
        metrics = explainer_dir(run, task) / "final" / "eval" / "metrics.json"
        if not metrics.is_file():
            continue
        evaluation = read_summary(metrics, EvalMetrics)
        lines += [f"- {title}: **{line}**" for line in collapse.lines(evaluation.collapse)]
        gaps = gap_lines(evaluation.splits.get("test", {}).get("generative_explanation", {}), indent="  - ")
        if task == "task1" and gaps:
            lines += [f"- {title}, explainer - each method, paired over held-out clusters (MiniLM similarity; "
                      "attribute accuracy), 95% interval and sign-flip p:", *gaps]
        held = held_out_direction_lines(evaluation.splits, indent="  - ")
        if held:
            lines += [f"- {title}, held-out direction (generative explanation):", *held]
    return lines


def _task1_scores(metrics: EvalMetrics) -> list[str]:
    """Task 1's held-out scores side by side: MiniLM similarity, the paper's LM judge, and per-attribute
    accuracy with its chance level, for the explainer and every baseline and control."""
    lines = []
    for q, methods in metrics.splits.get("test", {}).items():
        scoring = metrics.attributes.get("test", {}).get(q)
        attrs = sorted(scoring.chance) if scoring else []
        lines += [f"Held-out `{q}`: similarity (all-MiniLM-L6-v2), LM judge ((rating - 1) / 4) and the share of "
                  "descriptions that name the right value of each cluster attribute:", "",
                  "| method | n | MiniLM similarity | LM judge | " + "".join(f"{a} | " for a in attrs)
                  + ("mean of attributes |" if attrs else ""), "|---" * (4 + len(attrs) + bool(attrs)) + "|"]
        for method, m in methods.items():
            cell = lambda k: f"{m[k]:.3f}" if k in m and m[k] == m[k] else "-"  # noqa: E731 (NaN -> "-")
            lines.append(f"| {method} | {int(m['n'])} | {cell('semantic_similarity')} | {cell('lm_judge')} | "
                         + "".join(f"{cell('attribute:' + a)} | " for a in attrs)
                         + (f"{cell('attribute_mean')} |" if attrs else ""))
        from training.task1_evidence import gap_lines

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


def _sae_depth_lines(run: Path, explainer: Path) -> list[str]:
    """A loud line when the features' SAE layer is not a layer of the organism the explainer explains (its
    target_model_path): the SAE then likely comes from another model."""
    if not (explainer / "manifest.json").is_file():
        return []
    manifest = read_summary(explainer / "manifest.json", RunManifest)
    records = manifest.inputs.get("features_explain", "")  # <features output>/by_<mode>
    candidates = ([Path(records).parent] if records else []) + [run / "task1"]
    index = next((c / "features_index.json" for c in candidates if (c / "features_index.json").is_file()), None)
    if index is None:
        return []
    layer, organism = read_summary(index, FeaturesIndex).layer, str(manifest.config.get("target_model_path", ""))
    warning = depth_warning(layer, organism) if organism else None
    if warning:
        return [f"> **{warning}**", ""]
    if warning is None:
        return [f"SAE layer {layer}: not checked against the organism's depth ({organism or 'organism unknown'}: "
                "no local config.json).", ""]
    return [f"SAE layer {layer} is a layer of the organism {organism}.", ""]


def _examples_table(rows: list[dict], n: int = 6) -> list[str]:
    picked = [r for r in rows if r.method == "explainer" and r.split == "test"][:n]
    lines = ["| sample | question type | target | prediction | exact |", "|---|---|---|---|---|"]
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")[:120]  # noqa: E731
    lines += [f"| {esc(r.sample_id)} | {r.question_type} | {esc(r.target)} | {esc(r.prediction)} | "
              f"{'yes' if r.exact_match else 'no'} |" for r in picked]
    return lines


def _labels_section(folder: Path, kind, summary: ContextAblationSummary | SteeringSummary) -> list[str]:
    """Label distribution, kappa when both labellers ran, and per-label samples (lm/agreement.py)."""
    from lm.agreement import report_section
    from records.jsonl import read_records

    records = [r for split in ("train.jsonl", "test.jsonl") if (folder / split).is_file()
               for r in read_records(folder / split, kind)]
    return report_section(records, summary.agreement) if records else []


def _compare_section(run: Path, task: str, about: str) -> list[str]:
    """A task's self-vs-cross table (af-introspect compare), when the run has one."""
    compare = run / f"compare_{task}" / "compare.json"
    if not compare.is_file():
        return []
    from training.compare import change_rate_lines, format_table, read_result

    rates = change_rate_lines(run / "task3") if task == "task3" else []
    return [f"## {TASKS[task]}: self vs cross explainer (privileged access)", "", about, "", "```", *rates,
            *format_table(read_result(compare)).splitlines(), "```", ""]


def build_report(run: Path) -> Path:
    """Write RUN/report.md and RUN/plots/*.png from whatever stages the run holds; return the report path."""
    plots = run / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = [f"# af-introspect report: `{run}`", "", f"_written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}_", ""]
    md += _summary(run)

    t3 = run / "task3"
    if (t3 / "train.jsonl").is_file():
        records = [r for split in ("train.jsonl", "test.jsonl")
                   for r in read_records(t3 / split, ContextAblationRecord, strict=True)]
        rates = plot_change_by_label(records, plots / "task3_change_by_label.png")
        s = read_summary(t3 / "summary.json", ContextAblationSummary)
        md += ["## Task 3: monitored vs unmonitored", "",
               f"{len(records)} scenario pairs; outputs changed {s.output_changed_rate:.1%}, "
               f"behaviour changed {s.behavior_changed_rate:.1%}; noise floor (same prompt, other "
               f"batch position): {s.control_output_changed_rate or 0:.1%} of {s.control_n}.", "",
               "| label | n | behaviour changed |", "|---|---|---|"]
        md += [f"| {k} | {n} | {r:.1%} |" for k, (n, r) in rates.items()]
        md += ["", "![behaviour change by label](plots/task3_change_by_label.png)", ""]
        md += _sampled_section(t3, plots, "task3")
        md += _labels_section(t3, ContextAblationRecord, s)
    md += _sampled_section(run / "sampled" / "task3", plots, "sampled/task3")  # the demo's sampled pass beside its greedy one

    md += _compare_section(run, "task3", "Strict scores (training/metrics.py) on held-out triggers, bootstrap 95% "
                           "intervals resampling whole triggers; the cross explainer is the same recipe started from "
                           "the organism's twin.")

    t2 = run / "task2"
    if (t2 / "summary.json").is_file():
        from steering.run import format_table, save_heatmap

        s = read_summary(t2 / "summary.json", SteeringSummary)
        save_heatmap(s, plots / "task2_heatmap.png", "Behaviour change rate: steered layer(s) x alpha")
        write_json_atomic(plots / "task2_heatmap.json", {"layer_sets": s.layer_sets, "alphas": s.alphas,
                                                         "behavior_changed_rate": s.behavior_changed_rate})
        plot_dose_response(s, plots / "task2_dose_response.png")
        md += ["## Task 2: steering grid", "", f"{s.n_records} steered records over {s.n_scenarios} scenarios "
               f"(scale {s.scale}, positions {s.positions}).", "", "```", *format_table(s), "```", "",
               "![heatmap](plots/task2_heatmap.png)", "", "![dose-response](plots/task2_dose_response.png)", ""]
        from steering.science import report_section

        md += report_section(s)
        md += _labels_section(t2, SteeringRecord, s)
    md += _compare_section(run, "task2", "Strict scores on held-out scenarios, bootstrap 95% intervals resampling "
                           "whole scenarios (every arm of one together); beside self and cross, the self arm's "
                           "lookup table (arm and context), no-effect bound and vector controls (zeroed; shuffled: "
                           "each item given another arm's vector).")

    md += ["## Explainer training and evaluation", ""]
    for task, title in TASKS.items():
        ex = explainer_dir(run, task)
        if not ex.is_dir():
            continue
        md += [f"### {title}", ""]
        if task == "task1":
            md += _sae_depth_lines(run, ex)
        if plot_training(_read_jsonl(ex / "metrics.jsonl"), plots / f"{task}_training.png", title):
            md += [f"![training curves](plots/{task}_training.png)", ""]
        eval_dir = ex / "final" / "eval"
        if (eval_dir / "metrics.json").is_file():
            metrics = read_summary(eval_dir / "metrics.json", EvalMetrics)
            md += _metrics_table(metrics) + [""]
            md += [f"- `{q}`: {line}" for q, ms in metrics.splits.get("test", {}).items() for line in peer_lines(ms)]
            md += ["", PEERS_NOTE, ""] if any(peer_lines(ms) for ms in metrics.splits.get("test", {}).values()) else []
            rows = read_records(eval_dir / "predictions.jsonl", PredictionRow, strict=True)
            if task == "task1":
                md += _task1_scores(metrics)
            if task == "task1" and rows:
                means = plot_similarity(rows, plots / "task1_similarity.png")
                md += ["![similarity](plots/task1_similarity.png)", "",
                       "Mean similarity: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()), ""]
            md += ["Example predictions (held-out):", "", *_examples_table(rows), ""]
    path = run / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def check_inputs(run: Path) -> None:
    """Read every file build_report reads, strictly, before it writes anything: a corrupt summary or a cut
    split is one InputError line and plots/ stays as it was."""
    t3, t2 = run / "task3", run / "task2"
    if (t3 / "train.jsonl").is_file():
        for split in ("train.jsonl", "test.jsonl"):
            read_records(t3 / split, ContextAblationRecord, strict=True)
        read_summary(t3 / "summary.json", ContextAblationSummary)
    if (t2 / "summary.json").is_file():
        read_summary(t2 / "summary.json", SteeringSummary)
    for task in TASKS:
        eval_dir = explainer_dir(run, task) / "final" / "eval"
        if (eval_dir / "metrics.json").is_file():
            read_summary(eval_dir / "metrics.json", EvalMetrics)
            read_records(eval_dir / "predictions.jsonl", PredictionRow, strict=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the report command."""
    p.description = ("Write RUN/report.md with PNG plots under RUN/plots/: behaviour change by label (Task 3), "
                     "steering heatmap and dose-response (Task 2), training and eval curves, Task 1 similarity vs "
                     "baselines, example predictions. " + __doc__.split("\n\n", 1)[1])
    p.add_argument("run", help="run directory (e.g. runs/demo)")
    p.add_argument("--progress-log", default="PROGRESS.md", help="research log the report appends to")


def main(args: argparse.Namespace) -> int:
    from records.errors import InputError

    run = Path(args.run)
    if not run.is_dir():
        raise InputError(f"{run}: run directory not found")
    from records.progress import append_phase

    check_inputs(run)
    path = build_report(run)
    print(f"report: {path}")
    append_phase(args.progress_log, "7", "report", "DONE", done=[f"{path} with {len(list((run / 'plots').glob('*.png')))} "
                 f"plots in {run / 'plots'}"], findings=[], next_step="read the report; iterate on the weakest task")
    return 0
