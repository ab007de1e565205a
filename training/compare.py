"""`af-introspect compare`: does the explainer read its own model, or only the text? Self vs cross.

The paper's claim is privileged access: an explainer initialised from the model whose behaviour it
explains (self) beats the same recipe initialised from another model (cross) trained on the same
records. This trains both arms from one training config (only `model_path` differs), evaluates both
on the same held-out items, and scores them beside text-only baselines over the explainer's exact
input text (majority, TF-IDF nearest neighbour, TF-IDF + logistic regression) and the untrained self
explainer, with the paper's strict metrics (training/metrics.py) and bootstrap 95% intervals that
resample whole groups (e.g. every item of one held-out trigger). The headline is the paired gap
self - cross in strict exact match.

Task-agnostic: any training config works (Task 3 hint_attribution, Task 2 act_patch); the text
baselines see the prompt text only, never a vector, so on a vector task they are the vector-free
baselines. `group_pattern` names what the bootstrap resamples together.
Writes <output_dir>/{self,cross}/ (each a normal training run with final/eval/), compare.json
(records.schema.CompareResult) and compare_table.txt.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import msgspec

from records.config import load_config
from records.errors import InputError, StageFailure
from records.jsonl import read_records, write_json_atomic
from records.schema import (
    CompareResult,
    CompareVerdict,
    ContextAblationRecord,
    ControlRecord,
    Interval,
    PredictionRow,
    QuestionComparison,
    read_summary,
)
from training import baselines, metrics
from training.config import Count, NonNegative

log = logging.getLogger(__name__)
ARMS = ("self", "cross")
HEADLINE_QUESTION = "generative_explanation"
# Methods of the self arm's own evaluation carried into the comparison where evaluate scored them: the
# steering lookup table and no-effect bound, and the self explainer with its vectors broken.
SELF_EVAL_METHODS = ("untrained", "lookup", "no_effect", "zeroed_vectors", "shuffled_vectors")
METHOD_ORDER = ("self", "cross", *SELF_EVAL_METHODS, *baselines.TEXT_BASELINES)


class CompareConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Both arms share `train_config` and `sets`; only the model the explainer starts from differs."""

    train_config: str  # the explainer recipe (training/config.py), e.g. configs/af_context_ablation_cpu.yaml
    self_model: str = ""  # "" = the training config's target_model_path: the model being explained
    cross_model: str  # another model, trained on the same records: toy-twin, mistralai/Mistral-7B-v0.3, ...
    output_dir: str
    sets: list[str] = []  # --set overrides for both arms' training configs
    max_steps: NonNegative = 0  # cap each arm's training (0: the config's epochs)
    group_pattern: str = ""  # regex capture grouping test items for the bootstrap (records/split.py)
    n_bootstrap: Count = metrics.N_BOOTSTRAP
    seed: int = metrics.BOOTSTRAP_SEED
    min_gap: float = 0.30  # the gap self - cross the verdict asks for (with its interval above 0)
    # Train both arms at once, each in its own process on half the CPU threads (CPU runs of a small model:
    # two one-thread trainings finish sooner than two two-thread ones in turn). Off for GPU runs.
    parallel_arms: bool = False


def arm_config(cc: CompareConfig, arm: str):
    """The training config of one arm: the shared recipe with its own model_path and output_dir."""
    from training.config import load_train_config

    base = load_train_config(cc.train_config, cc.sets)
    model = (cc.self_model or base.target_model_path) if arm == "self" else cc.cross_model
    return load_train_config(cc.train_config, [*cc.sets, f"model_path={model}"], str(Path(cc.output_dir) / arm))


ARM_FINGERPRINT = "arm.json"  # <output_dir>/<arm>/arm.json: what the arm was trained from and on


def arm_fingerprint(cfg, max_steps: int) -> dict[str, str]:
    """What one arm's training depends on: the model it starts from (by its weights), the content of every
    records folder and eval set it reads, the recipe (config hash, its own output folder aside) and the
    step cap. A finished arm is reused only when all of them are unchanged."""
    from lm.models import resolve_model
    from records.config import config_hash
    from records.provenance import folder_fingerprint, model_weights_id
    from training.examples import dataset_dir

    fp = {"model": cfg.model_path, "model_weights": model_weights_id(resolve_model(cfg.model_path, "model_path")),
          "recipe": config_hash(msgspec.structs.replace(cfg, output_dir="")), "max_steps": str(max_steps)}
    fp.update({f"records {task}": folder_fingerprint(dataset_dir(cfg, task)) for task in cfg.train.tasks})
    fp.update({f"eval set {path}": folder_fingerprint(path) for path in cfg.train.eval_sets})
    return fp


