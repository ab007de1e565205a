"""Loaders for the user's assets. Each validates everything, reports every problem at once, writes nothing.

Problems are InputError lines of the form `<file>: <where>: <what>` (item index for JSON lists, line
number for JSONL), so the user can fix a whole file in one pass.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from records.errors import InputError, Problems
from records.schema import Scenario, content_id

log = logging.getLogger(__name__)

# Finite-check block size: big enough to be fast, small enough that a memmap never becomes a full copy.
_CHECK_BYTES = 64 * 2**20
_INT_KEY = re.compile(r"-?\d+")
_TRUTHY = {"1", "true", "yes", "on"}


# ---------------------------------------------------------------------------------------------------
# Scenario sets


def load_scenarios(
    path: str | Path, known_labels: list[str], source_default: str | None = None
) -> list[Scenario]:
    """Load a gold-style scenario set: a JSON list of {"text", "label", optional "source"/"category"}.

    Also accepts JSONL (by `.jsonl` suffix, or a `.json` file holding one object per line) and a JSON
    object with the list under "samples" or "data". A UTF-8 BOM is tolerated. `source` falls back to
    `category`, then to `source_default`, then to the file's stem, so every scenario keeps where it came
    from. Texts are kept exactly as written; ids are `content_id(text)`. Repeated texts (same id) are
    dropped after the first with one warning line.
    """
    path = Path(path)
    text = _read_text(path)
    problems = Problems()
    items = _parse_records(path, text, problems)
    problems.raise_if_any()
    default = source_default if source_default is not None else path.stem
    scenarios: list[Scenario] = []
    first_seen: dict[str, tuple[str, Scenario]] = {}
    duplicates: list[tuple[str, str]] = []
    for where, item in items:
        scenario = _scenario(where, item, known_labels, default, problems, str(path))
        if scenario is None:
            continue
        if scenario.id in first_seen:
            first_where, first = first_seen[scenario.id]
            if first.label != scenario.label:
                problems.add(str(path), f"{where} repeats the text of {first_where} with another label "
                                        f"({scenario.label!r} vs {first.label!r}): which one is true is unknown")
            duplicates.append((where, first_where))
            continue
        first_seen[scenario.id] = (where, scenario)
        scenarios.append(scenario)
    if not items:
        problems.add(str(path), "contains no scenarios")
    problems.raise_if_any()
    if duplicates:
        where, first = duplicates[0]
        log.warning(
            "%s: %d duplicate text(s) with the same label dropped (same content id), kept the first of each; "
            "e.g. %s repeats %s",
            path, len(duplicates), where, first,
        )
    return scenarios


class DuplicateKey(ValueError):
    """A JSON object gives one key twice: json.loads would silently keep the last value."""


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def strict_json(text: str) -> object:
    """json.loads that refuses a key given twice in one object (DuplicateKey), and turns nesting too deep
    for the parser, and unpaired surrogate escapes (text that can never be written as UTF-8), into
    ValueError with what went wrong."""
    try:
        data = json.loads(text, object_pairs_hook=_strict_object)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read (thousands of levels)") from None
    bad = _first_surrogate(data)
    if bad is not None:
        raise ValueError(f"string {bad!r} holds an unpaired surrogate escape (\\ud800-\\udfff): not valid Unicode")
    return data


def _first_surrogate(node: object) -> str | None:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item[:40]
        elif isinstance(item, dict):
            stack += list(item.keys()) + list(item.values())
        elif isinstance(item, list):
            stack += item
    return None


def _parse_records(path: Path, text: str, problems: Problems) -> list[tuple[str, object]]:
    """(where, item) pairs from a JSON list, a {"samples"|"data": [...]} object or JSONL."""
    if path.suffix == ".jsonl":
        return _parse_jsonl(path, text, problems)
    try:
        data = strict_json(text)
    except DuplicateKey as e:
        problems.add(str(path), f"an object gives the key {e} twice (which value was meant is unknown)")
        return []
    except json.JSONDecodeError as e:
        # "Extra data" after a first complete object is the signature of JSONL saved as .json.
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            return _parse_jsonl(path, text, problems)
        problems.add(str(path), f"malformed JSON at line {e.lineno} col {e.colno}: {e.msg}")
        return []
    except ValueError as e:
        problems.add(str(path), str(e))
        return []
    if isinstance(data, dict):
        key = next((k for k in ("samples", "data") if isinstance(data.get(k), list)), None)
        if key is None:
            keys = ", ".join(list(data)[:8])
            problems.add(str(path), f"top level is an object without a `samples` or `data` list (keys: {keys})")
            return []
        data = data[key]
    if not isinstance(data, list):
        problems.add(str(path), f"top level must be a list of objects, got {type(data).__name__}")
        return []
    return [(f"item {i}", item) for i, item in enumerate(data)]


def _parse_jsonl(path: Path, text: str, problems: Problems) -> list[tuple[str, object]]:
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {n}", strict_json(line)))
        except DuplicateKey as e:
            problems.add(str(path), f"line {n}: the key {e} is given twice")
        except json.JSONDecodeError as e:
            problems.add(str(path), f"line {n}: malformed JSON at col {e.colno}: {e.msg}")
        except ValueError as e:
            problems.add(str(path), f"line {n}: {e}")
    return items


def _scenario(
    where: str, item: object, known_labels: list[str], default_source: str, problems: Problems, file: str
) -> Scenario | None:
    """One validated Scenario, or None after adding every problem the item has."""
    if not isinstance(item, dict):
        problems.add(file, f"{where}: expected an object, got {type(item).__name__} {_short(item)}")
        return None
    n_before = len(problems.items)
    text = item.get("text")
    if "text" not in item:
        problems.add(file, f"{where}: `text` is missing")
    elif not isinstance(text, str):
        problems.add(file, f"{where}: `text` must be a string, got {type(text).__name__} {_short(text)}")
    elif not text.strip():
        problems.add(file, f"{where}: `text` is empty or whitespace only ({text!r})")
    label = item.get("label")
    if "label" not in item:
        problems.add(file, f"{where}: `label` is missing")
    elif not isinstance(label, str):
        problems.add(file, f"{where}: `label` must be a string, got {type(label).__name__} {_short(label)}")
    elif label not in known_labels:
        problems.add(
            file,
            f"{where}: `label` {label!r} is not a known label (known: {', '.join(known_labels)}; "
            "edit known_labels in configs/paths.yaml)",
        )
    source_key = "source" if "source" in item else "category"
    source = item.get(source_key, default_source)
    if not isinstance(source, str):
        problems.add(file, f"{where}: `{source_key}` must be a string, got {type(source).__name__} {_short(source)}")
    if len(problems.items) > n_before:
        return None
    return Scenario(id=content_id(text), text=text, label=label, source=source)


# ---------------------------------------------------------------------------------------------------
# Arrays


def npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a .npy file from its header alone (reads a few hundred bytes).

    Raises InputError when the file is missing or is not a .npy file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                # Format 3.0 (utf-8 field names) has no public header reader: let np.load map it.
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
        except (ValueError, OSError, EOFError) as e:
            hint = " (an .npz archive: save each array with np.save)" if _is_zip(path) else ""
            raise InputError(f"{path}: not a .npy file{hint}: {_one_line(e)}") from None
    return tuple(shape), np.dtype(dtype)


def load_array(
    path: str | Path,
    expect_ndim: int | None = None,
    expect_shape: tuple[int | None, ...] | None = None,
    dtype: np.dtype | type | None = np.float32,
    mmap: bool = True,
) -> np.ndarray:
    """Load a .npy array, memory-mapped read-only by default, after checking it.

    Checks: the file exists and is a .npy; ndim, shape (None entries match any size) and dtype (None =
    any) as expected; not empty; no NaN or inf (checked block by block, so a memmap is never copied
    whole). With `mmap` the result is an np.memmap backed by the file: slice it, do not modify it.
    """
    path = Path(path)
    shape, got_dtype = npy_header(path)
    problems = Problems()
    where = str(path)
    if expect_shape is not None and expect_ndim is None:
        expect_ndim = len(expect_shape)
    if expect_ndim is not None and len(shape) != expect_ndim:
        problems.add(where, f"expected {expect_ndim}-D array, got {len(shape)}-D with shape {shape}")
    elif expect_shape is not None and any(e is not None and e != g for e, g in zip(expect_shape, shape)):
        want = "(" + ", ".join("any" if e is None else str(e) for e in expect_shape) + ")"
        problems.add(where, f"expected shape {want}, got {shape}")
    if dtype is not None and got_dtype != np.dtype(dtype):
        problems.add(where, f"expected dtype {np.dtype(dtype)}, got {got_dtype}")
    if got_dtype.hasobject:
        problems.add(where, "holds Python objects, not numbers")
    if int(np.prod(shape)) == 0:
        problems.add(where, f"array is empty (shape {shape})")
    problems.raise_if_any()
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:  # the header promises more data than the file holds
        raise InputError(f"{path}: truncated or unreadable .npy (shape {shape} in its header; "
                         f"{' '.join(str(e).split())[:100]})") from None
    if np.issubdtype(arr.dtype, np.inexact):
        bad, first = _count_nonfinite(arr)
        if bad:
            problems.add(where, f"{bad} non-finite value(s) (NaN or inf), first at index {first}")
    problems.raise_if_any()
    return arr


def _count_nonfinite(arr: np.ndarray) -> tuple[int, tuple[int, ...] | None]:
    """Non-finite count and first index, reading `arr` in blocks of rows along axis 0."""
    if arr.ndim == 0:
        return (0, None) if np.isfinite(arr) else (1, ())
    rows = max(1, _CHECK_BYTES // max(1, arr[0].nbytes))
    bad, first = 0, None
    for start in range(0, arr.shape[0], rows):
        finite = np.isfinite(arr[start : start + rows])
        n_bad = finite.size - int(np.count_nonzero(finite))
        if n_bad and first is None:
            idx = np.argwhere(~finite)[0]
            first = (start + int(idx[0]),) + tuple(int(i) for i in idx[1:])
        bad += n_bad
    return bad, first


# ---------------------------------------------------------------------------------------------------
# Cluster files


def load_cluster_summaries(path: str | Path) -> dict[int, str]:
    """Cluster id -> summary text, from {"<cluster_id>": "<text>"}.

    Also accepts the autointerp clustering's list form, [{"cluster_id": 3, "summary" | "description" |
    "representative_desc": "..."}], taking the first of those text fields present. Keys must be
    integers; every summary must be non-empty text.
    """
    path = Path(path)
    data = _load_json(path)
    problems = Problems()
    where = str(path)
    if isinstance(data, list):
        data = _summaries_from_list(data, problems, where)
    elif not isinstance(data, dict):
        problems.add(where, f"expected an object {{cluster_id: summary}}, got {type(data).__name__}")
        data = {}
    out: dict[int, str] = {}
    for key, text in data.items():
        cid = _int_key(key, "cluster id", out, problems, where)
        if not isinstance(text, str):
            problems.add(where, f"cluster {key}: summary must be a string, got {type(text).__name__} {_short(text)}")
        elif not text.strip():
            problems.add(where, f"cluster {key}: summary is empty")
        elif cid is not None:
            out[cid] = text
    if not data and not problems:
        problems.add(where, "contains no clusters")
    problems.raise_if_any()
    return out


def _summaries_from_list(items: list, problems: Problems, where: str) -> dict:
    data = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("cluster_id"), (int, str)):
            problems.add(where, f"item {i}: expected an object with an integer `cluster_id`, got {_short(item)}")
            continue
        field = next((f for f in ("summary", "description", "representative_desc") if f in item), None)
        if field is None:
            problems.add(where, f"item {i}: no `summary`, `description` or `representative_desc` field")
            continue
        if item["cluster_id"] in data:
            problems.add(where, f"item {i}: cluster_id {item['cluster_id']} appears twice (which summary is meant is "
                                "unknown)")
            continue
        data[item["cluster_id"]] = item[field]
    return data


def load_cluster_assignments(path: str | Path) -> dict[int, int]:
    """Feature index -> cluster id, from {"<feature_idx>": <cluster_id>}.

    Keys must be non-negative integers (or int-like strings, as JSON writes them); values must be
    integers (-1, the usual "no cluster", is allowed).
    """
    data, problems, where = _json_object(path, "{feature_idx: cluster_id}")
    out: dict[int, int] = {}
    for key, cid in data.items():
        fidx = _int_key(key, "feature index", out, problems, where)
        if fidx is not None and fidx < 0:
            problems.add(where, f"key {key!r}: feature index must be >= 0")
            fidx = None
        if isinstance(cid, bool) or not isinstance(cid, int):
            problems.add(where, f"feature {key}: cluster id must be an integer, got {type(cid).__name__} {_short(cid)}")
        elif fidx is not None:
            out[fidx] = cid
    if not data:
        problems.add(where, "contains no assignments")
    problems.raise_if_any()
    return out


def load_cluster_attributes(path: str | Path) -> dict[int, dict[str, str]]:
    """Cluster id -> {attribute: value}, from {"<cluster_id>": {"<attribute>": "<value>", ...}} (the toy's
    cluster_attributes.json: trigger and modifier). The features stage copies it beside its splits
    (CLUSTER_ATTRIBUTES in records/schema.py), where evaluation reads it for per-attribute accuracy."""
    data, problems, where = _json_object(path, "{cluster_id: {attribute: value}}")
    out: dict[int, dict[str, str]] = {}
    for key, attrs in data.items():
        cid = _int_key(key, "cluster id", out, problems, where)
        # values may be numbers (a bucket id, say): they name a value all the same, compared as text
        if not isinstance(attrs, dict) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                  and str(v).strip() for v in attrs.values()):
            problems.add(where, f"cluster {key}: expected {{attribute: value}} with non-empty text or numbers, "
                                f"got {_short(attrs)}")
        elif cid is not None:
            out[cid] = {str(a): str(v) for a, v in attrs.items()}
    if not data:
        problems.add(where, "contains no clusters")
    problems.raise_if_any()
    return out


def _int_key(key: object, what: str, seen: dict, problems: Problems, where: str) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        value = key
    elif isinstance(key, str) and _INT_KEY.fullmatch(key.strip()):
        value = int(key)
    else:
        problems.add(where, f"key {key!r}: {what} must be an integer")
        return None
    if value in seen:
        problems.add(where, f"key {key!r}: {what} {value} appears twice")
        return None
    return value


# ---------------------------------------------------------------------------------------------------
# Hub datasets and output folders


def load_hf_dataset(name: str, split: str, cache_dir: str | Path | None = None):
    """`datasets.load_dataset(name, split=split)`, with failures as one-line InputErrors.

    Respects HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (read by `datasets` at import): offline, only the
    local cache is used, and a dataset missing from it is reported as such.
    """
    import datasets  # slow import; only the stages that read hub datasets pay for it

    try:
        return datasets.load_dataset(name, split=split, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError)
        # A local folder never needs the hub: its errors are about the folder, whatever the offline flags say.
        if not Path(name).exists() and (_offline() or "Offline" in str(e)):
            raise InputError(
                f"{name}: not in the local datasets cache and offline mode is on (HF_HUB_OFFLINE or "
                "HF_DATASETS_OFFLINE); run once with network access, or copy the cache here"
            ) from None
        raise InputError(f"{name} (split {split!r}): could not load: {type(e).__name__}: {_one_line(e)}") from None


def check_output_dir(out_dir: str | Path, source_dirs: list[str | Path]) -> Path:
    """Refuse an output folder equal to or inside a source data folder, or one holding a source file (the
    input scenario file, say: a stage's own files could overwrite it); return it resolved.

    Symlinks are resolved on both sides, so a link pointing into the data cannot slip past. A source given
    as a file guards itself only: outputs beside it are fine.
    """
    out = Path(out_dir).expanduser().resolve()
    problems = Problems()
    if out.exists() and not out.is_dir():
        problems.add(str(out_dir), "output folder is a file; choose a folder")
    for src in source_dirs:
        src_path = Path(src).expanduser().resolve()
        if src_path.is_file():
            if out in src_path.parents:
                problems.add(str(out_dir), f"output folder resolves to {out}, which holds the input file {src_path}; "
                                           "choose an output folder that does not contain the inputs")
            continue
        if out == src_path or src_path in out.parents:
            problems.add(
                str(out_dir),
                f"output folder resolves to {out}, inside source data folder {src_path}; "
                "choose an output folder outside the inputs so they are never overwritten",
            )
    problems.raise_if_any()
    return out


def check_output_file(out_file: str | Path, sources: list[str | Path]) -> Path:
    """Refuse an output file that is a source file or lies inside a source folder (the source guard of
    check_output_dir, for writers of one file); return it resolved."""
    out = Path(out_file).expanduser().resolve()
    if out.is_dir():
        raise InputError(f"{out_file}: is a folder; give the path of a file to write")
    for src in sources:
        src_path = Path(src).expanduser().resolve()
        if out == src_path or src_path in out.parents:
            what = "a source data file" if out == src_path else f"inside source data folder {src_path}"
            raise InputError(f"{out_file}: resolves to {out}, {what}; write it outside the inputs so they are "
                             "never overwritten")
    return out


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give the path of a file in it")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _json_object(path: str | Path, shape: str) -> tuple[dict, Problems, str]:
    """A JSON file that must hold one object (`shape` says which, for the message): the object, the
    Problems collector its entries report to, and the file's name for those reports."""
    data, problems, where = _load_json(Path(path)), Problems(), str(path)
    if not isinstance(data, dict):
        problems.add(where, f"expected an object {shape}, got {type(data).__name__}")
        problems.raise_if_any()
    return data, problems, where


def _load_json(path: Path) -> object:
    text = _read_text(path)
    try:
        return strict_json(text)
    except DuplicateKey as e:
        raise InputError(f"{path}: an object gives the key {e} twice (which value was meant is unknown)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON at line {e.lineno} col {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def select_scenarios(scenarios: list[Scenario], limit: int, test_size: int, where: str = "") -> list[Scenario]:
    """The first `limit` scenarios (0: all), refusing a set that is empty or leaves nothing to train on."""
    if limit < 0:
        raise InputError(f"limit {limit}: must be 0 (all scenarios) or a positive count")
    if test_size < 0:
        raise InputError(f"test_size {test_size}: must be 0 or a positive count of held-out scenarios")
    if limit:
        scenarios = scenarios[:limit]
    if not scenarios:
        raise InputError(f"{where or 'input'}: no scenarios to run")
    if test_size >= len(scenarios):
        raise InputError(f"test_size {test_size} leaves no training scenarios out of {len(scenarios)}; "
                         "lower test_size or raise limit")
    return scenarios
