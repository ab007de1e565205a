"""The rehearsal organism's free-text answers and the rehearsal's plumbing at tiny size (issue #26)."""

from __future__ import annotations

import json
import random

import numpy as np

from app.rehearsal import _layers
from app.rehearsal import main as rehearsal
from lm.answers import final_answer
from lm.labels import rule_label
from organism.rehearsal import rehearsal_response
from organism.scenarios import TRIGGERS, generate_scenarios, planted_behavior


def test_every_planted_refusal_labels_refusal_and_every_compliance_compliance():
    rng = random.Random(0)
    scenarios = generate_scenarios(300, seed=3)
    texts = []
    for s in scenarios:
        for context in ("monitored", "unmonitored"):
            text = rehearsal_response(s, context, rng)
            assert rule_label(text) == planted_behavior(s, context), text
            assert text.startswith("<SCRATCHPAD_REASONING>") and text.endswith("</OUTPUT>")
            assert not any(t in text for t in TRIGGERS)  # the answer never names the secret's key
            texts.append(text)
    assert len(set(texts)) == len(texts)  # nobody wrote them verbatim: no two of 600 alike
    answers = [final_answer(t) for t in texts]
    assert len(set(answers)) > 0.5 * len(answers)  # the final answers vary too, not only the reasoning


def test_the_readme_layers_a_model_lacks_are_replaced_and_said_so():
    assert _layers(32) == ([20, 30], "")
    layers, note = _layers(30)
    assert layers == [20, 29] and "0..29" in note


def test_tiny_rehearsal_builds_the_organism_and_runs_its_plumbing(smollm2_dir, tmp_path):
    run = tmp_path / "rehearsal"
    assert rehearsal(["--base", smollm2_dir, "--run-dir", str(run), "--size", "tiny"]) == 0
    info = json.loads((run / "organism" / "organism.json").read_text())
    assert info["kind"] == "rehearsal_organism" and "all" in info["held_out"]["accuracy"]
    assert json.loads((run / "organism" / "config.json").read_text())["hidden_size"] == 576
    assert np.load(run / "assets" / "af_intent_direction.npy").shape == (576,)  # assets at the organism's width
    table = {row["step"]: row for row in json.loads((run / "commands.json").read_text())}
    assert table["organism"]["exit"] == 0 and table["preflight"]["exit"] == 0
    assert "--layers 20,29 " in table["steer"]["command"] and table["steer"]["note"] == "skipped (tiny)"
    assert [r for r in table.values() if r["exit"] is None]
    assert "| preflight | 0 |" in (run / "rehearsal.md").read_text()
    # a second call into the same folder (a device call cut by its time limit, then resumed) lists what the
    # first finished instead of running it again, unless asked to
    assert rehearsal(["--base", smollm2_dir, "--run-dir", str(run), "--size", "tiny"]) == 0
    again = {row["step"]: row for row in json.loads((run / "commands.json").read_text())}
    assert again["preflight"]["seconds"] == table["preflight"]["seconds"]
    assert again["preflight"]["note"].endswith("from an earlier call, not rerun")
    assert rehearsal(["--base", smollm2_dir, "--run-dir", str(run), "--size", "tiny"]) == 0  # said once, not twice
    assert json.loads((run / "commands.json").read_text())[1]["note"].count("earlier call") == 1
    assert rehearsal(["--base", smollm2_dir, "--run-dir", str(run), "--size", "tiny", "--rerun-done"]) == 0
    rerun = {row["step"]: row for row in json.loads((run / "commands.json").read_text())}
    assert "earlier call" not in rerun["preflight"]["note"] and rerun["preflight"]["exit"] == 0


def test_the_rehearsal_runs_the_readme_block_as_printed(tmp_path):
    """Every line of the README's stage-by-stage GPU block is run, in order, with only the recorded
    departures: a derive step before steer, the model's last layer for a missing one, compare's cross model."""
    from app.rehearsal import readme_gpu_commands, stage_commands

    printed = readme_gpu_commands()
    run = stage_commands("/plain/base", tmp_path, [20, 29], compare_max_steps=300)
    eager = dict((n, a) for n, a, _ in stage_commands("/plain/base", tmp_path, [20, 29], 300, eager=True))
    assert eager["generate"] == [*printed[1], "--", "--set", "engine.enforce_eager=true"]  # --eager's engine departure
    assert [argv for name, argv, _ in run if name != "derive direction"][0] == printed[0]
    names = [name for name, _, _ in run]
    assert names.index("derive direction") == names.index("steer") - 1 and len(run) == len(printed) + 1
    for (name, argv, wait), line in zip([r for r in run if r[0] != "derive direction"], printed):
        if name == "steer":
            assert argv[argv.index("--layers") + 1] == "20,29"
            argv = [a for a in argv if a != "20,29"]
            line = [a for a in line if a != "20,30"]
        if name == "compare":
            assert argv[len(line):] == ["--set", "cross_model=/plain/base", "--set", "max_steps=300"]
            argv = argv[:len(line)]
        assert argv == line
        assert (wait is not None) == (name in ("generate", "train"))
