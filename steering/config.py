"""Config of the Task 2 steering grid (steer): defaults in the type, YAML in configs/steer*.yaml.

Sign and range rules are bounds in the types (msgspec `Meta`), so a wrong value fails when the YAML and the
flags are decoded, naming its field: `configs/x.yaml: Expected `int` >= 1 - at `$.batch_size` (value: 0)`.
What a type cannot say (rules across fields) is steering/run.py's `check_config`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from lm.chat import PromptTemplates
from lm.judge_config import JudgeConfig

Count = Annotated[int, Meta(ge=0)]  # 0 allowed: "none" or, for limit, "all"
Positive = Annotated[int, Meta(ge=1)]
Share = Annotated[float, Meta(ge=0.0, le=1.0)]
# An alpha multiplies a unit vector (raw) or a residual norm: beyond +-1e6 there is only overflow. The bound
# also refuses NaN and inf, which YAML spells .nan and .inf.
Alpha = Annotated[float, Meta(ge=-1e6, le=1e6)]
Layer = Annotated[int, Meta(ge=0)]  # decoder layers count from 0; the model's depth is checked against its config


class DeriveConfig(msgspec.Struct, forbid_unknown_fields=True):
    """`steer --derive-direction`: a difference of mean residuals of the model's own prompts."""

    layer: int = -1  # decoder layer whose output residual is compared (required)
    out: str = ""  # output folder (file direction_<contrast>_L<layer>.npy) or a .npy path (required)
    # monitoring: monitored minus unmonitored prompts of the same scenarios; label: AF-labelled minus
    # other scenarios (af_labels of the paths config), rendered in `context`.
    contrast: Literal["monitoring", "label"] = "monitoring"
    context: Literal["monitored", "unmonitored"] = "unmonitored"
    positions: Literal["last", "mean"] = "last"  # the last prompt token, or the mean over prompt tokens
    # monitoring contrast over AF-labelled scenarios only (AF monitored vs unmonitored): a direction of the
    # monitoring effect where it exists, not of what separates harmful from benign requests
    af_only: bool = False


class CoherenceConfig(msgspec.Struct, forbid_unknown_fields=True):
    """When a steered output counts as `degenerate` (lm/coherence.py): any one check suffices."""

    ngram: Positive = 3  # token n-gram size of the repetition check
    max_repeated: Share = 0.5  # share of the output's token n-grams that repeat an earlier one
    # zlib-compressed bytes / UTF-8 bytes (outputs of >= 64 bytes only); 0 turns the check off
    min_compression: Annotated[float, Meta(ge=0.0)] = 0.3
    # median per-token loss (nats) of the steered output under the UNSTEERED model, given the prompt
    max_median_loss: Annotated[float, Meta(ge=0.0)] = 6.0


class SteerConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything the steering grid needs. Arms: baseline (once per scenario) + each (layer set, alpha)."""

    input: str = ""  # scenario JSON or JSONL (records/assets.py load_scenarios); "" = gold_1560 of the paths config
    output_dir: str = "data/af_steering"
    # "" = organism_model of the paths config; else a local folder, a cached hub id, or "toy" (the toy organism)
    model: str = ""
    tokenizer: str = ""  # "" = the model's own
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    direction: str = ""  # .npy of shape (hidden_size,); "" = af_intent_direction from the paths config
    layers: Annotated[list[Layer], Meta(min_length=1)] = msgspec.field(default_factory=lambda: [20, 30])  # each alone
    layers_together: bool = False  # also one arm set steering all `layers` at once
    # in residual-norm units: on SmolLM2-135M (2026-12-07, as the GPU organism and plain on CPU) alpha >= 1 left
    # 75-100% of outputs degenerate, so the seed's 0.5, 1, 2, 5 spent three of four alphas on broken text
    # (docs/rehearsal.md); the seed's grid is meant with scale: raw
    alphas: Annotated[list[Alpha], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    # raw: alpha multiplies the unit direction; residual_norm: alpha in units of the mean residual norm at
    # the layer, measured on this run's own prompts (recorded in summary.json and every record).
    scale: Literal["raw", "residual_norm"] = "residual_norm"
    norm_prompts: Positive = 64  # prompts (first N, input order) used to measure residual norms
    positions: Literal["last", "all", "generated"] = "last"
    # Which system prompt the scenarios are rendered with (one run per listed context; baseline per context).
    contexts: Annotated[list[Literal["monitored", "unmonitored"]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["unmonitored"])
    max_new_tokens: Positive = 256
    batch_size: Positive = 256  # rows (scenario x arm) per generation batch; OOM halves it and retries
    data_parallel: Positive = 1  # processes, one per GPU, each on its own shard of the scenarios
    engine: Literal["fast", "hf"] = "fast"  # fast: static cache + CUDA-graph decode; hf: transformers generate
    cuda_graphs: Literal["auto", "on", "off"] = "auto"  # fast engine: auto = on with a CUDA GPU
    test_size: Count = 200  # about N scenarios form test.jsonl: whole groups, drawn per label (records/split.py)
    # regex whose capture groups scenarios (the toy's nonce trigger); "" = near-duplicate texts
    group_pattern: str = ""
    limit: Count = 0  # 0 = all scenarios; N = the first N
    inline_vectors: bool = False  # write each record's intervention vector (hidden_size floats) inline
    # who labels behaviour (lm/judge_config.py); the judge runs on vLLM with this run's dtype
    judge: JudgeConfig = msgspec.field(default_factory=JudgeConfig)
    seed: int = 0
    paths: str = "configs/paths.yaml"
    progress_log: str = "PROGRESS.md"
    heatmap: bool = True
    prompts: PromptTemplates = msgspec.field(default_factory=PromptTemplates)
    derive: DeriveConfig = msgspec.field(default_factory=DeriveConfig)
    # Controls beside `direction` (named "file"): "derived" = the difference of means at each steered layer
    # from this run's TRAINING scenarios (derive.contrast/context/positions/af_only), "-<name>" = a
    # direction's negation, "random<k>" = seeded random unit directions (the same norm once scaled: every
    # direction is a unit vector times the arm's effective alpha). Arms of the file direction keep their
    # plain names (L2@a1); the others are "<direction>/L2@a1".
    derived: bool = False
    negate: bool = False  # also the negation of the file direction and of the derived one
    random_directions: Count = 0
    alpha_zero: bool = False  # the alpha-0 arms as records (train/test) too, not only as the noise floor
    # The noise floor: an alpha-0 row per layer set in the batches of each scenario's other arms, and one more
    # at another batch position (a batch of its own at the plan's end); their change rate is reported beside
    # every arm's, and an arm whose change is inside it is flagged. Rows in noise_control.jsonl, not train/test.
    noise_floor: bool = True
    # Directions held out of explainer training: they steer the test scenarios only, so evaluation asks
    # whether the explainer generalises to a direction it never saw, on scenarios it never saw (the
    # held-out-direction split, beside the held-out scenarios). E.g. [random1] with random_directions: 2.
    test_directions: list[str] = []
    coherence: CoherenceConfig = msgspec.field(default_factory=CoherenceConfig)
