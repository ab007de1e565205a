"""Typed configs: YAML decoded into msgspec Structs, so a typo or a wrong type fails at load with its path.

Every default lives in the Struct; a YAML says only what differs. A YAML may start from another one with
`base: other.yaml` (a path relative to the including file): mappings merge key by key, the including
file's values win, lists and scalars are replaced whole.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TypeVar

import msgspec
import yaml

from records.errors import InputError

T = TypeVar("T")
log = logging.getLogger(__name__)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (lines {seen[key] + 1} and "
                            f"{key_node.start_mark.line + 1}): which value was meant is unknown", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_config(path: str | Path, config_type: type[T], overrides: dict | None = None) -> T:
    """Decode the YAML file at `path` (and its `base:` chain) into `config_type`.

    `overrides` (dotted keys, e.g. {"engine.max_num_seqs": 64}) are applied before validation, so they
    are checked like the file's own values. Unknown keys and wrong types raise InputError naming the
    file and the field path, e.g. `configs/x.yaml: Expected `int`, got `str` - at `$.batch_size``.
    """
    path = Path(path)
    raw = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    try:
        return convert_config(raw, config_type, where=str(path))
    except InputError as e:
        # a value given on the command line is named as such: the file never said it
        field = _error_field(str(e))
        hit = next((k for k in (overrides or {}) if field == k or field.startswith(k + ".")), None)
        if hit is None:
            raise
        raise InputError(f"command line {hit}={overrides[hit]!r} (over {path}): "
                         f"{str(e).removeprefix(f'{path}: ')}") from None


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The mapping a config file means, its `base:` files merged underneath."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found" + (f" (base of {_chain[-1]})" if _chain else ""))
    try:
        raw = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        log.warning("%s: the config file is empty: every setting takes its default", path)
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise InputError(f"{path}: base must be the path of another YAML file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*_chain, path)}:
        raise InputError(f"{path}: base {base} includes itself ({' -> '.join(map(str, (*_chain, path, base_path)))})")
    return _merge(read_yaml(base_path, (*_chain, path)), raw)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_set_args(items: list[str]) -> dict:
    """`--set a.b=VALUE` flags as {dotted key: value}; values parse as YAML scalars, so 64 is an int."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item}: expected KEY=VALUE, e.g. --set engine.max_num_seqs=256")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cli_overrides(set_items: list[str], flags: dict) -> dict:
    """Overrides from `--set KEY=VALUE` items, then from a stage's dedicated flags: those given (not None)
    win over --set, as a flag is the more specific request."""
    overrides = parse_set_args(set_items)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return overrides


def convert_config(raw: dict, config_type: type[T], where: str = "config") -> T:
    """Validate an already-parsed mapping into `config_type` (used by tests and by overrides)."""
    try:
        return msgspec.convert(raw, config_type)
    except msgspec.ValidationError as e:
        found = _value_at(raw, str(e))
        raise InputError(f"{where}: {e}{f' (value: {found!r})' if found is not _MISSING else ''}") from None


def revalidate(config: T, where: str = "config") -> T:
    """`config` checked against its type's bounds (msgspec checks `Meta` constraints when decoding, not when
    a Struct is built in Python): a config made in code fails as a loaded one would, naming the field."""
    return convert_config(encode_config(config), type(config), where)


_MISSING = object()


_ERROR_PATH = re.compile(r"at `\$((?:\.[\w-]+|\[\d+\])*)`")


def _error_field(message: str) -> str:
    """The dotted field a msgspec error's `$.a.b[0]` path names ("a.b"), or ""."""
    match = _ERROR_PATH.search(message)
    return ".".join(re.findall(r"\.([\w-]+)", match.group(1))) if match else ""


def _value_at(raw: dict, message: str):
    """The offending value named by a msgspec error's `$.a.b[0]` path, or _MISSING."""
    match = _ERROR_PATH.search(message)
    if not match:
        return _MISSING
    node = raw
    for key, index in re.findall(r"\.([\w-]+)|\[(\d+)\]", match.group(1)):
        try:
            node = node[key] if key else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def encode_config(config) -> dict:
    """The config as plain builtins, for manifests and for hashing."""
    return msgspec.to_builtins(config)


def config_hash(config) -> str:
    """Stable short hash of a config's content (key order independent)."""
    import hashlib
    import json

    blob = json.dumps(encode_config(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _set_dotted(raw: dict, dotted: str, value) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise InputError(f"override {dotted}: `{key}` is not a mapping")
    node[leaf] = value
