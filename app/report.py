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

from app.report_scores import (
    PEERS_NOTE,
    held_out_direction_lines,
    metrics_table,
    peer_lines,
    strict_lines,
    task1_scores,
)
from features.config import depth_warning
from records.jsonl import read_records, write_json_atomic
from records.schema import (
    ContextAblationRecord,
    ContextAblationSummary,
    FeaturesIndex,
    PredictionRow,
    RunManifest,
    SteeringRecord,
    SteeringSummary,
    read_eval_metrics,
    read_summary,
)

TASKS = {"task3": "Task 3: context ablation", "task2": "Task 2: steering", "task1": "Task 1: feature descriptions"}
BASELINES = ("explainer", "untrained", "majority", "nearest_neighbour")
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
        test = read_eval_metrics(metrics).splits.get("test", {})
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


def evidence_lines(run: Path) -> list[str]:
    """Summary lines of issue #28: any collapse flag of a task's evaluation, and Task 2's held-out direction."""
    from training import collapse
    from training.task1_evidence import gap_lines

    lines = []
    for task, title in TASKS.items():
        metrics = explainer_dir(run, task) / "final" / "eval" / "metrics.json"
        if not metrics.is_file():
            continue
        evaluation = read_eval_metrics(metrics)
        lines += [f"- {title}: **{line}**" for line in collapse.lines(evaluation.collapse)]
        gaps = gap_lines(evaluation.splits.get("test", {}).get("generative_explanation", {}), indent="  - ")
        if task == "task1" and gaps:
            lines += [f"- {title}, explainer - each method, paired over held-out clusters (MiniLM similarity; "
                      "attribute accuracy), 95% interval and sign-flip p:", *gaps]
        held = held_out_direction_lines(evaluation.splits, indent="  - ")
        if held:
            lines += [f"- {title}, held-out direction (generative explanation):", *held]
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


def _explainer_section(run: Path, plots: Path) -> list[str]:
    """Each task's explainer: training curves, held-out scores beside the baselines, example predictions."""
    md = ["## Explainer training and evaluation", ""]
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
            metrics = read_eval_metrics(eval_dir / "metrics.json")
            md += metrics_table(metrics) + [""]
            md += [f"- `{q}`: {line}" for q, ms in metrics.splits.get("test", {}).items() for line in peer_lines(ms)]
            md += ["", PEERS_NOTE, ""] if any(peer_lines(ms) for ms in metrics.splits.get("test", {}).values()) else []
            rows = read_records(eval_dir / "predictions.jsonl", PredictionRow, strict=True)
            if task == "task1":
                md += task1_scores(metrics)
            if task == "task1" and rows:
                means = plot_similarity(rows, plots / "task1_similarity.png")
                md += ["![similarity](plots/task1_similarity.png)", "",
                       "Mean similarity: " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()), ""]
            md += ["Example predictions (held-out):", "", *_examples_table(rows), ""]
    return md


def build_report(run: Path) -> Path:
    """Write RUN/report.md and RUN/plots/*.png from whatever stages the run holds; return the report path."""
    plots = run / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = f"_written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}_"
    md = [f"# af-introspect report: `{run}`", "", written, ""]
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
    # the demo's sampled pass beside its greedy one
    md += _sampled_section(run / "sampled" / "task3", plots, "sampled/task3")

    md += _compare_section(run, "task3", "Strict scores (training/metrics.py) on held-out triggers, bootstrap 95% "
                           "intervals resampling whole triggers; the cross explainer is the same recipe started from "
                           "the organism's twin.")

    t2 = run / "task2"
    if (t2 / "summary.json").is_file():
        from steering.plots import save_heatmap
        from steering.science import format_table

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

    md += _explainer_section(run, plots)
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
            read_eval_metrics(eval_dir / "metrics.json")
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
    n_plots = len(list((run / "plots").glob("*.png")))
    append_phase(args.progress_log, "7", "report", "DONE", done=[f"{path} with {n_plots} plots in {run / 'plots'}"],
                 findings=[], next_step="read the report; iterate on the weakest task")
    return 0
