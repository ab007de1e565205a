"""Guarantee 2: a records file cut at any byte offset reads back exactly its complete records, a resumed
writer continues cleanly after them, and every shipped config survives decode -> encode -> decode."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from records.config import load_config
from records.config import read_yaml as load_yaml_chain
from records.jsonl import ShardWriter, read_records
from records.schema import RawCompletion

REPO = Path(__file__).resolve().parents[2]

completions = st.builds(
    RawCompletion,
    key=st.text(min_size=1, max_size=12),
    token_ids=st.lists(st.integers(0, 32767), max_size=20),
    text=st.text(max_size=40),  # any unicode: a cut can land inside a multi-byte character
    finish_reason=st.sampled_from(["stop", "length"]),
    prompt_tokens=st.integers(0, 10_000),
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(completions, min_size=1, max_size=8), cut=st.floats(0, 1),
       more=st.lists(completions, max_size=3))
def test_a_file_cut_anywhere_reads_its_complete_records_and_resumes_cleanly(records, cut, more):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.jsonl"
        with ShardWriter(path, RawCompletion) as w:
            for r in records:
                w.append([r])
        data = path.read_bytes()
        offset = round(cut * len(data))
        path.write_bytes(data[:offset])
        # the records whose line, newline included, lies wholly before the cut
        ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
        whole = records[:sum(1 for e in ends if e <= offset)]
        assert read_records(path, RawCompletion) == whole
        with ShardWriter(path, RawCompletion) as w:
            assert w.existing == whole
            w.append(more)
        assert read_records(path, RawCompletion) == whole + more
        enc = msgspec.json.Encoder()
        assert path.read_bytes() == b"".join(enc.encode(r) + b"\n" for r in whole + more)  # nothing fused


def _config_types():
    from features.config import FeaturesConfig
    from generation.config import GenerateConfig
    from records.paths import PathsConfig
    from steering.config import SteerConfig
    from training.compare import CompareConfig
    from training.config import TrainConfig

    return {"af_": TrainConfig, "compare": CompareConfig, "features": FeaturesConfig, "generate": GenerateConfig,
            "paths": PathsConfig, "steer": SteerConfig}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_round_trips(path, tmp_path):
    types = _config_types()
    config_type = next(t for prefix, t in types.items() if path.name.startswith(prefix))
    first = load_config(path, config_type)
    again = tmp_path / path.name
    again.write_text(yaml.safe_dump(msgspec.to_builtins(first), sort_keys=False))
    second = load_config(again, config_type)
    assert second == first
    assert msgspec.to_builtins(second) == msgspec.to_builtins(first)


def _restated_defaults(raw: dict, struct_type, base: dict | None = None, at: str = "") -> list[str]:
    """Keys of a YAML mapping whose value is what the field would be without them: its `base:` file's
    value, or else the type's default. They say nothing and hide which settings a run really changes."""
    found = []
    base = base or {}
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct_type)}
    for key, value in raw.items():
        field = fields[key]
        nested = field.type if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct) else None
        if nested is not None and isinstance(value, dict):
            found += _restated_defaults(value, nested, base.get(key), f"{at}{key}.")
            continue
        if key in base:
            if value == base[key]:
                found.append(f"{at}{key}")
            continue
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            continue
        if msgspec.to_builtins(msgspec.convert(value, field.type)) == msgspec.to_builtins(default):
            found.append(f"{at}{key}")
    return found


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_says_only_what_differs_from_the_defaults(path):
    """A key that restates the type's default hides which settings a run really changes."""
    config_type = next(t for prefix, t in _config_types().items() if path.name.startswith(prefix))
    if path.name.startswith("paths"):
        pytest.skip("configs/paths.yaml is the template users edit: it lists every location on purpose")
    raw = yaml.safe_load(path.read_text())
    base = load_yaml_chain(path.parent / raw.pop("base")) if "base" in raw else None
    assert _restated_defaults(raw, config_type, base) == []


def test_the_restated_default_check_finds_one():
    from generation.config import GenerateConfig

    assert _restated_defaults({"backend": "vllm", "max_new_tokens": 64, "prompts": {"monitored": "x"}},
                              GenerateConfig) == ["backend"]
    assert _restated_defaults({"max_new_tokens": 64, "seed": 0}, GenerateConfig,
                              base={"max_new_tokens": 64, "seed": 3}) == ["max_new_tokens"]

