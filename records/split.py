"""Train/test splits that keep related items on one side: grouped, stratified, seeded.

An explainer scored on test items whose twins (same trigger, a near copy) sit in its training data can
score well by remembering text. So items are grouped first — by a regex capture when the data has a
known grouping key (the toy's nonce trigger), else by near-duplicate text — and whole groups go to
one side. Groups are drawn per stratum (e.g. the behaviour transition), so the
test split has about the same label mix as the whole set.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

NEAR_DUPLICATE_JACCARD = 0.8  # word-trigram Jaccard at or above which two texts count as one item
_WORD = re.compile(r"[a-z0-9]+")


def near_duplicate_groups(texts: Sequence[str], threshold: float = NEAR_DUPLICATE_JACCARD) -> list[int]:
    """A component id per text: texts linked by word-trigram Jaccard >= `threshold` share one."""
    from scipy.sparse import csr_matrix

    shingles = []
    for t in texts:
        words = _WORD.findall(t.lower())
        shingles.append({" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))})
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(shingles):
        for g in s:
            rows.append(i)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), max(1, len(vocab))))
    inter = (m @ m.T).tocoo()  # [n, n] shared trigrams, sparse
    sizes = np.asarray(m.sum(axis=1)).ravel()
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, shared in zip(inter.row, inter.col, inter.data):
        if i < j and shared / (sizes[i] + sizes[j] - shared) >= threshold:
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


def group_keys(texts: Sequence[str], pattern: str = "") -> list[str]:
    """One key per text: the `pattern` capture where it matches, else the near-duplicate component.

    A pattern names what decides the label (the toy's trigger): texts that differ only there are near
    copies, but not leaky ones, and linking them would chain most of a templated set into one group.
    """
    near = near_duplicate_groups(texts)
    keys = []
    for i, t in enumerate(texts):
        m = re.search(pattern, t) if pattern else None
        keys.append(f"key:{m.group(1) if m.groups() else m.group(0)}" if m else f"near:{near[i]}")
    return keys


def grouped_split(groups: Sequence[str], strata: Sequence[str], test_size: int,
                  seed: int) -> tuple[list[int], list[int]]:
    """(train indices, test indices), each sorted: whole groups per side, about `test_size` test items.

    A group's stratum is its most common member stratum. Within each stratum, groups are taken in a
    seeded order until the stratum's share of `test_size` is reached; every stratum keeps at least
    one group in training.
    """
    n = len(groups)
    if test_size == 0:
        return list(range(n)), []
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be between 1 and {n - 1}, got {test_size}")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    by_stratum: dict[str, list[str]] = {}
    for g, idx in sorted(members.items()):
        stratum = sorted(Counter(strata[i] for i in idx).most_common(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_stratum.setdefault(stratum, []).append(g)
    rng = random.Random(seed)
    test: list[int] = []
    for _stratum, gs in sorted(by_stratum.items()):
        rng.shuffle(gs)
        want = round(test_size * sum(len(members[g]) for g in gs) / n)
        taken = 0
        for g in gs[:-1]:  # the last group of a stratum always stays in training
            if taken >= want:
                break
            test += members[g]
            taken += len(members[g])
    test_set = set(test)
    return [i for i in range(n) if i not in test_set], sorted(test_set)


def train_first_order(texts: Sequence[str], strata: Sequence[str], test_size: int, seed: int,
                      pattern: str = "") -> tuple[list[int], int]:
    """(an order of the items with the training items first, the number of training items): the grouped
    split of `texts` (`group_keys` with `pattern`, then `grouped_split`), for a stage that holds out "the
    items after the first n". Each side keeps its input order."""
    train, test = grouped_split(group_keys(texts, pattern), strata, test_size, seed)
    return train + test, len(train)


def spanning_groups(train_texts: Sequence[str], test_texts: Sequence[str], pattern: str = "") -> set[str]:
    """The groups (pattern captures, or near-duplicate components over both sides) with items on both sides:
    empty for a split that keeps every group on one side."""
    keys = group_keys([*train_texts, *test_texts], pattern)
    return set(keys[:len(train_texts)]) & set(keys[len(train_texts):])
