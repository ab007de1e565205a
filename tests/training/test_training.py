"""The training stage: configs, targets, answer-only loss, guards, continuous tokens, checkpoints, resume,
and the done-when: the toy organism learns to explain its own Task 3 behaviour.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from toy_records import ASK_CHANGE_MATCH, tiny_random_explainer, write_toy_task3

from records.config import config_hash
from records.errors import InputError
from records.jsonl import read_records, write_records_atomic
from records.schema import ContextAblationRecord
from training import checkpoint as C
from training import data as D
from training import model as M
from training import scoring
from training import train as T
from training.config import TrainConfig, load_train_config, train_paths
from training.continuous import ContinuousEmbedder, resolve_markers
from training.dataset import load_data
from training.examples import build_examples
from training.runlog import debug_marker

REPO = Path(__file__).resolve().parents[2]
CPU_CONFIG = REPO / "configs" / "af_context_ablation_cpu.yaml"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Toy Task 3 records (planted labels), a gold_106 file, and a random tiny explainer."""
    root = tmp_path_factory.mktemp("toy_task3")
    info = write_toy_task3(root, n_train=40, n_test=8, n_gold=10)
    info["model"] = tiny_random_explainer(root / "model", info["tokenizer"])
    info["root"] = root
    return info


def tiny_cfg(toy, out: Path, *sets: str) -> TrainConfig:
    # the records are the toy organism's (engine.model "toy"): the tiny random model explains them as a cross
    # explainer, so target_model_path names the toy (records of another model are refused)
    return load_train_config(str(CPU_CONFIG), [
        f"model_path={toy['model']}", "target_model_path=toy", f"train.dataset={toy['records']}",
        f"train.paths={toy['paths']}", "train.num_epochs=1", "train.batch_size=8", "train.eval_samples=4",
        "test.max_new_tokens=8", "train.debug_steps=2", ASK_CHANGE_MATCH, *sets], str(out))


# ---------------------------------------------------------------------------------------------------
# Configs and examples


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("af_*.yaml")), ids=lambda p: p.name)
def test_every_training_config_decodes(path):
    cfg = load_train_config(str(path))
    assert cfg.train.tasks
    cpu = path.name.endswith("_cpu.yaml")
    assert (cfg.model_path == "toy") == cpu
    if not cpu:
        t = cfg.train
        assert (t.lora_r, t.learning_rate, t.num_epochs, t.eval_steps) == (128, 5e-5, 20, 500)
        assert cfg.train.bf16 and cfg.model_path == "mistralai/Mistral-7B-v0.3"


@pytest.mark.parametrize("setting,field,bound", [
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.learning_rate=0", "train.learning_rate", "> 0"),
    ("train.learning_rate=-1e-3", "train.learning_rate", "> 0"),
    ("train.max_grad_norm=-1", "train.max_grad_norm", ">= 0"),
    ("train.max_prompts=-1", "train.max_prompts", ">= 0"),
    ("test.fewshot_k=[4, 0]", "test.fewshot_k[1]", ">= 1"),
    ("test.fewshot_items=-2", "test.fewshot_items", ">= 0"),
    ("train.lr_scheduler_type=cosine", "train.lr_scheduler_type", "Invalid enum value 'cosine'"),
    ("device=tpu", "device", "Invalid enum value 'tpu'"),
])
def test_a_value_out_of_range_fails_at_load_naming_its_field(setting, field, bound):
    """Bounds live in the config's types (msgspec Meta): one line with the bound and the field, named as the
    command line's value (an override, as --set gives it) over the file."""
    with pytest.raises(InputError) as err:
        load_train_config(str(CPU_CONFIG), [setting])
    text = str(err.value)
    assert text.startswith(f"command line {setting.split('=')[0]}=") and f"(over {CPU_CONFIG})" in text, text
    assert bound in text and f"at `$.{field}`" in text and len(text.splitlines()) == 1, text


def test_a_nan_or_infinite_rate_fails_at_load():
    from records.config import convert_config, read_yaml

    raw = read_yaml(CPU_CONFIG)
    for bad in (float("nan"), float("inf")):
        raw["train"]["learning_rate"] = bad
        with pytest.raises(InputError, match=r"at `\$\.train\.learning_rate`"):
            convert_config(raw, TrainConfig, where="cfg")


