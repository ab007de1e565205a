"""Task 2: the steering grid, from scenarios to ActPatch-style records.

Flow: validate the grid and the direction against the model's config (no weights yet) -> render every
scenario in each configured context (Task 3's rendering) -> measure residual norms (residual_norm scale)
-> plan rows (scenario x context x arm, the baseline once per scenario and context), sorted by prompt
length and cut into fixed batches -> generate batch by batch, each batch's completions fsynced to
`_work/completions.jsonl` as it finishes -> label behaviours -> `train.jsonl` / `test.jsonl` (the last
`test_size` scenarios, input order, are test), `summary.json`, `heatmap.png`, a PROGRESS.md entry.

A killed run resumes from the shard: the batch plan depends only on the inputs and the config, so the
batches still to run are exactly those of a clean run, and the final files are rebuilt from the shard.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np
import torch
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tqdm import tqdm

from lm import agreement, backends, chat, coherence
from lm import judge as lm_judge
from lm.batching import pad_token_id
from lm.judge_config import for_stage
from lm.labels import DEGENERATE
from records.config import config_hash
from records.errors import InputError
from records.jsonl import ShardWriter, write_atomic, write_json_atomic, write_records_atomic
from records.lock import output_lock
from records.parallel import check_world, owns, read_all_shards, run_workers, shard_file
from records.resume import check_resume_key, model_fingerprint, prompt_digest, require_completions
from records.schema import (
    ArmSummary,
    DirectionInfo,
    DirectionSummary,
    EngineInfo,
    PatchPosition,
    RawCompletion,
    ResidualNorm,
    Scenario,
    SteeringRecord,
    SteeringSummary,
    read_summary,
)
from records.split import train_first_order
from steering import direction as dirmod
from steering import grid, science
from steering.config import SteerConfig
from steering.engine import FastSteeredGenerator, Row, hf_generate

log = logging.getLogger(__name__)
MAX_OOM_RETRIES = 4
SHARD_STEM = "completions"  # _work/completions.jsonl, or completions.rank<r>.jsonl per data-parallel worker
NORMS_FILE = "residual_norms.json"


def row_key(index: int, context: str, arm: str, digest: str) -> str:
    """`<scenario index>:<context>:<arm>:<prompt digest>`: a completion is reused only for exactly its prompt.
    The arm's name carries its direction ("random0/L2@a1"; the file direction's arms are plain)."""
    return f"{index}:{context}:{arm}:{digest}"


class DeriveJob(NamedTuple):
    """What the in-run derived direction is computed from: the TRAINING scenarios only."""

    scenarios: list[Scenario]
    af_labels: list[str]
    rendering: str


def direction_names(cfg: SteerConfig) -> list[tuple[str, bool]]:
    """(name, differs per layer) of every direction of the run, the file direction first."""
    names = [("file", False)] + ([("derived", True)] if cfg.derived else [])
    if cfg.negate:
        names += [(f"-{n}", per_layer) for n, per_layer in names]
    return names + [(f"random{k}", False) for k in range(cfg.random_directions)]


def fixed_directions(cfg: SteerConfig, unit: np.ndarray, dir_info: dict) -> list[dirmod.Direction]:
    """The directions that need no model: the file's, its negation, the random controls."""
    layers = sorted(set(cfg.layers))
    file = dirmod.same_everywhere("file", "file", dir_info["id"], dir_info["norm"], unit, layers)
    out = [file] + ([dirmod.negated(file)] if cfg.negate else [])
    return out + dirmod.random_directions(cfg.random_directions, unit.shape[0], cfg.seed, layers)


def derived_directions(cfg: SteerConfig, work: Path, model=None, tokenizer=None,
                       job: DeriveJob | None = None) -> list[dirmod.Direction]:
    """The derived direction at each steered layer (and its negation): computed once per run into
    `_work/derived_L<layer>.npy`, then read back (resume, records)."""
    import io

    if not cfg.derived:
        return []
    raw = {}
    for layer in sorted(set(cfg.layers)):
        path = work / f"derived_L{layer}.npy"
        if not path.exists():
            d = cfg.derive
            vec, _ = dirmod.derive(model, tokenizer, job.scenarios, layer, d.contrast, cfg.prompts, job.rendering,
                                   job.af_labels, d.context, d.positions, af_only=d.af_only)
            buf = io.BytesIO()
            np.save(buf, vec)
            write_atomic(path, buf.getvalue())
        raw[layer] = np.load(path).astype(np.float64)
    derived = dirmod.from_vectors("derived", raw)
    return [derived] + ([dirmod.negated(derived)] if cfg.negate else [])


