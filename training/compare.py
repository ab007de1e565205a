"""`af-introspect compare`: does the explainer read its own model, or only the text? Self vs cross.

The paper's claim is privileged access: an explainer initialised from the model whose behaviour it
explains (self) beats the same recipe initialised from another model (cross) trained on the same
records. This trains both arms from one training config (only `model_path` differs), evaluates both
on the same held-out items, and scores them beside text-only baselines over the explainer's exact
input text (majority, TF-IDF nearest neighbour, TF-IDF + logistic regression) and the untrained self
explainer, with the paper's strict metrics (training/metrics.py) and bootstrap 95% intervals that
resample whole groups (e.g. every item of one held-out trigger). The headline is the paired gap
self - cross in strict exact match.

Task-agnostic: any training config (Task 3 hint_attribution, Task 2 act_patch) whose records carry
the task's examples works; `group_pattern` names what must be resampled together.
Writes <output_dir>/{self,cross}/ (each a normal training run with final/eval/), compare.json and
compare_table.txt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec

from records.config import load_config
from records.errors import InputError
from training import baselines, metrics

ARMS = ("self", "cross")
HEADLINE_QUESTION = "generative_explanation"


class CompareConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Both arms share `train_config` and `sets`; only the model the explainer starts from differs."""

    train_config: str  # the explainer recipe (training/config.py), e.g. configs/af_context_ablation_cpu.yaml
    self_model: str = ""  # "" = the training config's model_path (the model being explained)
    cross_model: str  # another model, trained on the same records: toy-twin, mistralai/Mistral-7B-v0.3, ...
    output_dir: str
    sets: list[str] = []  # --set overrides for both arms' training configs
    max_steps: int = 0  # cap each arm's training (0: the config's epochs)
    group_pattern: str = ""  # regex capture grouping test items for the bootstrap (records/split.py)
    n_bootstrap: int = metrics.N_BOOTSTRAP
    seed: int = metrics.BOOTSTRAP_SEED
    min_gap: float = 0.30  # the gap self - cross the verdict asks for (with its interval above 0)


def arm_config(cc: CompareConfig, arm: str):
    """The training config of one arm: the shared recipe with its own model_path and output_dir."""
    from training.config import load_train_config

    base = load_train_config(cc.train_config, cc.sets)
    model = (cc.self_model or base.model_path) if arm == "self" else cc.cross_model
    return load_train_config(cc.train_config, [*cc.sets, f"model_path={model}"], str(Path(cc.output_dir) / arm))


def train_arm(cfg, max_steps: int) -> Path:
    """Train one arm (debug run first, as `af-introspect train` insists), or reuse its finished run."""
    from training import distributed
    from training.train import main as train

    final = Path(cfg.output_dir) / "final"
    if (final / "COMPLETE").is_file():
        print(f"compare: reusing {final}")
        return final
    try:
        train(cfg, debug=True)
        resume = any((Path(cfg.output_dir) / "checkpoints").glob("*/COMPLETE"))
        train(cfg, resume=resume, max_steps=max_steps or None)
    finally:
        distributed.shutdown()
    return final


def evaluate_arm(cfg, untrained: bool) -> list[dict]:
    """Greedy test-split predictions of one arm (and of its untrained model), from evaluate's rows."""
    from records.jsonl import read_records
    from training.evaluate import run_evaluation

    result = run_evaluation(cfg, untrained=untrained)
    return [r for r in read_records(Path(result["out_dir"]) / "predictions.jsonl") if r["split"] == "test"]


def score_methods(test_ex: list, preds: dict[str, list[str]], groups: list, cc: CompareConfig) -> dict:
    """{question_type: {"n", "chance", "methods": {method: metrics with intervals}, "gaps": {...}}}."""
    out: dict = {}
    for q in dict.fromkeys(ex.question_type for ex in test_ex):
        idx = [i for i, ex in enumerate(test_ex) if ex.question_type == q]
        targets = [test_ex[i].target for i in idx]
        g = [groups[i] for i in idx]
        items = {m: metrics.score_items(q, [p[i] for i in idx], targets) for m, p in preds.items()}
        summary = {"n": len(idx), "n_groups": len(set(g)), "chance": metrics.chance_rate(targets),
                   "methods": {m: metrics.metrics_with_intervals(s, g, cc.n_bootstrap, cc.seed) for m, s in items.items()},
                   "gaps": {}}
        if "cross" in items:
            for other in ("cross", *(m for m in baselines.TEXT_BASELINES if m in items)):
                summary["gaps"][f"self-{other}"] = metrics.paired_gap(items["self"], items[other], groups=g,
                                                                     n_boot=cc.n_bootstrap, seed=cc.seed)
        out[q] = summary
    return out


def verdict(scores: dict, min_gap: float) -> dict:
    """Whether self beats cross by `min_gap` with the interval above 0, on the headline question."""
    q = HEADLINE_QUESTION if HEADLINE_QUESTION in scores else next(iter(scores))
    gap = scores[q]["gaps"]["self-cross"]
    return {"question_type": q, "gap": gap["value"], "lo": gap["lo"], "hi": gap["hi"],
            "privileged_access": bool(gap["value"] >= min_gap and gap["lo"] > 0)}