def check_arm_reuse(arm_dir: Path, arm: str, fp: dict[str, str]) -> None:
    """Refuse an arm folder whose earlier run started from another model, read other records or ran
    another recipe (its arm.json differs), or that holds training without an arm.json to tell."""
    saved_path = arm_dir / ARM_FINGERPRINT
    if saved_path.is_file():
        try:
            saved = msgspec.json.decode(saved_path.read_bytes(), type=dict[str, str])
        except msgspec.DecodeError as e:
            raise InputError(f"{saved_path}: unreadable arm fingerprint ({e})") from None
        changed = [f"{arm_dir}: the {arm} arm there was trained with {k} {saved.get(k, '(none)')!r}; this run asks "
                   f"for {v!r}" for k, v in fp.items() if saved.get(k) != v]
        if changed:
            raise InputError(changed + [f"{arm_dir}: refusing to reuse or continue it (its scores would be reported "
                                        "under this run's settings): choose another --output-dir, or remove it"])
    elif (arm_dir / "final").exists() or (arm_dir / "checkpoints").exists():
        raise InputError(f"{arm_dir}: holds a {arm} arm trained without {ARM_FINGERPRINT}, so nothing tells what "
                         "model and records it was trained on: choose another --output-dir, or remove it")


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


def _train_arm_in_process(cfg, max_steps: int, toy_builder, threads: int) -> str:
    """Worker of parallel_arms: a fresh interpreter, so the toy-organism hook and thread count are set here."""
    import torch

    from lm.models import provide_toy_organism

    torch.set_num_threads(threads)
    provide_toy_organism(toy_builder)
    return str(train_arm(cfg, max_steps))


def train_arms(cfgs: dict, cc: CompareConfig) -> None:
    """Train every arm, in turn or (parallel_arms) at once in spawned processes."""
    todo = [arm for arm in ARMS if not (Path(cfgs[arm].output_dir) / "final" / "COMPLETE").is_file()]
    if not cc.parallel_arms or len(todo) < 2:
        for arm in ARMS:
            train_arm(cfgs[arm], cc.max_steps)
        return
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    from lm.models import toy_builder

    threads = max(1, (os.cpu_count() or 2) // len(todo))
    print(f"compare: training {', '.join(todo)} at once, {threads} thread(s) each")
    with ProcessPoolExecutor(len(todo), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_train_arm_in_process, cfgs[arm], cc.max_steps, toy_builder(), threads) for arm in todo]
        for f in futures:
            f.result()  # a failed arm raises here, with its own error


def evaluate_arm(cfg, arm: str) -> list[PredictionRow]:
    """Greedy test-split predictions of one arm, from evaluate's rows; the self arm's evaluation also
    holds its untrained model and its vector controls, which the comparison carries (SELF_EVAL_METHODS)."""
    from training.evaluate import run_evaluation

    result = run_evaluation(cfg, untrained=arm == "self", controls=arm == "self")
    return [r for r in read_records(Path(result["out_dir"]) / "predictions.jsonl", PredictionRow, strict=True)
            if r.split == "test"]


def answered(method: str, question_type: str, answers: list) -> bool:
    """Whether a method answered a question type: evaluate leaves out what a method is not scored on (a
    vector control where the prompt has no vector). Some items answered and others not is a broken arm,
    never a wrong answer."""
    missing = sum(a is None for a in answers)
    if missing and missing < len(answers):
        raise StageFailure(f"compare: {method} answered {len(answers) - missing} of {len(answers)} "
                           f"{question_type} test items; rerun its evaluation")
    return not missing


def score_methods(test_ex: list, preds: dict[str, list], groups: list, cc: CompareConfig
                  ) -> dict[str, QuestionComparison]:
    """Per question type: every method's strict scores with intervals, and self's paired gaps."""
    out = {}
    for q in dict.fromkeys(ex.question_type for ex in test_ex):
        idx = [i for i, ex in enumerate(test_ex) if ex.question_type == q]
        targets = [test_ex[i].target for i in idx]
        g = [groups[i] for i in idx]
        items = {m: metrics.strict_items(q, [p[i] for i in idx], targets) for m, p in preds.items()
                 if not (m == "no_effect" and q == "orig_match")  # its answer there is the truth
                 and answered(m, q, [p[i] for i in idx])}
        methods = {m: metrics.metrics_with_intervals(s, g, cc.n_bootstrap, cc.seed) for m, s in items.items()}
        gaps = {f"self-{other}": metrics.paired_gap(items["self"], items[other], groups=g, n_boot=cc.n_bootstrap,
                                                    seed=cc.seed)
                for other in METHOD_ORDER[1:] if other in items and other not in ("untrained", "no_effect")}
        out[q] = QuestionComparison(n=len(idx), n_groups=len(set(g)), chance=metrics.chance_rate(targets),
                                    methods=methods, gaps=gaps)
    return out