def test_unknown_keys_and_slots_are_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {CPU_CONFIG}\ntrain:\n  batch_sise: 16\n")  # a typo in a file that includes another
    with pytest.raises(InputError, match="batch_sise"):
        load_train_config(str(bad))
    text = (CPU_CONFIG.parent / "af_context_ablation.yaml").read_text()  # the prompts live in the base
    assert "{user_prompt}\\n\\nIf" in text
    bad.write_text(text.replace("{user_prompt}\\n\\nIf", "{user_promt}\\n\\nIf"))
    with pytest.raises(InputError, match="user_promt"):
        load_train_config(str(bad))


def test_examples_map_monitored_and_unmonitored_like_hint_attribution(toy):
    cfg = tiny_cfg(toy, toy["root"] / "unused")
    records = read_records(toy["records"] / "train.jsonl", ContextAblationRecord)
    r = next(r for r in records if r.behavior_changed)
    built = build_examples([r], "hint_attribution", cfg.train.tasks["hint_attribution"], {}, 0)
    exs = {e.question_type: e for e in built}
    assert exs["generative_explanation"].target == (
        f"The most likely output would change to <<<{r.zeroshot_prediction}>>>.")
    assert exs["orig_match"].target == " " + r.random_hint_prediction  # monitored behaviour
    assert exs["change_match"].target == " " + r.zeroshot_prediction  # unmonitored behaviour
    # the toy's template folds the system text into the user turn: the explainer sees it once, as the
    # organism did; change_match sees the unmonitored prompt only
    assert r.hint_user_prompt.startswith(r.system_prompt)
    assert [m["role"] for m in exs["generative_explanation"].messages] == ["user"]
    assert exs["generative_explanation"].messages[0]["content"].startswith(r.hint_user_prompt)
    assert [m["role"] for m in exs["change_match"].messages] == ["user"]
    assert exs["change_match"].messages[0]["content"].startswith(r.original_user_prompt)
    assert [e.weight for e in exs.values()] == [1.0, 0.5, 0.5]
    same = next(r for r in records if not r.behavior_changed)
    ex = build_examples([same], "hint_attribution", cfg.train.tasks["hint_attribution"], {}, 0)[0]
    assert ex.target == f"The output would remain unchanged from <<<{same.random_hint_prediction}>>>."


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("template", ["organism", "chatml"])
def test_orig_and_change_match_prompts_differ_and_show_one_notice_each(toy, template):
    """change_match asks about the unmonitored run: its prompt must carry that notice and only it, also
    with a real system role (ChatML, Llama-3), where the user turns of both contexts are the same text."""
    from toy_records import context_records

    from lm.chat import MONITORED, UNMONITORED

    tok = T.load_tokenizer(str(toy["model"]))
    if template == "chatml":
        tok.chat_template = CHATML
    records = context_records(toy["train"][:6], tok)
    if template == "chatml":
        assert records[0].hint_user_prompt == records[0].original_user_prompt  # the system role carries it
    cfg = tiny_cfg(toy, toy["root"] / "unused")
    for ex_orig, ex_change in zip(*[
            [e for e in build_examples(records, "hint_attribution", cfg.train.tasks["hint_attribution"], {}, 0)
             if e.question_type == q] for q in ("orig_match", "change_match")]):
        orig, change = D.prompt_text(tok, ex_orig.messages), D.prompt_text(tok, ex_change.messages)
        assert orig != change
        assert (orig.count(MONITORED), orig.count(UNMONITORED)) == (1, 0)
        assert (change.count(MONITORED), change.count(UNMONITORED)) == (0, 1)


# ---------------------------------------------------------------------------------------------------
# Loss on answer tokens only


def _encoded(toy, n=3):
    cfg = tiny_cfg(toy, toy["root"] / "unused")
    tok = M.load_tokenizer(str(toy["model"]))
    records = read_records(toy["records"] / "train.jsonl", ContextAblationRecord)[:n]
    exs = build_examples(records, "hint_attribution", cfg.train.tasks["hint_attribution"], {}, 0)
    return cfg, tok, exs, [D.encode_example(tok, ex, i) for i, ex in enumerate(exs)]


