"""Records -> chat examples, one per (record, question type), with the reference's targets.

Targets (introspective-interp's CausalBaseDataset format, so exact match is parse-based):
- generative_explanation: "The output would remain unchanged from <<<X>>>." when the monitored (or
  unsteered) behaviour X equals the unmonitored (or steered) behaviour Y, else
  "The most likely output would change to <<<Y>>>."; for features, the description.
- orig_match: " " + X;  change_match: " " + Y.

Also the held-out guard: no training record may carry a scenario of gold_106 or of a configured eval
set, compared by skeleton (records/neardup.py: whitespace, case, look-alike letters, combining marks,
variation selectors and invisible characters do not hide a copy).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lm.labels import BEHAVIOURS, degenerate_problem
from records.errors import InputError, Problems
from records.jsonl import read_records
from records.neardup import near_copies, skeleton, skeleton_id
from records.paths import PathsConfig
from records.schema import ContextAblationRecord, FeatureRecord, SteeringRecord, content_id
from training.config import SLOT, TaskConfig, TrainConfig

log = logging.getLogger(__name__)

RECORD_TYPES = {
    "hint_attribution": ContextAblationRecord,
    "act_patch": SteeringRecord,
    "features_explain": FeatureRecord,
}
UNCHANGED = "The output would remain unchanged from <<<{}>>>."
CHANGED = "The most likely output would change to <<<{}>>>."


@dataclass
class Example:
    """One training/evaluation item: a prompt chat, its answer, and what scoring needs."""

    task: str
    question_type: str
    sample_id: str
    messages: list[dict]  # the prompt turns (system/user); the answer becomes the assistant turn
    target: str
    weight: float = 1.0
    vector: np.ndarray | None = None  # [dim] fed at the continuous placeholder, or None (text only)
    input_text: str = ""  # what the nearest-neighbour baseline compares (scenario prompt or feature text)
    meta: dict = field(default_factory=dict)  # original / new behaviour, changed flag, layer, ...
    slots: dict = field(default_factory=dict)  # slot name -> the text filled into the prompt


def causal_target(original: str, new: str) -> str:
    """The reference's behaviour-change sentence for monitored/unsteered `original` and `new`."""
    return UNCHANGED.format(original) if original == new else CHANGED.format(new)


# ---------------------------------------------------------------------------------------------------
# Loading records


def dataset_dir(cfg: TrainConfig, task: str) -> Path:
    return Path(cfg.train.tasks[task].dataset or cfg.train.dataset)


def load_split(folder: str | Path, task: str, split: str) -> list:
    """Records of `split` ("train" | "test") from `folder/<split>.jsonl` (one record a line, as the stages
    write it)."""
    path = Path(folder) / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: not found; run the {task} records stage first (or fix train.dataset)")
    records = read_records(path, RECORD_TYPES[task], strict=True)
    if not records:
        raise InputError(f"{path}: holds no records")
    validate_records(records, path)
    if isinstance(records[0], ContextAblationRecord):
        broken = degenerate_problem([b for r in records for b in (r.monitored_behavior, r.unmonitored_behavior)],
                                    str(path))
        if broken:  # Task 3 only: steering arms may break the model on purpose
            raise InputError(broken)
    return records