def sort_directions(cfg: SteerConfig, directions: list[dirmod.Direction]) -> list[dirmod.Direction]:
    order = [n for n, _ in direction_names(cfg)]
    return sorted(directions, key=lambda d: order.index(d.name))


def validate_early(cfg: SteerConfig) -> None:
    """Checks that need neither the model nor its config: empty grid, non-numeric alphas, bad sizes."""
    for layer in cfg.layers:
        if layer < 0:
            raise InputError(f"layers: layer {layer} is negative; layers count from 0")
    grid.validate_grid(cfg.layers, cfg.alphas, depth=1 << 30)
    names = [n for n, _ in direction_names(cfg)]
    for name in cfg.test_directions:
        if name not in names:
            raise InputError(f"test_directions: {name!r} is not a direction of this run ({', '.join(names)})")
    if set(names) <= set(cfg.test_directions):
        raise InputError(f"test_directions {cfg.test_directions}: every direction would be held out; no training "
                         "record would be left")
    if not cfg.contexts:
        raise InputError("contexts: empty; give monitored and/or unmonitored")
    if len(set(cfg.contexts)) != len(cfg.contexts):
        raise InputError(f"contexts {cfg.contexts}: a context is listed twice (every record would be written twice)")
    for name in ("max_new_tokens", "batch_size") + (("norm_prompts",) if cfg.scale == "residual_norm" else ()):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name}: must be >= 1, got {getattr(cfg, name)}")


def plan_batches(groups: list[tuple[int, str, list[int]]], arms: list[grid.Arm], batch_size: int,
                 skip=lambda index, arm: False):
    """Rows (index, context, arm) sorted by prompt length (then input order), cut into batches; `skip`
    leaves out rows that are not steered (a held-out direction on a training scenario)."""
    order = sorted(groups, key=lambda g: (len(g[2]), g[0], g[1]))
    rows = [(i, ctx, arm) for i, ctx, _ in order for arm in arms if not skip(i, arm)]
    return [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]


def resume_key(cfg: SteerConfig, model_dir: str, direction_id: str, norm_sample: list[list[int]],
               derive_sample: list[list[int]] = (), derive_sides: list[bool] = ()) -> str:
    """What changes every row: a resumed run with another value is refused. The residual norms scale every
    arm, so the prompts they are measured on count too, and the derived direction's prompts, and which of
    its scenarios are AF-labelled where the derivation reads labels (`derive_sides`). (What changes one
    prompt is in its rows' keys.)"""
    controls = {"directions": direction_names(cfg), "seed": cfg.seed, "alpha_zero": cfg.alpha_zero,
                "derive": [cfg.derive.contrast, cfg.derive.context, cfg.derive.positions,
                                                       cfg.derive.af_only, [prompt_digest(p) for p in derive_sample]]
                + ([list(derive_sides)] if derive_sides else [])}
    extra = {"controls": controls} if cfg.derived or cfg.negate or cfg.random_directions or cfg.alpha_zero else {}
    if cfg.noise_floor:  # its rows join the batches: every row's batch changes
        extra["noise_floor"] = True
    return config_hash({**extra, "model": model_dir, "weights": model_fingerprint(model_dir), "direction": direction_id,
                        "layers": cfg.layers, "together": cfg.layers_together, "alphas": cfg.alphas,
                        "scale": cfg.scale, "positions": cfg.positions, "max_new_tokens": cfg.max_new_tokens,
                        "batch_size": cfg.batch_size, "dtype": backends.resolve_dtype(cfg.dtype),
                        "engine": cfg.engine, "norm_sample": [prompt_digest(ids) for ids in norm_sample]
                        if cfg.scale == "residual_norm" else []})


def norm_sample(cfg: SteerConfig, groups) -> list[list[int]]:
    """The prompts the residual norms are measured on: the first norm_prompts scenarios of every context."""
    return [ids for i, _, ids in groups if i < cfg.norm_prompts]


