"""The training/evaluation config: introspective-interp's task YAML, decoded into typed Structs.

Shape (the reference's, plus a few fields of ours, marked below):

    target_model_path / model_path / continuous_tokens / output_dir / use_embed_proj
    train:  batch_size, learning_rate, num_epochs, eval_steps, peft_lora, lora_r, bf16, dataset,
            tasks: {<task>: {weight, question_types: {<qtype>: {weight,
            prompts: [{messages: [{role, content}, ...]}]}}}}
    test:   batch_size, tasks: {<task>: {num_samples}}

Task names pick the record type: `hint_attribution` (Task 3, ContextAblationRecord), `act_patch`
(Task 2, SteeringRecord), `features_explain` (Task 1, FeatureRecord). Unknown keys are errors.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Annotated, Any, Literal

import msgspec

from records.config import load_config, parse_set_args
from records.errors import Problems
from records.paths import PathsConfig, load_stage_paths

# task name -> the slots its prompts may use
TASK_SLOTS = {
    "hint_attribution": {"system_prompt", "user_prompt", "hint"},
    "act_patch": {"prompt", "layer", "alpha", "context", "begin_continuous", "feature", "end_continuous"},
    "features_explain": {"layer", "begin_continuous", "feature", "end_continuous"},
}
# task name -> question types it can build targets for
TASK_QUESTION_TYPES = {
    "hint_attribution": {"generative_explanation", "orig_match", "change_match"},
    "act_patch": {"generative_explanation", "orig_match", "change_match"},
    "features_explain": {"generative_explanation"},
}
# slots holding the scenario text or the continuous-token markers: their token rows are never trained
TEXT_SLOTS = {"system_prompt", "user_prompt", "hint", "prompt", "begin_continuous", "feature", "end_continuous"}
SLOT = re.compile(r"\{(\w+)\}")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# Bounds live in the types: a value out of range fails at load, naming its field (`$.train.batch_size`).
# msgspec refuses NaN under any bound; the upper bound refuses inf.
Count = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
PositiveReal = Annotated[float, msgspec.Meta(gt=0, le=sys.float_info.max)]
NonNegativeReal = Annotated[float, msgspec.Meta(ge=0, le=sys.float_info.max)]


class Message(msgspec.Struct, forbid_unknown_fields=True):
    role: str  # system | user | assistant
    content: str


class Prompt(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[Message]


class QuestionType(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    weight: NonNegativeReal = 1.0  # scales this question type's tokens in the loss; 0 = not asked (no examples)
    prompts: list[Prompt]


class TaskConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    weight: float = 1.0
    question_types: dict[str, QuestionType]
    dataset: str = ""  # ours: records folder for this task; "" = train.dataset
    # ours, act_patch only: of each random control direction, this many arms per scenario and context are
    # trained on (a seeded draw; the test split keeps every arm); 0 = every arm. On the toy, 540 of Task 2's
    # 930 training examples were these "no change" rows; tried and not kept there (docs/evidence.md, "Task 2:
    # fewer null rows, or batches of 8").
    random_arms: NonNegative = 0


class ContinuousTokens(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Marker tokens around the placeholder whose embedding a vector replaces. "" = pick reserved
    `[control_K]` tokens of the explainer's tokenizer (Mistral v0.3 has unused ones)."""

    begin_continuous: str = ""
    end_continuous: str = ""
    continuous_rep: str = ""


class TrainSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    batch_size: Count = 8  # examples per micro-batch
    gradient_accumulation: Count = 1  # ours: micro-batches per optimizer step
    learning_rate: PositiveReal = 5e-5
    lr_scheduler_type: Literal["constant", "linear"] = "constant"  # the reference's default is constant
    warmup_steps: int = 0
    weight_decay: NonNegativeReal = 0.01
    max_grad_norm: NonNegativeReal = 1.0  # 0 = no clipping
    num_epochs: Count = 20
    eval_steps: Count = 500
    save_steps: Count = 500  # ours: checkpoint every N optimizer steps
    save_total_limit: int = 3  # complete checkpoints kept (oldest removed first)
    eval_samples: int = 64  # examples generated for exact match at each eval (loss uses the whole split)
    peft_lora: bool = True
    lora_r: Count = 128
    lora_alpha: int = 0  # 0 = 2 * lora_r
    lora_dropout: NonNegativeReal = 0.0
    # ours: also train the embedding rows of the tokens that occur in answers (peft's
    # trainable_token_indices; tied output rows follow). Off for real models. The toy organism needs it:
    # trained only on its own replies, its other vocabulary rows collapsed onto one direction (mean pairwise
    # cosine ~0.9), so no hidden state can single out "unchanged" or "<<<" and LoRA alone stalls at ~ln(V).
    trainable_answer_tokens: bool = False
    # ours, toy: also train the embedding rows of the tokens in these prompt slots' values (act_patch:
    # [layer, alpha]). The toy never saw digits, so their rows collapsed too (pairwise cosine 0.91-0.94) and
    # it cannot tell "1.5" from "2" in its prompt. Slots holding scenario text are refused: trained rows of
    # training scenarios' words would let the explainer memorise them. Off for real models.
    trainable_slot_tokens: list[str] = []
    loraplus_lr_ratio: NonNegativeReal = 1.0  # ours: LoRA+ (lr of lora_B = ratio x learning_rate); 1 = plain LoRA
    bf16: bool = True  # only on GPU (bf16 weights); a CPU run's weights stay fp32 (see cpu_precision)
    # ours: "bf16": on a CPU, the explainer's matrix products in bf16 under torch.autocast (weights, optimizer and
    # loss stay fp32) with the eager attention kernel (the CPU's bf16 SDPA backward is slower than fp32's).
    # "auto": only where the CPU multiplies bf16 natively (AVX512-BF16 or AMX), else fp32 (elsewhere "bf16"
    # is emulated, slower); summary.json's cpu_bf16 says which ran.
    # On a Zen 4 (2026-12-08): a toy Task 2 step on one thread 0.38 -> 0.23 s, Task 3's demo arms ~6,650 ->
    # ~8,800 tokens a second a thread, the tiny benchmark on 2 threads 1.11x (docs/evidence.md "bf16",
    # docs/benchmarks.md)
    cpu_precision: Literal["fp32", "bf16", "auto"] = "fp32"
    gradient_checkpointing: bool = False  # ours
    group_by_length: bool = True  # ours: length-grouped batches (little padding); False = plain shuffle
    # ours, speed (training/packing.py, training/speed.py; the GPU YAMLs turn them on):
    packing: bool = False  # fixed-width packed rows, batch_size x gradient_accumulation examples a step on average
    pack_tokens: int = 8192  # most tokens in one packed row (rows per step grow past it)
    # "" = transformers' default; flex_attention: packing on GPU
    attn_implementation: Literal["", "eager", "sdpa", "flex_attention"] = ""
    bf16_adapters: bool = False  # LoRA weights in the base dtype (bf16 on GPU) instead of peft's fp32 upcast
    liger: bool = False  # liger-kernel RMSNorm/RoPE/SwiGLU (GPU, needs liger-kernel)
    compile_layers: bool = False  # torch.compile each decoder layer (not with liger)
    max_length: Count = 1024  # examples longer than this are dropped, with a count in the log
    dataset: str = ""  # folder holding train.jsonl / test.jsonl records
    tasks: dict[str, TaskConfig]
    seed: int = 0  # ours
    eval_sets: list[str] = []  # ours: gold_106-derived record files/folders: never trained on, evaluated
    heldout: str = "gold_106"  # ours: PathsConfig field of the held-out scenario set ("" = none)
    paths: str = "configs/paths.yaml"  # ours: where gold_106 etc. live
    allow_missing_heldout: bool = False  # ours: train even if the held-out file is absent (warns)
    debug_steps: Count = 5  # ours: optimizer steps of a --debug run
    # ours: use only the first N prompt templates of each question type (0 = all). Training draws one template
    # per example (seeded); evaluation scores each template apart when there are several (training/templates.py)
    max_prompts: NonNegative = 0


