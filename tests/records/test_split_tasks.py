"""No group spans train and test, for every stage that splits (issue #28): generate (Task 3) and steer
(Task 2) hold out whole triggers on the toy with one rule (records/split.py), features (Task 1) whole
clusters. Before, steer held out "the last N scenarios": 4 of its 10 demo test scenarios had a trigger that
training also held, and a text-only (arm, trigger) lookup scored 0.99 there."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from organism.scenarios import TRIGGER_PATTERN, generate_scenarios, scenario_trigger
from records.split import spanning_groups, train_first_order

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stem", ["generate_cpu", "steer_cpu"])
def test_the_toy_configs_of_generate_and_steer_group_by_the_trigger(stem):
    assert yaml.safe_load((REPO / "configs" / f"{stem}.yaml").read_text())["group_pattern"] == TRIGGER_PATTERN


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_steer_order_keeps_every_trigger_on_one_side(seed):
    steer = yaml.safe_load((REPO / "configs" / "steer_cpu.yaml").read_text())
    pool = generate_scenarios(1200, seed=seed)[:steer["limit"]]  # a slice of a larger set, as steer reads gold_1560
    texts = [s["text"] for s in pool]
    order, n_train = train_first_order(texts, [s["label"] for s in pool], steer["test_size"], seed, TRIGGER_PATTERN)
    assert sorted(order) == list(range(len(pool))) and 0 < n_train < len(pool)
    train, test = [texts[i] for i in order[:n_train]], [texts[i] for i in order[n_train:]]
    assert spanning_groups(train, test, TRIGGER_PATTERN) == set()
    train_triggers = {scenario_trigger(pool[i]) for i in order[:n_train]}
    assert not train_triggers & {scenario_trigger(pool[i]) for i in order[n_train:]}
    assert abs((len(pool) - n_train) - steer["test_size"]) <= 5  # whole groups: about test_size
    # the old rule, the last test_size scenarios in input order, shares triggers with training
    cut = len(pool) - steer["test_size"]
    assert spanning_groups(texts[:cut], texts[cut:], TRIGGER_PATTERN)


def test_features_by_cluster_keeps_every_cluster_on_one_side():
    from features.describe import Described
    from features.splits import split_by_cluster
    from records.schema import SelectedFeature

    described = [Described(SelectedFeature(row=i, feature_idx=i, selectivity=0.0, probe_weight=None),
                           cluster_id=i % 20, description=f"cluster {i % 20}") for i in range(80)]
    for seed in (0, 1, 2):
        train, test = split_by_cluster(described, 0.25, seed)
        assert test and not {d.cluster_id for d in train} & {d.cluster_id for d in test}
