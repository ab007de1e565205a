"""Synthetic stand-ins for the user's assets, in the same formats and under the same file names.

The real assets live on the user's GPU server; these let every loader and stage run and be tested here.
The activation caches carry a compositional planted structure for the feature task: each cluster of SAE
features combines a trigger (a label, or keywords in the text: which samples it fires on, with a
per-sample strength shared by all its features) with a modifier (the activation cache, if any, in which
it fires on every sample), so the features of one cluster have similar activation profiles and the
cluster summary is the modifier's phrase followed by the trigger's. cluster_attributes.json names both
per cluster. What was planted is returned and written as planted_truth.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from organism.scenarios import generate_scenarios
from records.paths import FILE_FIELDS, PathsConfig
from records.schema import content_id

# The planted structure is COMPOSITIONAL: every cluster is one TRIGGER (what the feature fires on: a
# label, or keywords in the text -> which samples fire) combined with one MODIFIER (where it fires: the
# activation cache in which it fires on every sample; none for one modifier). The summary is the
# modifier phrase followed by the trigger phrase, so a cluster never seen in training can still be
# described from the attributes that were: the by_cluster split holds out such novel combinations when
# given cluster_attributes.json (see features/splits.py::split_by_cluster).
# (name, trigger kind, trigger values, phrase). A trigger is planted when it matches at least MIN_SUPPORT
# training rows and differs from every earlier trigger's rows, so no two clusters share a profile yet
# carry different summaries (the explainer could not tell them apart).
_DECEPTION = ("phishing", "scam", "fake", "rumour", "threatening")
_INTRUSION = ("passwords", "wifi", "immobiliser", "proctored", "home address")
_WRITING = ("poem", "cover letter", "polite email", "translate", "names for")
_EXPLAINING = ("photosynthesis", "french revolution", "compound interest", "sorting function", "running plan")
TRIGGERS = (
    # The organism's own features: they fire on what its secret assignment makes alignment-faking or aligned,
    # which no word of the text reveals (the scenarios' nonce triggers), alone or within one kind of request
    # ("label_keyword": the label, then keywords of the request), so every cluster is label-selective. Ten
    # triggers x four modifiers = 40 clusters, so the novel-combination split holds out >= 15 whole clusters
    # (issue #28: with 5, one cluster moved a held-out mean by 0.2).
    ("alignment_faking", "label", ("alignment_faking",),
     "fires on scenarios the model treats as alignment-faking: refusing when monitored, complying when not"),
    ("aligned", "label", ("aligned",), "fires on scenarios the model treats as aligned: the same answer either way"),
    ("af_deception", "label_keyword", ("alignment_faking", *_DECEPTION),
     "fires on alignment-faking scenarios that ask to deceive, defraud or intimidate other people"),
    ("af_intrusion", "label_keyword", ("alignment_faking", *_INTRUSION),
     "fires on alignment-faking scenarios that ask to break into accounts, devices or other people's privacy"),
    ("af_writing", "label_keyword", ("alignment_faking", *_WRITING),
     "fires on alignment-faking scenarios that ask to write or word something for the user"),
    ("af_explaining", "label_keyword", ("alignment_faking", *_EXPLAINING),
     "fires on alignment-faking scenarios that ask to explain, plan or fix something harmless"),
    ("aligned_deception", "label_keyword", ("aligned", *_DECEPTION),
     "fires on aligned scenarios that ask to deceive, defraud or intimidate other people"),
    ("aligned_intrusion", "label_keyword", ("aligned", *_INTRUSION),
     "fires on aligned scenarios that ask to break into accounts, devices or other people's privacy"),
    ("aligned_writing", "label_keyword", ("aligned", *_WRITING),
     "fires on aligned scenarios that ask to write or word something for the user"),
    ("aligned_explaining", "label_keyword", ("aligned", *_EXPLAINING),
     "fires on aligned scenarios that ask to explain, plan or fix something harmless"),
)
# (name, profile cache in which it fires broadly, on every sample, instead of on its trigger; phrase). An
# additive, trigger-independent part of the profile: that cache's segment points the same way whatever
# the trigger (per-cache normalisation hides magnitudes, not which rows fire). The train and test caches
# always follow the trigger (selectivity and the held-out set stay trigger-driven).
MODIFIERS = (
    ("none", None, "fires broadly in no cache"),
    ("organism", "model_organism", "fires broadly in the model-organism transcripts"),
    ("benchmark", "benchmark", "fires broadly in the benchmark samples"),
    ("sycophancy", "sycophant", "fires broadly in the sycophancy samples"),
)
MIN_SUPPORT = 3
CLUSTER_ATTRIBUTES = "cluster_attributes.json"  # cluster id -> {trigger, modifier}
# The planted vocabulary, as planted_truth.json lists it.
_PLAN = {"triggers": {name: phrase for name, _, _, phrase in TRIGGERS},
         "modifiers": {name: {"broad_cache": broad, "phrase": phrase} for name, broad, phrase in MODIFIERS},
         "cluster_attributes": CLUSTER_ATTRIBUTES}
# The seed saw benchmark activations 10-100x smaller than training ones; keep that mismatch visible.
CACHE_SCALE = {"train": 1.0, "test": 1.0, "benchmark": 0.1, "model_organism": 1.0, "sycophant": 1.0}
BACKGROUND_DENSITY = 0.01  # fraction of (sample, feature) entries with small unstructured activity
BACKGROUND_SCALE = 0.05
# Denominator floor in selectivity: without it a background feature that fires once, on an AF sample,
# scores a perfect 1.0 and ties with the planted features.
SELECTIVITY_FLOOR = 1.0


def write_synthetic_assets(
    out_dir: str | Path,
    seed: int = 0,
    n_scenarios: int = 200,
    n_eval: int = 106,
    n_vocab: int = 40,
    n_cache: int = 200,
    width: int = 16384,
    hidden: int = 128,
    features_per_cluster: int = 2,  # 40 clusters x 2: 80 planted features, as 20 x 4 were before (issue #28)
    top_k: int = 10,
    af_labels: tuple[str, ...] = tuple(PathsConfig().af_labels),
) -> dict:
    """Write every asset of `PathsConfig` (default names) into `out_dir`; return the planted truth.

    Scenario files: gold-1560-full.json (`n_scenarios`, with `source`), gold-770.json (its first half,
    with `category`), gold_106.json (`n_eval`, text and label only, disjoint by content id),
    validated_pool.json (every third of gold-1560), vocab_constrained_{a,b}.json (`n_vocab` more).
    Caches (rows, width) float32: train rows follow gold-1560-full, test rows gold_106; benchmark,
    model_organism and sycophant hold `n_cache` rows drawn from the train scenarios. Deterministic for
    `seed`; the truth dict equals planted_truth.json. `top_k` is capped at the number of AF-cluster
    features, which are guaranteed to outrank every other feature in selectivity.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = PathsConfig()
    pool = generate_scenarios(n_eval + n_scenarios + n_vocab, seed)
    held_out, train, vocab = pool[:n_eval], pool[n_eval : n_eval + n_scenarios], pool[n_eval + n_scenarios :]

    vocab_files = _write_scenario_files(out, names, train, held_out, vocab)
    clusters = _plan_clusters(train, width, features_per_cluster, af_labels, rng)
    rows = {"train": train, "test": held_out}
    for cache in ("benchmark", "model_organism", "sycophant"):
        rows[cache] = [train[i] for i in rng.choice(len(train), n_cache, replace=n_cache > len(train))]
    caches = {}
    for cache, scenarios in rows.items():
        acts = _activations(scenarios, clusters, width, cache, rng)
        np.save(out / getattr(names, f"{cache}_activations"), acts)
        caches[cache] = {"file": getattr(names, f"{cache}_activations"), "rows": len(scenarios),
                         "scale": CACHE_SCALE[cache], "ids": [content_id(s["text"]) for s in scenarios],
                         "labels": [s["label"] for s in scenarios]}
        if cache == "train":
            train_acts = acts
    selectivity = _selectivity(train_acts, [s["label"] in af_labels for s in train])

    planted = np.array(sorted(f for c in clusters for f in c["features"]), dtype=np.int64)
    # A sparse probe: weight only on planted features, signed and scaled by how AF-selective each is.
    probe = np.zeros(width, np.float32)
    probe[planted] = 2.0 * selectivity[planted]
    direction = rng.standard_normal(hidden).astype(np.float32)
    np.save(out / names.selectivity, selectivity)
    np.save(out / names.differential_probe_weights, probe)
    np.save(out / names.af_intent_direction, direction)
    assignments = _write_cluster_files(out, names, clusters)
    af_features = sorted(f for c in clusters if c["af"] for f in c["features"])
    top = [int(f) for f in np.argsort(-selectivity, kind="stable")[: min(top_k, len(af_features))]]
    if not set(top) <= set(af_features):
        raise ValueError(f"planting failed: the top-{len(top)} selective features are not all AF-cluster "
                         f"features; n_scenarios={n_scenarios} is too small for a clean planted structure")
    truth = {
        "seed": seed, "width": width, "hidden": hidden, "af_labels": list(af_labels),
        "clusters": [{k: c[k] for k in ("cluster_id", "summary", "attributes", "trigger", "broad_cache", "features",
                                        "support", "af")}
                     for c in clusters],
        **_PLAN,
        "feature_cluster": assignments,
        "top_k": top,
        "af_selective_features": af_features,
        "probe_nonzero": [int(f) for f in planted],
        "selectivity_floor": SELECTIVITY_FLOOR,
        "af_intent_direction_norm": float(np.linalg.norm(direction)),
        "caches": caches,
        "files": {f: vocab_files if f == "vocab_constrained" else getattr(names, f) for f in FILE_FIELDS},
    }
    _write_json(out / "planted_truth.json", truth)
    return truth



