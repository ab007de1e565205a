"""The records contract on disk: torn tails, fsynced appends, atomic files, typed configs."""

import msgspec
import pytest

from records.config import config_hash, load_config, parse_set_args
from records.errors import InputError
from records.jsonl import ShardWriter, read_records, write_records_atomic
from records.schema import RawCompletion, content_id, normalise_text


def rc(i: int) -> RawCompletion:
    return RawCompletion(key=f"{i}:monitored", token_ids=[i, i + 1], text=f"out {i}", finish_reason="stop",
                         prompt_tokens=10 + i)


def test_writer_appends_and_reader_reads_back(tmp_path):
    path = tmp_path / "shard.jsonl"
    with ShardWriter(path, RawCompletion) as w:
        assert w.existing == []
        assert w.append([rc(0), rc(1)]) == 2
        w.append([rc(2)])
    assert read_records(path, RawCompletion) == [rc(0), rc(1), rc(2)]


def test_torn_tail_is_dropped_by_reader_and_truncated_by_writer(tmp_path):
    path = tmp_path / "shard.jsonl"
    with ShardWriter(path, RawCompletion) as w:
        w.append([rc(0), rc(1)])
    whole = path.read_bytes()
    path.write_bytes(whole + msgspec.json.encode(rc(2))[:17])  # a kill mid-write
    assert read_records(path, RawCompletion) == [rc(0), rc(1)]
    with ShardWriter(path, RawCompletion) as w:
        assert w.existing == [rc(0), rc(1)]
        w.append([rc(3)])
    # the new record starts on its own line: never fused with the torn bytes
    assert read_records(path, RawCompletion) == [rc(0), rc(1), rc(3)]
    assert path.read_bytes() == whole + msgspec.json.encode(rc(3)) + b"\n"


def test_corrupt_complete_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "shard.jsonl"
    path.write_bytes(msgspec.json.encode(rc(0)) + b"\n{not json}\n")
    with pytest.raises(InputError, match=r"shard.jsonl: line 2"):
        read_records(path, RawCompletion)


def test_atomic_write_leaves_no_temp_file(tmp_path):
    assert write_records_atomic(tmp_path / "train.jsonl", [rc(0), rc(1)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]
    assert read_records(tmp_path / "train.jsonl", RawCompletion) == [rc(0), rc(1)]


def test_content_id_ignores_case_and_whitespace_only():
    assert content_id("The model  complies\n") == content_id("the model complies")
    assert content_id("the model complies") != content_id("the model refuses")
    assert normalise_text("  A\tB ") == "a b"


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    max_num_seqs: int = 8


class Cfg(msgspec.Struct, forbid_unknown_fields=True):
    batch_size: int = 4
    inner: Inner = msgspec.field(default_factory=Inner)


def test_config_unknown_key_and_wrong_type_name_file_and_field(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("batch_sise: 3\n")
    with pytest.raises(InputError, match=r"c.yaml: .*unknown field `batch_sise`"):
        load_config(bad, Cfg)
    bad.write_text("inner:\n  max_num_seqs: lots\n")
    with pytest.raises(InputError, match=r"c.yaml: Expected `int`, got `str` - at `\$.inner.max_num_seqs`"):
        load_config(bad, Cfg)


def test_config_overrides_are_validated_like_the_file(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("batch_size: 2\n")
    cfg = load_config(good, Cfg, parse_set_args(["inner.max_num_seqs=64"]))
    assert cfg == Cfg(batch_size=2, inner=Inner(max_num_seqs=64))
    with pytest.raises(InputError, match="max_num_seqs"):
        load_config(good, Cfg, parse_set_args(["inner.max_num_seqs=many"]))
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_set_args(["inner.max_num_seqs"])
    assert config_hash(cfg) == config_hash(Cfg(batch_size=2, inner=Inner(max_num_seqs=64)))
    assert config_hash(cfg) != config_hash(Cfg())
