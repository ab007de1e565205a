"""Mistral v0.3 conventions every stage shares: its chat format, and the reserved `[control_K]` tokens
that the explainer uses as continuous-token placeholders."""

from __future__ import annotations

import re

from records.errors import InputError

# Written for this project (the toy organism uses it too); the output format matches
# Mistral-7B-Instruct-v0.3's template except that the system message is folded into the last *user* turn even
# when an assistant turn follows it (v0.3 drops it in that case), so a training sequence's prompt is
# byte-identical to the inference prompt.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='', last_user=-1) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- if ns.system -%}{{- raise_exception('only one system message is supported') -}}{%- endif -%}"
    "{%- set ns.system = m['content'] -%}"
    "{%- elif m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- elif m['role'] != 'assistant' -%}{{- raise_exception('unsupported role: ' + m['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.system and ns.last_user < 0 -%}"
    "{{- raise_exception('a system message needs a user message to be folded into') -}}"
    "{%- endif -%}"
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' and loop.index0 == ns.last_user and ns.system -%}"
    "{{- '[INST] ' + ns.system + '\\n\\n' + m['content'] + '[/INST]' -}}"
    "{%- elif m['role'] == 'user' -%}"
    "{{- '[INST] ' + m['content'] + '[/INST]' -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- ' ' + m['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_CONTROL = re.compile(r"^\[control_(\d+)\]$")
# Ids 10-13 are `[control_8]`..`[control_11]` in Mistral-7B-Instruct-v0.3 but `[IMG]`, `[PREFIX]`, ...
# in mistral-common's v3 file, and fine-tunes often pad with `[control_8]`. From 12 on, the names and
# ids (`[control_12]` = 14, ...) are the same on the toy and on the real organism.
_FIRST_RESERVED_CONTROL = 12


def reserved_control_tokens(tokenizer, n: int) -> list[str]:
    """`n` unused `[control_K]` tokens, K = 12, 13, ... as present, each checked to be one id.

    Mistral v0.3 reserves these and never emits them; the training stage uses them as placeholders for
    continuous vectors. The same call gives the same strings and ids on Mistral-7B-Instruct-v0.3.
    """
    vocab = tokenizer.get_vocab()
    numbered = {int(m[1]): tok for tok in vocab if (m := _CONTROL.match(tok))}
    chosen = [numbered[k] for k in sorted(numbered) if k >= _FIRST_RESERVED_CONTROL][:n]
    if len(chosen) < n:
        raise InputError(f"asked for {n} reserved control tokens; the vocabulary has {len(chosen)}")
    for tok in chosen:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        if ids != [vocab[tok]]:
            raise InputError(f"{tok} encodes to {ids}, not to its single id {vocab[tok]}")
    return chosen