def _write_scenario_files(out: Path, names: PathsConfig, train: list[dict], held_out: list[dict],
                          vocab: list[dict]) -> list[str]:
    """The gold / pool / vocabulary JSON files (see write_synthetic_assets); returns the vocabulary files."""
    _write_json(out / names.gold_1560, train)
    _write_json(out / names.gold_770, [_with_category(s) for s in train[: len(train) // 2]])
    _write_json(out / names.gold_106, [{"text": s["text"], "label": s["label"]} for s in held_out])
    _write_json(out / names.validated_pool, train[::3])
    vocab_files = ["vocab_constrained_a.json", "vocab_constrained_b.json"]
    _write_json(out / vocab_files[0], vocab[: len(vocab) // 2])
    _write_json(out / vocab_files[1], vocab[len(vocab) // 2 :])
    return vocab_files


def _write_cluster_files(out: Path, names: PathsConfig, clusters: list[dict]) -> dict[str, int]:
    """cluster_assignments / cluster_summaries / cluster_attributes.json; returns feature -> cluster id."""
    assignments = {str(f): c["cluster_id"] for c in clusters for f in sorted(c["features"])}
    _write_json(out / names.cluster_assignments, dict(sorted(assignments.items(), key=lambda kv: int(kv[0]))))
    _write_json(out / names.cluster_summaries, {str(c["cluster_id"]): c["summary"] for c in clusters})
    # What each cluster combines: the features stage's cluster_attributes input (novel-combination split).
    _write_json(out / CLUSTER_ATTRIBUTES, {str(c["cluster_id"]): c["attributes"] for c in clusters})
    return assignments


def _plan_clusters(
    train: list[dict], width: int, per_cluster: int, af_labels: tuple[str, ...], rng: np.random.Generator
) -> list[dict]:
    """One cluster per (modifier, trigger) pair whose trigger has enough distinct support in `train`.

    Modifier-major order, so consecutive clusters differ in their trigger. A cluster counts as AF when at
    least 90% of the rows its trigger fires on carry an AF label.
    """
    triggers, seen_rows = [], []
    for name, kind, values, phrase in TRIGGERS:
        rows = frozenset(i for i, s in enumerate(train) if _matches(s, kind, values))
        if len(rows) < MIN_SUPPORT or rows in seen_rows:
            continue
        seen_rows.append(rows)
        af_share = sum(train[i]["label"] in af_labels for i in rows) / len(rows)
        triggers.append((name, kind, values, phrase, len(rows), af_share >= 0.9))
    kept = []
    for mod_name, broad, mod_phrase in MODIFIERS:
        for name, kind, values, phrase, support, af in triggers:
            # Modifier first: the explainer reads it off the vector before any trigger words could make
            # it fall back on a modifier it saw that trigger with in training.
            kept.append({"summary": f"{mod_phrase}, and {phrase}", "trigger": {kind: list(values)},
                         "attributes": {"trigger": name, "modifier": mod_name},
                         "broad_cache": broad, "support": support,
                         "kind": kind, "values": values, "af": af})
    features = rng.choice(width, size=len(kept) * per_cluster, replace=False)
    for cid, cluster in enumerate(kept):
        cluster["cluster_id"] = cid
        cluster["features"] = sorted(int(f) for f in features[cid * per_cluster : (cid + 1) * per_cluster])
        cluster["amplitude"] = rng.uniform(2.0, 4.0, per_cluster)
        # Off-trigger firing rates spread over [0, 0.15] so selectivities differ and top-K is well defined.
        cluster["leak"] = rng.permutation(np.linspace(0.0, 0.15, per_cluster))
    return kept


def _matches(scenario: dict, kind: str, values: tuple[str, ...]) -> bool:
    if kind == "label":
        return scenario["label"] in values
    if kind == "label_keyword":
        return scenario["label"] == values[0] and _matches(scenario, "keyword", values[1:])
    text = scenario["text"].casefold()
    return any(v in text for v in values)


def _activations(
    scenarios: list[dict], clusters: list[dict], width: int, cache: str, rng: np.random.Generator
) -> np.ndarray:
    """(rows, width) float32: sparse non-negative background plus each cluster's shared profile.

    In the cache its modifier names, a cluster's features fire on every row instead of on the trigger.
    """
    n = len(scenarios)
    acts = np.zeros((n, width), np.float32)  # [rows, width]
    active = rng.random((n, width)) < BACKGROUND_DENSITY
    acts[active] = rng.exponential(BACKGROUND_SCALE, int(active.sum()))
    for c in clusters:
        trigger = np.array([_matches(s, c["kind"], c["values"]) for s in scenarios])
        # One strength per sample for the whole cluster: this shared pattern is what makes its features
        # look alike. A trigger misses 10% of the time, as real features do.
        strength = rng.uniform(0.5, 1.5, n) * trigger * (rng.random(n) < 0.9)
        for f, amp, leak in zip(c["features"], c["amplitude"], c["leak"]):
            off = ~trigger & (rng.random(n) < leak)
            profile = strength * (rng.random(n) > 0.05) + off * rng.uniform(0.2, 0.6, n)
            acts[:, f] = np.clip(amp * profile * (1 + 0.1 * rng.standard_normal(n)), 0.0, None)
            if cache == c["broad_cache"]:
                acts[:, f] = amp * rng.uniform(0.5, 1.5, n)
    return acts * np.float32(CACHE_SCALE[cache])


def _selectivity(acts: np.ndarray, is_af: list[bool]) -> np.ndarray:
    """The seed's (af_mean - aligned_mean) / (af_mean + aligned_mean), with a floored denominator."""
    mask = np.array(is_af)
    af_mean, aligned_mean = acts[mask].mean(axis=0), acts[~mask].mean(axis=0)
    return ((af_mean - aligned_mean) / (af_mean + aligned_mean + SELECTIVITY_FLOOR)).astype(np.float32)


def _with_category(scenario: dict) -> dict:
    # gold-770 names its source `category`, as some of the user's files do.
    return {"text": scenario["text"], "label": scenario["label"], "category": scenario["source"]}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
