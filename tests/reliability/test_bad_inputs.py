"""Guarantee 4: bad input is refused before any model or GPU is touched.

A corpus of broken inputs across the stages. Each must give exit code 2 and one collected report on
stderr (every line `error: <file or field>: <problem>`), naming the file, line or field path and the
offending value; write nothing (no output folder, source folder byte-identical); and never reach model
loading (loading a model raises here, so a late refusal fails the test).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from toy_records import ONE_DIRECTION, write_toy_task3
from trials import tree_digest

from app.cli import main as cli_main
from organism.assets import write_synthetic_assets

REPO = Path(__file__).resolve().parents[2]
HIDDEN = 128  # the toy organism's residual width
DEPTH = 4  # its decoder layers


@dataclass
class Workspace:
    src: Path  # the user's asset folder (a fresh copy per case)
    paths: Path  # paths config pointing at it
    out: Path  # where the stage would write
    model: Path
    records: Path  # Task 3 records for the training stage (inside src)
    direction: Path

    def json(self, name: str):
        return json.loads((self.src / name).read_text())

    def write_json(self, name: str, data) -> Path:
        (self.src / name).write_text(json.dumps(data))
        return self.src / name

    def write_bytes(self, name: str, data: bytes) -> Path:
        (self.src / name).write_bytes(data)
        return self.src / name


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    # 4 features per cluster: the width case below needs a planted feature among the last 3 columns (255)
    write_synthetic_assets(root, seed=0, n_scenarios=24, n_eval=8, n_vocab=4, n_cache=24, width=256,
                           hidden=HIDDEN, top_k=6, features_per_cluster=4)
    write_toy_task3(root / "task3", n_train=12, n_test=4, n_gold=4)
    np.save(root / "direction.npy", np.random.default_rng(0).standard_normal(HIDDEN).astype(np.float32))
    return root


@pytest.fixture
def ws(pristine, tmp_path, organism_dir):
    src = tmp_path / "src"
    shutil.copytree(pristine, src)
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"data_root: {src}\n")
    return Workspace(src=src, paths=paths, out=tmp_path / "out", model=Path(organism_dir),
                     records=src / "task3" / "records", direction=src / "direction.npy")


@pytest.fixture(autouse=True)
def no_model_is_loaded(monkeypatch):
    """A refusal must come before any weights are read: loading a model here fails the case."""
    from transformers import AutoModelForCausalLM

    from lm import backends

    def touched(*a, **k):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", touched)
    monkeypatch.setattr(backends, "build_vllm", touched)
    monkeypatch.setattr(backends, "load_hf_model", touched)


def generate(ws: Workspace, *extra: str) -> list[str]:
    return ["generate", "--config", str(REPO / "configs/generate_cpu.yaml"), "--paths-config", str(ws.paths),
            "--model", str(ws.model), "--output-dir", str(ws.out), "--test-size", "2",
            "--set", f"progress_log={ws.out}/P.md", *extra]


def steer(ws: Workspace, *extra: str, direction: Path | None = None, layers: str = "2",
          alphas: str = "1,2") -> list[str]:
    return ["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(ws.paths),
            "--model", str(ws.model), "--direction", str(direction or ws.direction), "--output-dir", str(ws.out),
            "--layers", layers, "--alphas", alphas, "--limit", "4", "--test-size", "1",
            "--set", f"progress_log={ws.out}/P.md", *ONE_DIRECTION, *extra]


def features(ws: Workspace, *extra: str) -> list[str]:
    return ["features", "--config", str(REPO / "configs/features_cpu.yaml"), "--paths-config", str(ws.paths),
            "--output-dir", str(ws.out), "--set", f"progress_log={ws.out}/P.md", *extra]


def train(ws: Workspace, *extra: str) -> list[str]:
    paths = ws.src / "task3" / "paths.yaml"
    return ["train", "--config", str(REPO / "configs/af_context_ablation_cpu.yaml"), "--output-dir", str(ws.out),
            "--force", "--set", f"train.dataset={ws.records}", "--set", f"train.paths={paths}",
            "--progress-log", str(ws.out / "P.md"), *extra]


def edit_records(ws: Workspace, split: str, edit: Callable[[list[dict]], list[dict]]) -> None:
    path = ws.records / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


GOLD = "gold-1560-full.json"
_CACHE_NAME = "train_activations.npy"
_FILE_REFUSED = ["a_file", "output folder is a file"]


def _put(a: np.ndarray, index: int, value: float) -> np.ndarray:
    a = np.array(a, dtype=np.float32)
    a.flat[index] = value
    return a


def _direction(ws: Workspace, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    return _array(ws, "direction.npy", change)


def _array(ws: Workspace, name: str, change: Callable[[np.ndarray], np.ndarray]) -> Path:
    path = ws.src / name
    np.save(path, change(np.load(path)))
    return path


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _other_model(ws: Workspace) -> Path:
    """A model folder other than the toy (its own config.json and weights), outside the source folder."""
    other = ws.out.parent / "other-model"
    other.mkdir(exist_ok=True)
    (other / "config.json").write_text('{"model_type": "mistral", "hidden_size": 64}')
    (other / "model.safetensors").write_bytes(b"other weights")
    return other


def _records_copy(ws: Workspace, edit: Callable[[Path], None]) -> Path:
    """A copy of the Task 3 records folder outside the sources, with `edit` applied."""
    copy = ws.out.parent / "records-copy"
    shutil.copytree(ws.records, copy)
    edit(copy)
    return copy


def _a_file(ws: Workspace) -> str:
    """A regular file where a stage is asked to write its output folder."""
    (ws.out.parent / "a_file").write_text("x")
    return str(ws.out.parent / "a_file")


def _rows_file(ws: Workspace, data: bytes) -> Path:
    path = ws.out.parent / "rows.jsonl"
    path.write_bytes(data)
    return path


def _prepend(path: Path, data: bytes) -> None:
    path.write_bytes(data + path.read_bytes())


def _hide_gold_in_train(ws: Workspace, disguise: Callable[[str], str] | None = None) -> None:
    """A held-out gold_106 text, re-cased and re-spaced (or disguised otherwise), as a training row's scenario."""
    held = json.loads((ws.src / "task3" / "assets" / "gold_106.json").read_text())[0]["text"]
    disguised = disguise(held) if disguise else "  " + held.upper().replace(" ", "   ") + "\n"

    def edit(rows):
        old = rows[2]["original_user_prompt"]
        scenario_start = old.find(rows[2]["original_user_prompt"].split("\n\n")[-1])
        for key in ("ablation_prompt", "hint_prompt_full", "original_prompt_full", "hint_user_prompt",
                    "original_user_prompt"):
            rows[2][key] = rows[2][key].replace(old[scenario_start:], disguised)
        return rows

    edit_records(ws, "train", edit)