class TestTask(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    num_samples: int = 0  # 0 = every test record


class FeatureJudge(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Ours: the paper's LM judge of feature descriptions (lm/feature_judge.py), beside MiniLM similarity.
    model "" = off: evaluation then says "LM judge: not configured"."""

    model: str = ""  # an instruct model's folder or cached hub id; never the explainer's base unless forced
    backend: Literal["vllm", "hf"] = "vllm"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    allow_explainer_base: bool = False  # let the explainer's base judge its descriptions (marked self-judged)
    engine: dict[str, Any] = msgspec.field(default_factory=dict)  # passed to vllm.LLM as given


class TestSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    batch_size: int = 16
    # ours: at most this many tokens a generation or scoring batch (rows x (longest prompt + max_new_tokens));
    # 0 = batch_size alone. With it a GPU config can ask for wide batches of short prompts (HF decoding is
    # launch-bound: ~same time a step at 32 rows as at 256) without running out of memory on long ones
    batch_tokens: NonNegative = 0
    max_new_tokens: int = 48  # ours
    tasks: dict[str, TestTask] = {}
    feature_judge: FeatureJudge = msgspec.field(default_factory=FeatureJudge)  # ours
    # ours, the peers' baselines (training/peers.py): the untrained explainer with k solved training examples
    # in its prompt, for each k, over fewshot_draws seeded draws of the examples; [] = off. fewshot_items > 0:
    # a seeded subset of that many items per split (CPU time)
    fewshot_k: list[Count] = msgspec.field(default_factory=lambda: [4, 8])
    fewshot_draws: Count = 3
    fewshot_items: NonNegative = 0
    calibration: bool = True  # ours: the explainer's confidence, Brier / ECE / AUROC (training/calibration.py)


class TrainConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # The model being explained and the explainer: a local folder, a cached hub id, or "toy" (the toy
    # organism); "" = organism_model / base_model of the paths config (train.paths).
    target_model_path: str = ""
    model_path: str = ""
    continuous_tokens: ContinuousTokens = msgspec.field(default_factory=ContinuousTokens)
    output_dir: str
    use_embed_proj: bool = False  # project vectors even when their size equals the hidden size
    device: Literal["auto", "cpu", "cuda"] = "auto"  # ours
    train: TrainSection
    test: TestSection = msgspec.field(default_factory=TestSection)


def load_train_config(path: str, sets: list[str] | None = None, output_dir: str | None = None) -> TrainConfig:
    """Load and validate a training config; `sets` are `--set a.b=VALUE` overrides."""
    # YAML 1.1 reads "2e-3" as a string; a number typed on the command line is meant as a number
    overrides = {k: _number(v) for k, v in parse_set_args(sets or []).items()}
    if output_dir:
        overrides["output_dir"] = output_dir
    cfg = load_config(path, TrainConfig, overrides)
    if not (cfg.target_model_path and cfg.model_path):
        paths = load_stage_paths(cfg.train.paths)
        cfg = msgspec.structs.replace(cfg, target_model_path=cfg.target_model_path or paths.organism_model,
                                      model_path=cfg.model_path or paths.base_model)
    validate(cfg, where=str(path))
    return first_prompts(cfg, cfg.train.max_prompts) if cfg.train.max_prompts else cfg


def train_paths(cfg: TrainConfig) -> PathsConfig:
    """The paths config a training run checks its data against (its held-out set), read once at the edge
    (training/train.py) and passed on; a run without a held-out set (train.heldout "") reads none."""
    return load_stage_paths(cfg.train.paths) if cfg.train.heldout else PathsConfig()


def first_prompts(cfg: TrainConfig, n: int) -> TrainConfig:
    """The config with each question type's templates cut to its first `n`."""
    replace = msgspec.structs.replace
    tasks = {name: replace(tc, question_types={q: replace(qt, prompts=qt.prompts[:n])
                                               for q, qt in tc.question_types.items()})
             for name, tc in cfg.train.tasks.items()}
    return replace(cfg, train=replace(cfg.train, tasks=tasks))


def _number(value):
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def validate(cfg: TrainConfig, where: str = "config") -> None:
    """Checks the types cannot express (ranges are in the types): known tasks, question types, slots, and
    settings that depend on each other."""
    p = Problems()
    t = cfg.train
    if t.packing and t.pack_tokens < 128:
        p.add(where, f"train.pack_tokens must be >= 128, got {t.pack_tokens}")
    if t.liger and t.compile_layers:
        p.add(where, "train.liger and train.compile_layers do not combine (torch.compile cannot trace liger-kernel's "
                     "functions); pick one (compile_layers measured faster on the H200)")
    if t.liger and importlib.util.find_spec("liger_kernel") is None:
        p.add(where, "train.liger: true needs liger-kernel (pip install liger-kernel)")
    if not t.tasks:
        p.add(where, "train.tasks is empty")
    for task, tc in t.tasks.items():
        if task not in TASK_SLOTS:
            p.add(where, f"train.tasks.{task}: unknown task (known: {', '.join(TASK_SLOTS)})")
            continue
        if tc.random_arms and task != "act_patch":
            p.add(where, f"train.tasks.{task}.random_arms: only act_patch has random control directions")
        if not (tc.dataset or t.dataset):
            p.add(where, f"train.tasks.{task}: no dataset (set train.dataset or the task's dataset)")
        if not any(q.weight for q in tc.question_types.values()):
            p.add(where, f"train.tasks.{task}: every question type has weight 0; nothing would be asked")
        for qname, q in tc.question_types.items():
            at = f"train.tasks.{task}.question_types.{qname}"
            if qname not in TASK_QUESTION_TYPES[task]:
                p.add(where, f"{at}: not a question type of {task} ({', '.join(sorted(TASK_QUESTION_TYPES[task]))})")
            if not q.prompts:
                p.add(where, f"{at}.prompts is empty")
            for i, prompt in enumerate(q.prompts):
                _check_prompt(prompt, task, f"{at}.prompts[{i}]", p, where)
    slots = set().union(*(TASK_SLOTS.get(task, set()) for task in t.tasks)) - TEXT_SLOTS
    for name in t.trainable_slot_tokens:
        if name not in slots:
            p.add(where, f"train.trainable_slot_tokens: {name!r} is not a slot of {', '.join(t.tasks)} that may be "
                         f"trained (allowed: {', '.join(sorted(slots)) or 'none'})")
    for task in cfg.test.tasks:
        if task not in t.tasks:
            p.add(where, f"test.tasks.{task}: not among train.tasks ({', '.join(t.tasks)})")
    p.raise_if_any()


def _check_prompt(prompt: Prompt, task: str, at: str, p: Problems, where: str) -> None:
    roles = [m.role for m in prompt.messages]
    if "user" not in roles:
        p.add(where, f"{at}: needs a user message")
    bad = [r for r in roles if r not in ("system", "user", "assistant")]
    if bad:
        p.add(where, f"{at}: unknown roles {bad}")
    if roles and roles[-1] == "assistant" and prompt.messages[-1].content:
        # The answer is appended to this turn; a non-empty prefix would be trained on as answer text.
        p.add(where, f"{at}: the final assistant message must be empty (it receives the answer)")
    for m in prompt.messages:
        unknown = sorted(set(SLOT.findall(m.content)) - TASK_SLOTS[task])
        if unknown:
            p.add(where, f"{at}: unknown slots {unknown} for {task} (known: {', '.join(sorted(TASK_SLOTS[task]))})")
