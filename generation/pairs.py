"""The paired pass's prompts: both contexts of every scenario, the noise-floor control copies, and the keys
that name each prompt in the completion shard (`<scenario index>:<side>:<prompt digest>`)."""

from __future__ import annotations

from generation.config import GenerateConfig
from lm import chat
from records.resume import prompt_digest
from records.schema import Scenario

SIDES = chat.CONTEXTS
CONTROL = "control"  # the monitored prompt's second copy
CONTROLS = {"monitored": CONTROL, "unmonitored": "control_unmonitored"}  # context -> side of its second copy
SENT_AS = {**{side: side for side in SIDES}, **{c: side for side, c in CONTROLS.items()}}  # side -> prompt sent


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
