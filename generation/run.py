"""Task 3: the paired monitored/unmonitored pass, from scenarios to HintAttribution-style records.

Flow: load scenarios -> render both contexts with the organism's chat template (pairs.py) -> refuse what
would fail inside the engine (checks.py) -> stream every prompt through one engine (engine.py; completions
fsynced to `_work/completions.jsonl` as they finish) -> label behaviours -> write `train.jsonl` /
`test.jsonl` (grouped, stratified: records/split.py), the noise-floor control, a summary, and a PROGRESS.md
entry (outputs.py). A killed run resumes from the shard and skips finished prompts; the final files are
rebuilt from it, so they equal an uninterrupted run's.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from generation import sampled
from generation.checks import check_run
from generation.config import GenerateConfig
from generation.engine import SHARD_STEM, resume_key, run_engines
from generation.outputs import finish, records_and_controls
from generation.pairs import SENT_AS, SIDES, build_requests, key_index, key_side
from lm import backends, chat
from lm import judge as lm_judge
from lm.judge_config import for_stage
from records.config import revalidate
from records.guards import check_output_dir
from records.lock import output_lock
from records.parallel import read_all_shards
from records.provenance import check_finished_folder, set_aside
from records.resume import check_resume_key, require_completions
from records.scenarios import select_scenarios
from records.schema import ContextAblationSummary, EngineInfo, RawCompletion, Scenario


def judge_config(cfg: GenerateConfig) -> lm_judge.JudgeConfig:
    """The judge's settings: its own model, on the pass's backend, dtype and engine settings (memory and
    parallelism fit the same machine)."""
    return for_stage(cfg.judge, backend=cfg.backend, dtype=cfg.dtype, seed=cfg.seed, engine=cfg.engine)


def main(cfg: GenerateConfig, scenarios: list[Scenario], source_dirs: list[Path], llm=None,
         overwrite: bool = False) -> ContextAblationSummary:
    """Run the paired pass on already-validated scenarios; returns the summary.

    `llm`: an engine already started for this model (benchmarks, the demo); built from `cfg` if None.
    `overwrite`: replace a finished folder that has nothing to resume (kept aside until this run completes).
    """
    from transformers import AutoTokenizer

    from lm.models import is_toy, resolve_model

    t0 = time.perf_counter()
    cfg = revalidate(cfg, "generate config")  # a config built in Python meets its type's bounds too
    scenarios = select_scenarios(scenarios, cfg.limit, cfg.test_size, cfg.input)
    out = Path(cfg.output_dir)
    check_output_dir(out, source_dirs)
    replacing = check_finished_folder(out, "generate", overwrite)  # refused before any model is touched
    model_dir = resolve_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or model_dir)
    rendering = chat.detect_chat_rendering(tokenizer, cfg.model)
    batch_invariant = backends.batch_invariance(cfg.batch_invariant, cfg.backend)
    rendered, requests, keys = build_requests(scenarios, tokenizer, cfg, rendering)
    if cfg.sampling:
        requests = sampled.expand(requests, cfg.sampling.k, lambda key: key_side(key) in SIDES)
    check_run(cfg, batch_invariant, requests, model_dir)
    self_judged = cfg.judge.labeller != "rules" and lm_judge.check_judge(judge_config(cfg), model_dir)
    own_engine = llm is None  # an engine the caller passed in stays the caller's
    with output_lock(out):  # one writer per output folder, from the first write on
        if replacing and check_finished_folder(out, "generate", overwrite):  # still finished, now under the lock
            set_aside(out)
        work = out / "_work"
        check_resume_key(work, resume_key(cfg, model_dir, batch_invariant),
                         "model or its weights, dtype, backend, batch invariance or length")
        t_setup = time.perf_counter()
        llm, version, engine_start = run_engines(cfg, model_dir, tokenizer, requests, work, batch_invariant, llm)
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
        engine = EngineInfo(backend=cfg.backend, model=model_dir if is_toy(cfg.model) else cfg.model,
                            dtype=backends.resolve_dtype(cfg.dtype), max_tokens=cfg.max_new_tokens,
                            batch_invariant=batch_invariant, engine_version=version, chat_rendering=rendering,
                            device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                            temperature=cfg.sampling.temperature if cfg.sampling else 0.0)
        records, controls = records_and_controls(cfg, scenarios, rendered, keys, completions, dict(zip(order, judged)),
                                                 engine, lm_judge.labeller_name(cfg.judge.labeller, self_judged))
        wall = {"setup": t_setup - t0, "engine_start": engine_start, "generation": t_gen - t_setup - engine_start}
        return finish(cfg, out, model_dir, engine, scenarios, records, controls, agr, wall, t_gen)