def verdict(scores: dict[str, QuestionComparison], min_gap: float) -> CompareVerdict:
    """Whether self beats cross by `min_gap` with the interval above 0, on the headline question."""
    q = HEADLINE_QUESTION if HEADLINE_QUESTION in scores else next(iter(scores))
    gap = scores[q].gaps["self-cross"]
    return CompareVerdict(question_type=q, gap=gap, min_gap=min_gap,
                          privileged_access=bool(gap.value >= min_gap and gap.lo > 0))


def text_baseline_predictions(data, tokenizer, seed: int, test: list) -> dict[str, list[str | None]]:
    """Each text baseline's answer to every example of `test`, fitted per question type on the training
    examples' rendered prompts: exactly the text the explainer sees (no vector). An item left unanswered
    stays None, which `answered` refuses, never "" (a wrong answer)."""
    from training.data import prompt_text

    preds: dict[str, list[str | None]] = {name: [None] * len(test) for name in baselines.TEXT_BASELINES}
    for q in dict.fromkeys(ex.question_type for ex in test):
        tr = [ex for ex in data.train if ex.question_type == q]
        te = [i for i, ex in enumerate(test) if ex.question_type == q]
        if not tr:
            raise InputError(f"question type {q}: no training examples for the text baselines to fit on")
        got = baselines.predict_all([prompt_text(tokenizer, ex.messages) for ex in tr], [ex.target for ex in tr],
                                    [prompt_text(tokenizer, test[i].messages) for i in te], seed)
        for name, p in got.items():
            for i, pred in zip(te, p):
                preds[name][i] = pred
    return preds


def run_compare(cc: CompareConfig) -> CompareResult:
    from lm.models import resolve_model
    from records.split import group_keys
    from training.dataset import load_data
    from training.evaluate import split_by_direction
    from training.model import load_tokenizer

    cfgs = {arm: arm_config(cc, arm) for arm in ARMS}
    for arm in ARMS:  # both models must be at hand before either arm spends hours training
        resolve_model(cfgs[arm].model_path, f"{arm} model")
    # every arm folder checked before any is trained: a reused arm must be what this run asks for
    fingerprints = {arm: arm_fingerprint(cfgs[arm], cc.max_steps) for arm in ARMS}
    for arm in ARMS:
        check_arm_reuse(Path(cfgs[arm].output_dir), arm, fingerprints[arm])
    for arm in ARMS:
        write_json_atomic(Path(cfgs[arm].output_dir) / ARM_FINGERPRINT, fingerprints[arm])
    if cfgs["self"].model_path == cfgs["cross"].model_path:
        log.warning("self and cross both start from %s: the gap is 0 by construction (a control, not a comparison)",
                    cfgs["self"].model_path)
    train_arms(cfgs, cc)
    rows = {arm: evaluate_arm(cfgs[arm], arm) for arm in ARMS}
    tokenizer = load_tokenizer(resolve_model(cfgs["self"].model_path, "model_path"))
    data = load_data(cfgs["self"], tokenizer, {}, paths=None)
    test = split_by_direction(data.train, data.test)["test"]  # the items evaluate scored as "test"
    preds: dict[str, list[str | None]] = {}
    for arm, arm_rows in rows.items():
        by_method: dict[str, dict] = {}
        for r in arm_rows:
            by_method.setdefault(r.method, {})[(r.question_type, r.sample_id)] = r.prediction
        names = {"explainer": arm, **{m: m for m in SELF_EVAL_METHODS if m in by_method}} if arm == "self" \
            else {"explainer": arm}
        for method, name in names.items():
            preds[name] = [by_method[method].get((ex.question_type, ex.sample_id)) for ex in test]  # None: not asked
    preds.update(text_baseline_predictions(data, tokenizer, cc.seed, test))
    # a scenario's items (Task 2: one per arm) are resampled together; else the pattern's groups
    groups = ([ex.meta["group"] for ex in test] if all("group" in ex.meta for ex in test)
              else group_keys([ex.input_text for ex in test], cc.group_pattern))
    scores = score_methods(test, preds, groups, cc)
    result = CompareResult(train_config=cc.train_config, models={a: cfgs[a].model_path for a in ARMS},
                           group_pattern=cc.group_pattern, scores=scores, verdict=verdict(scores, cc.min_gap),
                           arms=fingerprints)
    out = Path(cc.output_dir)
    write_json_atomic(out / "compare.json", result)
    table = format_table(result)
    (out / "compare_table.txt").write_text(table + "\n")
    print(table)
    return result