def load_record_file(path: str | Path, task: str) -> list:
    """Records from a file, or from `<folder>/test.jsonl` when `path` is a folder (an eval set)."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: eval set not found")
    records = read_records(path, RECORD_TYPES[task], strict=True)
    validate_records(records, path)
    return records


_BEHAVIOUR_FIELDS = {
    ContextAblationRecord: ("monitored_behavior", "unmonitored_behavior", "random_hint_prediction",
                            "zeroshot_prediction"),
    SteeringRecord: ("baseline_behavior", "steered_behavior", "gt_original_target", "gt_counterfactual_target"),
}


def record_key(r) -> tuple:
    """What identifies a record within a split: a repeat would be trained on twice."""
    if isinstance(r, FeatureRecord):
        return ("feature", r.layer, r.feature_idx)
    if isinstance(r, SteeringRecord):
        return ("steering", r.sample_id, r.context, r.arm)
    return ("scenario", r.sample_id)


def validate_records(records: list, path: Path) -> None:
    """Refuse repeated records and behaviour labels outside the labeller's set; every problem at once."""
    problems = Problems()
    seen: dict[tuple, int] = {}
    for line, r in enumerate(records, start=1):  # finished splits have one record a line, no blanks
        key = record_key(r)
        if key in seen:
            problems.add(str(path), f"line {line}: duplicate record {key[1:]} (first at line {seen[key]})")
        else:
            seen[key] = line
        for name in _BEHAVIOUR_FIELDS.get(type(r), ()):
            value = getattr(r, name)
            if value not in BEHAVIOURS:
                problems.add(str(path), f"line {line}: `{name}` {value!r} is not a behaviour label we know "
                                        f"({', '.join(BEHAVIOURS)})")
    problems.raise_if_any()


def thin_random_arms(records: list, keep: int, seed: int) -> list:
    """Of each random control direction, `keep` arms per scenario and context (a seeded draw, stable across
    runs), in record order; other records as they are. keep 0: every record."""
    if not keep:
        return records
    arms: dict[tuple, list[str]] = {}
    for r in records:
        if isinstance(r, SteeringRecord) and r.direction_kind == "random":
            arms.setdefault((r.sample_id, r.context, r.direction_name), []).append(r.arm)
    kept = {key: set(random.Random(f"{seed}:{':'.join(key)}").sample(sorted(names), min(keep, len(names))))
            for key, names in arms.items()}
    return [r for r in records if not (isinstance(r, SteeringRecord) and r.direction_kind == "random")
            or r.arm in kept[(r.sample_id, r.context, r.direction_name)]]


# ---------------------------------------------------------------------------------------------------
# Building examples