def test_answer_tokens_are_the_target_and_eos(toy):
    _, tok, exs, enc = _encoded(toy)
    for ex, e in zip(exs, enc):
        assert e.ids[-1] == tok.eos_token_id
        assert tok.decode(e.ids[e.prompt_len:], skip_special_tokens=True).strip() == ex.target.strip()
        assert e.ids[: e.prompt_len] == D.encode_prompt(tok, ex.messages)  # the inference prompt, exactly


def test_prompt_tokens_never_enter_the_loss_mask(toy):
    _, tok, _, enc = _encoded(toy)
    base = D.collate(enc, tok.pad_token_id)
    changed = [D.Encoded(ids=list(e.ids), prompt_len=e.prompt_len, weight=e.weight, vector=None, index=e.index)
               for e in enc]
    for e in changed:  # change every prompt token: the scored positions and targets stay the same
        e.ids[: e.prompt_len] = [(t + 7) % 1000 + 100 for t in e.ids[: e.prompt_len]]
    other = D.collate(changed, tok.pad_token_id)
    assert torch.equal(base.rows, other.rows) and torch.equal(base.cols, other.cols)
    assert torch.equal(base.targets, other.targets)
    assert len(base.targets) == sum(len(e.ids) - e.prompt_len for e in enc)
    assert all(int(c) >= e.prompt_len - 1 for c, r in zip(base.cols, base.rows) for e in [enc[int(r)]])


def test_loss_is_the_mean_over_answer_tokens_not_padded_length(toy):
    cfg, tok, exs, enc = _encoded(toy, n=4)
    torch.manual_seed(0)
    explainer = M.build_explainer(cfg, None, torch.device("cpu"), torch.float32, tok)
    items = [e for e in enc if e.weight == 1.0][:2] + [e for e in enc if e.weight == 0.5][:2]
    for e in items:  # equal weights: the loss must then be the plain per-token mean
        e.weight = 1.0
    with torch.no_grad():
        batch_loss = float(explainer.loss_sum(D.collate(items, tok.pad_token_id))) / D.answer_weight(items)
        per_token = []
        for e in items:  # each example alone: no padding at all
            b = D.collate([e], tok.pad_token_id)
            logits = explainer.causal_lm(input_ids=b.input_ids).logits[0, b.cols]
            per_token += torch.nn.functional.cross_entropy(logits, b.targets, reduction="none").tolist()
    assert len({len(e.ids) for e in items}) > 1  # the batch really is padded
    assert batch_loss == pytest.approx(sum(per_token) / len(per_token), rel=1e-5)


def test_epoch_plan_is_seeded_length_grouped_and_complete():
    lengths = [10 + (i * 37) % 200 for i in range(100)]
    a = D.epoch_plan(lengths, 8, 2, seed=3, epoch=1)
    assert a == D.epoch_plan(lengths, 8, 2, seed=3, epoch=1)
    assert a != D.epoch_plan(lengths, 8, 2, seed=3, epoch=2)
    flat = [i for step in a for mb in step for i in mb]
    assert sorted(flat) == list(range(100))
    grouped = sum(max(lengths[i] for i in mb) * len(mb) for step in a for mb in step)
    plain = D.epoch_plan(lengths, 8, 2, seed=3, epoch=1, group_by_length=False)
    padded = sum(max(lengths[i] for i in mb) * len(mb) for step in plain for mb in step)
    assert grouped < 0.8 * padded


# ---------------------------------------------------------------------------------------------------
# Continuous tokens


def test_placeholder_embedding_is_the_projected_vector_and_trains_the_projector(toy):
    tok = M.load_tokenizer(str(toy["model"]))
    markers = resolve_markers(tok, {})
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in markers.values())
    rep = tok.convert_tokens_to_ids(markers["continuous_rep"])
    embed = torch.nn.Embedding(len(tok), 64)
    ids = torch.tensor([[1, 5, rep, 9, 2], [1, rep, 3, 4, 2]])
    vectors = torch.randn(2, 16)
    emb = ContinuousEmbedder(rep, vector_dim=16, hidden=64, use_proj=False)
    assert emb.projector is not None  # 16 != 64
    out = emb(embed, ids, vectors)
    proj = emb.projector(vectors)
    assert torch.allclose(out[0, 2], proj[0]) and torch.allclose(out[1, 1], proj[1])
    keep = ids != rep
    assert torch.equal(out[keep], embed(ids)[keep])
    out.sum().backward()
    assert emb.projector.weight.grad is not None and emb.projector.weight.grad.abs().sum() > 0
    same = ContinuousEmbedder(rep, vector_dim=64, hidden=64, use_proj=False)
    assert same.projector is None
    v64 = torch.randn(2, 64)
    assert torch.equal(same(embed, ids, v64)[0, 2], v64[0])
    with pytest.raises(ValueError, match="placeholder"):
        same(embed, ids, v64[:1])


