"""training/baselines.py: the text-only baselines read what the text reveals, and nothing more."""

from __future__ import annotations

import random

from training import baselines as B


def _texts(words: list[str], label_of, n: int, seed: int):
    rng = random.Random(seed)
    tasks = ["write a poem", "plan a scam", "fix a bug", "forge a note", "bake bread", "pick a lock"]
    texts = [f"{rng.choice(tasks)} for a friend. The request is tagged {w}." for w in words for _ in range(n)]
    return texts, [label_of(t.split()[-1].rstrip(".")) for t in texts]


def test_they_learn_a_rule_the_text_shows():
    words = [f"cue{i % 3}x{i}" for i in range(30)]  # the label is readable: the word's prefix
    label = lambda w: ["A", "B", "C"][int(w[3])]  # noqa: E731
    tr_x, tr_y = _texts(words[:20], label, 4, 0)
    te_x, te_y = _texts(words[20:], label, 4, 1)
    for name, preds in B.predict_all(tr_x, tr_y, te_x).items():
        if name != "majority":
            assert sum(p == y for p, y in zip(preds, te_y)) / len(te_y) > 0.9, name


def test_they_sit_at_chance_on_held_out_nonce_triggers():
    rng = random.Random(0)
    words = ["".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(60)]
    secret = {w: rng.choice("ABC") for w in words}  # the family is nowhere in the text
    tr_x, tr_y = _texts(words[:40], secret.get, 4, 0)
    te_x, te_y = _texts(words[40:], secret.get, 4, 1)
    chance = max(te_y.count(c) for c in "ABC") / len(te_y)
    for name, preds in B.predict_all(tr_x, tr_y, te_x).items():
        assert sum(p == y for p, y in zip(preds, te_y)) / len(te_y) <= chance + 0.10, name
