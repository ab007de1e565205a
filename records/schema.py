"""The records contract: every stage writes and reads these msgspec Structs, one JSON object per line.

Stages talk only through records on disk, so each can run, resume and be tested alone. Field names of
`ContextAblationRecord` and `SteeringRecord` include the ones introspective-interp's
HintAttributionDataset and ActPatchDataset read; `af-introspect export introspective-interp` (interop/)
writes them in the form its loaders need (docs/interop.md).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import Path
from typing import TypeVar

import msgspec

from records.errors import InputError

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


# ---------------------------------------------------------------------------------------------------
# Run summaries: summary.json of each data stage, read by the report and the demo.


class LabelChange(msgspec.Struct, forbid_unknown_fields=True):
    n: int
    rate: float


class ContextLabels(msgspec.Struct, forbid_unknown_fields=True):
    """Behaviour labels of one context's outputs: their counts and how many hit the length cap."""

    n: int
    labels: dict[str, int]
    truncated_rate: float


class LabelAgreement(msgspec.Struct, forbid_unknown_fields=True):
    """Rules vs judge on the same outputs: n, observed agreement, Cohen's kappa, and the confusion
    matrix (rows: rules, columns: judge) over the labels either used."""

    n: int
    observed: float
    kappa: float
    labels: list[str]
    matrix: list[list[int]]


class ControlRate(msgspec.Struct, forbid_unknown_fields=True):
    """The noise floor of one context: its prompt run twice, other batch position, no shared prefix cache."""

    n: int
    output_changed_rate: float
    behavior_changed_rate: float


class SampledSummary(msgspec.Struct, forbid_unknown_fields=True):
    """Sampled mode, per run: the compliance gap with bootstrap 95% intervals over scenarios."""

    k: int
    temperature: float
    seed: int
    n_scenarios: int
    compliance_rate: dict[str, float]  # context -> share of its samples labelled compliance
    gap: Interval  # mean over scenarios of (unmonitored - monitored compliance rate)
    gap_by_label: dict[str, Interval]
    significant_share: float  # scenarios whose own gap is significant (Fisher, p < 0.05)
    buckets: dict[str, int]  # "no change" | "small" | "large" -> scenarios
    histogram_edges: list[float]  # gap histogram: bin edges from -1 to 1
    histogram: list[int]  # scenarios per bin


class ContextAblationSummary(msgspec.Struct, forbid_unknown_fields=True):
    """Task 3's summary.json: change rates overall and by label, lengths, and the noise floor."""

    n_pairs: int
    output_changed_rate: float
    behavior_changed_rate: float
    behavior_changed_by_label: dict[str, LabelChange]
    transitions: dict[str, int]  # "monitored->unmonitored" behaviour -> count
    mean_output_tokens: float
    mean_output_chars: float
    truncated_outputs: int
    control_n: int
    control_output_changed_rate: float | None
    control_behavior_changed_rate: float | None
    labels_per_context: dict[str, ContextLabels] = {}
    control_by_context: dict[str, ControlRate] = {}
    agreement: LabelAgreement | None = None  # when both labellers ran
    wall_seconds: dict[str, float] = {}
    output_tokens_per_second: float = 0.0
    sampled: SampledSummary | None = None  # sampled mode only


class ResidualNorm(msgspec.Struct, forbid_unknown_fields=True):
    """Residual-stream L2 norm after one layer over a run's prompt tokens (BOS left out)."""

    mean: float
    median: float
    n_tokens: int


class ArmSummary(msgspec.Struct, forbid_unknown_fields=True):
    n: int
    behavior_changed_rate: float | None
    output_changed_rate: float | None
    by_label: dict[str, float | None]
    transitions: dict[str, int]
    direction: str = "file"
    degenerate_rate: float | None = None  # share of steered outputs that failed the coherence check
    by_family: dict[str, float | None] = {}  # behaviour change rate per family
    specificity: float | None = None  # AF change rate minus the change rate of all non-AF records
    # The alpha-0 rows at this arm's layer set (its batches) and at another batch position, pooled: the
    # change rate engine noise alone gives (steering/science.py: noise floor); None without alpha-0 rows
    noise_floor: float | None = None
    noise_floor_hi: float | None = None  # its Wilson 95% upper bound
    within_noise_floor: bool = False  # a change rate > 0 and <= noise_floor_hi: noise could explain it


class NoiseRate(msgspec.Struct, forbid_unknown_fields=True):
    """How often an alpha-0 row (nothing added) differs from its scenario's baseline."""

    n: int
    behavior_changed_rate: float | None
    output_changed_rate: float | None
    behavior_changed_hi: float | None  # Wilson 95% upper bound of behavior_changed_rate


class NoiseFloor(msgspec.Struct, forbid_unknown_fields=True):
    """Task 2's noise floor: alpha-0 rows in the batches of each scenario's other arms, and once more at
    another batch position (a batch of their own at the plan's end)."""

    in_batch: dict[str, NoiseRate]  # layer set ("2", "1+2") -> its alpha-0 rows
    other_position: NoiseRate | None = None


