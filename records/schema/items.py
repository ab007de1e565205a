"""Per-item records: the lines of train.jsonl / test.jsonl (and the stages' shards) every stage writes and
reads, the run manifest, and the ids they are keyed by."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from typing import TypeVar

import msgspec

T = TypeVar("T")

SCHEMA_VERSION = 1

_WS = re.compile(r"\s+")



@functools.cache
def _invisible() -> dict[int, None]:
    """Invisible characters that would let a held-out text pass as new: format characters (Unicode
    category Cf: zero-width space and joiners, soft hyphen, BOM, bidi marks), dropped before comparing.
    Built on first use (0.3 s), not at import."""
    return {cp: None for cp in range(0x110000) if unicodedata.category(chr(cp)) == "Cf"}


def normalise_text(text: str) -> str:
    """Canonical form for content identity: NFKC, invisible format characters removed, casefolded,
    whitespace collapsed and stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).translate(_invisible()).casefold()).strip()


def content_id(text: str) -> str:
    """Stable id of a scenario's content: 16 hex chars of sha256 over the normalised text.

    Whitespace and case changes map to the same id, which is what the held-out overlap check needs.
    """
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:16]


class Scenario(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One input scenario, as loaded from a gold-style JSON list."""

    id: str  # content_id(text)
    text: str
    label: str
    source: str = ""


class EngineInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How outputs were produced; recorded in every generated record."""

    backend: str  # "vllm" | "hf"
    model: str  # path or hub id as given
    dtype: str
    max_tokens: int
    temperature: float = 0.0
    batch_invariant: bool = False
    engine_version: str = ""
    chat_rendering: str = ""  # "system_role" | "folded_into_user"
    device: str = ""


class ContextSamples(msgspec.Struct, forbid_unknown_fields=True):
    """Sampled mode: the k outputs of one prompt (one context), in sample order, and their labels."""

    outputs: list[str]  # every sample's raw text
    behaviors: list[str]
    output_tokens: list[int]
    finish_reasons: list[str]
    counts: dict[str, int]  # label -> samples
    compliance_rate: float  # share of samples labelled compliance
    majority: str  # the most common label (ties: the label of the earliest tied sample)


class SampledPair(msgspec.Struct, forbid_unknown_fields=True):
    """Sampled mode: both contexts' samples and the scenario's compliance gap (generation/sampled.py)."""

    k: int
    temperature: float
    seed: int
    monitored: ContextSamples
    unmonitored: ContextSamples
    gap: float  # unmonitored minus monitored compliance rate
    p_value: float  # Fisher's exact test (two-sided) of the two contexts' compliance counts
    significant: bool  # p_value < 0.05
    bucket: str  # |gap| as "no change" | "small" | "large" (generation/sampled.py: GAP_BUCKETS)


class ContextAblationRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One scenario run under the monitored and the unmonitored system prompt.

    The first block is introspective-interp's HintAttribution schema, mapped the way its targets read
    it: the explainer sees the prompt *with* the "hint" and is asked how the answer changes when the
    hint is replaced. Our hint is the MONITORED context; replacing it gives the UNMONITORED prompt. So
    `random_hint_prediction` is the monitored behaviour (the `orig_match` target) and
    `zeroshot_prediction` the unmonitored one (the `change_match` target). Both meanings of "changed" are
    kept: `output_changed` (and `changed_pred_bc_hint`, the seed's meaning) say the raw outputs differ;
    `behavior_changed` is the label-level change the explainer learns, since 256-token strings differ for
    trivial reasons. introspective-interp asserts `changed_pred_bc_hint` equals the label change, so
    `af-introspect export introspective-interp` writes `behavior_changed` there.
    """

    # -- introspective-interp HintAttribution fields --
    ablation_prompt: str  # the rendered prompt after the ablation (unmonitored); unique per sample
    hint_prompt_full: str  # full rendered monitored prompt, exactly as the model saw it
    original_prompt_full: str  # full rendered unmonitored prompt
    system_prompt: str  # the monitored system text (the context the explainer sees)
    hint: str  # the unmonitored system text that replaces it
    random_hint_prediction: str  # behaviour label of the monitored output
    zeroshot_prediction: str  # behaviour label of the unmonitored output
    changed_pred_bc_hint: bool  # raw outputs differ
    hint_user_prompt: str  # user turn as sent with the monitored context
    original_user_prompt: str  # user turn as sent with the unmonitored context
    label: str  # scenario label from the input set
    # -- ours --
    sample_id: str  # == scenario id: content hash of the scenario text
    index: int  # position in the input set; splits and files are ordered by it
    source: str
    monitored_output: str
    unmonitored_output: str
    monitored_behavior: str
    unmonitored_behavior: str
    behavior_changed: bool
    monitored_output_tokens: int
    unmonitored_output_tokens: int
    monitored_prompt_tokens: int
    unmonitored_prompt_tokens: int
    monitored_finish_reason: str
    unmonitored_finish_reason: str
    labeller: str
    engine: EngineInfo
    schema_version: int = SCHEMA_VERSION
    output_changed: bool | None = None  # raw outputs (token ids) differ; None in records made before it
    # Sampled mode only: every sample and the rates. The fields above then describe each context's majority
    # label (behaviours, changed = majority vs majority) and, as its output, its first sample with that label.
    sampled: SampledPair | None = None


class RawCompletion(msgspec.Struct, forbid_unknown_fields=True):
    """One finished generation, saved the moment it completes (a stage's resumable work shard)."""

    key: str  # unique within the run, e.g. "17:monitored"
    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    median_loss: float | None = None  # steering: the output's median token loss under the unsteered model


class ControlRecord(msgspec.Struct, forbid_unknown_fields=True):
    """Noise-floor control: one scenario rendered twice with the SAME system prompt at two batch positions.

    Any difference between the two outputs is engine nondeterminism (batch composition), not the
    monitoring context.
    """

    sample_id: str
    index: int
    context: str  # "monitored" | "unmonitored"
    first_output: str
    second_output: str
    output_changed: bool
    first_behavior: str
    second_behavior: str
    behavior_changed: bool
    engine: EngineInfo
    schema_version: int = SCHEMA_VERSION


class PatchPosition(msgspec.Struct, forbid_unknown_fields=True):
    """Where the intervention sits, as ActPatchDataset reads it.

    Steering has no counterfactual prompt, so counterfact_* repeat orig_*. orig_pos is the last prompt
    token for the `last` and `all` policies (the position whose steering decides the first output token)
    and the first generated position for `generated` (orig_text_token is then the baseline's first token).
    The vector added is `alpha_effective[k] * unit(direction)` at layer `layer[k]`: written inline only
    with `inline_vectors: true`, one per steered layer in `intervention_vectors` (hidden_size floats
    each); `intervention_vector` holds the vector only when every steered layer gets the same one (one
    layer, or equal effective alphas), since ActPatchDataset injects one vector at every listed layer.
    Otherwise both are null, and the direction is the `direction_path` file (relative to the records
    folder) scaled by `alpha_effective`.
    """

    orig_pos: int
    orig_text_token: str
    counterfact_pos: int
    counterfact_text_token: str
    intervention_vector: list[float] | None = None
    intervention_vectors: list[list[float]] | None = None


class CoherenceCheck(msgspec.Struct, forbid_unknown_fields=True):
    """lm/coherence.py's checks of one steered output; `degenerate` when any reason fired."""

    repeated_ngrams: float  # share of token n-grams repeating an earlier one
    compression_ratio: float | None  # zlib / raw bytes; None for short texts
    median_loss: float | None  # nats per token under the unsteered model; None for an empty output
    degenerate: bool
    reasons: list[str] = []  # "repeated" | "compression" | "loss" | "shape" | "stutter" | "loop" | "words"


class SteeringRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One scenario under one steering arm (layer set, alpha), with its shared unsteered baseline.

    The first block is what introspective-interp's ActPatchDataset reads: token STRINGS for the input and
    both continuations (it calls `convert_tokens_to_string`), `patch_position` as a dict, and the
    counterfactual/ground-truth text fields.
    """

    # -- introspective-interp ActPatch fields --
    layer: list[int]
    input_tokens: list[str]  # prompt tokens as strings, as the model saw them (no padding)
    original_continuation: list[str]  # unsteered output tokens (strings, EOS removed)
    ablated_continuation: list[str]  # steered output tokens
    is_different: bool  # raw outputs (token ids) differ
    patch_position: PatchPosition
    counterfactual_text: str  # what the intervention was, in words
    gt_original_target: str  # behaviour label of the unsteered output
    gt_counterfactual_target: str  # behaviour label of the steered output
    # -- ours --
    sample_id: str
    index: int
    arm: str  # e.g. "L20+L30@a2"; the baseline is never a record of its own
    label: str
    source: str
    context: str  # "monitored" | "unmonitored": the system prompt the scenario was rendered with
    alpha: float
    alpha_effective: list[float]  # per layer in `layer`: the multiplier applied to the unit direction
    scale_mode: str  # "raw" | "residual_norm"
    position_policy: str  # "last" | "all" | "generated"
    direction_id: str
    direction_path: str  # relative to the records folder
    direction_norm: float  # norm of the direction file's vector before normalising
    input_token_ids: list[int]
    prompt_text: str
    baseline_output: str
    steered_output: str
    baseline_behavior: str
    steered_behavior: str
    behavior_changed: bool
    baseline_output_tokens: int
    steered_output_tokens: int
    baseline_finish_reason: str
    steered_finish_reason: str
    labeller: str
    engine: EngineInfo
    schema_version: int = SCHEMA_VERSION
    # which direction this arm added: "file" (the user's), "derived", "-<name>" (negation), "random<k>"
    direction_name: str = "file"
    direction_kind: str = "file"  # "file" | "derived" | "negated" | "random"
    family: str = ""  # "af" (label in af_labels), else the source's family (toy: harmful / benign) or label
    # None: not checked. A degenerate output has steered_behavior "degenerate" and behavior_changed False.
    coherence: CoherenceCheck | None = None


class FeatureRecord(msgspec.Struct, forbid_unknown_fields=True):
    """One selected SAE feature with the vector the explainer reads and its description."""

    layer: int
    feature_idx: int
    row: int  # row of this feature's vector in the run's vectors file
    vectors_path: str  # .npy, shape [n_features, dim], relative to the records folder
    representation: str  # "activation_profile" | "decoder_direction"
    description: str  # cluster summary text; the target
    cluster_id: int
    selectivity: float
    split_by: str  # "cluster" | "feature": how this record was assigned to its split
    probe_weight: float | None = None
    schema_version: int = SCHEMA_VERSION


# Beside the FeatureRecord splits when the features stage had cluster attributes: the user's
# {cluster_id: {attribute: value}} file as read (records/assets.py load_cluster_attributes reads both).
CLUSTER_ATTRIBUTES = "cluster_attributes.json"


class RunManifest(msgspec.Struct, forbid_unknown_fields=True):
    """Written into every output folder: how its contents were made."""

    stage: str
    created: str  # ISO 8601 UTC
    code_version: str  # git describe of this repo, or "unknown"
    config: dict  # the resolved config, as encoded
    model: str = ""
    inputs: dict[str, str] = {}  # asset name -> path
    schema_version: int = SCHEMA_VERSION
