"""Task 2 steering, the stage on the toy organism through the CLI: a killed run resumes to the same records,
a layer beyond the model is refused before the weights load, layers-together arms carry each layer's vector,
and an independent judge labels the behaviours."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from steer_helpers import BATCH, N_SCEN, REPO, steer_args
from toy_records import ONE_DIRECTION


def test_resume_after_kill_gives_the_same_records_as_a_clean_run(organism_dir, toy_assets, derived, tmp_path,
                                                                  caplog):
    from app.cli import main as cli

    _, _, paths = toy_assets
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert cli(steer_args(organism_dir, paths, derived, clean)) == 0
    shard = killed / "_work" / "completions.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "app.cli"] + steer_args(organism_dir, paths, derived, killed),
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 2 * BATCH:  # two batches written
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    n_before = shard.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and 2 * BATCH <= n_before < N_SCEN * 3, \
        "kill came too late to test resume"
    with open(shard, "ab") as f:  # and a torn last line, as a kill mid-write leaves
        f.write(b'{"key": "5:unmonitored:L2@a2", "tok')
    caplog.set_level("INFO")
    assert cli(steer_args(organism_dir, paths, derived, killed)) == 0
    assert any("resuming" in m for m in caplog.messages)
    for name in ("train.jsonl", "test.jsonl"):
        assert (killed / name).read_bytes() == (clean / name).read_bytes()

    # the records themselves: splits by scenario, ActPatch fields, the baseline shared by every arm
    from records.jsonl import read_records
    from records.schema import SteeringRecord

    train = read_records(clean / "train.jsonl", SteeringRecord)
    test = read_records(clean / "test.jsonl", SteeringRecord)
    n_train = len({r.index for r in train})  # whole trigger groups per side: about TEST held out
    assert {r.index for r in train} == set(range(n_train)) and {r.index for r in test} == set(range(n_train, N_SCEN))
    assert 0 < N_SCEN - n_train <= N_SCEN - 1
    assert len(train) + len(test) == N_SCEN * 2  # two steered arms per scenario; the baseline is no record
    r = train[0]
    assert r.layer == [2] and r.input_tokens[-1] == "[/INST]" and r.patch_position.orig_pos == len(r.input_tokens) - 1
    assert r.patch_position.orig_text_token == "[/INST]" and r.alpha_effective[0] > r.alpha
    by_index = {}
    for rec in train + test:
        by_index.setdefault(rec.index, set()).add(tuple(rec.original_continuation))
    assert all(len(v) == 1 for v in by_index.values())  # one baseline per scenario, shared
    summary = json.loads((clean / "summary.json").read_text())
    assert summary["layer_sets"] == ["2"] and summary["alphas"] == [1.0, 2.0]
    assert "2" in summary["residual_norms"] and (clean / "heatmap.png").stat().st_size > 1000
    assert "## Phase 3: Task 2 steering grid" in (clean / "PROGRESS.md").read_text()


def test_cli_refuses_a_layer_beyond_the_model_depth_before_loading_weights(organism_dir, toy_assets, derived,
                                                                            tmp_path, capsys):
    from app.cli import main as cli

    _, _, paths = toy_assets
    args = ["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model",
            str(organism_dir), "--direction", str(derived), "--output-dir", str(tmp_path / "o"), "--limit", "6",
            "--test-size", "2"]
    assert cli(args + ["--layers", "2,4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layer 4" in err[0] and "4 layers" in err[0]
    assert cli(args + ["--alphas", "1,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'x' is not a number" in err[0]
    bad = tmp_path / "wrong.npy"
    np.save(bad, np.ones(4096, np.float32))
    assert cli(args + ["--direction", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4096 values" in err[0] and "hidden size 128" in err[0] and "--derive-direction" in err[0]
    assert not (tmp_path / "o" / "_work" / "completions.jsonl").exists()


def test_layers_together_arms_write_the_vector_added_at_each_layer(organism_dir, toy_assets, derived, tmp_path):
    """inline_vectors: every record carries alpha_effective[k] * unit(direction) for each steered layer;
    the single-vector field (what ActPatchDataset injects at every layer) only when they are all equal."""
    from app.cli import main as cli
    from records.jsonl import read_records
    from records.schema import SteeringRecord
    from steering.direction import load_direction

    _, _, paths = toy_assets
    out = tmp_path / "together"
    rc = cli(["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model",
              str(organism_dir), "--direction", str(derived), "--output-dir", str(out), "--limit", "3",
              "--test-size", "1", "--layers", "1,2", "--layers-together", "--alphas", "1", "--max-new-tokens", "6",
              "--set", "inline_vectors=true", "--set", f"progress_log={tmp_path}/P.md", *ONE_DIRECTION])
    assert rc == 0
    records = [r for split in ("train.jsonl", "test.jsonl") for r in read_records(out / split, SteeringRecord)]
    assert sorted({r.arm for r in records}) == ["L1+L2@a1", "L1@a1", "L2@a1"]
    unit, _ = load_direction(derived, 128)
    for r in records:
        vectors = np.array(r.patch_position.intervention_vectors)
        assert vectors.shape == (len(r.layer), 128)
        np.testing.assert_allclose(vectors, np.outer(r.alpha_effective, unit), rtol=1e-5, atol=1e-6)
        if len(r.layer) == 1:
            assert r.patch_position.intervention_vector == r.patch_position.intervention_vectors[0]
        else:  # residual_norm scale: layers 1 and 2 have different norms, so different vectors
            assert r.alpha_effective[0] != r.alpha_effective[1] and r.patch_position.intervention_vector is None


def test_steering_labels_with_an_independent_judge(organism_dir, toy_assets, derived, smollm2_dir, tmp_path, capsys):
    # Task 2 through the LM judge: the organism as its own judge is refused before any weights load; with
    # another model (SmolLM2) and `both`, the records carry the judge's labels and the summary kappa.
    from app.cli import main as cli
    from lm.judge import judge
    from records.jsonl import read_records
    from records.schema import SteeringRecord

    _, _, paths = toy_assets
    out = tmp_path / "judged"
    base = steer_args(organism_dir, paths, derived, out)
    base[base.index("--limit") + 1], base[base.index("--alphas") + 1] = "3", "1"  # coherent outputs (2 breaks v3)
    base[base.index("--test-size") + 1] = "1"
    assert cli(base + ["--set", "judge.labeller=lm_judge", "--set", f"judge.model={organism_dir}"]) == 2
    assert "is the organism itself" in capsys.readouterr().err and not (out / "_work").exists()
    assert cli(base + ["--set", "judge.labeller=both", "--set", f"judge.model={smollm2_dir}",
                       "--set", "dtype=float32"]) == 0
    records = read_records(out / "train.jsonl", SteeringRecord) + read_records(out / "test.jsonl", SteeringRecord)
    assert len(records) == 3 and {r.labeller for r in records} == {"both"}
    summary = json.loads((out / "summary.json").read_text())
    # every output labelled: baseline and arm, and the noise floor's two alpha-0 rows, of 3 scenarios
    assert summary["agreement"]["n"] == 3 * (2 + 2) and -1.0 <= summary["agreement"]["kappa"] <= 1.0
    # the labels are the judge's: asking it again about the steered outputs gives the same ones
    from lm.judge import JudgeConfig

    coherent = [r for r in records if r.steered_behavior != "degenerate"]  # a broken output is no judge's call
    assert coherent
    again = judge([r.prompt_text for r in coherent], [r.steered_output for r in coherent],
                  JudgeConfig(model=smollm2_dir, backend="hf", dtype="float32"))
    assert [v.label for v in again] == [r.steered_behavior for r in coherent]
