"""Two runs on one output folder: the second is refused with one line, the first finishes intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from app.cli import main as cli_main
from organism.scenarios import generate_scenarios

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
           PYTHONPATH=str(REPO))


def argv(src: Path, out: Path, model) -> list[str]:
    return ["generate", "--config", str(REPO / "configs/generate_cpu.yaml"), "--input", str(src / "s.json"),
            "--output-dir", str(out), "--model", str(model), "--backend", "hf", "--batch-size", "1",
            "--max-new-tokens", "48", "--test-size", "4", "--set", f"progress_log={out.parent}/P.md"]


def test_a_second_writer_is_refused_and_the_first_finishes(organism_dir, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "s.json").write_text(json.dumps(generate_scenarios(40, seed=31)))
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "app.cli", *argv(src, out, organism_dir)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "_work" / "resume_key").exists():  # the first run holds the lock from its first write
        assert first.poll() is None and time.time() < deadline, "the first run ended before it started writing"
        time.sleep(0.2)
    assert cli_main(argv(src, out, organism_dir)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"another run (pid {first.pid}) is writing into this folder" in err[0], err
    assert first.poll() is None, "the refusal came only because the first run had already finished"
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    records = [json.loads(line) for s in ("train.jsonl", "test.jsonl") for line in (out / s).read_text().splitlines()]
    assert len(records) == 40 and len({r["index"] for r in records}) == 40
    assert cli_main(argv(src, out, organism_dir)) == 0  # the lock went with the first run: a rerun may write


def test_the_lock_clears_temporary_files_a_kill_left(tmp_path):
    from records.lock import output_lock

    (tmp_path / "out" / "_work").mkdir(parents=True)
    stray = [tmp_path / "out" / ".noise_control.jsonl.4242.tmp", tmp_path / "out" / "_work" / ".summary.json.7.tmp"]
    for p in stray:
        p.write_text("half")
    kept = tmp_path / "out" / "train.jsonl"
    kept.write_text("{}\n")
    with output_lock(tmp_path / "out"):
        assert not any(p.exists() for p in stray) and kept.exists()
