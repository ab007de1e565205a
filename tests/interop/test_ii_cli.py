"""`af-introspect export introspective-interp`: writes only under --to, never overwrites, one-line errors."""

from __future__ import annotations

import json

import pytest
from interop_run import write_run
from toy_records import organism_tokenizer

from app.cli import main as cli_main


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_and_tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = organism_tokenizer()
    tok_dir = root / "tokenizer"
    tok.save_pretrained(tok_dir)
    write_run(root / "run", tok)
    return root, tok_dir


def test_export_writes_only_under_to_and_refuses_to_overwrite(run_and_tokenizer, capsys):
    root, tok_dir = run_and_tokenizer
    before = _snapshot(root / "run")
    out = root / "checkout"
    argv = ["export", "introspective-interp", "--run", str(root / "run"), "--to", str(out),
            "--tokenizer", str(tok_dir), "--target", str(tok_dir)]
    assert cli_main(argv) == 0
    assert _snapshot(root / "run") == before
    written = _snapshot(out)
    assert {str(p) for p in written if p.parts[0] == "config"} == {
        "config/af/af_context_ablation.yaml", "config/af/af_steering.yaml", "config/af/af_feature_descriptions.yaml"}
    readme = written[next(p for p in written if str(p) == "README.md")].decode()
    for stem in ("af_context_ablation", "af_steering", "af_feature_descriptions"):
        assert f"python train.py --config_path {out}/config/af/{stem}.yaml --debug" in readme
        assert f"WANDB_MODE=offline python train.py --config_path {out}/config/af/{stem}.yaml\n" in readme
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["tokenizer"] == str(tok_dir) and summary["target"] == str(tok_dir)
    assert "examples over 500 tokens" in capsys.readouterr().out

    # a checkout that already has one of the files: refused before anything is written
    other = root / "other"
    (other / "config" / "af").mkdir(parents=True)
    (other / "config" / "af" / "af_steering.yaml").write_text("the user's own config")
    argv[argv.index("--to") + 1] = str(other)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "af_steering.yaml: exists; the export never overwrites" in err and "Traceback" not in err
    assert _snapshot(other) == {other.joinpath("config/af/af_steering.yaml").relative_to(other):
                                b"the user's own config"}


def test_a_folder_without_records_is_one_line_of_error(tmp_path, capsys):
    assert cli_main(["export", "introspective-interp", "--run", str(tmp_path), "--to", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no records of generate, steer or features" in err[0]
    assert not (tmp_path / "o").exists()
