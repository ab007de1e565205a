"""The records contract: every stage writes and reads these msgspec Structs, one JSON object per line.

Stages talk only through records on disk, so each can run, resume and be tested alone. Field names of
`ContextAblationRecord` and `SteeringRecord` include the ones introspective-interp's
HintAttributionDataset and ActPatchDataset read; `af-introspect export introspective-interp` (interop/)
writes them in the form its loaders need (docs/interop.md).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import msgspec

SCHEMA_VERSION = 1

_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Canonical form for content identity: NFKC, casefolded, whitespace collapsed and stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


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


class RawCompletion(msgspec.Struct, forbid_unknown_fields=True):
    """One finished generation, saved the moment it completes (a stage's resumable work shard)."""

    key: str  # unique within the run, e.g. "17:monitored"
    token_ids: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int


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
    with `inline_vectors: true` (hidden_size floats per record); otherwise null, and the direction is the
    `direction_path` file (relative to the records folder) scaled by `alpha_effective`.
    """

    orig_pos: int
    orig_text_token: str
    counterfact_pos: int
    counterfact_text_token: str
    intervention_vector: list[float] | None = None


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


class RunManifest(msgspec.Struct, forbid_unknown_fields=True):
    """Written into every output folder: how its contents were made."""

    stage: str
    created: str  # ISO 8601 UTC
    code_version: str  # git describe of this repo, or "unknown"
    config: dict  # the resolved config, as encoded
    model: str = ""
    inputs: dict[str, str] = {}  # asset name -> path
    schema_version: int = SCHEMA_VERSION
