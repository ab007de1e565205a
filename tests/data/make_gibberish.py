"""Writes tests/data/gibberish_corpus.jsonl: text a broken model writes, which must be labelled degenerate.

  PYTHONPATH=. .venv/bin/python tests/data/make_gibberish.py [STEER_RECORDS_DIR|""] [SMOLLM2_DIR]

(SMOLLM2_DIR: the tests' converted SmolLM2 folder, default .cache/smollm2-135m-instruct; 2026-12-07: ~2.5 min
on 2 shared cores.)

(a) random-weight small decoders on real tokenizers (a Mistral on Mistral v0.3's SentencePiece tokenizer,
    a Llama on SmolLM2's byte-level BPE), greedy and sampled, on the toy scenarios under both system
    prompts: what an unloadable or broken organism checkpoint writes (token salad, loops).
(b) with a steering records folder (SmolLM2 steered at alpha >= 1, made at b59aece, before the text
    checks: docs/rehearsal.md has the command), every steered output at alpha >= 1 that the token-level
    coherence check of that time let through. All 30 of them were read by eye: none is language.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

OUT = Path(__file__).with_name("gibberish_corpus.jsonl")
N_PROMPTS = 12
NEW_TOKENS = 64


def random_model_rows() -> list[dict]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from lm.chat import MONITORED, UNMONITORED
    from organism.scenarios import generate_scenarios
    from organism.tokenizer import load_tokenizer

    smol = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".cache/smollm2-135m-instruct")
    tokenizers = {"mistral": load_tokenizer(Path(tempfile.mkdtemp())), "llama": AutoTokenizer.from_pretrained(smol)}
    scenarios = generate_scenarios(N_PROMPTS, seed=3)
    rows = []
    for family, tok in tokenizers.items():
        torch.manual_seed(0)
        kw = dict(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2)
        model = (MistralForCausalLM(MistralConfig(**kw)) if family == "mistral"
                 else LlamaForCausalLM(LlamaConfig(**kw)))
        model.eval()
        for i, s in enumerate(scenarios):
            system = (MONITORED, UNMONITORED)[i % 2]
            text = f"{system}\n\n{s['text']}" if family == "mistral" else None
            msgs = ([{"role": "user", "content": text}] if text else
                    [{"role": "system", "content": system}, {"role": "user", "content": s["text"]}])
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            sample = i >= N_PROMPTS // 2  # half greedy (loops), half sampled (token salad)
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=sample,
                                     temperature=1.0 if sample else None,
                                     top_p=None, top_k=None, pad_token_id=tok.eos_token_id or 0)
            response = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            rows.append({"source": f"random_{family}_{'sampled' if sample else 'greedy'}", "prompt": s["text"],
                         "response": response, "label": "degenerate"})
    return rows


def steered_rows(records: Path) -> list[dict]:
    rows = []
    for split in ("train.jsonl", "test.jsonl"):
        for line in (records / split).read_text().splitlines():
            r = json.loads(line)
            if r["alpha"] >= 1 and r["steered_behavior"] != "degenerate":
                key = (r["sample_id"], r["context"], r["direction_name"], r["layer"], r["alpha"])
                rows.append({"source": "smollm2_steered", "id": ":".join(map(str, key)),
                             "prompt": r["prompt_text"], "response": r["steered_output"], "label": "degenerate"})
    return rows


if __name__ == "__main__":
    rows = random_model_rows()
    if len(sys.argv) > 1 and sys.argv[1]:
        rows += steered_rows(Path(sys.argv[1]))
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} rows -> {OUT}")