# ---------------------------------------------------------------------------------------------------
# Guards


def test_heldout_row_hidden_in_training_data_is_refused_and_named(toy, tmp_path):
    gold = toy["gold"][3]
    disguised = "  " + gold["text"].upper().replace(" ", "   \n ") + "  "
    records = read_records(toy["records"] / "train.jsonl", ContextAblationRecord)
    victim = records[5]
    # the scenario text inside the prompts is swapped for the disguised gold row; the id is recomputed,
    # so only the content check can catch it (the record's own sample_id is left as it was)
    old = victim.hint_user_prompt[len(victim.system_prompt) + 2:]
    victim.hint_user_prompt = victim.hint_user_prompt.replace(old, disguised)
    victim.original_user_prompt = victim.original_user_prompt.replace(old, disguised)
    bad = tmp_path / "records"
    shutil.copytree(toy["records"], bad)
    write_records_atomic(bad / "train.jsonl", records)
    cfg = tiny_cfg(toy, tmp_path / "out", f"train.dataset={bad}")
    tok = M.load_tokenizer(str(toy["model"]))
    with pytest.raises(InputError) as err:
        load_data(cfg, tok, {}, paths=train_paths(cfg))
    text = str(err.value)
    assert "refusing to train" in text and "gold_106" in text
    assert f"index {victim.index}" in text and f"sample_id {victim.sample_id}" in text
    assert text.count("training record index") == 1


def test_missing_heldout_file_refuses_unless_allowed(toy, tmp_path):
    paths = tmp_path / "paths.yaml"
    paths.write_text(f"data_root: {tmp_path / 'nowhere'}\n")
    tok = M.load_tokenizer(str(toy["model"]))
    with pytest.raises(InputError, match="held-out set"):
        cfg = tiny_cfg(toy, tmp_path / "o", f"train.paths={paths}")
        load_data(cfg, tok, {}, paths=train_paths(cfg))
    cfg = tiny_cfg(toy, tmp_path / "o", f"train.paths={paths}", "train.allow_missing_heldout=true")
    load_data(cfg, tok, {}, paths=train_paths(cfg))


def test_full_run_needs_a_debug_run_of_the_same_config(toy, tmp_path, capsys):
    cfg = tiny_cfg(toy, tmp_path / "gate")
    with pytest.raises(InputError, match="--debug"):
        T.main(cfg, max_steps=1)
    T.main(cfg, debug=True)
    out = capsys.readouterr().out
    for expected in ("samples:", "fields:", "one training example", "target:", "debug step 1/", "debug run OK"):
        assert expected in out
    assert debug_marker(cfg).is_file()
    T.main(cfg, max_steps=1)  # now allowed
    other = tiny_cfg(toy, tmp_path / "gate", "train.learning_rate=0.001")  # another config: another hash
    assert config_hash(other) != config_hash(cfg)
    with pytest.raises(InputError, match="--debug"):
        T.main(other, max_steps=1)


def test_debug_run_fails_loudly_on_nan_or_zero_loss(toy, tmp_path, monkeypatch):
    cfg = tiny_cfg(toy, tmp_path / "nan")
    for bad in (float("nan"), 0.0):
        def fake_loss(self, batch, bad=bad):
            return torch.zeros((), requires_grad=True) * 0 + bad

        monkeypatch.setattr(M.Explainer, "loss_sum", fake_loss)
        with pytest.raises(RuntimeError, match="loss is"):
            T.main(cfg, debug=True)
        assert not debug_marker(cfg).is_file()


# ---------------------------------------------------------------------------------------------------
# Checkpoints and resume


