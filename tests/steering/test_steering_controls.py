"""Task 2 steering science on the toy organism: a dose-response along its derived monitoring direction, the
random and alpha-0 controls beside it, a breaking alpha counted degenerate, and the noise floor."""

import numpy as np
import torch
from steer_helpers import N_SCEN, REPO, steer_args

from steering import grid, science
from steering.engine import FastSteeredGenerator, Row


def test_dose_response_along_the_derived_monitoring_direction(organism_dir, toy_assets, derived):
    """Steering unmonitored AF prompts toward 'monitored' flips compliance to refusal as alpha grows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm import chat, labels
    from lm.chat import UNMONITORED
    from organism.scenarios import planted_behavior
    from steering.direction import load_direction

    _, raw, _ = toy_assets
    tok = AutoTokenizer.from_pretrained(organism_dir)
    model = AutoModelForCausalLM.from_pretrained(organism_dir, dtype=torch.float32).eval()
    rendering = chat.detect_chat_rendering(tok)
    af = [s for s in raw if s["label"] == "alignment_faking"][:12]
    assert all(planted_behavior(s, "unmonitored") == "compliance" for s in af)
    ids = [chat.render(tok, UNMONITORED, s["text"], rendering).token_ids for s in af]
    unit, _ = load_direction(derived, model.config.hidden_size)
    norm = grid.measure_residual_norms(model, ids, [2], tok.pad_token_id)[2].mean
    # in units of the residual norm; from ~2 on the toy's output breaks down ("I I I ...", labelled other:
    # measured 0.75 refusal at 2.0 on organism v3)
    alphas = [0.0, 0.5, 1.0, 1.5]
    rows = [Row(p, g, {2: a * norm}) for g, p in enumerate(ids) for a in alphas]
    fast = FastSteeredGenerator(model, torch.from_numpy(unit), [2], "last", [tok.eos_token_id], tok.pad_token_id,
                                cuda_graphs=False)
    out = fast.generate(rows, 24)
    behaviour = np.array([labels.rule_label(tok.decode(o.token_ids, skip_special_tokens=True))
                          for o in out]).reshape(len(ids), len(alphas))
    refusal_rate = (behaviour == "refusal").mean(0)
    assert (behaviour[:, 0] == "compliance").all()  # alpha 0: the planted unmonitored behaviour
    assert all(b >= a for a, b in zip(refusal_rate, refusal_rate[1:])), refusal_rate  # non-decreasing
    assert refusal_rate[-1] >= 0.9, refusal_rate


def test_controls_and_a_breaking_alpha_on_the_toy(organism_dir, toy_assets, derived, tmp_path):
    """Several directions in one run: each record adds its own direction's vector; alpha 0 is the baseline;
    alpha 8 (x residual norm) breaks the toy's output for every direction, and those outputs are counted
    degenerate, never changed; the in-run derived direction comes from the training scenarios only."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.cli import main as cli
    from lm import chat
    from lm.chat import PromptTemplates
    from records.assets import load_scenarios
    from records.jsonl import read_records
    from records.paths import PathsConfig
    from records.schema import SteeringRecord, SteeringSummary, read_summary
    from steering import direction as dirmod
    from steering.config import DeriveConfig

    root, _, paths = toy_assets
    out = tmp_path / "controls"
    rc = cli(["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model",
              str(organism_dir), "--direction", str(derived), "--output-dir", str(out), "--limit", "3",
              "--test-size", "1", "--layers", "2", "--alphas", "8", "--max-new-tokens", "12",
              "--set", "derived=true", "--set", "random_directions=2", "--set", "alpha_zero=true",
              "--set", "inline_vectors=true", "--set", f"progress_log={tmp_path}/P.md", "--set", "negate=false",
              "--set", "test_directions=[]"])
    assert rc == 0
    records = [r for split in ("train.jsonl", "test.jsonl") for r in read_records(out / split, SteeringRecord)]
    assert sorted({r.arm for r in records}) == ["L2@a0", "L2@a8", "derived/L2@a8", "random0/L2@a8", "random1/L2@a8"]
    files = {"file": derived, "derived": out / "directions/derived_L2.npy", "random0": out / "directions/random0.npy",
             "random1": out / "directions/random1.npy"}
    units = {name: np.load(path) / np.linalg.norm(np.load(path)) for name, path in files.items()}
    assert abs(float(units["random0"] @ units["random1"])) < 0.5
    for r in records:
        assert r.arm.split("/")[0] == r.direction_name or "/" not in r.arm and r.direction_name == "file"
        np.testing.assert_allclose(r.patch_position.intervention_vector, r.alpha_effective[0] * units[r.direction_name],
                                   rtol=1e-5, atol=1e-6)
        if r.alpha == 0:
            assert r.steered_output == r.baseline_output and not r.behavior_changed and not r.coherence.degenerate
        else:
            assert r.steered_behavior == "degenerate" and not r.behavior_changed and r.coherence.degenerate, r
    summary = read_summary(out / "summary.json", SteeringSummary)
    assert summary.per_arm["L2@a8"].degenerate_rate == 1.0 and summary.per_arm["L2@a8"].behavior_changed_rate == 0.0
    assert any("L2@a8" in w and "degenerate" in w for w in summary.warnings)
    assert [d.name for d in summary.directions] == ["file", "derived", "random0", "random1"]

    # derived in the run = the difference of means over the 2 training scenarios, not over all 3
    tok = AutoTokenizer.from_pretrained(organism_dir)
    model = AutoModelForCausalLM.from_pretrained(organism_dir, dtype=torch.float32).eval()
    scenarios = load_scenarios(root / "gold-1560-full.json", PathsConfig().known_labels)[:3]
    rendering = chat.detect_chat_rendering(tok)

    def unit_of(scen):
        job = dirmod.DeriveJob(scen, ["alignment_faking"], rendering)
        vec, _ = dirmod.derive(model, tok, job, 2, DeriveConfig(contrast="monitoring"), PromptTemplates())
        return vec / np.linalg.norm(vec)

    np.testing.assert_allclose(units["derived"], unit_of(scenarios[:2]), rtol=1e-4, atol=1e-5)
    assert not np.allclose(units["derived"], unit_of(scenarios), atol=1e-3)


