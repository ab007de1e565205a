"""`af-introspect demo`: the whole pipeline on the embedded toy organism, CPU, in a few minutes.

organism (build or reuse) -> synthetic assets -> preflight -> Task 3 paired pass on vLLM -> a steering
direction derived from the organism and a steering grid -> Task 1 features -> train the self-explainer
on each task -> evaluate against baselines -> for Tasks 3 and 2, also the cross explainer (the organism's
twin, another secret) and the text-only baselines: `compare` -> report. Every stage is the same subcommand a
user runs by hand, called with the CPU configs; the real thing is the same sequence with the GPU configs and
configs/paths.yaml pointing at the real assets (see README).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from app.report import explainer_dir, peer_lines, strict_lines
from records.errors import EXIT_BAD_INPUT, InputError, StageFailure
from records.schema import ContextAblationSummary, EvalMetrics, SteeringSummary, read_eval_metrics, read_summary
from training.collapse import lines as collapse_lines

# (task folder, training config stem, records folder inside the run)
EXPLAINERS = (
    ("task3", "af_context_ablation", "task3"),
    ("task2", "af_steering", "task2"),
    ("task1", "af_feature_descriptions", "task1/by_cluster"),
)
STAGE_CONFIGS = ("generate", "steer", "features")
COMPARED = ("task3", "task2")  # tasks whose explainer is the self arm of a self-vs-cross comparison


def config_path(stem: str, profile: str) -> str:
    """configs/<stem>_cpu.yaml for the toy profile, configs/<stem>.yaml (GPU, real assets) for the real one."""
    return f"configs/{stem}_cpu.yaml" if profile == "toy" else f"configs/{stem}.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the demo."""
    p.description = __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1].replace("\n", " ")
    p.add_argument("--profile", choices=["toy", "real"], default="toy",
                   help="toy: the embedded organism and synthetic assets on CPU (configs/*_cpu.yaml); real: the "
                        "GPU configs (configs/*.yaml) on the assets of --paths-config, nothing synthetic")
    p.add_argument("--paths-config", default="configs/paths.yaml", help="real profile: where the assets are")
    p.add_argument("--run-dir", default="runs/demo", help="everything the demo writes goes here")
    p.add_argument("--scenarios", type=int, default=200, help="synthetic scenarios (Task 3 pairs)")
    p.add_argument("--test-size", type=int, default=60, help="held-out scenarios (Task 3: whole triggers; Task 2)")
    p.add_argument("--steer-scenarios", type=int, default=40, help="scenarios in the steering grid")
    p.add_argument("--sampled-scenarios", type=int, default=40,
                   help="toy: a Task 3 pass in sampled mode (8 samples per prompt and context, temperature 1) on "
                        "the first N scenarios, beside the greedy pass: the compliance gap in report.md (0: skip)")
    p.add_argument("--max-steps", type=int, default=0, help="cap each explainer's training (0: the config's epochs)")
    p.add_argument("--tasks", default="task3,task2,task1", help="which explainers to train, comma-separated")
    p.add_argument("--progress-log", help="research log the stages append to (default: RUN_DIR/PROGRESS.md; the "
                                          "repository's PROGRESS.md is for real runs)")


def _cli(argv: list) -> None:
    """One stage through the CLI; its failure keeps its kind (exit 2: bad input, exit 1: the stage failed)."""
    from app.cli import main as cli_main

    _check_exit(argv[0], cli_main([str(a) for a in argv]), "above")


def _check_exit(command: str, code: int, where: str) -> None:
    if code == EXIT_BAD_INPUT:
        raise InputError(f"demo stage `{command}` refused its input (exit {code}); its message is {where}")
    if code:
        raise StageFailure(f"demo stage `{command}` failed (exit {code}); its message is {where}")


def _paths_yaml(run: Path, assets: Path) -> Path:
    """A paths config for the synthetic assets (the toy stand-in for configs/paths.yaml)."""
    path = run / "paths.yaml"
    path.write_text("# written by af-introspect demo: the synthetic assets of this run\n"
                    f"data_root: {assets.resolve()}\n")
    return path


def check_explainer_folder(config: str, sets: list[str], out: Path, max_steps: int) -> None:
    """An explainer folder of an earlier demo run is reused or resumed only when it was trained from the
    model, records and recipe this run asks for (training/compare.py's arm fingerprint); else refused. The
    fingerprint is written before training, so a later run can tell."""
    from records.jsonl import write_json_atomic
    from training.compare import ARM_FINGERPRINT, arm_fingerprint, check_arm_reuse
    from training.config import load_train_config

    fp = arm_fingerprint(load_train_config(config, sets, str(out)), max_steps)
    check_arm_reuse(out, "explainer", fp)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / ARM_FINGERPRINT, fp)


