"""Guarantee 5: engine failure is handled, not hung on.

On the CPU vLLM engine (in-process) we inject an exception into the organism's forward pass mid-run, and
a CUDA-style out-of-memory error at engine start. A transient failure is retried (at most twice, each
retry asking for less memory, each retry visible in the log) and the records come out equal to a clean
run; a persistent one ends the run with exit code 1 and one classified line, and the completions saved
before it stay intact, so rerunning the same command resumes to the clean run's records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from app.cli import main as cli_main
from lm import backends
from organism.scenarios import generate_scenarios
from records.jsonl import read_records
from records.schema import RawCompletion

REPO = Path(__file__).resolve().parents[2]
N, TEST_SIZE, CONTROL = 16, 4, 4
PROMPTS = 2 * N + 2 * CONTROL  # both contexts run twice for the noise floor
FAIL_AT = 40  # forward calls into the first engine: well into the pass, after some completions are saved
FAIL_AT_RETRY = 3  # a retry's engine has little left to do: it fails early or not at all


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("assets") / "scenarios.json"
    path.write_text(json.dumps(generate_scenarios(N, seed=103)))
    return path


def argv(scenario_file: Path, out: Path, model) -> list[str]:
    return ["generate", "--config", str(REPO / "configs/generate_cpu.yaml"), "--input", str(scenario_file),
            "--output-dir", str(out), "--model", str(model), "--test-size", str(TEST_SIZE), "--save-every", "1",
            "--max-new-tokens", "32", "--set", f"control_size={CONTROL}", "--set", "dtype=float32",
            "--set", "engine.max_num_seqs=16", "--set", f"progress_log={out.parent / 'P.md'}"]


@pytest.fixture(scope="module")
def clean(scenario_file, organism_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    assert cli_main(argv(scenario_file, out, organism_dir)) == 0
    return out


def same_records(a: Path, b: Path) -> bool:
    """Final splits equal, ignoring the engine block (the retry changes the engine's memory settings)."""
    def load(folder, name):
        rows = [json.loads(line) for line in (folder / name).read_text().splitlines()]
        for r in rows:
            r.pop("engine")
        return rows
    return all(load(a, n) == load(b, n) for n in ("train.jsonl", "test.jsonl"))


def shard_is_intact(out: Path) -> int:
    """Every line parses, ends with a newline, and no prompt appears twice; returns the count."""
    shard = out / "_work" / "completions.jsonl"
    data = shard.read_bytes()
    assert data.endswith(b"\n") or not data
    keys = [c.key for c in read_records(shard, RawCompletion)]
    assert len(keys) == len(set(keys)) == data.count(b"\n")
    return len(keys)


@pytest.fixture
def forward_failure(monkeypatch):
    """Make the organism's vLLM forward raise mid-pass: at call FAIL_AT of the first engine, at call
    FAIL_AT_RETRY of later ones. `state["times"]` is how many engines fail (then forward works again)."""
    from vllm.model_executor.models.mistral import MistralForCausalLM

    state = {"times": 1, "failed": 0, "calls": 0, "armed": False, "engines": 0, "error": RuntimeError}
    forward, build = MistralForCausalLM.forward, backends.build_vllm

    def failing_forward(self, *a, **k):
        if state["armed"]:
            state["calls"] += 1
            fail_at = FAIL_AT if state["engines"] == 1 else FAIL_AT_RETRY
            if state["calls"] == fail_at and state["failed"] < state["times"]:
                state["failed"] += 1
                raise state["error"]("injected forward failure")
        return forward(self, *a, **k)

    def arming_build(*a, **k):
        state["armed"] = False  # engine start runs its own dummy forwards
        llm = build(*a, **k)
        state.update(armed=True, calls=0, engines=state["engines"] + 1)
        return llm

    monkeypatch.setattr(MistralForCausalLM, "forward", failing_forward)
    monkeypatch.setattr(backends, "build_vllm", arming_build)
    return state


@pytest.fixture
def start_oom(monkeypatch):
    """Engine start raises CUDA's out-of-memory error `state["times"]` times; records each start's kwargs."""
    state = {"times": 1, "starts": []}
    build = backends.build_vllm

    def oom_build(model, tokenizer, dtype, seed, batch_invariant, engine):
        state["starts"].append(dict(engine))
        if len(state["starts"]) <= state["times"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return build(model, tokenizer, dtype, seed, batch_invariant, engine)

    monkeypatch.setattr(backends, "build_vllm", oom_build)
    return state


def reports(capsys) -> list[str]:
    """The CLI's own report lines on stderr (progress bars and engine logs share the stream)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith(("failed:", "error:"))]


def retry_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "generation failed (attempt" in r.getMessage()]


def test_forward_failure_mid_pass_is_retried_and_the_records_equal_a_clean_run(
        scenario_file, organism_dir, clean, forward_failure, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert cli_main(argv(scenario_file, out, organism_dir)) == 0
    assert forward_failure["failed"] == 1
    lines = retry_lines(caplog)
    assert len(lines) == 1 and "engine failure: RuntimeError: injected forward failure" in lines[0]
    assert "max_num_seqs=8" in lines[0]  # the retry asks for less
    assert any("resuming:" in r.getMessage() for r in caplog.records)  # it kept what finished before
    assert shard_is_intact(out) == PROMPTS
    assert same_records(out, clean)


def test_a_programming_error_is_not_retried_and_keeps_its_traceback(
        scenario_file, organism_dir, forward_failure, tmp_path, caplog):
    """A TypeError would fail the same way on every retry: it surfaces at once, with its traceback."""
    caplog.set_level(logging.INFO)
    forward_failure.update(times=99, error=TypeError)
    with pytest.raises(TypeError, match="injected forward failure"):
        cli_main(argv(scenario_file, tmp_path / "out", organism_dir))
    assert forward_failure["failed"] == 1 and forward_failure["engines"] == 1
    assert retry_lines(caplog) == []


def test_transient_failures_are_told_from_programming_errors():
    assert backends.is_transient(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert backends.is_transient(torch.OutOfMemoryError("CUDA out of memory"))
    assert backends.is_transient(type("EngineDeadError", (Exception,), {})("engine core died"))
    for exc in (TypeError("x"), KeyError("x"), ValueError("x"), NotImplementedError("x"), KeyboardInterrupt()):
        assert not backends.is_transient(exc), exc


def test_persistent_forward_failure_exits_1_with_one_line_and_resumes_later(
        scenario_file, organism_dir, clean, forward_failure, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    forward_failure["times"] = 99
    out = tmp_path / "out"
    assert cli_main(argv(scenario_file, out, organism_dir)) == 1
    assert forward_failure["failed"] == 3  # the first try and two retries, no more
    assert len(retry_lines(caplog)) == 2
    err = reports(capsys)
    assert len(err) == 1 and err[0].startswith("failed: engine failure: RuntimeError: injected forward failure")
    saved = shard_is_intact(out)
    assert 0 < saved < PROMPTS and f"{saved} of {PROMPTS} completions are saved" in err[0]
    assert not (out / "train.jsonl").exists()

    forward_failure["times"] = 0  # the engine is healthy again: the same command resumes
    caplog.clear()
    assert cli_main(argv(scenario_file, out, organism_dir)) == 0
    assert any(f"resuming: {saved} of {PROMPTS}" in r.getMessage() for r in caplog.records)
    assert shard_is_intact(out) == PROMPTS
    assert same_records(out, clean)


def test_out_of_memory_at_engine_start_retries_with_less_memory(
        scenario_file, organism_dir, clean, start_oom, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert cli_main(argv(scenario_file, out, organism_dir)) == 0
    first, second = start_oom["starts"]
    assert first["max_num_seqs"] == 16 and second["max_num_seqs"] == 8
    assert second["gpu_memory_utilization"] < first.get("gpu_memory_utilization", 0.9)
    lines = retry_lines(caplog)
    assert len(lines) == 1 and "out of memory: OutOfMemoryError" in lines[0]
    assert same_records(out, clean)


def test_persistent_out_of_memory_stops_after_two_retries_and_writes_no_records(
        scenario_file, organism_dir, start_oom, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    start_oom["times"] = 99
    out = tmp_path / "out"
    assert cli_main(argv(scenario_file, out, organism_dir)) == 1
    assert len(start_oom["starts"]) == 3 and len(retry_lines(caplog)) == 2
    err = reports(capsys)
    assert len(err) == 1 and err[0].startswith("failed: out of memory: OutOfMemoryError: CUDA out of memory")
    assert f"0 of {PROMPTS} completions are saved" in err[0]
    assert not (out / "train.jsonl").exists() and not (out / "test.jsonl").exists()
