"""The behaviour judge's settings: one struct that every stage config nests as `judge:` (generate, steer)
and that `af-introspect label` builds from its flags. Kept free of torch so configs load fast."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class JudgeConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Who labels behaviour and how the judge runs; `model` is required for lm_judge/both (no default judge).

    Blank engine settings mean "the stage's own": `for_stage` fills them, so a judge runs on the same
    machine settings as the pass it labels unless told otherwise."""

    # rules: the marker rules (lm/labels.py); lm_judge: the judge's labels; both: the judge's labels, with
    # the rules' beside them for Cohen's kappa (lm/agreement.py)
    labeller: Literal["rules", "lm_judge", "both"] = "rules"
    model: str = ""  # local folder or hub id of an instruct model; never defaults to the organism
    backend: Literal["", "vllm", "hf"] = ""  # "" = the stage's backend (vllm where the stage has none)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = the stage's dtype
    allow_organism: bool = False  # let the organism grade its own outputs; records then carry "self-judged"
    max_request_chars: int = 2000
    max_answer_chars: int = 2000
    hf_batch_size: int = 16
    seed: int = 0  # for_stage sets the stage's seed
    engine: dict[str, Any] = msgspec.field(default_factory=dict)  # passed to vllm.LLM; {} = the stage's


def for_stage(judge: JudgeConfig, *, backend: str = "vllm", dtype: str = "auto", seed: int = 0,
              engine: dict[str, Any] | None = None) -> JudgeConfig:
    """The judge as it runs for a stage: the model path resolved, blank settings taken from the stage."""
    from lm.models import resolve_model

    return msgspec.structs.replace(
        judge, model=resolve_model(judge.model) if judge.model else "", backend=judge.backend or backend,
        dtype=dtype if judge.dtype == "auto" else judge.dtype, seed=seed,
        engine=judge.engine or dict(engine or {}))