def run_compare(cc: CompareConfig) -> dict:
    from training.train import load_data, load_tokenizer
    from training import data as D
    from records.models import resolve_model
    from records.split import group_keys

    cfgs = {arm: arm_config(cc, arm) for arm in ARMS}
    rows = {}
    for arm in ARMS:
        train_arm(cfgs[arm], cc.max_steps)
        rows[arm] = evaluate_arm(cfgs[arm], untrained=arm == "self")
    tokenizer = load_tokenizer(resolve_model(cfgs["self"].model_path, "model_path"))
    data = load_data(cfgs["self"], tokenizer, {}, check_heldout=False)
    if any(ex.vector is not None for ex in data.train + data.test):
        raise InputError("compare's text baselines need text-only examples; this task feeds vectors")
    key = lambda ex: (ex.question_type, ex.sample_id)  # noqa: E731
    preds: dict[str, list[str]] = {}
    for arm, arm_rows in rows.items():
        by_method: dict[str, dict] = {}
        for r in arm_rows:
            by_method.setdefault(r["method"], {})[(r["question_type"], r["sample_id"])] = r["prediction"]
        names = {"explainer": arm, "untrained": "untrained"} if arm == "self" else {"explainer": arm}
        for method, name in names.items():
            preds[name] = [by_method[method][key(ex)] for ex in data.test]
    # the text baselines see exactly what the self explainer sees: its rendered prompt
    for q in dict.fromkeys(ex.question_type for ex in data.test):
        tr = [ex for ex in data.train if ex.question_type == q]
        te = [i for i, ex in enumerate(data.test) if ex.question_type == q]
        got = baselines.predict_all([D.prompt_text(tokenizer, ex.messages) for ex in tr], [ex.target for ex in tr],
                                    [D.prompt_text(tokenizer, data.test[i].messages) for i in te], cc.seed)
        for name, p in got.items():
            preds.setdefault(name, [""] * len(data.test))
            for i, pred in zip(te, p):
                preds[name][i] = pred
    groups = group_keys([ex.input_text for ex in data.test], cc.group_pattern)
    scores = score_methods(data.test, preds, groups, cc)
    result = {"config": msgspec.to_builtins(cc), "models": {a: cfgs[a].model_path for a in ARMS},
              "scores": scores, "verdict": verdict(scores, cc.min_gap)}
    out = Path(cc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(result)
    (out / "compare_table.txt").write_text(table + "\n")
    print(table)
    return result


METHOD_ORDER = ("self", "cross", "untrained", "majority", "nearest_neighbour", "text_classifier")


def format_table(result: dict) -> str:
    """Per question type: each method's strict scores with 95% intervals, chance, and the gaps."""
    lines = []
    for q, s in result["scores"].items():
        lines.append(f"{q} (n={s['n']}, {s['n_groups']} groups; chance {s['chance']:.2f})")
        cols = [c for c in ("strict_exact_match", "changed_f1", "unchanged_f1") if c in s["methods"]["self"]]
        lines.append(f"  {'method':<18}" + "".join(f"{c:>26}" for c in cols))
        for m in METHOD_ORDER:
            if m in s["methods"]:
                cells = "".join(f"{_ci(s['methods'][m][c]):>26}" for c in cols)
                lines.append(f"  {m:<18}{cells}")
        for name, g in s["gaps"].items():
            lines.append(f"  gap {name:<14} {_ci(g):>26}")
    v = result["verdict"]
    lines.append(f"verdict ({v['question_type']}): self - cross = {v['gap']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]: "
                 + ("privileged access shown" if v["privileged_access"] else "NO privileged access shown"))
    return "\n".join(lines)


def change_rate_lines(records_dir: Path) -> list[str]:
    """Behaviour change rate of a Task 3 records folder, with the noise floor of each context beside it.

    The noise floor is the same prompt run twice (second copy at another batch position, not sharing
    the first copy's prefix cache): a change there is the engine's, not monitoring's.
    """
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    records = read(records_dir / "train.json") + read(records_dir / "test.json")
    if not records:
        return []
    lines = [f"behaviour changed (monitored -> unmonitored): "
             f"{_ci(metrics.rate_with_interval([r['behavior_changed'] for r in records]))} of {len(records)} pairs"]
    controls = read(records_dir / "noise_control.jsonl")
    for side in dict.fromkeys(c["context"] for c in controls):
        cs = [c for c in controls if c["context"] == side]
        lines.append(f"  noise floor, {side} twice: behaviour changed "
                     f"{_ci(metrics.rate_with_interval([c['behavior_changed'] for c in cs]))}, output changed "
                     f"{_ci(metrics.rate_with_interval([c['output_changed'] for c in cs]))} of {len(cs)}")
    return lines


def _ci(m: dict) -> str:
    return f"{m['value']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] + " " + " ".join(__doc__.split("\n\n")[1].split())
    p.add_argument("--config", required=True, help="YAML decoded into training.compare.CompareConfig")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a compare config field")
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--progress-log", default="PROGRESS.md", help="research log the comparison appends to")


def main(args: argparse.Namespace) -> int:
    from records.config import parse_set_args
    from records.progress import append_phase

    overrides = parse_set_args(args.set)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cc = load_config(args.config, CompareConfig, overrides)
    result = run_compare(cc)
    append_phase(args.progress_log, "6", f"self vs cross explainer ({args.config})", "DONE",
                 done=[f"self ({result['models']['self']}) and cross ({result['models']['cross']}) -> {cc.output_dir}"],
                 findings=["```", *format_table(result).splitlines(), "```"],
                 next_step="af-introspect report <run dir>")
    return 0
