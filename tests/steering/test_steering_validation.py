"""Task 2 steering, validation: the config's type bounds and cross-field check, the grid against the model's
depth, the direction file, and the arms."""

import numpy as np
import pytest
from steer_helpers import one_line

from records.config import convert_config, load_config
from records.errors import InputError
from steering import grid
from steering.config import SteerConfig


def test_grid_validation_errors_are_one_line_naming_the_thing():
    with pytest.raises(InputError) as e:
        grid.check_depth([20, 30, 40], depth=32, model="mistral-7b")
    msg = one_line(e)
    assert "layer 40" in msg and "32 layers" in msg and "0..31" in msg
    # an empty grid and a NaN alpha are the config's types' to refuse, naming the field
    with pytest.raises(InputError) as e:
        convert_config({"layers": []}, SteerConfig)
    assert "length >= 1" in one_line(e) and "$.layers`" in one_line(e)
    with pytest.raises(InputError) as e:
        convert_config({"alphas": []}, SteerConfig)
    assert "length >= 1" in one_line(e) and "$.alphas`" in one_line(e)
    with pytest.raises(InputError) as e:
        convert_config({"alphas": [1.0, float("nan")]}, SteerConfig)
    assert "$.alphas[1]" in one_line(e) and "nan" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list("0.5,1,two", "--alphas")
    assert "'two' is not a number" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list("20,3.5", "--layers", integer=True)
    assert "'3.5' is not an integer" in one_line(e)
    with pytest.raises(InputError) as e:
        grid.parse_number_list(" , ", "--alphas")
    assert "empty" in one_line(e)


def test_config_rejects_non_numeric_alphas_in_yaml(tmp_path):
    path = tmp_path / "steer.yaml"
    path.write_text("alphas: [0.5, big]\n")
    with pytest.raises(InputError) as e:
        load_config(path, SteerConfig)
    assert "alphas" in one_line(e)


@pytest.mark.parametrize("array,needle", [
    (np.zeros(10, np.float32) + 1, "has 10 values but toy-model has hidden size 64; derive one"),
    (np.array([1.0, np.nan] * 32, np.float32), "non-finite"),
    (np.array([1.0, np.inf] * 32, np.float32), "non-finite"),
    (np.zeros(64, np.float32), "zero norm"),
    (np.array(3.0, np.float32), "0-d"),
    (np.ones((2, 64), np.float32), "one vector"),
], ids=["size", "nan", "inf", "zero", "0-d", "2-d"])
def test_direction_validation_errors(tmp_path, array, needle):
    from steering.direction import load_direction

    path = tmp_path / "d.npy"
    np.save(path, array)
    with pytest.raises(InputError) as e:
        load_direction(path, 64, "toy-model")
    assert needle in one_line(e)
    with pytest.raises(InputError) as e:
        load_direction(tmp_path / "missing.npy", 64)
    assert "not found" in one_line(e)


def test_direction_loads_as_unit_vector_with_its_norm(tmp_path):
    from steering.direction import load_direction

    path = tmp_path / "d.npy"
    np.save(path, np.full(64, 2.0, np.float32))
    unit, info = load_direction(path, 64)
    assert np.isclose(np.linalg.norm(unit), 1.0) and np.isclose(info["norm"], 16.0) and len(info["id"]) == 16


def test_arms_are_baseline_then_each_layer_set_and_alpha():
    arms = grid.build_arms([20, 30], [0.5, 1, 2, 5], together=True)
    assert arms[0] == grid.Arm("baseline", (), 0.0)
    assert len(arms) == 13 and arms[-1].name == "L20+L30@a5" and arms[1].layers == (20,)


@pytest.mark.parametrize("raw,field,bound", [
    ({"layers": [2, -1]}, "$.layers[1]", ">= 0"),
    ({"alphas": [1.0, float("inf")]}, "$.alphas[1]", "<= 1000000.0"),
    ({"contexts": []}, "$.contexts", "length >= 1"),
    ({"batch_size": 0}, "$.batch_size", ">= 1"),
    ({"max_new_tokens": 0}, "$.max_new_tokens", ">= 1"),
    ({"norm_prompts": 0}, "$.norm_prompts", ">= 1"),
    ({"data_parallel": 0}, "$.data_parallel", ">= 1"),
    ({"random_directions": -1}, "$.random_directions", ">= 0"),
    ({"limit": -1}, "$.limit", ">= 0"),
    ({"test_size": -1}, "$.test_size", ">= 0"),
    ({"coherence": {"max_repeated": 1.5}}, "$.coherence.max_repeated", "<= 1.0"),
    ({"coherence": {"ngram": 0}}, "$.coherence.ngram", ">= 1"),
], ids=lambda x: x if isinstance(x, str) and x.startswith("$") else "")
def test_a_value_out_of_its_range_fails_at_load_naming_its_field(tmp_path, raw, field, bound):
    """Bounds live in the config's types: the YAML (and every flag, applied before decoding) is refused with
    the field's path and the offending value, before any scenario or model is read."""
    import yaml

    path = tmp_path / "steer.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as e:
        load_config(path, SteerConfig)
    msg = one_line(e)
    assert f"at `{field}`" in msg and bound in msg and "(value: " in msg, msg


def test_check_config_refuses_what_no_type_can_say():
    from steering.run import check_config

    with pytest.raises(InputError) as e:
        check_config(SteerConfig(random_directions=2, test_directions=["random5"]))
    assert "test_directions: 'random5' is not a direction of this run (file, random0, random1)" in one_line(e)
    with pytest.raises(InputError) as e:
        check_config(SteerConfig(test_directions=["file"]))
    assert "every direction would be held out" in one_line(e)
    with pytest.raises(InputError) as e:
        check_config(SteerConfig(contexts=["monitored", "monitored"]))
    assert "contexts" in one_line(e) and "listed twice" in one_line(e)
    with pytest.raises(InputError) as e:  # built in Python, where msgspec checks no bound: checked all the same
        check_config(SteerConfig(batch_size=0))
    assert "at `$.batch_size`" in one_line(e)
    check_config(SteerConfig(random_directions=2, test_directions=["random1"], contexts=["monitored", "unmonitored"]))