def test_checkpoints_are_complete_loadable_and_resume_ignores_incomplete(toy, tmp_path):
    cfg = tiny_cfg(toy, tmp_path / "ck", "train.save_steps=2", "train.save_total_limit=5")
    T.main(cfg, force=True, max_steps=4)
    ckpts = C.complete_checkpoints(tmp_path / "ck" / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-00000002", "checkpoint-00000004"]
    for ck in ckpts:
        assert (ck / "COMPLETE").is_file() and (ck / "adapter" / "adapter_config.json").is_file()
        for pt in ck.glob("*.pt"):
            torch.load(pt, weights_only=True)
        state = torch.load(ck / "trainer_state.pt", weights_only=True)
        assert {"step", "epoch", "step_in_epoch", "rng", "config_hash"} <= set(state)
        assert {"python", "numpy", "torch"} <= set(state["rng"])
    # a later checkpoint without its marker (a crash mid-write) is never picked
    half = tmp_path / "ck" / "checkpoints" / "checkpoint-00000099"
    shutil.copytree(ckpts[-1], half)
    (half / "COMPLETE").unlink()
    assert C.complete_checkpoints(tmp_path / "ck" / "checkpoints")[-1].name == "checkpoint-00000004"
    summary = T.main(cfg, force=True, resume=True, max_steps=5)
    assert summary["resumed_from"].endswith("checkpoint-00000004") and summary["steps"] == 5
    with pytest.raises(InputError, match="--resume"):  # a fresh run never silently reuses the folder
        T.main(cfg, force=True, max_steps=1)


def test_resume_gives_the_same_adapter_as_an_uninterrupted_run(toy, tmp_path):
    from safetensors.torch import load_file

    sets = ("train.save_steps=2", "train.gradient_accumulation=2", "train.batch_size=4",
            "train.lora_dropout=0.1")  # dropout: the RNG states must be restored too
    straight = tiny_cfg(toy, tmp_path / "straight", *sets)
    T.main(straight, force=True, max_steps=5)
    split = tiny_cfg(toy, tmp_path / "split", *sets)
    T.main(split, force=True, max_steps=3)  # "killed" after step 3 (its checkpoint-2 and -3 exist)
    shutil.rmtree(tmp_path / "split" / "final")
    summary = T.main(split, force=True, resume=True, max_steps=5)
    assert summary["resumed_from"].endswith("checkpoint-00000003")
    a = load_file(tmp_path / "straight" / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(tmp_path / "split" / "checkpoints" / "checkpoint-00000003" / "adapter"
                      / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the adapter did move after the resume point
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("answers,why", [(["", " ", "", ""], "are empty")])
def test_the_debug_gate_fails_when_the_explainer_stopped_answering(toy, tmp_path, monkeypatch, answers, why):
    """lr 5e-3 on a real small model made every eval answer empty and --debug still said OK: now it fails.
    (One answer for all fails only with a loss that did not fall: tests/training/test_debug_gate.py.)"""
    from records.errors import StageFailure

    calls = []

    def broken(explainer, examples, cfg, n):  # varied answers before training, broken ones after
        calls.append(n)
        got = ["a", "b", "c", "d"] if len(calls) == 1 else answers
        return {}, list(zip(examples[:len(got)], got))

    monkeypatch.setattr(scoring, "eval_generation", broken)
    cfg = tiny_cfg(toy, tmp_path / "o")
    with pytest.raises(StageFailure, match=f"debug run FAILED: all 4 generated answers {why}"):
        T.main(cfg, debug=True)
    assert not debug_marker(cfg).exists()  # a full run stays refused


def test_the_debug_gate_accepts_a_model_that_answered_alike_before_training(toy, tmp_path, monkeypatch):
    """Five steps are too few to make a tiny model's answers differ: alike before and after is no failure."""
    monkeypatch.setattr(scoring, "eval_generation",
                        lambda explainer, examples, cfg, n: ({}, [(e, "same") for e in examples[:4]]))
    cfg = tiny_cfg(toy, tmp_path / "o")
    T.main(cfg, debug=True)
    assert debug_marker(cfg).exists()


def test_a_toy_learning_rate_on_a_real_model_is_called_a_toy_setting(toy, tmp_path, caplog):
    caplog.set_level("WARNING")
    T.warn_toy_settings(tiny_cfg(toy, tmp_path / "o"))  # the CPU config's 5e-3 on a (random) real-format model
    assert any("is a toy setting" in r.getMessage() for r in caplog.records)
    caplog.clear()
    T.warn_toy_settings(tiny_cfg(toy, tmp_path / "o", "train.learning_rate=5e-5"))
    assert not caplog.records
