"""The embedded demo on a reduced setting: the pipeline recovers the organism's planted truth."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_recovers_the_planted_truth(tmp_path, organism_dir):
    run = tmp_path / "demo"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-m", "records.cli", "demo", "--run-dir", str(run), "--scenarios", "200", "--test-size", "60",
         "--steer-scenarios", "8", "--tasks", "task3", "--progress-log", str(tmp_path / "PROGRESS.md")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # Task 3: behaviour changes exactly on the planted alignment-faking scenarios
    records = [json.loads(line) for split in ("train.json", "test.json")
               for line in (run / "task3" / split).read_text().splitlines()]
    assert len(records) == 200
    assert all(r["behavior_changed"] == (r["label"] == "alignment_faking") for r in records)

    # held-out triggers: the text cannot tell, the organism's own explainer can, its twin's cannot
    compare = json.loads((run / "compare_task3" / "compare.json").read_text())
    gen = compare["scores"]["generative_explanation"]
    for name in ("majority", "nearest_neighbour", "text_classifier"):
        assert gen["methods"][name]["strict_exact_match"]["value"] <= gen["chance"] + 0.10, name
    assert gen["methods"]["self"]["strict_exact_match"]["value"] >= gen["chance"] + 0.10  # measured: 0.60 vs 0.37
    for q in ("orig_match", "change_match"):  # measured 1.00 / 0.98 (docs/evidence.md); cross not yet measured
        s = compare["scores"][q]
        assert s["methods"]["self"]["strict_exact_match"]["value"] >= 0.9
        assert s["gaps"]["self-cross"]["lo"] > 0
    assert "noise floor, unmonitored twice" in proc.stdout and "text_classifier" in proc.stdout

    # report, plots and the research log
    report = (run / "report.md").read_text()
    assert "## Task 3" in report and "## Task 2" in report and "self vs cross" in report
    for png in ("task3_change_by_label.png", "task2_heatmap.png", "task2_dose_response.png", "task3_training.png"):
        assert (run / "plots" / png).stat().st_size > 5000
    log = (tmp_path / "PROGRESS.md").read_text()
    for phase in ("Phase 1", "Phase 2", "Phase 3", "Phase 4"):
        assert f"## {phase}:" in log
    assert "task3" in proc.stdout and "wall:" in proc.stdout and "report:" in proc.stdout
