"""The toy organism's tokenizer: Mistral-7B v0.3's SentencePiece vocabulary with a v0.3-style chat format.

Rendered chat (what training and every later stage must feed the model):

    <s>[INST] {system}\\n\\n{user}[/INST] {assistant}</s>

There is no system role: the system message is folded into the last user turn, as Mistral-7B-Instruct-v0.3
does. Like that model's Hugging Face tokenizer, encoding plain text prepends BOS, and the template emits
BOS itself, so a rendered string must be encoded with `add_special_tokens=False` (which is what
`apply_chat_template(..., tokenize=True)` and vLLM's chat path do); encoding it with the defaults gives
two BOS tokens, exactly the trap the real model has.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from transformers import LlamaTokenizer, PreTrainedTokenizerBase

from lm.tokens import CHAT_TEMPLATE
from records.errors import InputError

_TOKENIZER_FILE = "mistral_instruct_tokenizer_240323.model.v3"

# `<unk>` never occurs in encoded text (the vocabulary has byte fallback), it is not EOS (so masking
# labels by pad id never hides the EOS the model must learn to emit), it exists in the real Mistral
# tokenizer too, and it spends none of the control tokens the training stage reserves.
PAD_TOKEN = "<unk>"

def mistral_tokenizer_file() -> Path:
    """Path of Mistral's v3 SentencePiece model (Mistral-7B v0.3's) inside the installed mistral-common."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("mistral-common is not installed: pip install mistral-common")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _TOKENIZER_FILE
    if not path.is_file():
        raise InputError(f"{path}: not found in the installed mistral-common; pip install -U mistral-common")
    return path


def load_tokenizer(workdir: Path) -> PreTrainedTokenizerBase:
    """Load the 32768-token v3 tokenizer with the organism's chat template and pad token.

    `workdir` receives a copy of the SentencePiece file as `tokenizer.model`: `from_pretrained(folder)`
    is the way that yields a working tokenizer (a direct `vocab_file=` gives a broken one).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_tokenizer_file(), workdir / "tokenizer.model")
    # The loaded default adds no BOS; Mistral-7B-Instruct-v0.3's tokenizer does, so ask for it to keep
    # the stand-in's encoding behaviour the same as the real organism's.
    tokenizer = LlamaTokenizer.from_pretrained(str(workdir), add_bos_token=True, add_eos_token=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.pad_token = PAD_TOKEN
    return tokenizer
