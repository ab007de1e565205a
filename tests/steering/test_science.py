"""Steering science: per-family change, specificity, dose-response and the degenerate warning."""

import pytest

from records.schema import ArmSummary, EngineInfo, PatchPosition, SteeringRecord, SteeringSummary
from steering import science


def rec(family: str, changed: bool, alpha: float = 1.0, direction: str = "file", degenerate: bool = False):
    steered = "degenerate" if degenerate else ("refusal" if changed else "compliance")
    return SteeringRecord(
        layer=[2], input_tokens=[], original_continuation=[], ablated_continuation=[], is_different=changed,
        patch_position=PatchPosition(0, "", 0, ""), counterfactual_text="", gt_original_target="compliance",
        gt_counterfactual_target=steered, sample_id="s", index=0, arm=f"L2@a{alpha:g}", label=family, source="",
        context="unmonitored", alpha=alpha, alpha_effective=[alpha], scale_mode="raw", position_policy="last",
        direction_id="d", direction_path="direction.npy", direction_norm=1.0, input_token_ids=[], prompt_text="",
        baseline_output="", steered_output="", baseline_behavior="compliance", steered_behavior=steered,
        behavior_changed=changed and not degenerate, baseline_output_tokens=0, steered_output_tokens=0,
        baseline_finish_reason="stop", steered_finish_reason="stop", labeller="rules",
        engine=EngineInfo("hf", "toy", "float32", 8), direction_name=direction, family=family)


def family_set(rates: dict[str, float], n: int = 20, **kw):
    return [rec(f, k < rate * n, **kw) for f, rate in rates.items() for k in range(n)]


def test_a_direction_that_changes_every_family_equally_has_specificity_zero():
    records = family_set({"af": 0.6, "harmful": 0.6, "benign": 0.6})
    assert science.specificity(records) == pytest.approx(0.0)
    assert science.by_family(records) == {"af": pytest.approx(0.6), "benign": pytest.approx(0.6),
                                          "harmful": pytest.approx(0.6)}


def test_specificity_is_af_change_minus_non_af_change():
    records = family_set({"af": 0.9, "harmful": 0.1, "benign": 0.3})
    assert science.specificity(records) == pytest.approx(0.9 - 0.2)
    assert science.specificity(family_set({"harmful": 0.5})) is None  # no AF side


def test_degenerate_outputs_are_no_change_and_an_arm_of_them_is_warned_about():
    records = [rec("af", True, degenerate=True) for _ in range(8)] + [rec("af", True) for _ in range(2)]
    assert science.change_rate(records) == pytest.approx(0.2) and science.degenerate_rate(records) == 0.8
    arm = ArmSummary(n=10, behavior_changed_rate=0.2, output_changed_rate=1.0, by_label={}, transitions={},
                     degenerate_rate=0.8)
    summary = SteeringSummary(n_records=10, n_scenarios=10, contexts=["unmonitored"], scale="raw",
                              positions="last", layer_sets=["2"], alphas=[1.0], behavior_changed_rate=[[0.2]],
                              per_arm={"L2@a1": arm}, residual_norms={})
    (warning,) = science.warnings(summary)
    assert "L2@a1" in warning and "80%" in warning


def test_dose_response_per_direction_and_random_control_beside_the_real_effect():
    records = (family_set({"af": 0.0}, alpha=0.0) + family_set({"af": 0.3}, alpha=1.0)
               + family_set({"af": 0.8}, alpha=2.0) + family_set({"af": 0.05}, alpha=2.0, direction="random0"))
    curves = {c.direction: c for c in science.dose_response(records)}
    assert curves["file"].alphas == [0.0, 1.0, 2.0] and curves["file"].changed == pytest.approx([0.0, 0.3, 0.8])
    summary = SteeringSummary(n_records=0, n_scenarios=0, contexts=[], scale="raw", positions="last",
                              layer_sets=[], alphas=[], behavior_changed_rate=[], per_arm={}, residual_norms={},
                              dose_response=list(curves.values()))
    lines = science.control_lines(summary)
    assert any("alpha 0" in line and "0%" in line for line in lines)
    assert any(line.startswith("file L2 alpha 2: change 80%; random directions 5%") for line in lines)
    assert not any("alpha 1:" in line for line in lines)  # 30% is below the real-effect bar


def test_family_from_af_labels_then_the_source_then_the_label():
    assert science.family("alignment_faking", "toy_organism:af", ["alignment_faking"]) == "af"
    assert science.family("aligned", "toy_organism:harmful", ["alignment_faking"]) == "harmful"
    assert science.family("genuine_compliance", "gold", ["alignment_faking"]) == "genuine_compliance"