class BatchRunner:
    """Generates planned batches with the chosen engine; OOM halves the sub-batch size and retries."""

    def set_direction(self, direction: torch.Tensor) -> None:
        """The unit direction of the next batches (one direction per batch)."""
        self.direction = direction
        if self.fast is not None:
            self.fast.set_direction(direction)

    def __init__(self, cfg: SteerConfig, model, direction: torch.Tensor, eos_ids, pad_id: int):
        self.cfg, self.model, self.eos_ids, self.pad_id = cfg, model, eos_ids, pad_id
        self.direction = direction
        self.layers = sorted(set(cfg.layers))
        self.sub_batch = cfg.batch_size
        graphs = {"auto": None, "on": True, "off": False}[cfg.cuda_graphs]
        self.fast = FastSteeredGenerator(model, direction, self.layers, cfg.positions, eos_ids, pad_id,
                                         cuda_graphs=graphs) if cfg.engine == "fast" else None

    def _lower(self, state: RetryCallState) -> None:
        old = self.sub_batch
        self.sub_batch = max(1, self.sub_batch // 2)
        log.warning("out of memory at %d rows per batch (attempt %d of %d): %s; retrying the batch with %d rows",
                    old, state.attempt_number, MAX_OOM_RETRIES, str(state.outcome.exception()).splitlines()[0][:200],
                    self.sub_batch)
        if self.fast is not None:
            self.fast.release()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def run(self, rows: list[Row]):
        for attempt in Retrying(retry=retry_if_exception(backends.is_oom), stop=stop_after_attempt(MAX_OOM_RETRIES),
                                before_sleep=self._lower, reraise=True):
            with attempt:
                out = []
                for k in range(0, len(rows), self.sub_batch):
                    part = rows[k:k + self.sub_batch]
                    if self.fast is not None:
                        out += self.fast.generate(part, self.cfg.max_new_tokens, pad_to=self.sub_batch)
                    else:
                        out += hf_generate(self.model, self.direction, self.layers, self.cfg.positions, part,
                                           self.cfg.max_new_tokens, self.eos_ids, self.pad_id)
                return out


def _tokens(tokenizer, ids: list[int]) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def direction_file(d: dirmod.Direction, layer: int) -> str:
    """Where a record's direction lies, relative to the records folder."""
    if d.name == "file":
        return "direction.npy"
    return f"directions/{d.name}_L{layer}.npy" if d.per_layer else f"directions/{d.name}.npy"


def build_records(cfg: SteerConfig, scenarios: list[Scenario], rendered, arms, completions, norms,
                  directions: list[dirmod.Direction], dir_info: dict, tokenizer, engine: EngineInfo,
                  behaviour: dict[str, str], labeller: str, af_labels=(), n_train: int = 0) -> list[SteeringRecord]:
    """One record per (scenario, context, steered arm), in input order, then context, then arm order; a
    held-out direction's arms on the first `n_train` (training) scenarios are not steered (held_out_row).
    A steered output that differs from the baseline and fails the coherence check is `degenerate`."""
    by_name = {d.name: d for d in directions}
    out = []
    for i, s in enumerate(scenarios):
        for context in cfg.contexts:
            prompt = rendered[(i, context)]
            digest = prompt_digest(prompt.token_ids)
            base = completions[row_key(i, context, grid.BASELINE, digest)]
            base_text = tokenizer.decode(base.token_ids, skip_special_tokens=True)
            base_beh = behaviour[base.key]
            for arm in arms[1:]:
                if held_out_row(cfg, n_train, i, arm):
                    continue
                c = completions[row_key(i, context, arm.name, digest)]
                text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
                beh = behaviour[c.key]
                check = coherence.check(c.token_ids, text, c.median_loss, cfg.coherence)
                if check.degenerate and c.token_ids != base.token_ids:
                    beh = DEGENERATE
                else:  # an output the steering left as it was is not broken by it, whatever it looks like
                    check = msgspec.structs.replace(check, degenerate=False, reasons=[])
                d = by_name[arm.direction]
                eff = grid.effective_alphas(arm, cfg.scale, norms)
                if cfg.positions == "generated":
                    pos = len(prompt.token_ids)
                    tok = _tokens(tokenizer, base.token_ids[:1])[0] if base.token_ids else ""
                else:
                    pos = len(prompt.token_ids) - 1
                    tok = _tokens(tokenizer, prompt.token_ids[-1:])[0]
                vector, per_layer = None, None
                if cfg.inline_vectors:
                    per_layer = [[float(x) for x in (a * d.vectors[layer])] for a, layer in zip(eff, arm.layers)]
                    vector = per_layer[0] if len(set(eff)) == 1 else None
                out.append(SteeringRecord(
                    layer=list(arm.layers), input_tokens=_tokens(tokenizer, prompt.token_ids),
                    original_continuation=_tokens(tokenizer, base.token_ids),
                    ablated_continuation=_tokens(tokenizer, c.token_ids), is_different=base.token_ids != c.token_ids,
                    patch_position=PatchPosition(orig_pos=pos, orig_text_token=tok, counterfact_pos=pos,
                                                 counterfact_text_token=tok, intervention_vector=vector,
                                                 intervention_vectors=per_layer),
                    counterfactual_text=(f"steered along {Path(dir_info['path']).name if d.name == 'file' else d.name}"
                                         f"{'' if d.name == 'file' else f' ({d.kind} direction)'} at layer(s) "
                                         f"{', '.join(map(str, arm.layers))} with alpha {arm.alpha:g} "
                                         f"({cfg.scale}), positions: {cfg.positions}"),
                    gt_original_target=base_beh, gt_counterfactual_target=beh,
                    sample_id=s.id, index=i, arm=arm.name, label=s.label, source=s.source, context=context,
                    alpha=arm.alpha, alpha_effective=eff, scale_mode=cfg.scale, position_policy=cfg.positions,
                    direction_id=d.ids[arm.layers[0]], direction_path=direction_file(d, arm.layers[0]),
                    direction_norm=d.norms[arm.layers[0]],
                    input_token_ids=list(prompt.token_ids), prompt_text=prompt.text, baseline_output=base_text,
                    steered_output=text, baseline_behavior=base_beh, steered_behavior=beh,
                    behavior_changed=beh not in (base_beh, DEGENERATE), baseline_output_tokens=len(base.token_ids),
                    steered_output_tokens=len(c.token_ids), baseline_finish_reason=base.finish_reason,
                    steered_finish_reason=c.finish_reason, labeller=labeller, engine=engine,
                    direction_name=d.name, direction_kind=d.kind, family=science.family(s.label, s.source, af_labels),
                    coherence=check))
    return out


def grid_arms(cfg: SteerConfig) -> list[grid.Arm]:
    """Every arm of the run: the grid's, its alpha-0 arms (alpha_zero or the noise floor) and the noise
    floor's alpha-0 arm at another batch position (last: its batches run at the plan's end)."""
    arms = grid.build_direction_arms(direction_names(cfg), cfg.layers, cfg.alphas, cfg.layers_together,
                                     cfg.alpha_zero or cfg.noise_floor)
    return arms + ([grid.other_position_arm(cfg.layers)] if cfg.noise_floor else [])


def control_only(cfg: SteerConfig, arm: grid.Arm) -> bool:
    """An arm that exists for the noise floor only: its rows go to noise_control.jsonl, never to train/test."""
    return arm.other_position or (bool(arm.layers) and arm.alpha == 0.0 and arm.direction == "file"
                                  and not cfg.alpha_zero and 0.0 not in cfg.alphas)


def in_training(r: SteeringRecord, n_train_scenarios: int) -> bool:
    """Training split: the first scenarios; the test scenarios follow (main orders them so: whole groups per
    side, records/split.py)."""
    return r.index < n_train_scenarios


def held_out_row(cfg: SteerConfig, n_train_scenarios: int, index: int, arm: grid.Arm) -> bool:
    """A held-out direction (test_directions) steers the test scenarios only: no row of it is ever in the
    training split, and none is generated that no split would hold."""
    return arm.direction in cfg.test_directions and index < n_train_scenarios


def summarise(records: list[SteeringRecord], cfg: SteerConfig, arms, norms) -> SteeringSummary:
    """Behaviour change rate per (layer set, alpha), overall and per context and label; residual norms."""
    grid_only = [arm for arm in arms[1:] if not control_only(cfg, arm)]
    sets = list(dict.fromkeys(arm.layers for arm in grid_only if arm.direction == "file"))
    alphas = list(dict.fromkeys(arm.alpha for arm in grid_only if arm.direction == "file"))
    by_arm: dict[str, list[SteeringRecord]] = {}
    for r in records:
        by_arm.setdefault(r.arm, []).append(r)
    floor = science.noise_floor(records, {a.name for a in arms if a.other_position})

    def rate(rs):
        return sum(r.behavior_changed for r in rs) / len(rs) if rs else None

    table = [[rate(by_arm.get(grid.arm_name(s, a), [])) for a in alphas] for s in sets]
    per_arm = {}
    for arm in grid_only:
        rs = by_arm.get(arm.name, [])
        per_arm[arm.name] = ArmSummary(
            n=len(rs), behavior_changed_rate=rate(rs),
            output_changed_rate=sum(r.is_different for r in rs) / len(rs) if rs else None,
            by_label={lab: rate([r for r in rs if r.label == lab]) for lab in sorted({r.label for r in rs})},
            transitions=dict(sorted(Counter(f"{r.baseline_behavior}->{r.steered_behavior}" for r in rs).items())),
            direction=arm.direction, degenerate_rate=science.degenerate_rate(rs), by_family=science.by_family(rs),
            specificity=science.specificity(rs))
        if arm.alpha != 0.0:
            science.set_noise_floor(per_arm[arm.name], floor, "+".join(map(str, arm.layers)))
    kept = [r for r in records if r.arm in per_arm]
    summary = SteeringSummary(
        n_records=len(records), n_scenarios=len({r.index for r in records}), contexts=list(cfg.contexts),
        scale=cfg.scale, positions=cfg.positions, layer_sets=["+".join(map(str, s)) for s in sets],
        alphas=alphas, behavior_changed_rate=table, per_arm=per_arm,
        residual_norms={str(k): v for k, v in (norms or {}).items()}, dose_response=science.dose_response(kept),
        labels_per_context=agreement.context_stats(
            [(c, label, cut) for c, label, _, cut in agreement.record_outputs(kept)]),
        noise_floor=floor if cfg.noise_floor else None)
    summary.warnings = science.warnings(summary)
    return summary


def format_table(summary: SteeringSummary) -> list[str]:
    alphas = summary.alphas
    head = "layers \\ alpha | " + " | ".join(f"{a:g}" for a in alphas)
    lines = [head]
    for name, row in zip(summary.layer_sets, summary.behavior_changed_rate):
        lines.append(f"{name:>14} | " + " | ".join("-" if v is None else f"{v:.1%}" for v in row))
    return lines


def save_heatmap(summary: SteeringSummary, path: Path, title: str) -> None:
    """Behaviour change rate, layer set x alpha, as a labelled heatmap PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = np.array([[np.nan if v is None else v for v in row] for row in summary.behavior_changed_rate])
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(summary.alphas), 1.4 + 0.6 * len(summary.layer_sets)))
    im = ax.imshow(table, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(summary.alphas)), [f"{a:g}" for a in summary.alphas])
    ax.set_yticks(range(len(summary.layer_sets)), summary.layer_sets)
    unit = "x mean residual norm" if summary.scale == "residual_norm" else "raw, unit direction"
    ax.set_xlabel(f"alpha ({unit})")
    ax.set_ylabel("steered layer(s)")
    ax.set_title(title, fontsize=9)
    for y in range(table.shape[0]):
        for x in range(table.shape[1]):
            if not np.isnan(table[y, x]):
                ax.text(x, y, f"{table[y, x]:.0%}", ha="center", va="center",
                        color="black" if table[y, x] > 0.6 else "white", fontsize=8)
    fig.colorbar(im, ax=ax, label="behaviour change rate")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def plan_direction_batches(groups, arms: list[grid.Arm], directions: list[dirmod.Direction], batch_size: int,
                           skip=lambda index, arm: False):
    """(direction, layer for a per-layer direction or None, batch) in plan order: every batch steers along
    one unit vector. The baseline rides with the file direction (its coefficients are 0)."""
    by_name = {d.name: d for d in directions}
    parts: dict[tuple[str, int | None, bool], list[grid.Arm]] = {}
    for arm in arms:  # the noise floor's other-position arm: batches of its own
        d = by_name[arm.direction]
        parts.setdefault((d.name, arm.layers[0] if d.per_layer and arm.layers else None, arm.other_position),
                         []).append(arm)
    return [(by_name[name], layer, b) for (name, layer, _), own in parts.items()
            for b in plan_batches(groups, own, batch_size, skip)]


def steer_rows(cfg: SteerConfig, model_dir: str, groups, arms, unit: np.ndarray, work: Path, n_train: int,
               rank: int | None = None, world: int = 1, directions: list[dirmod.Direction] = (),
               job: DeriveJob | None = None) -> tuple[dict | None, str]:
    """Load the model, measure residual norms (once per run), derive the in-run direction (once per run),
    and generate every planned row this process owns that no shard holds yet, each batch fsynced to this
    process's shard as it finishes with the unsteered model's loss on each output (coherence check).

    Returns (fast-engine stats or None, device name).
    """
    tokenizer_dir = cfg.tokenizer or model_dir
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = backends.load_hf_model(model_dir, cfg.dtype)
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    eos = model.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id])
    norms = _load_norms(work)
    if cfg.scale == "residual_norm" and norms is None:
        # The first scenarios of every context, whichever worker measures: all measure the same.
        norms = grid.measure_residual_norms(model, norm_sample(cfg, groups), sorted(set(cfg.layers)), pad)
        write_json_atomic(work / NORMS_FILE, {str(k): v for k, v in norms.items()})
    for layer in sorted(norms or {}):
        log.info("layer %d: mean residual norm %.3f (median %.3f, %d tokens)", layer, norms[layer].mean,
                 norms[layer].median, norms[layer].n_tokens)

    directions = sort_directions(cfg, list(directions) + derived_directions(cfg, work, model, tokenizer, job))
    mine = [g for g in groups if rank is None or owns(g[0], rank, world)]
    batches = plan_direction_batches(mine, arms, directions, cfg.batch_size,
                                     lambda index, arm: held_out_row(cfg, n_train, index, arm))
    arm_by_name = {a.name: a for a in arms}
    group_id = {(i, c): k for k, (i, c, _) in enumerate(groups)}
    prompt_ids = {(i, c): ids for i, c, ids in groups}
    digest = {(i, c): prompt_digest(ids) for i, c, ids in groups}
    runner = BatchRunner(cfg, model, torch.from_numpy(unit).to(device), eos_ids, pad)
    total = sum(len(b) for _, _, b in batches)
    with ShardWriter(shard_file(work, SHARD_STEM, rank), RawCompletion) as writer:
        done = {c.key for c in read_all_shards(work, SHARD_STEM, RawCompletion)}
        finished = sum(row_key(i, c, a.name, digest[(i, c)]) in done for _, _, b in batches for i, c, a in b)
        if finished:
            log.info("resuming: %d of %d rows already finished", finished, total)
        with tqdm(total=total, initial=finished, desc="steer" if rank is None else f"steer[{rank}]",
                  unit="row") as bar:
            for d, layer, batch in batches:
                if all(row_key(i, c, arm.name, digest[(i, c)]) in done for i, c, arm in batch):
                    continue
                vec = d.vectors[layer if layer is not None else next(iter(d.vectors))]
                runner.set_direction(torch.from_numpy(vec.copy()).to(device))  # the engine writes in place
                rows = []
                for i, c, arm in batch:
                    eff = grid.effective_alphas(arm_by_name[arm.name], cfg.scale, norms)
                    rows.append(Row(prompt_ids[(i, c)], group_id[(i, c)], dict(zip(arm.layers, eff))))
                results = runner.run(rows)
                # Rounded to 0.01 nats (the threshold is 6): the last float bits depend on the batch's padding, and
                # records must not depend on how the rows were batched (data-parallel shards, OOM halving).
                losses = coherence.median_token_loss(model, [r.prompt for r in rows], [g.token_ids for g in results],
                                                     pad)
                writer.append(RawCompletion(key=row_key(i, c, arm.name, digest[(i, c)]), token_ids=g.token_ids, text="",
                                            finish_reason=g.finish_reason, prompt_tokens=len(prompt_ids[(i, c)]),
                                            median_loss=None if loss is None else round(loss, 2))
                              for (i, c, arm), g, loss in zip(batch, results, losses))
                # rows already saved but generated again with their batch were counted as finished
                bar.update(sum(row_key(i, c, arm.name, digest[(i, c)]) not in done for i, c, arm in batch))
    stats = dict(runner.fast.stats) if runner.fast is not None else None
    return stats, torch.cuda.get_device_name() if device.type == "cuda" else "cpu"


def _steer_worker(rank: int, world: int, cfg: SteerConfig, model_dir: str, groups, arms, unit, work: Path,
                  n_train: int, directions, job) -> None:
    steer_rows(cfg, model_dir, groups, arms, unit, work, n_train, rank, world, directions, job)


def save_directions(out: Path, directions: list[dirmod.Direction]) -> None:
    """Every direction but the file's (direction.npy) as the unit vectors the records point at."""
    import io

    for d in directions:
        if d.name == "file":
            continue
        for layer in sorted(d.vectors) if d.per_layer else [next(iter(d.vectors))]:
            buf = io.BytesIO()
            np.save(buf, d.vectors[layer])
            path = out / direction_file(d, layer)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, buf.getvalue())


