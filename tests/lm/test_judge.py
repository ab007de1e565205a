"""The LM judge end to end on a real small instruct model (SmolLM2-135M-Instruct) through vLLM's engine
and HF, with no stub: the judge is asked, and its own answer token is the label."""

import json

import pytest
import torch
from label_corpus import corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.cli import main as cli
from lm import answers
from lm.judge import JUDGED, JudgeConfig, check_judge, judge, judge_prompts, label_tokens, labeller_name
from lm.labels import rule_label
from records.errors import InputError

CASES = ("plain_answer", "poem", "code", "plain_refusal", "reasoning_refusal", "reasoning_compliance",
         "reasoning_only", "empty")


def rows() -> list[dict]:
    """One response of each case: asked ones and ones the judge must never see (empty, no answer)."""
    return [next(r for r in corpus() if r["case"] == case) for case in CASES]


@pytest.fixture(scope="module")
def judge_cfg(smollm2_dir):
    return JudgeConfig(model=smollm2_dir, backend="vllm", dtype="float32", engine={"max_num_seqs": 16})


@pytest.fixture(scope="module")
def vllm_verdicts(judge_cfg):
    rs = rows()
    return judge([r["prompt"] for r in rs], [r["response"] for r in rs], judge_cfg)


def test_check_judge_refuses_no_model_and_the_organism_as_its_own_judge(tmp_path):
    with pytest.raises(InputError, match="needs a model of its own"):
        check_judge(JudgeConfig(), "organism")
    with pytest.raises(InputError, match="is the organism itself"):
        check_judge(JudgeConfig(model=str(tmp_path)), str(tmp_path / "." / ""))
    assert check_judge(JudgeConfig(model=str(tmp_path), allow_organism=True), str(tmp_path)) is True
    assert check_judge(JudgeConfig(model=str(tmp_path / "judge")), str(tmp_path)) is False
    assert labeller_name("lm_judge", True) == "lm_judge:self-judged" and labeller_name("both", False) == "both"


def test_judge_is_asked_and_its_answer_is_the_label(smollm2_dir, judge_cfg, vllm_verdicts):
    rs = rows()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tokens = label_tokens(tok)
    asked = [i for i, r in enumerate(rs) if answers.final_answer(r["response"])]
    assert 0 < len(asked) < len(rs)
    for i, (r, v) in enumerate(zip(rs, vllm_verdicts)):
        if i not in asked:  # never sent to the judge: the structure decides
            assert v.answer == "" and v.label == rule_label(r["response"]) in ("empty", "no_answer")
            continue
        ids = tok.encode(v.answer, add_special_tokens=False)
        assert len(ids) == 1 and tokens[ids[0]] == v.label in JUDGED
    # Independently of the engine: the judge model's own preference among the label tokens, one plain HF
    # forward per prompt (no batching, no padding), must be the label the vLLM path returned.
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    prompts = judge_prompts(tok, [rs[i]["prompt"] for i in asked],
                            [answers.final_answer(rs[i]["response"]) for i in asked], judge_cfg)
    with torch.inference_mode():
        for i, ids in zip(asked, prompts):
            logits = model(torch.tensor([ids])).logits[0, -1]  # [vocab]
            assert tokens[max(tokens, key=lambda t: float(logits[t]))] == vllm_verdicts[i].label


def test_label_cli_both_on_hf_keeps_fields_matches_vllm_and_reports_kappa(smollm2_dir, vllm_verdicts, tmp_path,
                                                                           capsys):
    rs = rows()
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"], "case": r["case"]}) + "\n"
                           for r in rs))
    out = tmp_path / "labelled.jsonl"
    assert cli(["label", str(src), "--output", str(out), "--labeller", "both", "--judge-model", smollm2_dir,
                "--judge-dtype", "float32", "--judge-backend", "hf"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["case"] for g in got] == [r["case"] for r in rs]  # extra fields kept, order kept
    # the HF backend (left-padded batches) gives the vLLM engine's verdicts
    assert [g["judge_label"] for g in got] == [g["label"] for g in got] == [v.label for v in vllm_verdicts]
    assert [g["rule_label"] for g in got] == [rule_label(r["response"]) for r in rs]
    printed = capsys.readouterr().out
    assert "rules vs judge: kappa" in printed and "| rules \\ judge |" in printed


def test_label_cli_refuses_the_organism_as_judge_before_loading_it(smollm2_dir, tmp_path, capsys):
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"prompt": "Hi", "response": "Hello!"}) + "\n")
    code = cli(["label", str(src), "--output", str(tmp_path / "o.jsonl"), "--labeller", "judge",
                "--judge-model", smollm2_dir, "--organism", smollm2_dir])
    assert code == 2 and "is the organism itself" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