def read_result(path: str | Path) -> CompareResult:
    return read_summary(Path(path), CompareResult)


def format_table(result: CompareResult) -> str:
    """Per question type: each method's strict scores with 95% intervals, chance, and the gaps."""
    lines = []
    for q, s in result.scores.items():
        lines.append(f"{q} (n={s.n}, {s.n_groups} groups; chance {s.chance:.2f})")
        cols = [c for c in ("strict_exact_match", "changed_f1", "unchanged_f1") if c in s.methods["self"]]
        lines.append(f"  {'method':<18}" + "".join(f"{c:>22}" for c in cols))
        for m in METHOD_ORDER:
            if m in s.methods:
                lines.append(f"  {m:<18}" + "".join(f"{_ci(s.methods[m][c]):>22}" for c in cols))
        for name, g in s.gaps.items():
            lines.append(f"  gap {name:<24}{_ci(g, signed=True):>12}")
        lines += [f"  NOTE: {m} reaches self ({_reach(s, m)}): on this question self's score does not show that it "
                  "reads its own model" for m in METHOD_ORDER[1:] if m in s.methods and _reaches(s, m)]
    v = result.verdict
    lines.append(f"verdict ({v.question_type}): self - cross = {_ci(v.gap, signed=True)}: "
                 + ("privileged access shown" if v.privileged_access else
                    f"NO privileged access shown (needs >= {v.min_gap:.2f} with the interval above 0)"))
    return "\n".join(lines)


def change_rate_lines(records_dir: Path) -> list[str]:
    """Behaviour change rate of a Task 3 records folder, with the noise floor of each context beside it.

    The noise floor is the same prompt run twice (second copy at another batch position, not sharing
    the first copy's prefix cache): a change there is the engine's, not monitoring's.
    """
    records = [r for split in ("train.jsonl", "test.jsonl")
               for r in read_records(records_dir / split, ContextAblationRecord, strict=True)]
    if not records:
        return []
    lines = [f"behaviour changed (monitored -> unmonitored): "
             f"{_ci(metrics.rate_with_interval([r.behavior_changed for r in records]))} of {len(records)} pairs"]
    controls = read_records(records_dir / "noise_control.jsonl", ControlRecord, strict=True)
    for side in dict.fromkeys(c.context for c in controls):
        cs = [c for c in controls if c.context == side]
        lines.append(f"  noise floor, {side} twice: behaviour changed "
                     f"{_ci(metrics.rate_with_interval([c.behavior_changed for c in cs]))}, output changed "
                     f"{_ci(metrics.rate_with_interval([c.output_changed for c in cs]))} of {len(cs)}")
    return lines


def _reaches(s: QuestionComparison, method: str) -> bool:
    """The paired gap self - method reaches 0; without one (untrained, no_effect), the method's interval
    reaches self's score."""
    gap = s.gaps.get(f"self-{method}")
    return metrics.baseline_reaches(s.methods["self"]["strict_exact_match"].value,
                                    s.methods[method]["strict_exact_match"].hi, gap.lo if gap is not None else None)


def _reach(s: QuestionComparison, method: str) -> str:
    gap = s.gaps.get(f"self-{method}")
    if gap is not None:
        return f"self - {method} = {_ci(gap, signed=True)}, paired"
    return f"{_ci(s.methods[method]['strict_exact_match'])} vs {s.methods['self']['strict_exact_match'].value:.2f}"


def _ci(m: Interval, signed: bool = False) -> str:
    f = "+.2f" if signed else ".2f"
    return f"{m.value:{f}} [{m.lo:{f}}, {m.hi:{f}}]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__.split("\n\n")[0] + " " + " ".join(__doc__.split("\n\n")[1].split())
    p.add_argument("--config", required=True, help="YAML decoded into training.compare.CompareConfig "
                   "(configs/compare_task3_cpu.yaml: the toy; compare_task3.yaml: the server)")
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
                 done=[f"self ({result.models['self']}) and cross ({result.models['cross']}) -> {cc.output_dir}"],
                 findings=["```", *format_table(result).splitlines(), "```"],
                 next_step="af-introspect report <run dir>")
    return 0
