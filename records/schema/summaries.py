"""Run summaries: summary.json of each data stage (generate, steer), read by the report and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import msgspec

from records.errors import InputError

T = TypeVar("T")

class Interval(msgspec.Struct, forbid_unknown_fields=True):
    """A score and its bootstrap 95% interval."""

    value: float
    lo: float
    hi: float


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
