"""The rehearsal organism's free-text answers and the rehearsal's plumbing at tiny size (issue #26)."""

from __future__ import annotations

import json
import random

import numpy as np

from app.rehearsal import _layers, main as rehearsal
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
    assert table["steer"]["command"].endswith("--layers 20,29") and table["steer"]["note"] == "skipped (tiny)"
    assert [r for r in table.values() if r["exit"] is None] and "| preflight | 0 |" in (run / "rehearsal.md").read_text()