# (case id, set-up that breaks something and returns the argv, substrings the report must contain)
CASES: list[tuple[str, Callable[[Workspace], list[str]], list[str]]] = [
    # ---- scenario files (generate; the same loader feeds steer and the direction derivation)
    ("scenarios-malformed-json",
     lambda ws: (ws.write_bytes(GOLD, b'[{"text": "a", "label": "aligned"},\n {"text": }]'), generate(ws))[1],
     ["gold-1560-full.json", "malformed JSON at line 2"]),
    ("scenarios-truncated-json",
     lambda ws: (ws.write_bytes(GOLD, (ws.src / GOLD).read_bytes()[:500]), generate(ws))[1],
     ["gold-1560-full.json", "malformed JSON"]),
    ("scenarios-missing-text",
     lambda ws: (ws.write_json(GOLD, [{"label": "aligned"}, *ws.json(GOLD)[1:]]), generate(ws))[1],
     ["gold-1560-full.json", "item 0", "`text` is missing"]),
    ("scenarios-empty-text",
     lambda ws: (ws.write_json(GOLD, [{"text": "  ", "label": "aligned"}, *ws.json(GOLD)[1:]]),
                 generate(ws))[1],
     ["item 0", "`text` is empty", "'  '"]),
    ("scenarios-unknown-label",
     lambda ws: (ws.write_json(GOLD, [{**ws.json(GOLD)[0], "label": "sneaky"}, *ws.json(GOLD)[1:]]),
                 generate(ws))[1],
     ["item 0", "'sneaky' is not a known label"]),
    ("scenarios-label-wrong-type",
     lambda ws: (ws.write_json(GOLD, [{**ws.json(GOLD)[0], "label": 1}, *ws.json(GOLD)[1:]]),
                 generate(ws))[1],
     ["item 0", "`label` must be a string, got int 1"]),
    ("scenarios-every-problem-at-once",
     lambda ws: (ws.write_json(GOLD, [{"label": "aligned"}, {"text": "ok", "label": "sneaky"},
                                          {"text": "", "label": "aligned"}]), generate(ws))[1],
     ["item 0", "item 1", "item 2"]),
    ("scenarios-empty-list", lambda ws: (ws.write_json(GOLD, []), generate(ws))[1], ["contains no scenarios"]),
    ("scenarios-top-level-not-a-list", lambda ws: (ws.write_json(GOLD, {"x": 1}), generate(ws))[1],
     ["gold-1560-full.json", "top level"]),
    ("scenarios-not-utf8", lambda ws: (ws.write_bytes(GOLD, b'[{"text": "\xff\xfe"}]'), generate(ws))[1],
     ["gold-1560-full.json", "not UTF-8"]),
    ("scenarios-missing-file", lambda ws: generate(ws, "--input", str(ws.src / "nope.json")), ["nope.json"]),
    ("output-inside-source", lambda ws: generate(ws, "--output-dir", str(ws.src / "runs")), ["inside"]),
    ("config-unknown-key", lambda ws: generate(ws, "--set", "max_tokns=3"), ["unknown field `max_tokns`"]),
    ("config-wrong-type", lambda ws: generate(ws, "--set", "max_new_tokens=many"),
     ["Expected `int`", "max_new_tokens"]),
    ("batch-invariant-on-cpu", lambda ws: generate(ws, "--set", "batch_invariant=on"),
     ["batch_invariant=on needs a CUDA GPU"]),
    # ---- steering: direction arrays, layers, alpha grid
    ("direction-nan", lambda ws: steer(ws, direction=_direction(ws, lambda v: _put(v, 3, np.nan))),
     ["direction.npy", "non-finite", "first at index 3"]),
    ("direction-inf", lambda ws: steer(ws, direction=_direction(ws, lambda v: _put(v, 5, np.inf))),
     ["non-finite", "first at index 5"]),
    ("direction-wrong-width", lambda ws: steer(ws, direction=_direction(ws, lambda v: np.zeros(HIDDEN + 1) + 1)),
     ["direction.npy", f"{HIDDEN + 1} values", f"hidden size {HIDDEN}"]),
    ("direction-0d", lambda ws: steer(ws, direction=_direction(ws, lambda v: np.float32(1.0))),
     ["direction.npy", "0-d array"]),
    ("direction-zero-norm", lambda ws: steer(ws, direction=_direction(ws, lambda v: np.zeros(HIDDEN, np.float32))),
     ["direction.npy", "zero"]),
    ("direction-wrong-dtype", lambda ws: steer(ws, direction=_direction(ws, lambda v: v.astype(np.complex64))),
     ["direction.npy", "complex64"]),
    ("direction-not-npy", lambda ws: steer(ws, direction=ws.write_bytes("direction.npy", b"0.1, 0.2\n")),
     ["direction.npy", "not a .npy file"]),
    ("layer-beyond-depth", lambda ws: steer(ws, layers=f"1,{DEPTH}"),
     [f"layer {DEPTH} does not exist", f"has {DEPTH} layers"]),
    ("alpha-grid-empty", lambda ws: steer(ws, alphas=" , "), ["--alphas", "empty"]),
    ("alpha-non-numeric", lambda ws: steer(ws, alphas="1,two"), ["--alphas", "'two'"]),
    # ---- Task 1: feature caches, selectivity, clusters
    ("top-k-beyond-features", lambda ws: features(ws, "--top-k", "100000"), ["top_k", "100000", "256"]),
    ("cluster-id-wrong-type",
     lambda ws: (ws.write_json("cluster_assignments.json", {**ws.json("cluster_assignments.json"), "7": "seven"}),
                 features(ws))[1],
     ["cluster_assignments.json", "feature 7", "'seven'"]),
    ("feature-key-not-an-integer",
     lambda ws: (ws.write_json("cluster_assignments.json", {**ws.json("cluster_assignments.json"), "x": 1}),
                 features(ws))[1],
     ["cluster_assignments.json", "'x'", "must be an integer"]),
    ("selectivity-nan",
     lambda ws: (_array(ws, "selectivity.npy", lambda a: _put(a, 11, np.nan)), features(ws))[1],
     ["selectivity.npy", "non-finite", "(11,)"]),
    ("selectivity-wrong-width",
     lambda ws: (_array(ws, "selectivity.npy", lambda a: a[:-3]), features(ws))[1],
     ["cluster_assignments.json", "253", "selectivity", "e.g. 25"]),
    ("activations-wrong-dtype",
     lambda ws: (_array(ws, _CACHE_NAME, lambda a: a.astype(np.int64)), features(ws))[1],
     [_CACHE_NAME, "int64"]),
    ("cluster-summary-empty",
     lambda ws: (ws.write_json("cluster_summaries.json", {**ws.json("cluster_summaries.json"), "0": ""}),
                 features(ws))[1],
     ["cluster_summaries.json", "cluster 0", "empty"]),
    # ---- training: records and configs
    ("heldout-row-hidden-in-training",
     lambda ws: (_hide_gold_in_train(ws), train(ws))[1], ["held-out", "train.jsonl", "index 2", "gold_106"]),
    ("records-torn-line", lambda ws: (_append(ws.records / "train.jsonl", b'{"sample_id": "x", "ind'), train(ws))[1],
     ["train.jsonl", "line 13"]),
    ("records-corrupt-line", lambda ws: (_append(ws.records / "train.jsonl", b'{"sample_id": 1}\n'), train(ws))[1],
     ["train.jsonl", "line 13"]),
    ("records-bom", lambda ws: (_prepend(ws.records / "train.jsonl", "\ufeff".encode()), train(ws))[1],
     ["train.jsonl", "byte-order mark"]),
    ("records-missing-field",
     lambda ws: (edit_records(ws, "train", lambda rows: [{k: v for k, v in rows[0].items() if k != "sample_id"},
                                                         *rows[1:]]), train(ws))[1],
     ["train.jsonl", "line 1", "sample_id"]),
    ("records-unknown-behaviour",
     lambda ws: (edit_records(ws, "train", lambda rows: [{**rows[0], "monitored_behavior": "sneaky"}, *rows[1:]]),
                 train(ws))[1],
     ["train.jsonl", "line 1", "'sneaky'"]),
    ("records-duplicate-ids",
     lambda ws: (edit_records(ws, "train", lambda rows: [*rows, rows[3]]), train(ws))[1],
     ["train.jsonl", "line 13", "duplicate", "line 4"]),
    ("records-empty", lambda ws: ((ws.records / "train.jsonl").write_text(""), train(ws))[1],
     ["train.jsonl", "no records"]),
    ("train-config-unknown-key", lambda ws: train(ws, "--set", "train.batch_sise=4"), ["batch_sise"]),
    ("train-config-wrong-type", lambda ws: train(ws, "--set", "train.learning_rate=fast"),
     ["$.train.learning_rate", "'fast'"]),
    ("train-output-inside-source", lambda ws: train(ws, "--output-dir", str(ws.records / "explainer")), ["inside"]),
    ("train-learning-rate-nan", lambda ws: train(ws, "--set", "train.learning_rate=.nan"),
     ["$.train.learning_rate", "> 0", "nan"]),  # the bound is in the type (training/config.py): NaN fails it
    # ---- Reliability II: inputs the first corpus did not hold
    ("scenarios-unpaired-surrogate",
     lambda ws: ((ws.src / GOLD).write_text('[{"text": "caf\\ud800 x", "label": "aligned"}]'), generate(ws))[1],
     [GOLD, "unpaired surrogate"]),
    ("scenarios-nested-200k-deep",
     lambda ws: ((ws.src / GOLD).write_text("[" * 200_000 + "]" * 200_000), generate(ws))[1],
     [GOLD, "nested too deeply"]),
    ("scenarios-key-given-twice",
     lambda ws: ((ws.src / GOLD).write_text('[{"text": "a", "label": "aligned", "label": "refusal"}]'),
                 generate(ws))[1],
     [GOLD, "key label twice"]),
    ("scenarios-same-text-other-label",
     lambda ws: (ws.write_json(GOLD, [{"text": "Same words.", "label": "aligned"},
                                          {"text": "same  WORDS.", "label": "alignment_faking"}]), generate(ws))[1],
     [GOLD, "item 1 repeats the text of item 0 with another label"]),
    ("scenario-longer-than-the-context",
     lambda ws: (ws.write_json(GOLD, [{"text": "word " * 9000, "label": "aligned"},
                                          *ws.json(GOLD)[1:]]), generate(ws))[1],
     ["do not fit the model's context", "scenario 0"]),
    ("generate-output-is-a-file", lambda ws: generate(ws, "--output-dir", _a_file(ws)), _FILE_REFUSED),
    ("steer-output-is-a-file", lambda ws: steer(ws, "--output-dir", _a_file(ws)), _FILE_REFUSED),
    ("train-output-is-a-file", lambda ws: train(ws, "--output-dir", _a_file(ws)), _FILE_REFUSED),
    # bounds in the config's types: the field's path and the value, named as the command line's (flag or --set)
    ("generate-limit-negative", lambda ws: generate(ws, "--limit", "-2"),
     ["command line limit=-2", "`$.limit`", ">= 0", "value: -2"]),
    ("generate-test-size-negative", lambda ws: generate(ws, "--test-size", "-1"), ["`$.test_size`", "value: -1"]),
    ("generate-max-new-tokens-zero", lambda ws: generate(ws, "--max-new-tokens", "0"),
     ["`$.max_new_tokens`", ">= 1", "value: 0"]),
    ("generate-temperature-zero", lambda ws: generate(ws, "--samples", "2", "--set", "sampling.temperature=0"),
     ["`$.sampling.temperature`", "> 0", "value: 0"]),
    ("generate-unknown-engine-key", lambda ws: generate(ws, "--set", "engine.max_num_seqz=8"),
     ["max_num_seqz", "not an argument of vLLM's engine"]),
    ("steer-context-twice", lambda ws: steer(ws, "--contexts", "unmonitored,unmonitored"), ["listed twice"]),
    ("steer-norm-prompts-zero", lambda ws: steer(ws, "--set", "norm_prompts=0"),
     ["command line norm_prompts=0", "norm_prompts", ">= 1", "(value: 0)"]),
    ("steer-derive-into-the-source-folder",
     lambda ws: steer(ws, "--derive-direction", "--layer", "2", "--out", str(ws.src / "af_intent_direction.npy")),
     ["inside source data folder"]),
    ("config-key-given-twice",
     lambda ws: ((ws.out.parent / "g.yaml").write_text(f"base: {REPO}/configs/generate_cpu.yaml\nlimit: 4\nlimit: 5\n"),
                 [*generate(ws)[:1], "--config", str(ws.out.parent / "g.yaml"), *generate(ws)[3:]])[1],
     ["g.yaml", "'limit' is given twice"]),
    ("cluster-summaries-id-twice",
     lambda ws: (ws.write_json("cluster_summaries.json", [{"cluster_id": 0, "summary": "fires on x"},
                                                          {"cluster_id": 0, "summary": "WRONG DUPLICATE SUMMARY"}]),
                 features(ws))[1],
     ["cluster_summaries.json", "cluster_id 0 appears twice"]),
    ("features-missing-cluster-attributes",
     lambda ws: features(ws, "--cluster-attributes", str(ws.src / "no_such_attributes.json")),
     ["no_such_attributes.json", "not found"]),
    ("direction-overflows",
     lambda ws: steer(ws, direction=_direction(ws, lambda a: np.full_like(a, 1e200, dtype=np.float64))),
     ["direction", "overflows"]),
    ("direction-truncated",
     lambda ws: ((ws.src / "direction.npy").write_bytes((ws.src / "direction.npy").read_bytes()[:-64]), steer(ws))[1],
     ["direction", "truncated"]),
    ("activations-truncated",
     lambda ws: ((ws.src / _CACHE_NAME).write_bytes((ws.src / _CACHE_NAME).read_bytes()[:-4096]), features(ws))[1],
     [_CACHE_NAME, "truncated"]),
    ("scenarios-path-is-a-folder", lambda ws: generate(ws, "--input", str(ws.src)), ["src: is a folder"]),
    # ---- Reliability III
    ("heldout-hidden-with-cyrillic-lookalikes",
     lambda ws: (_hide_gold_in_train(ws, lambda t: t.replace("a", "\u0430").replace("e", "\u0435")), train(ws))[1],
     ["held-out", "train.jsonl", "index 2", "gold_106"]),
    ("heldout-hidden-with-a-variation-selector-after-every-letter",
     lambda ws: (_hide_gold_in_train(ws, lambda t: "".join(c + "\ufe0f" if c.isalpha() else c for c in t)),
                 train(ws))[1],
     ["held-out", "train.jsonl", "index 2", "gold_106"]),
    ("train-record-copied-into-the-test-split",
     lambda ws: (edit_records(ws, "test", lambda rows: [json.loads((ws.records / "train.jsonl").read_text()
                                                                   .splitlines()[5]), *rows]), train(ws))[1],
     ["test.jsonl", "training record index 5", "also a test record"]),
    ("records-made-by-another-model",
     lambda ws: (edit_records(ws, "train", lambda rows: [{**r, "engine": {**r["engine"],
                                                                           "model": str(_other_model(ws))}}
                                                         for r in rows]), train(ws))[1],
     ["train.jsonl", "engine.model", "other-model", "target_model_path 'toy'"]),
    ("export-into-the-data-root",
     lambda ws: ["export", "introspective-interp", "--run", str(ws.records), "--to", str(ws.src),
                 "--paths-config", str(ws.paths)],
     ["inside source data folder"]),
    ("export-to-a-regular-file",
     lambda ws: ["export", "introspective-interp", "--run", str(ws.records), "--to", _a_file(ws),
                 "--paths-config", str(ws.paths)],
     _FILE_REFUSED),
    ("label-output-onto-the-held-out-set",
     lambda ws: ["label", str(_rows_file(ws, b'{"prompt": "p", "response": "r"}\n')), "--output",
                 str(ws.src / "gold_106.json"), "--paths-config", str(ws.paths)],
     ["gold_106.json", "source data"]),
    ("label-not-utf8",
     lambda ws: ["label", str(_rows_file(ws, b'{"prompt": "\xff\xfe", "response": "r"}\n')), "--output",
                 str(ws.out / "labelled.jsonl"), "--paths-config", str(ws.paths)],
     ["rows.jsonl", "not UTF-8", "byte 12"]),
    ("label-empty-file",
     lambda ws: ["label", str(_rows_file(ws, b"")), "--output", str(ws.out / "labelled.jsonl"),
                 "--paths-config", str(ws.paths)],
     ["rows.jsonl", "holds no rows"]),
    ("relabel-a-folder-without-its-test-split",
     lambda ws: ["label", str(_records_copy(ws, lambda d: (d / "test.jsonl").unlink())), "--output", str(ws.out),
                 "--paths-config", str(ws.paths)],
     ["records-copy", "no test.jsonl"]),
    ("relabel-a-torn-manifest",
     lambda ws: ["label", str(_records_copy(ws, lambda d: (d / "manifest.json").write_text('{"stage": "gener'))),
                 "--output", str(ws.out), "--paths-config", str(ws.paths)],
     ["manifest.json", "not a readable stage manifest"]),
    ("features-every-feature-in-one-cluster",
     lambda ws: (ws.write_json("cluster_assignments.json", dict.fromkeys(ws.json("cluster_assignments.json"), 0)),
                 features(ws))[1],
     ["1 cluster(s)", ">= 2 clusters"]),
    ("cluster-assignments-feature-twice",
     lambda ws: ((ws.src / "cluster_assignments.json").write_text('{"3": 0, "3": 1}'), features(ws))[1],
     ["cluster_assignments.json", "key 3 twice"]),
]


