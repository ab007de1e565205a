"""Task 2 steering: the hook, the engine, validation, dose-response on the toy organism, resume after kill."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_records import ONE_DIRECTION

from lm.hooks import SteeringState, prompt_position_mask, steering
from records.errors import InputError
from steering import grid, science
from steering.engine import FastSteeredGenerator, Row, hf_generate

REPO = Path(__file__).resolve().parents[2]
H = 64


# ------------------------------------------------------------------------------------------ helpers

@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny MistralForCausalLM (2 layers, GQA 4/2) and a unit direction."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=200, hidden_size=H, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = MistralForCausalLM(cfg).eval()
    d = torch.randn(H, generator=torch.Generator().manual_seed(1))
    return model, d / d.norm()


def left_pad(prompts, pad=0):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


class ZeroLayer(torch.nn.Module):
    """A decoder layer stand-in whose output is zeros: whatever comes out of the hook is the steering delta."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden):
        out = torch.zeros_like(hidden)
        return (out, "extra") if self.as_tuple else out


class ZeroModel(torch.nn.Module):
    def __init__(self, as_tuple: bool):
        super().__init__()
        self.layers = torch.nn.ModuleList([ZeroLayer(as_tuple)])

    def forward(self, input_ids=None, attention_mask=None):
        out = self.layers[0](torch.zeros(*input_ids.shape, H))
        return out[0] if isinstance(out, tuple) else out


def prompts_of(seed=3, lengths=(4, 7, 5)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]


# ------------------------------------------------------------------------------------------ the hook

@pytest.mark.parametrize("as_tuple", [False, True], ids=["bare-tensor", "tuple"])
def test_each_row_gets_its_own_steering_for_tensor_and_tuple_outputs(as_tuple):
    model = ZeroModel(as_tuple)
    d = torch.randn(H)
    d = d / d.norm()
    state = SteeringState(d, [0], batch=3)
    state.set_coefficients({0: [0.0, 2.0, -3.0]})
    ids = torch.ones(3, 5, dtype=torch.long)
    with steering(model, state):
        out = model(input_ids=ids)  # mask = decode mask (every position) with no policy pre-hook
    assert out.shape == (3, 5, H)
    assert torch.equal(out[0], torch.zeros(5, H))  # row 0 (alpha 0): untouched — not row 0 steered for all
    assert torch.allclose(out[1], 2.0 * d.expand(5, H))
    assert torch.allclose(out[2], -3.0 * d.expand(5, H))
    # hooks are gone after the block, also after an exception inside it
    with pytest.raises(RuntimeError):
        with steering(model, state):
            raise RuntimeError("boom")
    assert torch.equal(model(input_ids=ids), torch.zeros(3, 5, H))


@pytest.mark.parametrize("policy", ["last", "all", "generated"])
def test_each_policy_steers_exactly_its_positions_and_never_padding(policy):
    model = ZeroModel(False)
    d = torch.ones(H) / math.sqrt(H)
    state = SteeringState(d, [0], batch=3)
    state.set_coefficients({0: [1.0, 1.0, 1.0]})
    ids, mask = left_pad(prompts_of())
    with steering(model, state, policy=policy):
        prefill = model(input_ids=ids, attention_mask=mask)
        decode = model(input_ids=ids[:, -1:], attention_mask=torch.ones(3, ids.shape[1] + 1, dtype=torch.long))
    steered = prefill.abs().sum(-1) > 0  # [B, S]
    real = mask.bool()
    expected = {"all": real, "generated": torch.zeros_like(real),
                "last": torch.zeros_like(real).index_fill_(1, torch.tensor([ids.shape[1] - 1]), True)}[policy]
    assert torch.equal(steered, expected)
    assert not steered[~real].any()  # padding never
    assert (decode.abs().sum(-1) > 0).all()  # every generated token, under every policy


def test_prompt_position_mask_rejects_unknown_policy():
    with pytest.raises(ValueError):
        prompt_position_mask(torch.ones(2, 3), "first")


