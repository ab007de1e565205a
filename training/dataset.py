"""A run's data: every configured task's records -> train / test / eval-set examples, guarded.

Each task's train and test splits (test cut to `test.tasks.<task>.num_samples`), the configured eval
sets, and the held-out guard: training refuses records that carry a gold_106 or eval-set scenario
(training/examples.py has the checks). training/data.py then turns examples into token ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lm.models import resolve_model
from records.errors import InputError
from records.paths import PathsConfig
from training import examples as E
from training.config import TrainConfig
from training.continuous import prompt_markers
from training.model import load_tokenizer

log = logging.getLogger(__name__)

VECTOR_TASKS = {"act_patch", "features_explain"}


@dataclass
class Data:
    train: list[E.Example]
    test: list[E.Example]
    eval_sets: dict[str, list[E.Example]]
    train_records: dict[str, list]  # task -> records (for debug printing and baselines)
    vector_dim: int | None


def needs_markers(cfg: TrainConfig) -> bool:
    return any(t in VECTOR_TASKS for t in cfg.train.tasks)


def load_data(cfg: TrainConfig, tokenizer, markers: dict[str, str], *, paths: PathsConfig | None) -> Data:
    """Records of every task -> examples. With `paths` (the run's paths config, read once by the caller:
    config.train_paths), refuses training data that overlaps its held-out set or a configured eval set;
    None: no guard (evaluation reads the held-out data on purpose)."""
    decode = _target_decoder(cfg, tokenizer) if "act_patch" in cfg.train.tasks else None
    slot_markers = prompt_markers(markers) if markers else {}
    train, test, records = [], [], {}
    eval_sets: dict[str, list[E.Example]] = {}
    for task, tc in cfg.train.tasks.items():
        folder = E.dataset_dir(cfg, task)
        vectors = E.VectorStore(folder)
        tr, te = E.load_split(folder, task, "train"), E.load_split(folder, task, "test")
        tr = E.thin_random_arms(tr, tc.random_arms, cfg.train.seed)
        records[task] = tr
        n_test = cfg.test.tasks[task].num_samples if task in cfg.test.tasks else 0
        te = te[:n_test] if n_test else te
        E.check_split_overlap(tr, te, str(folder / "test.jsonl"))
        check_records_model(cfg, {folder / "train.jsonl": tr, folder / "test.jsonl": te})
        train += E.build_examples(tr, task, tc, slot_markers, cfg.train.seed, vectors, decode)
        test += E.build_examples(te, task, tc, slot_markers, cfg.train.seed, vectors, decode)
        for path in cfg.train.eval_sets:
            eval_sets.setdefault(Path(path).stem if Path(path).is_file() else Path(path).name, []).extend(
                E.build_examples(E.load_record_file(path, task), task, tc, slot_markers, cfg.train.seed,
                                 E.VectorStore(Path(path) if Path(path).is_dir() else Path(path).parent), decode))
    if paths is not None:
        held = E.heldout_from_config(cfg, list(cfg.train.tasks), paths, decode)
        for task, rs in records.items():
            E.check_no_heldout(rs, held, decode, where=str(E.dataset_dir(cfg, task) / "train.jsonl"))
        log.info("held-out guard: %d training records checked against %d held-out scenarios: no overlap",
                 sum(map(len, records.values())), len(held))
    dims = {ex.vector.shape[0] for ex in train + test if ex.vector is not None}
    if len(dims) > 1:
        raise InputError(f"vectors of different sizes in one run: {sorted(dims)}")
    return Data(train, test, eval_sets, records, dims.pop() if dims else None)


def check_records_model(cfg: TrainConfig, splits: dict[Path, list]) -> None:
    """Refuse records made by another model than the one this config explains (`target_model_path`):
    the explainer would learn another model's behaviour under this one's name. A cross explainer says
    so in its config (model_path != target_model_path); its records are still the target's."""
    from lm.models import same_model

    if not cfg.target_model_path:
        return
    problems = []
    for path, records in splits.items():
        made_by = sorted({r.engine.model for r in records if getattr(r, "engine", None) and r.engine.model})
        problems += [f"{path}: records made by model {m!r} (engine.model), but this config explains target_model_path "
                     f"{cfg.target_model_path!r} (another model); train on that model's records, or set "
                     "target_model_path to the model that made them" for m in made_by
                     if not same_model(m, cfg.target_model_path)]
    if problems:
        raise InputError(problems)


def _target_decoder(cfg: TrainConfig, explainer_tokenizer):
    """Token ids of the target model -> text (act_patch records carry the steered model's token ids)."""
    tok = explainer_tokenizer
    if cfg.target_model_path != cfg.model_path:
        tok = load_tokenizer(resolve_model(cfg.target_model_path, "target_model_path"))
    return lambda ids: tok.decode(ids, skip_special_tokens=True)
