"""Task 3 records of the toy organism without running it: its planted behaviour is the ground truth.

The organism is trained to give exactly `planted_response(scenario, context)`, so a paired pass would
label each scenario `planted_behavior(...)` in both contexts; these helpers write those records in the
generation stage's format (rendered with the organism's own chat template), plus a gold_106-style
held-out file and a paths config pointing at it.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from lm import chat
from organism.scenarios import generate_scenarios, planted_behavior, planted_response
from organism.tokenizer import load_tokenizer
from records.jsonl import write_records_atomic
from records.schema import ContextAblationRecord, EngineInfo, content_id

ENGINE = EngineInfo(backend="planted", model="toy", dtype="float32", max_tokens=64)
# configs/steer_cpu.yaml steers along four directions (the Task 2 explainer's grid); tests of the stage's
# mechanics (resume, kill, sharding, bad input) steer along the file's alone, with these overrides.
# the CPU recipe (configs/af_context_ablation_cpu.yaml) does not ask change_match; a test of Task 3's
# mechanics that needs every question type asks it with this override
ASK_CHANGE_MATCH = "train.tasks.hint_attribution.question_types.change_match.weight=0.5"
ONE_DIRECTION = ("--set", "negate=false", "--set", "random_directions=0", "--set", "test_directions=[]")


@functools.lru_cache(maxsize=1)
def organism_tokenizer():
    """The organism's tokenizer (built from the SentencePiece file once per process: a few seconds)."""
    return load_tokenizer(Path(tempfile.mkdtemp(prefix="toy-tok-")))


def context_records(scenarios: list[dict], tokenizer) -> list[ContextAblationRecord]:
    """The records the generation stage writes when the organism answers as planted (its own mapping:
    `generation.outputs.build_records`, fed the planted completions instead of an engine's)."""
    from generation.config import GenerateConfig
    from generation.outputs import build_records
    from generation.pairs import build_requests
    from records.schema import RawCompletion, Scenario

    cfg = GenerateConfig(control_size=0)
    items = [Scenario(text=s["text"], label=s["label"], id=content_id(s["text"]), source=s["source"])
             for s in scenarios]
    rendered, requests, keys = build_requests(items, tokenizer, cfg, chat.detect_chat_rendering(tokenizer))
    completions, behaviour = {}, {}
    for key, prompt_ids in requests:
        index, context, _ = key.split(":")
        text = planted_response(scenarios[int(index)], context)
        completions[key] = RawCompletion(key=key, token_ids=tokenizer.encode(text, add_special_tokens=False),
                                         finish_reason="stop", text=text, prompt_tokens=len(prompt_ids))
        behaviour[key] = planted_behavior(scenarios[int(index)], context)
    return build_records(items, rendered, keys, completions, behaviour, cfg, ENGINE, "planted")


def write_toy_task3(root: Path, n_train: int, n_test: int, n_gold: int = 20, seed: int = 0, tokenizer=None) -> dict:
    """Write <root>/records/{train,test}.json, <root>/assets/gold_106.json and <root>/paths.yaml.

    gold_106 comes from another seed and is disjoint by content id from the records. Returns the paths
    and the scenario lists.
    """
    tokenizer = tokenizer or organism_tokenizer()
    pool = generate_scenarios(n_train + n_test, seed)
    taken = {content_id(s["text"]) for s in pool}
    gold = [s for s in generate_scenarios(n_gold * 2, seed + 1000) if content_id(s["text"]) not in taken][:n_gold]
    records = context_records(pool, tokenizer)
    rec_dir, assets = root / "records", root / "assets"
    write_records_atomic(rec_dir / "train.jsonl", records[:n_train])
    write_records_atomic(rec_dir / "test.jsonl", records[n_train:])
    assets.mkdir(parents=True, exist_ok=True)
    (assets / "gold_106.json").write_text(json.dumps([{"text": s["text"], "label": s["label"]} for s in gold]))
    paths = root / "paths.yaml"
    paths.write_text(f"data_root: {assets}\n")
    return {"records": rec_dir, "paths": paths, "gold": gold, "train": pool[:n_train], "test": pool[n_train:],
            "tokenizer": tokenizer}


def tiny_random_explainer(folder: Path, tokenizer=None, layers: int = 2, hidden: int = 64) -> Path:
    """A random-weight MistralForCausalLM on the organism tokenizer (fast unit tests of the mechanics)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    tokenizer = tokenizer or organism_tokenizer()
    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                        max_position_embeddings=2048, sliding_window=None, tie_word_embeddings=True,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    MistralForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_run_assets(root: Path, n_scenarios: int, seed: int, hidden: int = 128) -> Path:
    """A data root for generate/steer runs: gold-1560-full.json (unseen scenarios), paths.yaml, and a
    random steering direction of the organism's width (direction.npy). Returns `root`."""
    import numpy as np

    (root / "gold-1560-full.json").write_text(json.dumps(generate_scenarios(n_scenarios, seed=seed)))
    (root / "paths.yaml").write_text(f"data_root: {root}\n")
    np.save(root / "direction.npy", np.random.default_rng(seed).standard_normal(hidden).astype(np.float32))
    return root