def _final_table(run: Path, timings: dict[str, float], total: float | None = None) -> list[str]:
    """Per task: records, % behaviour changed, explainer score vs baselines on held-out data."""
    lines = [f"{'task':<8} {'records':>8} {'changed':>8}  {'metric':<22} {'explainer':>9} {'untrained':>9} "
             f"{'majority':>9} {'nearest':>9}"]
    for task, _, folder in EXPLAINERS:
        data = run / folder
        n = sum(1 for split in ("train.jsonl", "test.jsonl") if (data / split).is_file()
                for line in (data / split).read_text().splitlines() if line.strip())
        changed = "-"
        summary = run / task / "summary.json"
        if task == "task3" and summary.is_file():
            changed = f"{read_summary(summary, ContextAblationSummary).behavior_changed_rate:.0%}"
        if task == "task2" and summary.is_file():
            rates = [a.behavior_changed_rate for a in read_summary(summary, SteeringSummary).per_arm.values()
                     if a.behavior_changed_rate is not None]
            changed = f"{sum(rates) / len(rates):.0%}" if rates else "-"
        metrics = explainer_dir(run, task) / "final" / "eval" / "metrics.json"
        if not metrics.is_file():
            lines.append(f"{task:<8} {n:>8} {changed:>8}  (explainer not trained)")
            continue
        evaluation = read_eval_metrics(metrics)
        test = evaluation.splits.get("test", {})
        key = "semantic_similarity" if task == "task1" else "exact_match"
        q = "generative_explanation" if "generative_explanation" in test else next(iter(test), "-")
        methods = test.get(q, {})

        def cell(m: str, methods: dict = methods, key: str = key) -> str:
            return f"{methods[m][key]:.2f}" if m in methods and key in methods[m] else "-"

        lines.append(f"{task:<8} {n:>8} {changed:>8}  {q + ' ' + key[:5]:<22} {cell('explainer'):>9} "
                     f"{cell('untrained'):>9} {cell('majority'):>9} {cell('nearest_neighbour'):>9}")
        if "zeroed_vectors" in methods and task == "task1":  # Task 2's are in the strict line below
            lines.append(f"         {key} with the vectors broken (bug injection): zeroed {cell('zeroed_vectors')}, "
                         f"shuffled {cell('shuffled_vectors')}")
        if task == "task1":
            lines += _task1_lines(evaluation, q)
        lines += strict_lines(methods, indent="         ")
        lines += peer_lines(methods, indent="         ")
        lines += _held_out_direction_line(evaluation.splits)
        lines += [f"         {line}" for line in collapse_lines(evaluation.collapse)]
    from training.compare import change_rate_lines, format_table, read_result

    for task, what in (("task3", "held-out scenarios (whole triggers)"), ("task2", "held-out scenarios")):
        compare = run / f"compare_{task}" / "compare.json"
        if compare.is_file():
            lines += ["", f"Task {task[-1]}, self vs cross explainer and vector-free baselines on {what} (strict "
                      "scores, bootstrap 95% intervals over groups):",
                      *(change_rate_lines(run / "task3") if task == "task3" else []),
                      *format_table(read_result(compare)).splitlines()]
    total = sum(timings.values()) if total is None else total  # the real wall, setup between stages included
    lines.append("wall: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    return lines


def _held_out_direction_line(splits: dict) -> list[str]:
    """Task 2: the explainer on a steering direction it never saw in training, beside its bounds."""
    from app.report import held_out_direction_lines

    return held_out_direction_lines(splits, indent="         ")


def _task1_lines(evaluation: EvalMetrics, q: str) -> list[str]:
    """Task 1's other judges of the held-out descriptions: the paper's LM judge (or that none is configured:
    no judge model ships for CPU) and the mean per-attribute accuracy of every method beside its chance."""
    methods = evaluation.splits["test"][q]
    order = [m for m in ("explainer", "untrained", "majority", "nearest_neighbour", "vector_probe", "zeroed_vectors",
                         "shuffled_vectors") if m in methods]

    def row(key: str) -> str:
        return ", ".join(f"{m} {methods[m][key]:.2f}" for m in order if key in methods[m])

    lines = [f"         LM judge ({evaluation.feature_judge}, (s-1)/4): {row('lm_judge')}" if evaluation.feature_judge
             else "         LM judge: not configured (test.feature_judge.model; no judge model ships for CPU)"]
    scoring = evaluation.attributes.get("test", {}).get(q)
    if scoring:
        chance = sum(scoring.chance.values()) / len(scoring.chance)
        lines.append(f"         attribute accuracy (mean of {', '.join(sorted(scoring.chance))}): "
                     f"{row('attribute_mean')}; chance {chance:.2f}")
    from training.task1_evidence import gap_lines

    return lines + gap_lines(methods, indent="         ")


def explainer_stages(run: Path, task: str, stem: str, folder: str, paths: Path, log, args) -> list[tuple[str, list]]:
    """An explainer outside a comparison: debug run, training, evaluation; only the evaluation when the folder
    holds a finished explainer of this same recipe and data (check_explainer_folder refuses any other)."""
    out = run / f"explainer_{task}"
    sets = [f"train.dataset={run / folder}", f"train.paths={paths}"]
    common = ["--config", config_path(stem, args.profile), "--output-dir", out,
              *[arg for item in sets for arg in ("--set", item)]]
    check_explainer_folder(config_path(stem, args.profile), sets, out, int(args.max_steps or 0))
    stages: list[tuple[str, list]] = []
    if (out / "final" / "COMPLETE").is_file():
        print(f"\n=== train-{task}: reusing {out / 'final'} ===")
    else:
        resume = ["--resume"] if any((out / "checkpoints").glob("*/COMPLETE")) else []
        stages += [(f"train-{task}-debug", ["train", *common, "--debug"]),
                   (f"train-{task}", ["train", *common, *resume, "--progress-log", log]
                    + (["--max-steps", args.max_steps] if args.max_steps else []))]
    return stages + [(f"evaluate-{task}", ["evaluate", *common, "--progress-log", log])]


def main(args: argparse.Namespace) -> int:
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    assets = run / "assets"
    log = args.progress_log or run / "PROGRESS.md"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def stage(name: str, argv: list) -> None:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        _cli(argv)
        timings[name] = time.perf_counter() - t
        print(f"=== {name}: {timings[name]:.0f}s ===", flush=True)

    cfg = {stem: config_path(stem, args.profile) for stem in STAGE_CONFIGS}
    if args.profile == "toy":
        # seed 1: scenarios drawn apart from the organism's own training draw (seed 0)
        stage("organism+assets", ["organism", "--assets", assets, "--n-scenarios", args.scenarios, "--seed", 1])
        paths = _paths_yaml(run, assets)
        sizes = ["--test-size", args.test_size]
    else:
        paths, sizes = Path(args.paths_config), []
    stage("preflight", ["preflight", "--paths-config", paths, "--out-dir", run, "--progress-log", log,
                        "--features-config", cfg["features"]])
    stage("generate", ["generate", "--config", cfg["generate"], "--paths-config", paths,
                       "--output-dir", run / "task3", *sizes, "--set", f"progress_log={log}"])
    # beside greedy: rates and the gap, not one output. One level down, so that a run still holds one records
    # folder per task (export introspective-interp --run RUN)
    if args.profile == "toy" and args.sampled_scenarios:
        stage("generate-sampled", ["generate", "--config", cfg["generate"], "--paths-config", paths,
                                   "--output-dir", run / "sampled" / "task3", "--samples", 8, "--max-new-tokens", 32,
                                   "--limit", args.sampled_scenarios,
                                   "--test-size", max(1, args.sampled_scenarios // 4),
                                   "--set", f"progress_log={log}"])
    if args.profile == "toy":  # the real run steers along the user's af_intent_direction.npy
        stage("steer-direction", ["steer", "--config", cfg["steer"], "--paths-config", paths,
                                  "--derive-direction", "--layer", 2, "--out", run / "directions",
                                  # the grid's own split, so the direction never sees its test scenarios
                                  "--limit", args.steer_scenarios, "--test-size", max(1, args.steer_scenarios // 4)])
        steer_extra = ["--direction", sorted((run / "directions").glob("*.npy"))[-1], "--limit", args.steer_scenarios,
                       "--test-size", max(1, args.steer_scenarios // 4)]
    else:
        steer_extra = []
    stage("steer", ["steer", "--config", cfg["steer"], "--paths-config", paths, "--output-dir", run / "task2",
                    *steer_extra, "--set", f"progress_log={log}"])
    stage("features", ["features", "--config", cfg["features"], "--paths-config", paths,
                       "--output-dir", run / "task1", "--set", f"progress_log={log}"])
    wanted = set(args.tasks.split(","))
    alone = [s for task, stem, folder in EXPLAINERS if task in wanted and task not in COMPARED
             for s in explainer_stages(run, task, stem, folder, paths, log, args)]
    # Task 1 after the comparisons: run beside them (one thread, in a child process) it cost the demo ~50 s on
    # 2 cores, since each comparison's two arms already train one thread each (2026-12-07, launch/demo.sh)
    for task, _, folder in EXPLAINERS:
        if task in wanted and task in COMPARED:  # self vs cross: the self arm is this task's explainer
            sets = json.dumps([f"train.dataset={run / folder}", f"train.paths={paths}"])
            stage(f"compare-{task}", ["compare", "--config", config_path(f"compare_{task}", args.profile),
                                      "--output-dir", run / f"compare_{task}", "--set", f"sets={sets}",
                                      "--set", f"max_steps={args.max_steps}", "--progress-log", log])
    for name, argv in alone:
        stage(name, argv)
    stage("report", ["report", run, "--progress-log", log])
    print("\n" + "\n".join(_final_table(run, timings, time.perf_counter() - t_start)))
    print(f"\nreport: {run / 'report.md'} (plots in {run / 'plots'}); research log: {log}")
    return 0
