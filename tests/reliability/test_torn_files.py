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
@given(records=st.lists(completions, min_size=1, max_size=8), cut=st.floats(0, 1), more=st.lists(completions, max_size=3))
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
    from generation.config import GenerateConfig
    from features.config import FeaturesConfig
    from records.paths import PathsConfig
    from steering.config import SteerConfig
    from training.config import TrainConfig

    return {"af_": TrainConfig, "features": FeaturesConfig, "generate": GenerateConfig, "paths": PathsConfig,
            "steer": SteerConfig}


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
