"""Final-answer extraction: set reasoning blocks aside so labels are about what the model finally says.

Conventions handled (tag names case-insensitive):
- `<SCRATCHPAD_REASONING>`, `<thinking>`, `<think>`, `<reasoning>` blocks are reasoning.
- `<OUTPUT>...</OUTPUT>` (the alignment-faking literature's format): when present, the last OUTPUT block is
  the answer, even if unclosed (the output was cut off inside it).
- A closing reasoning tag with no opening tag (the chat template opened `<think>` in the prompt): everything
  before it is reasoning.
- An opening reasoning tag that is never closed (the output ended inside its reasoning): whatever stands
  outside reasoning is the answer; if nothing does, there is no answer (`None`), which is `no_answer`, not
  "other" and not "empty".
"""

from __future__ import annotations

import re

REASONING_TAGS = ("scratchpad_reasoning", "thinking", "think", "reasoning")
_TAGS = "|".join(REASONING_TAGS)
_CLOSED = re.compile(rf"<({_TAGS})\s*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_OPEN = re.compile(rf"<({_TAGS})\s*>", re.IGNORECASE)
_CLOSE = re.compile(rf"</({_TAGS})\s*>", re.IGNORECASE)
_OUTPUT_OPEN = re.compile(r"<output\s*>", re.IGNORECASE)
_OUTPUT_CLOSE = re.compile(r"</output\s*>", re.IGNORECASE)
_NEXT = re.compile(r"<next\s*/>", re.IGNORECASE)


def final_answer(text: str) -> str | None:
    """The final answer of a response, stripped; "" for an empty response; None when it has reasoning
    but no answer (it ended inside its reasoning, or wrote only reasoning)."""
    if not text.strip():
        return ""
    had_reasoning = False
    # A closing tag before any opening one: the reasoning began in the prompt (e.g. a template's `<think>`).
    first_close, first_open = _CLOSE.search(text), _OPEN.search(text)
    if first_close and (not first_open or first_close.start() < first_open.start()):
        text, had_reasoning = text[first_close.end():], True
    text, n_closed = _CLOSED.subn(" ", text)
    had_reasoning |= n_closed > 0
    unclosed = _OPEN.search(text)
    if unclosed:
        text, had_reasoning = text[:unclosed.start()], True
    # Reasoning is gone first, so an `<OUTPUT>` the model only mentions while reasoning does not count.
    opened = list(_OUTPUT_OPEN.finditer(text))
    if opened:
        rest = text[opened[-1].end():]
        end = _OUTPUT_CLOSE.search(rest)
        text, had_reasoning = (rest[:end.start()] if end else rest), True
    answer = _NEXT.sub(" ", text).strip()
    return answer if answer or not had_reasoning else None