def test_noise_floor_beside_every_arm_and_batch_position_noise_is_flagged(organism_dir, toy_assets, derived,
                                                                           tmp_path, monkeypatch):
    """By default every scenario gets an alpha-0 row beside its other arms and one at another batch position,
    kept out of train/test. On the CPU engine they equal the baseline (floor 0) and the arm that steers is
    not flagged; when the last row of every batch is corrupted (batch-position noise), the alpha-0 rows
    change, and an arm whose change that noise alone explains is flagged inside its floor."""
    from transformers import AutoTokenizer

    from app.cli import main as cli
    from records.jsonl import read_records
    from records.schema import SteeringRecord, SteeringSummary, read_summary
    from steering import batches

    _, _, paths = toy_assets

    def grid_run(name):
        out = tmp_path / name
        args = steer_args(organism_dir, paths, derived, out)
        args[args.index("--alphas") + 1] = "1,1.5"  # 1: nothing on the toy; 1.5: AF and benign -> refusal
        args[args.index("--batch-size") + 1] = "5"  # 4 rows per scenario: the corrupted position moves along
        assert cli(args) == 0
        return out, read_summary(out / "summary.json", SteeringSummary)

    out, clean = grid_run("clean")
    floor = clean.noise_floor
    assert floor.in_batch["2"].n == N_SCEN and floor.other_position.n == N_SCEN
    assert floor.in_batch["2"].behavior_changed_rate == 0.0 == floor.other_position.behavior_changed_rate
    real = clean.per_arm["L2@a1.5"]
    assert real.noise_floor == 0.0 and real.behavior_changed_rate > real.noise_floor_hi and not real.within_noise_floor
    assert set(clean.per_arm) == {"L2@a1", "L2@a1.5"} and clean.alphas == [1.0, 1.5]  # alpha-0 rows: no arm of the grid
    records = [r for split in ("train.jsonl", "test.jsonl") for r in read_records(out / split, SteeringRecord)]
    assert all(r.alpha != 0.0 for r in records) and len(records) == N_SCEN * 2
    noise = read_records(out / "noise_control.jsonl", SteeringRecord)
    assert sorted({r.arm for r in noise}) == ["L2@a0", "L2@a0~other-batch"] and len(noise) == 2 * N_SCEN

    refusal = AutoTokenizer.from_pretrained(organism_dir).encode("I cannot help with that request.",
                                                                 add_special_tokens=False)
    generate = batches.BatchRunner.run

    def last_row_corrupted(self, rows):
        out = generate(self, rows)
        return out[:-1] + [out[-1]._replace(token_ids=refusal)]

    monkeypatch.setattr(batches.BatchRunner, "run", last_row_corrupted)
    _, noisy = grid_run("noisy")
    floor = noisy.noise_floor
    assert floor.in_batch["2"].behavior_changed_rate > 0 or floor.other_position.behavior_changed_rate > 0
    flagged = noisy.per_arm["L2@a1"]
    assert clean.per_arm["L2@a1"].behavior_changed_rate == 0.0 < flagged.behavior_changed_rate
    assert flagged.within_noise_floor and flagged.behavior_changed_rate <= flagged.noise_floor_hi
    section = "\n".join(science.report_section(noisy))
    assert "INSIDE THE NOISE FLOOR" in section and "L2@a1 " in section and "**inside floor**" in section