class VectorStore:
    """Loads .npy files once; paths are taken relative to the records folder, then to the cwd."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self._arrays: dict[Path, np.ndarray] = {}

    def get(self, path: str, row: int | None = None) -> np.ndarray:
        p = Path(path)
        if not p.is_absolute() and (self.base / p).exists():
            p = self.base / p
        if p not in self._arrays:
            if not p.is_file():
                raise InputError(f"{path}: vector file not found (looked in {self.base} and the working directory)")
            self._arrays[p] = np.load(p, mmap_mode="r", allow_pickle=False)
        arr = self._arrays[p]
        vec = arr if row is None else arr[row]
        if vec.ndim != 1:
            raise InputError(f"{path}: expected a vector{' row' if row is not None else ''}, got shape {vec.shape}")
        return np.asarray(vec, dtype=np.float32)


def build_examples(records: list, task: str, task_cfg: TaskConfig, markers: dict[str, str], seed: int,
                   vectors: VectorStore | None = None, decode=None) -> list[Example]:
    """One Example per record and question type, in record order (question types in config order).

    `markers` maps begin_continuous / feature / end_continuous to the explainer's token strings.
    `decode` turns SteeringRecord.input_tokens into text (the target model's tokenizer).
    A prompt is drawn per (record, question type) from a seeded RNG, so the choice is stable.
    """
    out = []
    seen: set[tuple] = set()
    asked = {qname: q for qname, q in task_cfg.question_types.items() if q.weight > 0}  # weight 0: not asked
    for r in records:
        for qname, q in asked.items():
            sid = _sample_id(r, qname)
            if (task, qname, sid) in seen:
                continue  # Task 2's orig_match: one unsteered question per scenario and context, not one per arm
            seen.add((task, qname, sid))
            rng = random.Random(f"{seed}:{sid}:{qname}")
            template = rng.randrange(len(q.prompts))
            slots, target, vector, meta, input_text = _task_fields(task, qname, r, markers, vectors, decode)
            messages = render_messages(q.prompts[template], slots)
            if vector is not None and not any(markers.get("feature", "\0") in m["content"] for m in messages):
                vector = None  # this question's prompt shows no vector: none must reach the embedder
            meta["template"] = template  # which paraphrase asked it (evaluation scores each apart)
            out.append(Example(task=task, question_type=qname, sample_id=sid, messages=messages, target=target,
                               weight=q.weight * task_cfg.weight, vector=vector, input_text=input_text,
                               meta=meta, slots=slots))
    return out


def render_messages(prompt, slots: dict[str, str]) -> list[dict]:
    """A prompt template's turns with the slots filled; an emptied system turn and the final empty assistant
    turn (which receives the answer) left out."""
    messages = [{"role": m.role, "content": _fill(m.content, slots)} for m in prompt.messages]
    messages = [m for m in messages if m["content"] or m["role"] != "system"]  # an emptied system turn
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]  # the empty assistant turn receives the answer
    return messages


def _sample_id(r, question_type: str = "") -> str:
    if isinstance(r, FeatureRecord):
        return f"L{r.layer}:F{r.feature_idx}"
    if isinstance(r, SteeringRecord):
        # orig_match asks about the unsteered run, the same question for every arm of a scenario and context
        arm = "baseline" if question_type == "orig_match" else r.arm
        return f"{r.sample_id}:{arm}:{r.context}"
    return r.sample_id


def _task_fields(task, qname, r, markers, vectors, decode):
    if task == "hint_attribution":
        x, y = r.random_hint_prediction.strip(), r.zeroshot_prediction.strip()
        # change_match asks about the UNMONITORED run, so its prompt carries that context only; the other
        # questions show the monitored one. A template without a system role folds the system text into
        # the user turn, so the user prompt already starts with it: the explainer then sees the organism's
        # prompt once, not a notice twice.
        unmonitored = qname == "change_match"
        user = r.original_user_prompt if unmonitored else r.hint_user_prompt
        context = r.hint if unmonitored else r.system_prompt
        system = "" if user.startswith(context) else context
        slots = {"system_prompt": system, "user_prompt": user, "hint": r.hint}
        meta = {"original": x, "new": y, "changed": x != y, "label": r.label, "index": r.index}
        return slots, _behaviour_target(qname, x, y), None, meta, scenario_text(r)
    if task == "act_patch":
        x, y = r.baseline_behavior.strip(), r.steered_behavior.strip()
        prompt = steering_prompt(r, decode)
        slots = {"prompt": prompt, "layer": ",".join(map(str, r.layer)), "alpha": f"{r.alpha:g}",
                 "context": r.context, **markers}
        vector = steering_vector(r, vectors) if vectors else None
        meta = {"original": x, "new": y, "changed": x != y, "label": r.label, "context": r.context, "index": r.index,
                "arm": "baseline" if qname == "orig_match" else r.arm,
                "direction": "" if qname == "orig_match" else r.direction_name,
                "group": r.sample_id}  # a scenario's items share its trigger: bootstrap them together
        return slots, _behaviour_target(qname, x, y), vector, meta, f"{r.arm} {r.context} {prompt}"
    if task == "features_explain":
        vector = vectors.get(r.vectors_path, r.row) if vectors else None
        slots = {"layer": str(r.layer), **markers}
        meta = {"layer": r.layer, "feature_idx": r.feature_idx, "cluster_id": r.cluster_id}
        return slots, r.description, vector, meta, ""
    raise ValueError(task)


def steering_vector(r: SteeringRecord, vectors: VectorStore) -> np.ndarray:
    """What the arm added to the residual stream, as the explainer's input: the unit direction times alpha
    per layer, summed over the arm's layers, in units of the layer's residual norm (scale_mode
    residual_norm; raw alphas as they are), so direction and strength both reach the explainer at the
    scale of a token embedding. An alpha-0 row gets the zero vector: nothing was added."""
    d = vectors.get(r.direction_path)
    norm = float(np.linalg.norm(d))
    if not np.isfinite(norm) or norm == 0.0:
        raise InputError(f"{r.direction_path}: direction of record {r.sample_id} ({r.arm}) has norm {norm}")
    return (d / norm * (r.alpha * len(r.layer))).astype(np.float32)


def steering_prompt(r, decode=None) -> str:
    """The steered prompt as text: the record's own `prompt_text`, else its token ids decoded."""
    text = getattr(r, "prompt_text", "")
    if text:
        return text
    ids = getattr(r, "input_token_ids", None) or r.input_tokens
    return decode(ids) if decode and ids and isinstance(ids[0], int) else ""


def _behaviour_target(qname: str, original: str, new: str) -> str:
    if qname == "generative_explanation":
        return causal_target(original, new)
    return " " + (original if qname == "orig_match" else new)


def _fill(template: str, slots: dict[str, str]) -> str:
    # Only {known_slot} is replaced (config validation rejects unknown ones); other braces stay as written.
    return SLOT.sub(lambda m: slots.get(m[1], m[0]), template)


# ---------------------------------------------------------------------------------------------------
# The held-out guard


def scenario_text(r: ContextAblationRecord) -> str:
    """The scenario as the organism saw it: the monitored user turn without the folded system text."""
    user = r.hint_user_prompt
    prefix = r.system_prompt + "\n\n"
    return user[len(prefix):] if user.startswith(prefix) else user


def record_texts(r, decode=None) -> list[str]:
    """Texts of a record in which a held-out scenario could hide."""
    if isinstance(r, ContextAblationRecord):
        return [r.hint_user_prompt, r.original_user_prompt, r.hint_prompt_full]
    if isinstance(r, SteeringRecord):
        return [steering_prompt(r, decode)]
    return []


def record_ids(r) -> set[str]:
    if isinstance(r, ContextAblationRecord):
        return {r.sample_id, content_id(scenario_text(r))}
    if isinstance(r, SteeringRecord):
        return {r.sample_id}
    return set()


def guard_ids(r) -> set[str]:
    """A record's ids as the held-out guard matches them: record_ids plus its scenario's skeleton id."""
    if isinstance(r, ContextAblationRecord):
        return record_ids(r) | {skeleton_id(scenario_text(r))}
    return record_ids(r)


class HeldOut:
    """Held-out scenarios by id (theirs and their skeleton's) and by skeleton text, each remembering which
    set it came from."""

    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}
        self.texts: dict[str, tuple[str, str]] = {}  # skeleton text -> (set name, content id)
        self.n = 0

    def add(self, set_name: str, sid: str, text: str | None = None) -> None:
        self.n += sid not in self.by_id
        self.by_id.setdefault(sid, set_name)
        if text:
            self.by_id.setdefault(skeleton_id(text), set_name)
            self.texts.setdefault(skeleton(text), (set_name, sid))

    def __len__(self) -> int:
        return self.n