class DirectionSummary(msgspec.Struct, forbid_unknown_fields=True):
    """One direction a run steered along; per_layer_id: the derived direction differs per layer."""

    name: str
    kind: str  # "file" | "derived" | "negated" | "random"
    ids: dict[str, str]  # layer -> id of the vector steered there (the derived one differs per layer)
    norms: dict[str, float]  # layer -> the raw vector's norm before normalising (random: 1)


class DoseResponse(msgspec.Struct, forbid_unknown_fields=True):
    """Rates along alpha for one (direction, layer set); alpha 0 included when the run had that arm."""

    direction: str
    layers: str
    alphas: list[float]
    changed: list[float | None]
    degenerate: list[float | None]
    af_changed: list[float | None]
    non_af_changed: list[float | None]


class DirectionInfo(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    id: str
    norm: float


class SteeringSummary(msgspec.Struct, forbid_unknown_fields=True):
    """Task 2's summary.json: behaviour change rate per (layer set, alpha), per arm, residual norms."""

    n_records: int
    n_scenarios: int
    contexts: list[str]
    scale: str
    positions: str
    layer_sets: list[str]  # "20", "20+30"
    alphas: list[float]
    behavior_changed_rate: list[list[float | None]]  # [layer set][alpha]
    per_arm: dict[str, ArmSummary]
    residual_norms: dict[str, ResidualNorm]  # layer -> norm (scale residual_norm)
    labels_per_context: dict[str, ContextLabels] = {}
    agreement: LabelAgreement | None = None  # when both labellers ran
    wall_seconds: dict[str, float] = {}
    direction: DirectionInfo | None = None
    engine_stats: dict[str, int | float] | None = None
    directions: list[DirectionSummary] = []
    dose_response: list[DoseResponse] = []
    warnings: list[str] = []  # e.g. an arm whose outputs are mostly degenerate
    noise_floor: NoiseFloor | None = None  # the alpha-0 rows (steer's noise_floor, on by default)


def read_summary(path: str | Path, summary_type: type[T]) -> T:
    """A summary.json decoded into its struct; a missing or corrupt file is one InputError line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found")
    try:
        return msgspec.json.decode(path.read_bytes(), type=summary_type)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise InputError(f"{path}: not a valid {summary_type.__name__}: {e}") from None


# --- Task 1 (features): what `features extract` / `describe` write beside the FeatureRecord splits -------
# omit_defaults: fields that only one representation (or the export) has stay off the other's JSON, the
# shape features_index.json has always had, so earlier runs still decode.


class CacheSegment(msgspec.Struct, forbid_unknown_fields=True):
    """Where one activation cache's rows sit in an activation profile: columns offset .. offset+rows."""

    cache: str  # "train" | "test" | "benchmark" | "model_organism" | "sycophant"
    path: str
    rows: int
    offset: int


class SelectedFeature(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One kept feature: row `row` of vectors.npy is the vector of SAE feature `feature_idx`."""

    row: int
    feature_idx: int
    selectivity: float
    probe_weight: float | None  # None: no probe weights (written as null)
    decoder_norm: float | None = None  # decoder_direction: the decoder row's norm before unit scaling


class SelectionStats(msgspec.Struct, forbid_unknown_fields=True):
    """Selectivity of the kept features and of all W features."""

    selectivity_min: float
    selectivity_max: float
    selectivity_median: float
    selectivity_all_min: float
    selectivity_all_max: float


class FeaturesIndex(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """features_index.json: how vectors.npy [len(features), dim] was made, row by row."""

    layer: int
    representation: str  # "activation_profile" | "decoder_direction"
    width: int  # W, the SAE's feature count (selectivity.npy's length)
    top_k: int
    rank_by: str  # "value" | "abs"
    selectivity_path: str
    normalisation: str  # in words
    n_zero_vectors: int  # features whose vector is all zero (never fired in the profile caches)
    probe_weights_path: str  # "" when no probe weights were read
    dim: int
    stats: SelectionStats
    features: list[SelectedFeature]
    profile_norm: str = ""  # activation_profile only: "l2" | "max" | "none"
    caches: list[CacheSegment] = []  # activation_profile only, in profile order
    decoder_path: str = ""  # decoder_direction only
    decoder_key: str = ""  # decoder_direction only
    export: str = ""  # the introspective-interp feature matrix, when exported


class FeatureInCluster(msgspec.Struct, forbid_unknown_fields=True):
    feature_idx: int
    cluster_id: int


class Coverage(msgspec.Struct, forbid_unknown_fields=True):
    """coverage.json: which selected features got a description, and every reason one did not."""

    n_selected: int
    n_described: int
    selected_not_in_assignments: list[int]
    selected_assigned_no_cluster: list[int]  # cluster id < 0 (-1: the clustering's "noise")
    selected_cluster_without_summary: list[FeatureInCluster]
    clusters_without_summary: list[int]  # assigned a feature, but no summary
    summaries_without_features: list[int]
    n_clusters_selected: int  # distinct clusters among the described features
    n_clusters_without_summary: int
    n_summaries_without_features: int


# ---------------------------------------------------------------------------------------------------
# Evaluation outputs: <checkpoint>/eval/metrics.json and predictions.jsonl, read by the report and the demo.


class AttributeScoring(msgspec.Struct, forbid_unknown_fields=True):
    """How per-attribute accuracy of feature descriptions was decided on one split and question type
    (training/attributes.py): the chance level of each attribute and the word n-grams ("marks") that name
    each value, learnt from the training descriptions."""

    n: int  # items whose cluster has attributes
    chance: dict[str, float]  # attribute -> the training majority value's share of the items
    marks: dict[str, dict[str, list[str]]]  # attribute -> value -> the n-grams that name it ([]: never named)


# metrics.json's shape: 2 = every score with a 95% interval is an Interval (strict_*, gap, brier, ...);
# 1 (files without `version`) = flat `<key>`, `<key>_lo`, `<key>_hi` floats, refused by read_eval_metrics.
EVAL_METRICS_VERSION = 2


class EvalMetrics(msgspec.Struct, forbid_unknown_fields=True):
    """metrics.json: split -> question type -> method -> metric -> a number (n, exact_match, ...; NaN
    where a metric has no items) or, for a score with a bootstrap 95% interval (strict_*, gap, ...), an
    Interval. Feature descriptions also carry semantic_similarity (MiniLM), lm_judge (the paper's 1-5
    judge as (s-1)/4, when configured) and, when the records came with cluster attributes,
    attribute:<name> and attribute_mean (share of items whose description names the right value)."""

    checkpoint: str
    splits: dict[str, dict[str, dict[str, dict[str, float | Interval]]]]
    attributes: dict[str, dict[str, AttributeScoring]] = {}  # split -> question type -> how it was scored
    feature_judge: str = ""  # the LM judge of feature descriptions; "" = not configured
    seconds: dict[str, float] = {}  # wall time of evaluate's pieces (few-shot, calibration, templates, ...)
    # split -> question type -> why the explainer counts as collapsed (one answer for all; on the test
    # split also no better than the majority answer): training/collapse.py
    collapse: dict[str, dict[str, str]] = {}
    version: int = 1  # EVAL_METRICS_VERSION of the writer; files written before the field are version 1


def read_eval_metrics(path: str | Path) -> EvalMetrics:
    """metrics.json of the current shape; an older one is one InputError line, never read as numbers."""
    metrics = read_summary(path, EvalMetrics)
    if metrics.version != EVAL_METRICS_VERSION:
        raise InputError(f"{path}: metrics.json of an older format (version {metrics.version}, this code reads "
                         f"{EVAL_METRICS_VERSION}): rerun `af-introspect evaluate` on that checkpoint")
    return metrics


class Interval(msgspec.Struct, forbid_unknown_fields=True):
    """A score and its bootstrap 95% interval."""

    value: float
    lo: float
    hi: float


class QuestionComparison(msgspec.Struct, forbid_unknown_fields=True):
    """One question type of a self-vs-cross comparison: every method's strict scores, and the gaps."""

    n: int
    n_groups: int  # resampled together by the bootstrap (e.g. every item of one held-out trigger)
    chance: float  # the most common target's share: what a constant answer scores
    methods: dict[str, dict[str, Interval]]  # method -> metric -> score
    gaps: dict[str, Interval] = {}  # "self-<method>" -> paired gap in strict exact match


class CompareVerdict(msgspec.Struct, forbid_unknown_fields=True):
    question_type: str
    gap: Interval  # self - cross
    min_gap: float
    privileged_access: bool  # gap >= min_gap and its interval above 0


class CompareResult(msgspec.Struct, forbid_unknown_fields=True):
    """compare.json (af-introspect compare): self vs cross explainer beside text-only baselines."""

    train_config: str
    models: dict[str, str]  # arm -> the model it started from
    group_pattern: str
    scores: dict[str, QuestionComparison]
    verdict: CompareVerdict
    # arm -> what it was trained from and on (training/compare.py arm_fingerprint); {} before they were kept
    arms: dict[str, dict[str, str]] = {}


class PredictionRow(msgspec.Struct, forbid_unknown_fields=True):
    """One held-out item's answer by one method, with its lenient scores (predictions.jsonl)."""

    split: str
    method: str
    task: str
    question_type: str
    sample_id: str
    target: str
    prediction: str
    exact_match: bool
    content_match: bool | None = None
    valid: bool | None = None
    pred_changed: bool | None = None
    target_changed: bool | None = None
    lm_judge: float | None = None  # feature descriptions with a judge configured: (rating - 1) / 4
    attribute_correct: dict[str, bool] | None = None  # attribute -> the description names the right value
    confidence: float | None = None  # the explainer's probability of this answer (training/calibration.py)
    p_changed: float | None = None  # the explainer's P(changed) (behaviour-change explanations)
    draw: int | None = None  # few-shot baselines: which draw of solved examples (training/peers.py)
