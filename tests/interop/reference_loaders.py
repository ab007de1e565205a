"""Load an export through introspective-interp's OWN dataset classes, unmodified, and count the examples.

    python tests/interop/reference_loaders.py --checkout DIR --export OUT --tokenizer TOK [--target-tokenizer T]

DIR is an introspective-interp checkout (its dataloaders/ imported as they are); only nltk, nnsight and
wandb are replaced by empty stand-ins, since loading data needs none of them (nnsight serves only
self_consistency, which the exported configs switch off). Each config is resolved the way the
reference's train.py resolves it (task block over the train block; the test block and its task block on
top for the test split) and each split's dataset is iterated to the end. No model is loaded: the dataset
classes touch the models only for self_consistency.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import yaml

CONFIGS = {"hint_attribution": "af_context_ablation", "act_patch": "af_steering",
           "features_explain": "af_feature_descriptions"}


def stub_modules() -> None:
    """Stand-ins for the three imports loading data does not use."""
    nltk = types.ModuleType("nltk")
    nltk.data = types.SimpleNamespace(find=lambda name: name)  # "already downloaded": nothing fetched
    nltk.download = lambda *a, **k: None
    nnsight = types.ModuleType("nnsight")
    nnsight.LanguageModel = None
    wandb = types.ModuleType("wandb")
    for name, module in (("nltk", nltk), ("nnsight", nnsight), ("wandb", wandb)):
        sys.modules.setdefault(name, module)


def overlay(base: dict, top: dict) -> dict:
    """`top`'s keys over `base`'s, nested mappings merged key by key (how train.py layers its blocks)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = overlay(merged[key], value) if isinstance(merged.get(key), dict) and isinstance(value, dict) \
            else value
    return merged


def split_configs(config: dict, task: str) -> dict[str, dict]:
    train = overlay(config["train"], config["train"]["tasks"][task])
    test = overlay(overlay(train, config["test"]), config["test"]["tasks"][task])
    return {"train": train, "test": test}


def load_task(checkout: Path, export: Path, task: str, tokenizer, target_tokenizer) -> dict:
    """{split: {"examples": n yielded, "by_question_type": {...}}} through the reference's own class."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    stub_modules()
    from dataloaders import TASK_DATASET_MAPPING

    config = yaml.safe_load((export / "config" / "af" / f"{CONFIGS[task]}.yaml").read_text())
    counts = {}
    for split, cfg in split_configs(config, task).items():
        dataset = TASK_DATASET_MAPPING[task](split, None, None, tokenizer, target_tokenizer, config=cfg,
                                             special_tokens=config["continuous_tokens"], debug=False)
        by_q: dict[str, int] = {}
        for example in dataset:
            by_q[example["question_type"]] = by_q.get(example["question_type"], 0) + 1
        counts[split] = {"examples": sum(by_q.values()), "by_question_type": by_q}
    return counts


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkout", required=True, type=Path)
    p.add_argument("--export", required=True, type=Path)
    p.add_argument("--tokenizer", required=True, help="the explainer tokenizer the export counted with")
    p.add_argument("--target-tokenizer", help="default: --tokenizer")
    args = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    target = AutoTokenizer.from_pretrained(args.target_tokenizer) if args.target_tokenizer else tok
    summary = json.loads((args.export / "export_summary.json").read_text())
    result = {task: load_task(args.checkout.resolve(), args.export.resolve(), task, tok, target)
              for task in summary["tasks"]}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