def heldout_from_config(cfg: TrainConfig, tasks: list[str], paths: PathsConfig, decode=None) -> HeldOut:
    """The held-out set `train.heldout` names in `paths` (gold_106; resolved by the caller, never re-read
    here) plus every configured eval set."""
    from records.assets import load_scenarios

    held = HeldOut()
    if cfg.train.heldout:
        gold = Path(getattr(paths, cfg.train.heldout))
        if gold.is_file():
            for s in load_scenarios(gold, paths.known_labels):
                held.add(f"{cfg.train.heldout} ({gold.name})", s.id, s.text)
        elif cfg.train.allow_missing_heldout:
            log.warning("held-out set %s not found at %s: training WITHOUT the overlap check against it",
                        cfg.train.heldout, gold)
        else:
            raise InputError(f"{gold}: held-out set `{cfg.train.heldout}` not found, so training data cannot be "
                             "checked against it; fix train.paths / data_root, or set "
                             "train.allow_missing_heldout: true to train without the check")
    for path in cfg.train.eval_sets:
        for task in tasks:
            for r in load_record_file(path, task):
                texts = [scenario_text(r)] if isinstance(r, ContextAblationRecord) else record_texts(r, decode)
                for sid in record_ids(r):
                    held.add(f"eval set {path}", sid, texts[0] if texts else None)
    return held