@pytest.mark.parametrize("case,setup,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_one_collected_report(ws, capsys, case, setup, needles):
    argv = setup(ws)
    before = tree_digest(ws.src)
    capsys.readouterr()
    rc = cli_main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert lines and all(line.startswith("error: ") for line in lines), err
    report = "\n".join(lines)
    missing = [n for n in needles if n not in report]
    assert not missing, f"report lacks {missing}:\n{report}"
    assert not ws.out.exists(), "the refused run wrote its output folder"
    assert tree_digest(ws.src) == before, "the refused run changed the source folder"
    assert not (ws.src / "runs").exists() and not (ws.records / "explainer").exists()


def test_every_case_has_its_own_name_and_something_to_look_for():
    names = [name for name, _, _ in CASES]
    assert len(set(names)) == len(names), "two cases share a name: one of them never shows in a failure"
    assert all(needles for _, _, needles in CASES)


def test_fp8_kv_cache_is_refused_when_the_records_claim_batch_invariance():
    from generation.checks import check_engine_settings
    from records.errors import InputError

    with pytest.raises(InputError, match="kv_cache_dtype=fp8 breaks batch invariance"):
        check_engine_settings({"kv_cache_dtype": "fp8"}, batch_invariant=True)
    check_engine_settings({"kv_cache_dtype": "fp8"}, batch_invariant=False)  # a knowing choice
    check_engine_settings({}, batch_invariant=True)
