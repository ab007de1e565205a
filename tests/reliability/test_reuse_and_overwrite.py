"""Reliability III: no headline from a reused arm of another model, no adapter on another base, no
finished folder overwritten, no writer in another stage's folder, no report half-written on bad input.

Each test states what the refused run must leave behind: exit code 2 (or InputError), a message naming
the file, field and value, and the folder it pointed at byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_records import write_toy_task3
from trials import tree_digest

from app.cli import main as cli_main
from records.config import load_config
from records.errors import InputError
from records.jsonl import write_json_atomic
from records.lock import output_lock
from records.provenance import check_finished_folder, drop_set_aside, make_manifest, set_aside
from training import compare as C

REPO = Path(__file__).resolve().parents[2]
COMPARE = str(REPO / "configs" / "compare_task3_cpu.yaml")


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(argv)
    return rc, capsys.readouterr().err


def _finished_arm(out: Path, arm: str, fingerprint: dict) -> None:
    (out / arm / "final").mkdir(parents=True)
    (out / arm / "final" / "COMPLETE").write_text("ok\n")
    write_json_atomic(out / arm / C.ARM_FINGERPRINT, fingerprint)


# ---- compare: a reused arm must be what the run asks for


def test_compare_refuses_a_finished_cross_arm_of_another_model(tmp_path, capsys):
    """The reported case: cross/ trained from the twin, rerun with the self model as cross. Before: "reusing",
    self = cross = toy in compare.json, gap +1.00. Now: refused before any training or evaluation."""
    out = tmp_path / "o"
    cc = load_config(COMPARE, C.CompareConfig, {"output_dir": str(out)})
    twin_arm = C.arm_fingerprint(C.arm_config(cc, "self"), 0)  # the same recipe and records ...
    _finished_arm(out, "cross", {**twin_arm, "model": "toy-twin", "model_weights": "0123456789abcdef"})  # ... the twin
    before = tree_digest(out)
    rc, err = _run(capsys, ["compare", "--config", COMPARE, "--output-dir", str(out), "--set", "cross_model=toy",
                            "--progress-log", str(tmp_path / "P.md")])
    assert rc == 2, err
    assert "the cross arm there was trained with model 'toy-twin'; this run asks for 'toy'" in err
    assert "model_weights" in err and "refusing to reuse" in err
    assert all(line.startswith("error: ") for line in err.splitlines() if line.strip()), err
    assert tree_digest(out) == before and not (out / "self").exists() and not (out / "compare.json").exists()


def test_a_reused_arm_must_match_model_records_recipe_and_steps(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    (records / "train.jsonl").write_text('{"a": 1}\n')
    cc = load_config(COMPARE, C.CompareConfig, {"output_dir": str(tmp_path / "o"),
                                                "sets": [f"train.dataset={records}"]})
    cfg = C.arm_config(cc, "self")
    arm_dir = Path(cfg.output_dir)
    fp = C.arm_fingerprint(cfg, 0)
    _finished_arm(tmp_path / "o", "self", fp)
    C.check_arm_reuse(arm_dir, "self", fp)  # the same inputs: reused
    (records / "train.jsonl").write_text('{"a": 2}\n')  # other records content, same path
    with pytest.raises(InputError, match="records hint_attribution"):
        C.check_arm_reuse(arm_dir, "self", C.arm_fingerprint(cfg, 0))
    with pytest.raises(InputError, match="max_steps '0'; this run asks for '5'"):
        C.check_arm_reuse(arm_dir, "self", {**fp, "max_steps": "5"})
    other = C.arm_config(load_config(COMPARE, C.CompareConfig, {
        "output_dir": str(tmp_path / "o"), "sets": [f"train.dataset={records}", "train.lora_r=8"]}), "self")
    with pytest.raises(InputError, match="recipe"):
        C.check_arm_reuse(arm_dir, "self", C.arm_fingerprint(other, 0))
    (arm_dir / C.ARM_FINGERPRINT).unlink()  # a finished arm that cannot say what it was trained on
    with pytest.raises(InputError, match="trained without arm.json"):
        C.check_arm_reuse(arm_dir, "self", fp)


# ---- evaluate: an adapter only on the base it was trained from


def test_evaluate_refuses_an_adapter_trained_from_another_base(tmp_path, capsys):
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "mistral"}')
    final = tmp_path / "explainer" / "final"
    (final / "adapter").mkdir(parents=True)
    (final / "COMPLETE").write_text("ok\n")
    (final / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(other)}))
    before = tree_digest(tmp_path / "explainer")
    rc, err = _run(capsys, ["evaluate", "--config", str(REPO / "configs/af_context_ablation_cpu.yaml"),
                            "--output-dir", str(tmp_path / "explainer"), "--progress-log", str(tmp_path / "P.md")])
    assert rc == 2, err
    assert "adapter_config.json" in err and str(other) in err and "model_path is toy" in err
    assert tree_digest(tmp_path / "explainer") == before
    # an adapter whose base is not on this machine cannot be checked: refused too, saying so
    (final / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/m"}))
    rc, err = _run(capsys, ["evaluate", "--config", str(REPO / "configs/af_context_ablation_cpu.yaml"),
                            "--output-dir", str(tmp_path / "explainer"), "--progress-log", str(tmp_path / "P.md")])
    assert rc == 2 and "not on this machine" in err, err


# ---- finished folders and other stages' folders


@pytest.fixture
def relabelled(tmp_path):
    """A finished Task 3 records folder with no _work/: what `label` writes."""
    root = tmp_path / "t3"
    made = write_toy_task3(root, n_train=6, n_test=2, n_gold=4)
    write_json_atomic(made["records"] / "manifest.json", make_manifest("generate", {}, "toy"))
    write_json_atomic(made["records"] / "summary.json", {"n": 8})
    return made


def test_generate_refuses_to_replace_a_finished_folder_with_nothing_to_resume(relabelled, tmp_path, capsys):
    out = relabelled["records"]
    before = tree_digest(out)
    rc, err = _run(capsys, ["generate", "--config", str(REPO / "configs/generate_cpu.yaml"), "--paths-config",
                            str(relabelled["paths"]), "--model", "toy", "--output-dir", str(out),
                            "--input", str(relabelled["paths"].parent / "assets" / "gold_106.json"),
                            "--test-size", "1", "--set", f"progress_log={tmp_path}/P.md"])
    assert rc == 2, err
    assert str(out) in err and "finished `generate` run" in err and "--overwrite" in err
    assert tree_digest(out) == before


def test_overwrite_keeps_the_old_run_aside_until_the_new_one_completes(relabelled):
    out = relabelled["records"]
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert check_finished_folder(out, "generate", overwrite=True)
    with output_lock(out):
        previous = set_aside(out)
        assert {p.name: p.read_bytes() for p in previous.iterdir()} == old  # a kill here loses nothing
        assert not check_finished_folder(out, "generate", overwrite=False)  # nothing finished in the way now
        drop_set_aside(out)
    assert not previous.exists()
    (out / "_work").mkdir()  # a folder with work shards resumes: no refusal
    write_json_atomic(out / "manifest.json", make_manifest("generate", {}, "toy"))
    assert not check_finished_folder(out, "generate", overwrite=False)


def test_features_refuses_another_stages_folder_and_a_held_lock(relabelled, tmp_path, capsys):
    from organism.assets import write_synthetic_assets

    src = tmp_path / "assets"
    write_synthetic_assets(src, seed=0, n_scenarios=24, n_eval=8, n_vocab=4, n_cache=24, width=256, hidden=128,
                           top_k=6)
    (tmp_path / "paths.yaml").write_text(f"data_root: {src}\n")
    argv = ["features", "--config", str(REPO / "configs/features_cpu.yaml"), "--paths-config",
            str(tmp_path / "paths.yaml"), "--set", f"progress_log={tmp_path}/P.md", "--output-dir"]
    records = relabelled["records"]
    before = tree_digest(records)
    rc, err = _run(capsys, [*argv, str(records)])
    assert rc == 2 and "`generate` stage" in err and "another stage's folder" in err, err
    assert tree_digest(records) == before
    busy = tmp_path / "busy"
    with output_lock(busy):  # another writer holds the folder
        rc, err = _run(capsys, [*argv, str(busy)])
    assert rc == 2 and "another run (pid" in err, err
    assert sorted(p.name for p in busy.iterdir()) == [".lock"]


# ---- report: bad input refused before plots/ is written


@pytest.mark.parametrize("damage,needle", [
    (lambda t3: (t3 / "summary.json").write_text('{"n_pairs": '), "summary.json"),
    (lambda t3: (t3 / "test.jsonl").write_bytes((t3 / "test.jsonl").read_bytes()[:-40]), "test.jsonl"),
])
def test_report_refuses_a_corrupt_summary_or_a_cut_split_before_writing(tmp_path, capsys, damage, needle):
    run = tmp_path / "run"
    run.mkdir()
    write_toy_task3(tmp_path / "t3", n_train=6, n_test=2, n_gold=2)
    (tmp_path / "t3" / "records").rename(run / "task3")
    write_json_atomic(run / "task3" / "summary.json", {"n_pairs": 8})
    damage(run / "task3")
    rc, err = _run(capsys, ["report", str(run), "--progress-log", str(tmp_path / "P.md")])
    assert rc == 2 and needle in err, err
    assert not (run / "plots").exists() and not (run / "report.md").exists()


# ---- the demo: an explainer folder of an earlier run is reused only for the same model, records and recipe


def test_the_demo_reuses_an_explainer_folder_only_for_the_same_records(tmp_path):
    from app.demo import check_explainer_folder

    info = write_toy_task3(tmp_path / "toy", n_train=20, n_test=6, n_gold=4)
    config, out = str(REPO / "configs" / "af_context_ablation_cpu.yaml"), tmp_path / "explainer_task3"
    sets = [f"train.dataset={info['records']}", f"train.paths={info['paths']}"]
    check_explainer_folder(config, sets, out, 0)  # a new folder: its fingerprint is written before training
    (out / "final").mkdir()
    (out / "final" / "COMPLETE").write_text("ok\n")
    check_explainer_folder(config, sets, out, 0)  # the same run again: reused
    (info["records"] / "manifest.json").write_text('{"stage": "generate", "created": "a rerun"}')
    check_explainer_folder(config, sets, out, 0)  # a rerun's own metadata over the same records: still reused
    with (info["records"] / "train.jsonl").open("a") as f:  # other records under the same path
        f.write((info["records"] / "train.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match="refusing to reuse"):
        check_explainer_folder(config, sets, out, 0)
    other = tmp_path / "other"
    check_explainer_folder(config, sets, other, 0)
    with pytest.raises(InputError, match="max_steps"):  # the same records, another step cap
        check_explainer_folder(config, sets, other, 5)