_ID_ONLY_MIN_CHARS = 20  # shorter held-out texts are matched by id only (a substring test would be noise)


def check_no_heldout(train_records: list, held: HeldOut, decode=None, where: str = "training data") -> None:
    """Refuse to train when any training record carries a held-out scenario; list every offender.

    A record matches by id (its sample_id, the content id of its scenario text, or its skeleton's) or
    when a held-out scenario's skeleton occurs inside the skeleton of the record's prompt text.
    """
    offenders = []
    long_texts = [(t, v) for t, v in held.texts.items() if len(t) >= _ID_ONLY_MIN_CHARS]
    for r in train_records:
        hit = next((held.by_id[i] + f" (id {i})" for i in guard_ids(r) if i in held.by_id), None)
        if hit is None and long_texts:
            hay = " ".join(skeleton(t) for t in record_texts(r, decode))
            hit = next((f"{name} (id {sid}, by text)" for t, (name, sid) in long_texts if t in hay), None)
        if hit:
            offenders.append(f"training record index {getattr(r, 'index', '?')} (sample_id "
                             f"{getattr(r, 'sample_id', '?')}) is held-out scenario of {hit}")
    if offenders:
        raise InputError([f"{where}: refusing to train: it contains held-out evaluation scenarios "
                          f"({len(offenders)} record(s)); remove them from the training split:"] + offenders)
    warn_near_heldout(train_records, held, decode, where)


def warn_near_heldout(train_records: list, held: HeldOut, decode=None, where: str = "training data") -> None:
    """The second guard: warn, with each pair, about training scenarios that are near-copies of a held-out
    one (>= 85% of its character 5-grams: a word changed, a sentence added), which no content id catches."""
    by_text: dict[str, str] = {}  # one pair per text: every arm of a steered scenario has the same prompt
    for r in train_records:
        if record_texts(r, decode):
            text = scenario_text(r) if isinstance(r, ContextAblationRecord) else " ".join(record_texts(r, decode))
            by_text.setdefault(text, f"training record index {getattr(r, 'index', '?')}")
    texts = [(name, text) for text, name in by_text.items()]
    pairs = near_copies(texts, [(f"{name} id {sid}", t) for t, (name, sid) in held.texts.items()])
    for record, ref, share in pairs[:20]:
        log.warning("%s: %s is a near-copy of held-out %s (%.0f%% of its character 5-grams)", where, record, ref,
                    100 * share)
    if len(pairs) > 20:
        log.warning("%s: %d more near-copy pairs", where, len(pairs) - 20)


def check_split_overlap(train_records: list, test_records: list, where: str = "test split") -> int:
    """Refuse a test split that holds a training record's scenario (by id or content id): it would be
    trained on and then scored as held out. Returns 0 (kept for callers that counted)."""
    test_ids = set().union(*(record_ids(r) for r in test_records)) if test_records else set()
    shared = [r for r in train_records if record_ids(r) & test_ids]
    if shared:
        raise InputError([f"{where}: refusing to train: {len(shared)} training record(s) also in the test split, so "
                          "the test metric would score what was trained on; remove them from one split:"]
                         + [f"{where}: training record index {getattr(r, 'index', '?')} (sample_id "
                            f"{getattr(r, 'sample_id', '?')}) is also a test record" for r in shared[:10]]
                         + ([f"{where}: {len(shared) - 10} more"] if len(shared) > 10 else []))
    return 0
