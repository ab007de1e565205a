"""`af-introspect label` on records folders: relabelling reproduces the split files byte for byte when the
labeller is unchanged, changes only label-derived fields when it changed, and never writes the source."""

import hashlib
import json
from pathlib import Path

import msgspec
import pytest
from label_corpus import corpus
from toy_records import context_records, organism_tokenizer

from app.cli import main as cli
from generation.outputs import summarise as summarise_task3
from lm.labels import rule_label
from organism.scenarios import generate_scenarios
from records.config import encode_config
from records.jsonl import read_records, write_json_atomic, write_records_atomic
from records.schema import ContextAblationRecord, ControlRecord, EngineInfo, PatchPosition, SteeringRecord
from steering import grid
from steering.config import SteerConfig
from steering.science import summarise as summarise_task2

TASK3_LABEL_FIELDS = {"random_hint_prediction", "zeroshot_prediction", "monitored_behavior", "unmonitored_behavior",
                      "behavior_changed", "labeller"}
TASK2_LABEL_FIELDS = {"gt_original_target", "gt_counterfactual_target", "baseline_behavior", "steered_behavior",
                      "behavior_changed", "labeller"}
ENGINE = EngineInfo(backend="hf", model="toy", dtype="float32", max_tokens=64)


def _label(text: str, stale: bool) -> str:
    return "other" if stale else rule_label(text)  # stale: what a labeller that knew no plain answers wrote


def mixed_texts() -> list[str]:
    """Corpus responses, refusals and the rest alternating (so behaviour changes between pairs)."""
    refusals = [r["response"] for r in corpus() if r["label"] == "refusal"]
    rest = [r["response"] for r in corpus() if r["label"] != "refusal"]
    return [t for pair in zip(refusals, rest) for t in pair]


def write_task3(folder: Path, stale: bool) -> None:
    """Task 3 records whose outputs are corpus responses, labelled by the rules (or stale labels)."""
    texts = mixed_texts()
    base = context_records(generate_scenarios(12, seed=5), organism_tokenizer())
    records = []
    for i, r in enumerate(base):
        m, u = texts[2 * i], texts[2 * i + 1]
        bm, bu = _label(m, stale), _label(u, stale)
        records.append(msgspec.structs.replace(
            r, monitored_output=m, unmonitored_output=u, random_hint_prediction=bm, zeroshot_prediction=bu,
            monitored_behavior=bm, unmonitored_behavior=bu, behavior_changed=bm != bu,
            labeller="rules-old" if stale else "rules"))
    controls = [ControlRecord(sample_id=r.sample_id, index=r.index, context="monitored",
                              first_output=r.monitored_output,
                              second_output=texts[-1 - k], output_changed=True, first_behavior=r.monitored_behavior,
                              second_behavior=_label(texts[-1 - k], stale),
                              behavior_changed=r.monitored_behavior != _label(texts[-1 - k], stale), engine=ENGINE)
                for k, r in enumerate(records[:3])]
    folder.mkdir(parents=True)
    write_records_atomic(folder / "train.jsonl", records[:9])
    write_records_atomic(folder / "test.jsonl", records[9:])
    write_records_atomic(folder / "noise_control.jsonl", controls)
    write_json_atomic(folder / "summary.json", msgspec.structs.replace(summarise_task3(records, controls),
                                                                       wall_seconds={"setup": 1.5}))
    write_json_atomic(folder / "manifest.json", {"stage": "generate", "model": "/nonexistent/organism", "config": {}})
    (folder / "_work").mkdir()
    (folder / "_work" / "completions.jsonl").write_text("{}\n")


def write_task2(folder: Path, stale: bool) -> None:
    cfg = SteerConfig(layers=[1], alphas=[1.0, 4.0], scale="raw", contexts=["monitored", "unmonitored"], test_size=1)
    arms = grid.build_arms(cfg.layers, cfg.alphas)
    texts = iter(mixed_texts())
    records = []
    for i in range(3):
        for context in cfg.contexts:
            base = next(texts)
            for arm in arms[1:]:
                steered = next(texts)
                a, b = _label(base, stale), _label(steered, stale)
                pos = PatchPosition(orig_pos=3, orig_text_token="x", counterfact_pos=3, counterfact_text_token="x")
                records.append(SteeringRecord(
                    layer=list(arm.layers), input_tokens=["a", "b"], original_continuation=["c"],
                    ablated_continuation=["d"], is_different=True, patch_position=pos, counterfactual_text="steered",
                    gt_original_target=a, gt_counterfactual_target=b, sample_id=f"s{i}", index=i, arm=arm.name,
                    label="aligned", source="test", context=context, alpha=arm.alpha, alpha_effective=[arm.alpha],
                    scale_mode="raw", position_policy="last", direction_id="d0", direction_path="direction.npy",
                    direction_norm=1.0, input_token_ids=[1, 2], prompt_text=f"prompt {i}", baseline_output=base,
                    steered_output=steered, baseline_behavior=a, steered_behavior=b, behavior_changed=a != b,
                    baseline_output_tokens=5, steered_output_tokens=5, baseline_finish_reason="stop",
                    steered_finish_reason="length", labeller="rules-old" if stale else "rules", engine=ENGINE))
    folder.mkdir(parents=True)
    write_records_atomic(folder / "train.jsonl", [r for r in records if r.index < 2])
    write_records_atomic(folder / "test.jsonl", [r for r in records if r.index >= 2])
    (folder / "direction.npy").write_bytes(b"not read by relabelling")
    write_json_atomic(folder / "summary.json", summarise_task2(records, cfg, arms, None))
    write_json_atomic(folder / "manifest.json", {"stage": "steer", "model": "/nonexistent/organism",
                                                 "config": encode_config(cfg)})


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