def _load_norms(work: Path) -> dict[int, ResidualNorm] | None:
    """Residual norms measured by this run (a resumed run scales exactly as the first attempt did)."""
    path = work / NORMS_FILE
    if not path.exists():
        return None
    return {int(k): v for k, v in read_summary(path, dict[str, ResidualNorm]).items()}


def main(cfg: SteerConfig, scenarios: list[Scenario], source_dirs: list[Path], direction_path: str,
         af_labels: list[str] = (), overwrite: bool = False) -> SteeringSummary:
    """Run the grid on already-validated scenarios; returns the summary dict. `overwrite`: replace a
    finished folder that has nothing to resume (kept aside until this run completes)."""
    from transformers import AutoTokenizer

    from lm.models import is_toy, resolve_model
    from records.assets import check_output_dir, select_scenarios
    from records.progress import append_phase
    from records.provenance import check_finished_folder, drop_set_aside, make_manifest, set_aside
    from steering.direction import load_direction

    t0 = time.perf_counter()
    validate_early(cfg)
    scenarios = select_scenarios(scenarios, cfg.limit, cfg.test_size, cfg.input)
    # whole groups (the toy's trigger: group_pattern; else near-duplicate texts) on one side, training first
    order, n_train_scen = train_first_order([s.text for s in scenarios], [s.label for s in scenarios],
                                            cfg.test_size, cfg.seed, cfg.group_pattern)
    scenarios = [scenarios[i] for i in order]
    out = Path(cfg.output_dir)
    check_output_dir(out, source_dirs)
    replacing = check_finished_folder(out, "steer", overwrite)  # refused before any model is touched
    model_dir = resolve_model(cfg.model)
    depth, hidden = grid.model_depth(model_dir)
    grid.validate_grid(cfg.layers, cfg.alphas, depth, cfg.model)
    unit, dir_info = load_direction(direction_path, hidden, cfg.model)
    if cfg.random_directions < 0:
        raise InputError(f"random_directions {cfg.random_directions}: must be 0 or a positive count")
    arms = grid_arms(cfg)
    fixed = fixed_directions(cfg, unit, dir_info)
    judge_cfg = for_stage(cfg.judge, dtype=cfg.dtype, seed=cfg.seed)
    self_judged = cfg.judge.labeller != "rules" and lm_judge.check_judge(judge_cfg, model_dir)

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    rendering = chat.detect_chat_rendering(tokenizer, cfg.model)
    rendered = {(i, c): chat.render(tokenizer, cfg.prompts.system(c), s.text, rendering)
                for i, s in enumerate(scenarios) for c in cfg.contexts}
    check_world(cfg.data_parallel)
    with output_lock(out):  # one writer per output folder, from the first write on
        if replacing and check_finished_folder(out, "steer", overwrite):  # still finished, now under the lock
            set_aside(out)
        work = out / "_work"
        groups = [(i, c, rendered[(i, c)].token_ids) for i in range(len(scenarios)) for c in cfg.contexts]
        job = DeriveJob(scenarios[:n_train_scen], list(af_labels), rendering) if cfg.derived else None
        derive_sample = ([chat.render(tokenizer, cfg.prompts.system(c), s.text, rendering).token_ids
                          for s in job.scenarios for c in ("monitored", "unmonitored")] if job else [])
        # a relabelled training scenario moves a derived direction that reads labels (every derived row changes)
        reads_labels = job is not None and (cfg.derive.contrast == "label" or cfg.derive.af_only)
        derive_sides = [s.label in af_labels for s in job.scenarios] if reads_labels else []
        check_resume_key(work, resume_key(cfg, model_dir, dir_info["id"], norm_sample(cfg, groups), derive_sample,
                                          derive_sides),
                         "model or its weights, direction, grid, scale and the prompts its norms come from, "
                         "positions, length or batch size, the scenarios and labels a derived direction comes from, "
                         "or the train/test split that labels and groups decide")
        if not (work / "direction.npy").exists():  # the records point at this copy, not at the user's file
            shutil.copyfile(direction_path, work / "direction.npy")

        t_setup = time.perf_counter()
        if cfg.data_parallel > 1:
            run_workers(_steer_worker, cfg.data_parallel, (cfg, model_dir, groups, arms, unit, work, n_train_scen,
                                                           fixed, job))
            engine_stats, device_name = None, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        else:
            engine_stats, device_name = steer_rows(cfg, model_dir, groups, arms, unit, work, n_train_scen, None, 1,
                                                   fixed, job)
        norms = _load_norms(work)
        directions = sort_directions(cfg, fixed + derived_directions(cfg, work))
        t_gen = time.perf_counter()

        completions = {c.key: c for c in read_all_shards(work, SHARD_STEM, RawCompletion)}
        keys = [row_key(i, c, a.name, prompt_digest(ids)) for i, c, ids in groups for a in arms
                if not held_out_row(cfg, n_train_scen, i, a)]  # not stale ones
        require_completions(keys, completions, "rows")
        import transformers

        engine = EngineInfo(backend="hf", model=model_dir if is_toy(cfg.model) else cfg.model,
                            dtype=backends.resolve_dtype(cfg.dtype), max_tokens=cfg.max_new_tokens,
                            engine_version=f"transformers {transformers.__version__} ({cfg.engine} engine)",
                            chat_rendering=rendering,
                            device=device_name)
        judged, agr = lm_judge.label_all(
            cfg.judge.labeller, [rendered[(int(k.split(":")[0]), k.split(":")[1])].text for k in keys],  # = prompt_text
            [tokenizer.decode(completions[k].token_ids, skip_special_tokens=True) for k in keys], judge_cfg)
        records = build_records(cfg, scenarios, rendered, arms, completions, norms, directions, dir_info, tokenizer,
                                engine, dict(zip(keys, judged)), lm_judge.labeller_name(cfg.judge.labeller, self_judged),
                                af_labels, n_train_scen)
        write_atomic(out / "direction.npy", (work / "direction.npy").read_bytes())
        save_directions(out, directions)
        noise_arms = {a.name for a in arms if control_only(cfg, a)}
        summary = summarise(records, cfg, arms, norms)
        if cfg.noise_floor:
            write_records_atomic(out / "noise_control.jsonl", [r for r in records if r.alpha == 0.0])
        records = [r for r in records if r.arm not in noise_arms]
        train = [r for r in records if in_training(r, n_train_scen)]
        write_records_atomic(out / "train.jsonl", train)
        write_records_atomic(out / "test.jsonl", [r for r in records if not in_training(r, n_train_scen)])
        summary.agreement = agr
        wall = {"setup": t_setup - t0, "generation": t_gen - t_setup, "finalise": time.perf_counter() - t_gen}
        summary.wall_seconds = wall
        summary.direction = DirectionInfo(path=dir_info["path"], id=dir_info["id"], norm=dir_info["norm"])
        summary.engine_stats = engine_stats
        summary.directions = [DirectionSummary(d.name, d.kind, {str(k): v for k, v in d.ids.items()},
                                               {str(k): v for k, v in d.norms.items()}) for d in directions]
        write_json_atomic(out / "summary.json", summary)
        write_json_atomic(out / "manifest.json", make_manifest("steer", cfg, model_dir,
                                                              {"scenarios": cfg.input, "direction": str(direction_path)}))
        drop_set_aside(out)
        title = f"{Path(cfg.model).name}: behaviour change vs baseline ({', '.join(cfg.contexts)}, {cfg.positions})"
        if cfg.heatmap:
            save_heatmap(summary, out / "heatmap.png", title)
        table = format_table(summary)
        norm_line = ("residual norms (mean over prompt tokens after BOS): " + ", ".join(
            f"L{k} {v.mean:.2f}" for k, v in sorted(norms.items()))) if norms else "scale raw: alpha x unit direction"
        noise = f" + {len(noise_arms)} alpha-0 noise-floor rows" if noise_arms else ""
        lines = [f"{len(scenarios)} scenarios x {len(cfg.contexts)} context(s) x {len(arms) - 1 - len(noise_arms)} "
                 f"arms + baseline{noise} ({cfg.engine} engine, {engine.dtype}, {engine.device}); behaviour change "
                 "rate vs baseline:"]
        lines += table + ([agreement.format_agreement(agr)] if agr else [])
        lines += [norm_line, "wall: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items())]
        lines += ["per arm (change / degenerate / by family / specificity):", *science.table_lines(summary)]
        lines += science.control_lines(summary) + science.noise_lines(summary)
        lines += [f"WARNING: {w}" for w in summary.warnings]
        print("\n".join(lines))
        append_phase(cfg.progress_log, "3", "Task 2 steering grid", "DONE",
                     done=[f"{len(records)} steered records -> {out}/train.jsonl ({len(train)}) and test.jsonl "
                           f"({len(records) - len(train)}: {len(scenarios) - n_train_scen} scenarios of held-out "
                           f"groups"
                           f"{', and every row of ' + ', '.join(cfg.test_directions) if cfg.test_directions else ''})"
                           f"; heatmap {out}/heatmap.png"],
                     findings=lines, next_step="train the explainer on these records (af-introspect train)")
        return summary

