"""Commands the tool prints for the user to run next must run as printed."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
           TOKENIZERS_PARALLELISM="false", VLLM_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO))


def run_printed(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """`af-introspect ...` exactly as printed, through this checkout's CLI."""
    argv = shlex.split(command.split("#")[0])
    assert argv[0] == "af-introspect", command
    return subprocess.run([sys.executable, "-m", "app.cli", *argv[1:]], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=900)


def test_the_cli_epilog_examples_run_as_printed(tmp_path, organism_dir):
    """`af-introspect --help` shows how to start on the toy: those lines work in a fresh working folder."""
    from app.cli import EPILOG

    (tmp_path / "configs").symlink_to(REPO / "configs")
    lines = [line.strip() for line in EPILOG.splitlines() if line.strip().startswith("af-introspect ")]
    wanted = [line for line in lines if line.split()[1] in ("organism", "generate") and "--help" not in line]
    assert [line.split()[1] for line in wanted] == ["organism", "generate"], lines
    for line in wanted:
        proc = run_printed(line, tmp_path)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    out = tmp_path / "runs" / "toy" / "af_context_ablation"
    assert (out / "train.jsonl").is_file() and (out / "summary.json").is_file()


def test_the_hint_printed_after_deriving_a_direction_runs_as_printed(tmp_path, organism_dir):
    from organism.assets import write_synthetic_assets

    assets = tmp_path / "assets"
    write_synthetic_assets(assets, n_scenarios=40, seed=5)
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"data_root: {assets}\n")
    proc = run_printed(f"af-introspect steer --config {REPO}/configs/steer_cpu.yaml --paths-config {paths} "
                       f"--model {organism_dir} --derive-direction --layer 2 --out {tmp_path}/dirs --limit 40", REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hint = [line for line in proc.stdout.splitlines() if line.startswith("steer along it: ")]
    assert len(hint) == 1, proc.stdout
    printed = hint[0].removeprefix("steer along it: ")
    assert "--model" in printed and "--input" in printed
    # only where it writes and how much it runs are added: a test must not write into the repository
    out = tmp_path / "grid"
    proc = run_printed(f"{printed} --output-dir {out} --limit 4 --test-size 1 --max-new-tokens 8 "
                       f"--set progress_log={tmp_path}/P.md", REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "train.jsonl").is_file() and (tmp_path / "dirs" / "direction_monitoring_L2.manifest.json").is_file()


# --- README.md: every command block runs as printed -----------------------------------------------------

# The stub `af-introspect` the launch scripts call: it only parses its arguments with the real CLI parser
# (exit 2 on an unknown flag or stage), logs them, and says no debug run succeeded yet (--check-debug).
PARSE_STUB = """#!/usr/bin/env bash
for a in "$@"; do [[ "$a" == --check-debug ]] && exit 1; done
PYTHONPATH={repo} {python} -c \
'import sys; from app.cli import build_parser; build_parser(sys.argv[1:]).parse_args(sys.argv[1:])' "$@"
echo "$? $*" >> {calls}
"""
OUTPUT_FLAGS = ("--output-dir", "--run-dir", "--to", "--out")
EXTERNAL = ("python", "cd", "pip")  # commands for other checkouts (introspective-interp's train.py) or pip


def readme_blocks() -> list[list[list[str]]]:
    """Per ```bash block of README.md, the argv of each command line, comments dropped, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    return [[shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]
            for block in blocks]


def check_cli(argv: list[str], written: list[Path]) -> None:
    """`af-introspect STAGE ...`: the stage and flags parse; config files exist; the folder `report` reads
    was written by an earlier command of the same block."""
    from app.cli import build_parser

    args = build_parser(argv).parse_args(argv)  # SystemExit(2) on an unknown stage or flag
    for flag in ("config", "paths_config", "features_config"):
        value = getattr(args, flag, None)
        if value:
            assert (REPO / value).is_file(), f"{' '.join(argv)}: {value} does not exist"
    read = [args.run] if argv[0] == "report" else []
    for folder in read:
        p = Path(folder)
        assert any(w == p or p in w.parents for w in written), \
            f"{' '.join(argv)}: nothing before it in the README writes {folder} (written: {written})"


def outputs_of(argv: list[str]) -> list[Path]:
    out = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a in OUTPUT_FLAGS]
    if argv[0] == "launch/generate.sh":  # positional INPUT_JSON OUTPUT_DIR ... after an optional --nohup/--tmux
        pos = [a for a in argv[1:] if a not in ("--nohup", "--tmux")]
        if len(pos) > 1 and pos[1] and pos[1] != "--":
            out.append(Path(pos[1]))
    return out


def run_launch_script(argv: list[str], tmp_path: Path) -> list[str]:
    """Run launch/X.sh as printed in a copy of launch/ whose `af-introspect` is the parse-only stub;
    return the stub's log lines ("<exit code> <argv>"), waiting for a detached (nohup) run to log."""
    work = tmp_path / argv[0].replace("/", "_")
    shutil.copytree(REPO / "launch", work / "launch")
    calls = work / "calls.txt"
    stub = work / ".venv" / "bin" / "af-introspect"
    stub.parent.mkdir(parents=True)
    stub.write_text(PARSE_STUB.format(repo=REPO, python=sys.executable, calls=calls))
    stub.chmod(0o755)
    env = dict(ENV, PATH="/usr/bin:/bin")  # no nvidia-smi: GPU preflight skipped
    proc = subprocess.run(["bash", str(work / argv[0]), *argv[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    detached = "--nohup" in argv or argv[0] == "launch/train.sh"
    for _ in range(120):
        lines = calls.read_text().splitlines() if calls.exists() else []
        if lines and (not detached or len(lines) >= (2 if argv[0] == "launch/train.sh" else 1)):
            return lines
        time.sleep(0.5)
    raise AssertionError(f"{' '.join(argv)}: the stub was never called ({proc.stdout[-1000:]})")


def test_every_readme_command_runs_as_printed(tmp_path):
    """Each `af-introspect` line of README.md's bash blocks parses (stage, flags), names configs that exist
    and `report` reads a folder an earlier line of its block writes (`report runs/real` once read a folder
    no stage of the stage-by-stage block wrote);
    each launch/ script exists and passes what it is given to a CLI that accepts it."""
    seen = set()
    for block in readme_blocks():
        written: list[Path] = []  # folders the lines above, in this block, write
        for argv in block:
            if argv[0] in EXTERNAL:
                continue
            if argv[0] == "bash":
                assert (REPO / argv[1]).is_file(), argv
                continue
            seen.add(argv[0] if argv[0] != "af-introspect" else argv[1])
            if argv[0] == "af-introspect":
                check_cli(argv[1:], written)
            else:
                assert argv[0].startswith("launch/") and (REPO / argv[0]).is_file(), argv
                config = next((a for a in argv[1:] if a.endswith(".yaml")), None)
                assert config is None or (REPO / config).is_file(), argv
                for line in run_launch_script(argv, tmp_path):
                    assert line.startswith("0 "), f"{' '.join(argv)} passed arguments the CLI refuses: {line}"
            written += outputs_of(argv)
    assert {"preflight", "launch/generate.sh", "launch/steer.sh", "launch/train.sh", "evaluate", "report",
            "demo", "export"} <= seen, seen