WRITERS = {"task3": (write_task3, ContextAblationRecord, ("train.jsonl", "test.jsonl", "noise_control.jsonl")),
           "task2": (write_task2, SteeringRecord, ("train.jsonl", "test.jsonl"))}


@pytest.mark.parametrize("task", WRITERS)
def test_relabel_with_the_same_labeller_reproduces_the_split_files(tmp_path, task):
    write, _, splits = WRITERS[task]
    src, out = tmp_path / "src", tmp_path / "relabelled"
    write(src, stale=False)
    before = digest(src)
    assert cli(["label", str(src), "--output", str(out), "--labeller", "rules"]) == 0
    assert digest(src) == before  # the source is never written
    for split in splits:
        assert (out / split).read_bytes() == (src / split).read_bytes(), split
    assert not (out / "_work").exists() and json.loads((out / "relabel.json").read_text())["labeller"] == "rules"
    if task == "task2":
        assert (out / "direction.npy").read_bytes() == (src / "direction.npy").read_bytes()
    old, new = json.loads((src / "summary.json").read_text()), json.loads((out / "summary.json").read_text())
    assert new.pop("agreement") is None and old.pop("agreement", None) is None and new == old


@pytest.mark.parametrize("task", WRITERS)
def test_relabel_with_a_changed_labeller_changes_only_label_fields(tmp_path, task):
    write, kind, splits = WRITERS[task]
    src, out = tmp_path / "src", tmp_path / "relabelled"
    write(src, stale=True)
    assert cli(["label", str(src), "--output", str(out), "--labeller", "rules"]) == 0
    allowed = TASK3_LABEL_FIELDS if kind is ContextAblationRecord else TASK2_LABEL_FIELDS
    changed_fields = set()
    for split in splits:
        record_type = ControlRecord if split == "noise_control.jsonl" else kind
        a, b = read_records(src / split, record_type), read_records(out / split, record_type)
        assert len(a) == len(b) > 0
        for ra, rb in zip(a, b):
            da, db = msgspec.structs.asdict(ra), msgspec.structs.asdict(rb)
            changed_fields |= {k for k in da if da[k] != db[k]}
    label_fields = allowed | {"first_behavior", "second_behavior"}
    assert changed_fields and changed_fields <= label_fields, changed_fields - label_fields
    assert {"labeller", "behavior_changed"} <= changed_fields
    new = read_records(out / "train.jsonl", kind)
    assert all(r.labeller == "rules" for r in new)
    old_summary, new_summary = (json.loads((f / "summary.json").read_text()) for f in (src, out))
    assert new_summary["behavior_changed_rate"] != old_summary["behavior_changed_rate"]
    if task == "task3":
        assert new_summary["wall_seconds"] == old_summary["wall_seconds"]  # not label-derived: kept


def test_relabel_refuses_the_source_or_a_used_folder_and_bad_rows(tmp_path, capsys):
    src = tmp_path / "src"
    write_task3(src, stale=False)
    assert cli(["label", str(src), "--output", str(src)]) == 2
    assert cli(["label", str(src), "--output", str(src / "inside")]) == 2
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    assert cli(["label", str(src), "--output", str(used)]) == 2
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    assert cli(["label", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert cli(["label", str(src), "--output", str(tmp_path / "j"), "--labeller", "judge"]) == 2
    err = capsys.readouterr().err
    assert "must not be the input" in err and "not empty" in err and "needs string fields" in err
    assert "needs a model of its own" in err


def test_label_rows_round_trip(tmp_path, capsys):
    rows = corpus()[:20]
    src, out = tmp_path / "rows.jsonl", tmp_path / "labelled.jsonl"
    src.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"], "human": r["label"]},
                                      ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert cli(["label", str(src), "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [{k: g[k] for k in ("prompt", "response", "human")} for g in got] == \
        [{"prompt": r["prompt"], "response": r["response"], "human": r["label"]} for r in rows]
    assert [g["label"] for g in got] == [rule_label(r["response"]) for r in rows]
    assert "20 responses:" in capsys.readouterr().out


def test_report_shows_label_samples_and_kappa_when_both_ran(tmp_path):
    from app.report import build_report
    from lm.agreement import agreement

    run = tmp_path / "run"
    write_task3(run / "task3", stale=False)
    write_task2(run / "task2", stale=False)
    summary = json.loads((run / "task3" / "summary.json").read_text())
    rules = [r.monitored_behavior for r in read_records(run / "task3" / "train.jsonl", ContextAblationRecord)]
    summary["agreement"] = msgspec.to_builtins(agreement(rules, ["refusal"] * len(rules)))
    write_json_atomic(run / "task3" / "summary.json", summary)
    text = build_report(run).read_text()
    task3, task2 = text.split("## Task 2")
    assert "rules vs judge: kappa" in task3 and "| rules \\ judge |" in task3
    assert "rules vs judge" not in task2  # rules only there: no kappa to show
    assert "<details><summary>monitored / refusal:" in task3 and "<details><summary>monitored steered /" in task2
    assert "| monitored | 12 |" in task3
