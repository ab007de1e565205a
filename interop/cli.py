"""`af-introspect export introspective-interp`: a run's splits in the files and layout that project reads.

Its own dataset classes (HintAttributionDataset, ActPatchDataset, FeaturesExplainDataset) then load
them unmodified, and its train.py trains on them with the config/af/*.yaml written beside them.
"""

from __future__ import annotations

import argparse
import logging

from records.errors import InputError

log = logging.getLogger(__name__)
FORMATS = ("introspective-interp",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the export."""
    from interop.ii_configs import DEFAULT_EXPLAINER

    p.description = (
        "Write the Task 3 / Task 2 / Task 1 splits found in --run (a demo run folder, or one stage's records "
        "folder) as introspective-interp's loaders read them: hint-attribution and act-patch JSON Lines per "
        "split (Hugging Face dataset folders), the features pickles, config/af/af_*.yaml for its train.py and a "
        "README of the commands. Writes only under --to and never overwrites a file. Examples whose prompt "
        "exceeds the reference's 500-token limit (which it skips silently) are warned about and counted.")
    p.add_argument("format", choices=FORMATS, help="the target project")
    p.add_argument("--run", required=True, help="run folder (e.g. runs/demo) or one stage's output folder")
    p.add_argument("--to", required=True, help="output folder (an introspective-interp checkout only if you mean it)")
    p.add_argument("--explainer", default=DEFAULT_EXPLAINER,
                   help="model_path of the configs: the explainer introspective-interp trains (Llama-3, Gemma, Qwen)")
    p.add_argument("--tokenizer",
                   help="explainer tokenizer for the 500-token counts, Task 2's input tokens and the continuous-token "
                        "markers (three spare special tokens of its own; refused if it has none) "
                        "(default: --explainer)")
    p.add_argument("--paths-config", default="configs/paths.yaml",
                   help="asset locations (PathsConfig): --to may not be or lie inside any of them")
    p.add_argument("--target", help="target_model_path of the configs; its tokenizer renders Task 2's patched "
                                    "token (default: the model recorded in the records)")


def _load_tokenizer(name: str, what: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as e:  # a wrong path or an uncached hub id: one line, not a traceback
        raise InputError(f"{what} tokenizer {name}: cannot load ({type(e).__name__}); pass a local folder "
                         f"or a cached hub id") from None
    return tok


def main(args: argparse.Namespace) -> int:
    from interop import ii_export
    from records.assets import check_output_dir
    from records.paths import guarded_sources

    check_output_dir(args.to, guarded_sources(args.paths_config))  # the one source guard, before anything loads
    tasks = ii_export.find_tasks(args.run)
    target = args.target or ii_export.recorded_target(tasks)
    target_tokenizer = None
    tokenizer_name = args.tokenizer or args.explainer
    tokenizer = _load_tokenizer(tokenizer_name, "explainer")  # every task: the continuous-token markers come from it
    if "hint_attribution" in tasks or "act_patch" in tasks:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"explainer tokenizer {tokenizer_name}: no chat template; the configs' prompts are "
                             "chats (use an instruct model's tokenizer)")
    if "act_patch" in tasks:
        if not target:
            raise InputError("Task 2 records name no model; pass --target")
        target_tokenizer = _load_tokenizer(target, "target")
    summary = ii_export.export(args.run, args.to, tokenizer, target_tokenizer, args.explainer, target, tokenizer_name)
    print("\n".join(summary["summary"]))
    print(f"wrote {args.to}: commands in {args.to}/README.md")
    return 0
