"""What the loop optimises and how it resumes: the LR schedule, LoRA+ parameter groups, trainable
answer-token rows, and the resume-progress struct (which value wins when config and checkpoint disagree).

One short run of a random tiny explainer (3 of 18 steps) serves every test; expected values are written
out by hand, not recomputed with the code under test.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from toy_records import ASK_CHANGE_MATCH, tiny_random_explainer, write_toy_task3

from records.config import config_hash
from training import checkpoint as C
from training import data as D
from training import model as M
from training import train as T
from training.config import load_train_config, train_paths
from training.dataset import load_data

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "af_context_ablation_cpu.yaml"
LR, WARMUP, RATIO = 0.01, 3, 4.0
TOTAL = 18  # 24 records x 3 question types (ASK_CHANGE_MATCH) = 72 examples, batch 4, one epoch


def make_cfg(toy, out: Path, *sets: str):
    return load_train_config(str(CPU_CONFIG), [
        f"model_path={toy['model']}", "target_model_path=toy", f"train.dataset={toy['records']}",
        f"train.paths={toy['paths']}", "train.num_epochs=1", "train.batch_size=4", f"train.learning_rate={LR}",
        f"train.warmup_steps={WARMUP}", "train.lr_scheduler_type=linear", f"train.loraplus_lr_ratio={RATIO}",
        "train.trainable_answer_tokens=true", "train.save_steps=3", "train.eval_steps=1000", "train.eval_samples=2",
        "test.max_new_tokens=4", ASK_CHANGE_MATCH, *sets], str(out))


def train_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("optimisation")
    toy = write_toy_task3(root, n_train=24, n_test=4, n_gold=4)
    toy["model"] = tiny_random_explainer(root / "model", toy["tokenizer"])
    cfg = make_cfg(toy, root / "out")
    summary = T.main(cfg, force=True, max_steps=3)
    assert summary["total_steps"] == TOTAL and summary["steps"] == 3
    assert json.loads((root / "out" / "summary.json").read_text())["cpu_bf16"] == M.uses_cpu_bf16(
        cfg, torch.device("cpu"))  # what "auto" resolved to is on record
    return toy, cfg, root / "out"


def test_lr_warms_up_then_decays_linearly_to_zero(run):
    _, cfg, out = run
    expected = [LR * 1 / 3, LR * 2 / 3 * (1 - 1 / 18), LR * (1 - 2 / 18)]  # step s (0-based): warmup x decay
    assert [r["lr"] for r in train_rows(out)] == pytest.approx(expected, rel=1e-9)
    assert T.lr_at(cfg, 17, TOTAL) == pytest.approx(LR / 18)  # the last step still learns
    assert T.lr_at(cfg, TOTAL, TOTAL) == 0.0
    constant = load_train_config(str(CPU_CONFIG), ["train.lr_scheduler_type=constant", "train.warmup_steps=0",
                                                   f"train.learning_rate={LR}"])
    assert [T.lr_at(constant, s, TOTAL) for s in (0, 9, 17)] == [LR, LR, LR]


def test_loraplus_puts_every_lora_b_and_only_those_at_ratio_times_lr(run):
    _, cfg, out = run
    explainer = M.build_explainer(cfg, None, torch.device("cpu"), torch.float32)
    optimizer = T.make_optimizer(cfg, explainer)
    names = {id(p): n for n, p in explainer.model.named_parameters()}
    scaled = [g for g in optimizer.param_groups if g["lr_scale"] == RATIO]
    plain = [g for g in optimizer.param_groups if g["lr_scale"] == 1.0]
    assert len(scaled) == len(plain) == 1 and len(optimizer.param_groups) == 2
    b = {names[id(p)] for p in scaled[0]["params"]}
    trainable = {n for n, p in explainer.model.named_parameters() if p.requires_grad}
    assert b == {n for n in trainable if "lora_B" in n} and b
    assert {names[id(p)] for p in plain[0]["params"]} == trainable - b  # lora_A, token rows
    # and the loop applies the scale: the saved optimizer's groups at the last step (s = 2)
    saved = torch.load(out / "checkpoints" / "checkpoint-00000003" / "optimizer.pt", weights_only=True)
    groups = saved["param_groups"]
    lr = LR * (1 - 2 / 18)
    want = [(1.0, pytest.approx(lr)), (RATIO, pytest.approx(RATIO * lr))]
    assert sorted((g["lr_scale"], g["lr"]) for g in groups) == want


def test_trainable_answer_tokens_train_exactly_the_listed_rows(run):
    toy, cfg, out = run
    tok = M.load_tokenizer(str(toy["model"]))
    data = load_data(cfg, tok, {}, paths=train_paths(cfg))
    enc, _ = D.encode_all(tok, data.train, cfg.train.max_length)
    listed = M.trainable_tokens(cfg, enc, data.train, tok)
    assert listed == sorted({t for e in enc for t in e.ids[e.prompt_len:]})
    assert C.saved_token_indices(out / "final") == listed
    assert len(listed) < len(tok) // 2  # a few rows, not the vocabulary

    explainer = M.build_explainer(cfg, None, torch.device("cpu"), torch.float32, tok, {}, listed)
    every_id = torch.arange(len(tok))[None]  # [1, vocab]
    with torch.no_grad():
        before = explainer.causal_lm.get_input_embeddings()(every_id)[0]  # [vocab, hidden]
        C.load_weights(out / "final", explainer)
        after = explainer.causal_lm.get_input_embeddings()(every_id)[0]
    changed = {i for i in range(len(tok)) if not torch.equal(before[i], after[i])}
    # answer tokens of the examples the 3 steps used, as inputs that predict a scored token (not the final EOS)
    stepped = [D.encode_example(tok, data.train[i], i) for r in train_rows(out) for i in r["examples"]]
    used = {t for e in stepped for t in e.ids[e.prompt_len:-1]}
    assert used and used <= changed <= set(listed)


def test_progress_round_trips_through_a_checkpoint(run, tmp_path):
    _, cfg, _ = run
    explainer = M.build_explainer(cfg, None, torch.device("cpu"), torch.float32)
    optimizer = T.make_optimizer(cfg, explainer)
    progress = C.Progress(step=7, epoch=1, step_in_epoch=2, config_hash="abc", total_steps=40, tokens_seen=1234,
                          padded_seen=2000)
    folder = C.save_checkpoint(tmp_path, 7, explainer, optimizer, progress, keep=1)
    state = torch.load(folder / "trainer_state.pt", weights_only=True)  # still a plain dict: resume reads it
    assert set(state) == set(C.Progress.__struct_fields__) | {"rng"}
    assert C.load_checkpoint(folder, explainer, optimizer) == progress
    # a checkpoint from before the token counters existed: they start at 0
    old = {k: v for k, v in state.items() if k not in ("tokens_seen", "padded_seen")}
    assert C.progress_from_state(old) == C.Progress(step=7, epoch=1, step_in_epoch=2, config_hash="abc",
                                                    total_steps=40)


def test_config_and_checkpoint_disagreeing_warns_and_says_who_wins(run, tmp_path, caplog):
    saved = C.Progress(step=3, epoch=0, step_in_epoch=3, config_hash="old", total_steps=TOTAL)
    assert C.check_resume(saved, "old", TOTAL, tmp_path) == []
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        found = C.check_resume(saved, "new", 20, tmp_path)
    assert len(found) == 2 and "another config" in found[0] and "20" in found[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == found

    # resume the run's step-3 checkpoint with another learning rate
    toy, cfg, out = run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    other = make_cfg(toy, again, f"train.learning_rate={2 * LR}")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.checkpoint"):
        summary = T.main(other, force=True, resume=True, max_steps=4)
    assert summary["resumed_from"].endswith("checkpoint-00000003")
    assert any("another config" in r.getMessage() for r in caplog.records)
    rows = train_rows(again)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # the checkpoint's position wins
    assert rows[3]["lr"] == pytest.approx(2 * LR * (1 - 3 / 18))  # the config's learning rate wins
    # the checkpoint's counters continue (not restart): step 4 adds exactly its own examples' tokens
    tok = M.load_tokenizer(str(toy["model"]))
    data = load_data(other, tok, {}, paths=None)
    step4 = sum(len(D.encode_example(tok, data.train[i], i).ids) for i in rows[3]["examples"])
    assert rows[2]["tokens"] > 0 and rows[3]["tokens"] == rows[2]["tokens"] + step4
    # what the resumed run saves carries the config it ran with
    state = torch.load(again / "checkpoints" / "checkpoint-00000004" / "trainer_state.pt", weights_only=True)
    assert state["config_hash"] == config_hash(other) != config_hash(cfg) and state["step"] == 4


def test_cpu_bf16_runs_the_matrix_products_in_bf16_and_only_when_asked(run, monkeypatch):
    """train.cpu_precision: "bf16" multiplies in bf16 (fp32 weights and loss; eager attention for training's
    forward only, generation keeps its kernel), "fp32" in fp32, "auto" as the CPU's native bf16 says; the
    loss is the same computation either way (bf16's tolerance)."""
    toy, cfg, out = run
    tok = M.load_tokenizer(cfg.model_path)
    data = load_data(cfg, tok, {}, paths=train_paths(cfg))
    batch = D.collate(D.encode_all(tok, data.train[:4], cfg.train.max_length)[0], tok.pad_token_id)
    seen = {}

    def loss_with(mode: str) -> float:
        c = make_cfg(toy, out, f"train.cpu_precision={mode}")
        ex = M.build_explainer(c, None, torch.device("cpu"), torch.float32, tok)
        layer = ex.causal_lm.get_decoder().layers[0].mlp.down_proj
        config = ex.causal_lm.config
        layer.register_forward_hook(lambda m, i, o: seen.__setitem__(mode, (o.dtype, config._attn_implementation)))
        assert all(p.dtype == torch.float32 for p in ex.model.parameters())
        loss = float(ex.loss_sum(batch))
        kernels[mode] = ex.causal_lm.config._attn_implementation  # after training's forward: generation's
        return loss

    kernels = {}
    plain, bf16 = loss_with("fp32"), loss_with("bf16")
    assert seen["fp32"][0] == torch.float32 and seen["bf16"] == (torch.bfloat16, "eager")
    assert seen["fp32"][1] != "eager" and kernels["bf16"] == kernels["fp32"] != "eager"
    assert bf16 == pytest.approx(plain, rel=0.05) and bf16 != plain
    for native in (False, True):
        monkeypatch.setattr(M, "native_bf16", lambda native=native: native)
        loss_with("auto")
        assert seen["auto"][0] == (torch.bfloat16 if native else torch.float32)
    assert not M.uses_cpu_bf16(make_cfg(toy, out, "train.cpu_precision=bf16"), torch.device("cuda"))


def test_native_bf16_reads_the_cpu_as_linux_lists_it():
    """"auto" is only as good as the detection: it must agree with the kernel's CPU flags (a detector that
    always says no would leave every CPU run in fp32 without a word)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to check against")
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    assert M.native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)
