"""The continuous-token markers of an export, picked from the explainer's own tokenizer.

introspective-interp turns each marker string into an id with `convert_tokens_to_ids` and writes a vector
wherever the tokenized prompt holds the `continuous_rep` id. A marker the tokenizer does not know maps
to the unknown id (or splits into pieces), the prompt never holds it, and every vector is dropped
without a word: Llama-3's reserved-token strings under a ChatML tokenizer (SmolLM2) did exactly that.
So each marker must be a token of this tokenizer that encodes to one id of its own, alone and inside
text, is not the unknown token, and is not one the chat template or the model's roles use.
"""

from __future__ import annotations

import re

from lm.tokens import reserved_control_tokens
from records.errors import InputError

KEYS = ("begin_continuous", "end_continuous", "continuous_rep")
# Llama-3's reserved tokens, as the reference's own configs use them: kept where the tokenizer has them.
LLAMA3_MARKERS = {"begin_continuous": "<|reserved_special_token_10|>",
                  "end_continuous": "<|reserved_special_token_11|>",
                  "continuous_rep": "<|reserved_special_token_12|>"}
_PLACEHOLDER = re.compile(r"reserved|unused|_pad\|?>$")


def marker_ok(tokenizer, token: str) -> bool:
    """True when `token` is one id of this tokenizer, not the unknown one, alone and between words."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if token == tokenizer.unk_token or not isinstance(tid, int) or tid == tokenizer.unk_token_id:
        return False
    if tokenizer.encode(token, add_special_tokens=False) != [tid]:
        return False
    return tokenizer.encode(f"word{token}word", add_special_tokens=False).count(tid) == 1


def _role_tokens(tokenizer) -> set[str]:
    named = {getattr(tokenizer, f"{k}_token", None) for k in ("bos", "eos", "unk", "pad", "sep", "cls", "mask")}
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    added = [t.content for t in tokenizer.added_tokens_decoder.values()]
    return {t for t in named if t} | {t for t in added if t in template}


def _spare_special_tokens(tokenizer) -> tuple[list[str], list[str]]:
    """(placeholders by name: reserved / unused / pad, other special tokens), by id; roles left out."""
    used = _role_tokens(tokenizer)
    spare = [t.content for _, t in sorted(tokenizer.added_tokens_decoder.items())
             if t.special and t.content not in used]
    named = [t for t in spare if _PLACEHOLDER.search(t)]
    return named, [t for t in spare if t not in named]


def continuous_markers(tokenizer) -> tuple[dict[str, str], str]:
    """({begin_continuous, end_continuous, continuous_rep} -> token string, how they were chosen).

    In order: Llama-3's reserved tokens where present (the reference's own choice); Mistral's reserved
    `[control_K]`; special tokens named reserved / unused / pad; other special tokens outside the chat
    template and the model's roles (e.g. SmolLM2's code-data markers `<repo_name>`...). Refuses with the
    reason when fewer than three distinct ones pass `marker_ok`.
    """
    if all(marker_ok(tokenizer, t) for t in LLAMA3_MARKERS.values()):
        return dict(LLAMA3_MARKERS), "Llama-3 reserved special tokens"
    try:
        return dict(zip(KEYS, reserved_control_tokens(tokenizer, len(KEYS)))), "reserved [control_K] tokens"
    except InputError:
        pass
    named, other = _spare_special_tokens(tokenizer)
    for pool, how in ((named, "reserved/unused special tokens"),
                      (named + other, "special tokens the chat template and roles do not use")):
        picks = [t for t in pool if marker_ok(tokenizer, t)][:len(KEYS)]
        if len(picks) == len(KEYS):
            return dict(zip(KEYS, picks)), how
    raise InputError(
        f"explainer tokenizer: found {len(named) + len(other)} spare special tokens, fewer than 3 that encode to "
        "one known id each; the reference would map the continuous-token markers to the unknown id and drop every "
        "vector. Add three special tokens to the explainer's tokenizer (and resize its embeddings), or choose "
        "an explainer with reserved tokens")