def test_per_row_alpha_isolation_and_alpha_zero_rows_equal_unsteered_exactly(tiny):
    model, d = tiny
    prompt = prompts_of(lengths=(6,))[0]
    ids = torch.tensor([prompt] * 4)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        state = SteeringState(d, [1], batch=4)
        state.set_coefficients({1: [0.0, 3.0, 0.0, -5.0]})
        with steering(model, state):
            steered = model(input_ids=ids).logits
        singles = []
        for a in (3.0, -5.0):
            one = SteeringState(d, [1], batch=1)
            one.set_coefficients({1: [a]})
            with steering(model, one):
                singles.append(model(input_ids=ids[:1]).logits)
    assert torch.equal(steered[0], plain[0]) and torch.equal(steered[2], plain[2])  # alpha 0: bit-identical
    assert not torch.allclose(steered[1], plain[1]) and not torch.allclose(steered[1], steered[3])
    assert torch.allclose(steered[1], singles[0][0], atol=1e-5)  # each row as if run alone
    assert torch.allclose(steered[3], singles[1][0], atol=1e-5)


def test_steering_leaves_the_layers_before_the_hooked_one_unchanged_and_removing_it_restores_the_model(tiny):
    """The steering-vectors invariant: only the hooked layer's output (and what follows) moves."""
    from lm.hooks import capture_residuals

    model, d = tiny
    ids = torch.tensor([prompts_of(lengths=(6,))[0]])
    state = SteeringState(d, [1], batch=1)
    state.set_coefficients({1: [4.0]})
    with torch.no_grad():
        with capture_residuals(model, [0, 1]) as plain:
            plain_logits = model(input_ids=ids).logits
        with steering(model, state), capture_residuals(model, [0, 1]) as steered:
            steered_logits = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(steered[0][0], plain[0][0])  # layer 0 comes before the hook: bit-identical
    assert torch.allclose(steered[1][0] - plain[1][0], 4.0 * d.expand_as(plain[1][0]), atol=1e-5)
    assert not torch.allclose(steered_logits, plain_logits)
    assert torch.equal(after, plain_logits)  # the hook is gone


def test_hook_compiles_without_graph_breaks(tiny):
    model, d = tiny
    state = SteeringState(d, [0, 1], batch=2)
    state.set_coefficients({0: [1.0, 0.0], 1: [0.0, 2.0]})
    ids = torch.tensor(prompts_of(lengths=(5, 5))[:2])
    with torch.no_grad(), steering(model, state):
        eager = model(input_ids=ids).logits
        torch._dynamo.reset()
        compiled = torch.compile(lambda x: model(input_ids=x).logits, backend="eager", fullgraph=True)
        assert torch.allclose(compiled(ids), eager, atol=1e-5)
        state.set_coefficients({0: [0.0, 0.0], 1: [0.0, 0.0]})  # new values in place: same graph, new result
        assert torch.allclose(compiled(ids), model(input_ids=ids).logits, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ the engine

@pytest.mark.parametrize("policy", ["last", "all", "generated"])
def test_fast_engine_matches_hf_generate_with_the_same_hooks(tiny, policy):
    model, d = tiny
    rows = [Row(p, g, {1: a}) for g, p in enumerate(prompts_of()) for a in (0.0, 4.0, 9.0)]
    fast = FastSteeredGenerator(model, d, [1], policy, eos_ids=[2], pad_id=0, cuda_graphs=False)
    a = fast.generate(rows, 12, force_length=True, pad_to=12)
    b = hf_generate(model, d, [1], policy, rows, 12, [2], 0, force_length=True)
    assert [x.token_ids for x in a] == [y.token_ids for y in b]
    assert all(len(x.token_ids) == 12 for x in a)
    if policy == "last":
        assert fast.stats["prefill_rows"] == 3  # one shared prefill per prompt, not one per arm


def test_alpha_zero_reproduces_unsteered_generation_exactly(tiny):
    model, d = tiny
    prompts = prompts_of()
    rows = [Row(p, g, {0: 0.0, 1: 0.0}) for g, p in enumerate(prompts)]
    fast = FastSteeredGenerator(model, d, [0, 1], "all", eos_ids=[2], pad_id=0, cuda_graphs=False)
    steered = fast.generate(rows, 10, force_length=True)
    ids, mask = left_pad(prompts)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10,
                               min_new_tokens=10, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    assert [r.token_ids for r in steered] == plain.tolist()


# ------------------------------------------------------------------------------------------ validation

def one_line(exc_info) -> str:
    problems = exc_info.value.problems
    assert len(problems) == 1 and "\n" not in problems[0], problems
    return problems[0]


def test_grid_validation_errors_are_one_line_naming_the_thing():
    with pytest.raises(InputError) as e:
        grid.validate_grid([20, 30, 40], [1.0], depth=32, model="mistral-7b")
    msg = one_line(e)
    assert "layer 40" in msg and "32 layers" in msg and "0..31" in msg
    with pytest.raises(InputError) as e:
        grid.validate_grid([], [1.0], depth=32)
    assert "empty grid" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.validate_grid([1], [], depth=32)
    assert "empty grid" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.validate_grid([1], [1.0, float("nan")], depth=32)
    assert "nan" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list("0.5,1,two", "--alphas")
    assert "'two' is not a number" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list("20,3.5", "--layers", integer=True)
    assert "'3.5' is not an integer" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list(" , ", "--alphas")
    assert "empty" in one_line(e)


def test_config_rejects_non_numeric_alphas_in_yaml(tmp_path):
    from records.config import load_config
    from steering.config import SteerConfig

    path = tmp_path / "steer.yaml"
    path.write_text("alphas: [0.5, big]\n")
    with pytest.raises(InputError) as e:
        load_config(path, SteerConfig)
    assert "alphas" in one_line(e)


@pytest.mark.parametrize("array,needle", [
    (np.zeros(10, np.float32) + 1, "has 10 values but toy-model has hidden size 64; derive one"),
    (np.array([1.0, np.nan] * 32, np.float32), "non-finite"),
    (np.array([1.0, np.inf] * 32, np.float32), "non-finite"),
    (np.zeros(64, np.float32), "zero norm"),
    (np.array(3.0, np.float32), "0-d"),
    (np.ones((2, 64), np.float32), "one vector"),
], ids=["size", "nan", "inf", "zero", "0-d", "2-d"])
def test_direction_validation_errors(tmp_path, array, needle):
    from steering.direction import load_direction

    path = tmp_path / "d.npy"
    np.save(path, array)
    with pytest.raises(InputError) as e:
        load_direction(path, 64, "toy-model")
    assert needle in one_line(e)
    with pytest.raises(InputError) as e:
        load_direction(tmp_path / "missing.npy", 64)
    assert "not found" in one_line(e)


def test_direction_loads_as_unit_vector_with_its_norm(tmp_path):
    from steering.direction import load_direction

    path = tmp_path / "d.npy"
    np.save(path, np.full(64, 2.0, np.float32))
    unit, info = load_direction(path, 64)
    assert np.isclose(np.linalg.norm(unit), 1.0) and np.isclose(info["norm"], 16.0) and len(info["id"]) == 16


def test_arms_are_baseline_then_each_layer_set_and_alpha():
    arms = grid.build_arms([20, 30], [0.5, 1, 2, 5], together=True)
    assert arms[0] == grid.Arm("baseline", (), 0.0)
    assert len(arms) == 13 and arms[-1].name == "L20+L30@a5" and arms[1].layers == (20,)


# ------------------------------------------------------------------------------------------ toy organism

N_SCEN, TEST, BATCH = 6, 2, 3


@pytest.fixture(scope="module")
def toy_assets(tmp_path_factory):
    from organism.scenarios import generate_scenarios

    root = tmp_path_factory.mktemp("steer_assets")
    raw = generate_scenarios(60, seed=7)  # never seen in training (seed 0)
    (root / "gold-1560-full.json").write_text(json.dumps(raw))
    paths = root / "paths.yaml"
    paths.write_text(f"data_root: {root}\n")
    return root, raw, paths


@pytest.fixture(scope="module")
def derived(organism_dir, toy_assets, tmp_path_factory):
    """The organism's monitoring direction at layer 2, derived through the CLI."""
    from app.cli import main as cli

    root, raw, paths = toy_assets
    out = tmp_path_factory.mktemp("dirs")
    rc = cli(["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths),
              "--model", str(organism_dir), "--derive-direction", "--layer", "2", "--out", str(out), "--limit", "40", "--test-size", "0"])
    assert rc == 0
    path = out / "direction_monitoring_L2.npy"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["layer"] == 2 and meta["sign"] == "monitored minus unmonitored" and meta["n_positive"] == 40
    assert meta["held_out_test"] == 0
    return path


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


def steer_args(organism_dir, paths, direction, out, *extra):
    return ["steer", "--config", str(REPO / "configs/steer_cpu.yaml"), "--paths-config", str(paths), "--model",
            str(organism_dir), "--direction", str(direction), "--output-dir", str(out), "--limit", str(N_SCEN),
            "--test-size", str(TEST), "--layers", "2", "--alphas", "1,2", "--batch-size", str(BATCH),
            "--max-new-tokens", "20", "--set", f"progress_log={out}/PROGRESS.md", *ONE_DIRECTION, *extra]


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
    assert proc.returncode == -signal.SIGKILL and 2 * BATCH <= n_before < N_SCEN * 3, "kill came too late to test resume"
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


def test_out_of_memory_halves_the_batch_and_retries(tiny, caplog):
    from steering.config import SteerConfig
    from steering.run import BatchRunner

    model, d = tiny
    cfg = SteerConfig(layers=[1], batch_size=4, max_new_tokens=6, cuda_graphs="off", positions="last")
    runner = BatchRunner(cfg, model, d, eos_ids=[2], pad_id=0)
    real = runner.fast.generate
    sizes = []

    def flaky(rows, *a, **kw):
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(rows, *a, **kw)

    runner.fast.generate = flaky
    rows = [Row(p, g, {1: a}) for g, p in enumerate(prompts_of(lengths=(4, 6))) for a in (0.0, 3.0)]
    caplog.set_level("WARNING")
    out = runner.run(rows)
    assert len(out) == 4 and sizes == [4, 2, 2] and runner.sub_batch == 2
    assert any("out of memory at 4 rows" in m and "with 2 rows" in m for m in caplog.messages)
    expected = FastSteeredGenerator(model, d, [1], "last", [2], 0, cuda_graphs=False).generate(rows, 6)
    assert [o.token_ids for o in out] == [e.token_ids for e in expected]


@pytest.mark.parametrize("policy", ["all", "last"])
def test_left_padded_rows_generate_what_they_generate_alone(tiny, policy):
    """Padding is neither steered nor attended: a short prompt padded in a batch = the prompt alone."""
    model, d = tiny
    prompts = prompts_of(lengths=(3, 11))
    fast = FastSteeredGenerator(model, d, [0], policy, eos_ids=[2], pad_id=0, cuda_graphs=False)
    batch = fast.generate([Row(p, g, {0: 5.0}) for g, p in enumerate(prompts)], 8, force_length=True)
    alone = [fast.generate([Row(p, 0, {0: 5.0})], 8, force_length=True)[0] for p in prompts]
    assert [b.token_ids for b in batch] == [a.token_ids for a in alone]


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
        vec, _ = dirmod.derive(model, tok, scen, 2, "monitoring", PromptTemplates(), rendering, ["alignment_faking"])
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
    from steering import run as steer_run

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
    generate = steer_run.BatchRunner.run

    def last_row_corrupted(self, rows):
        out = generate(self, rows)
        return out[:-1] + [out[-1]._replace(token_ids=refusal)]

    monkeypatch.setattr(steer_run.BatchRunner, "run", last_row_corrupted)
    _, noisy = grid_run("noisy")
    floor = noisy.noise_floor
    assert floor.in_batch["2"].behavior_changed_rate > 0 or floor.other_position.behavior_changed_rate > 0
    flagged = noisy.per_arm["L2@a1"]
    assert clean.per_arm["L2@a1"].behavior_changed_rate == 0.0 < flagged.behavior_changed_rate
    assert flagged.within_noise_floor and flagged.behavior_changed_rate <= flagged.noise_floor_hi
    section = "\n".join(science.report_section(noisy))
    assert "INSIDE THE NOISE FLOOR" in section and "L2@a1 " in section and "**inside floor**" in section
