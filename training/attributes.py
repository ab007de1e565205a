"""Per-attribute accuracy of feature descriptions: does a description name the right value of each
attribute of its feature's cluster (the toy: trigger and modifier, cluster_attributes.json)?

Which value a free-text description names is learnt from the training descriptions alone, for any
attributes and wording: a value's *marks* are the word n-grams (up to MAX_N words, lowercased, punctuation
dropped) found in every training description with that value and in none with another value of the same
attribute, kept minimal (no mark contains a shorter one). A description names a value when it contains one
of its marks; naming no value of an attribute, or several, counts as wrong. A value without marks (never in
training, or never worded apart from another value) cannot be named: its items are wrong for every method,
which the marks in metrics.json show.

Chance, per attribute: the most common value among the training features, scored on the split's items
(ties: the mean over the tied values, i.e. a guesser picking one of them at random). A held-out cluster
that recombines seen values can be named right only by reading its vector.
"""

from __future__ import annotations

import re
from collections import Counter

from records.schema import normalise_text
from training.examples import Example

MAX_N = 8  # longest mark, in words: bounds the n-grams kept per description
_WORD = re.compile(r"\w+")

Marks = dict[str, dict[str, list[tuple[str, ...]]]]  # attribute -> value -> its marks


def ngrams(text: str) -> set[tuple[str, ...]]:
    """Every run of 1..MAX_N consecutive words of `text`, normalised (records.schema.normalise_text)."""
    words = _WORD.findall(normalise_text(text))
    return {tuple(words[i:i + n]) for n in range(1, MAX_N + 1) for i in range(len(words) - n + 1)}


def value_marks(train: list[tuple[str, dict[str, str]]]) -> Marks:
    """The marks of every (attribute, value) of the training (description, attributes) pairs."""
    grams = {text: ngrams(text) for text, _ in train}  # one description is shared by its cluster's features
    out: Marks = {}
    for attr in sorted({a for _, attrs in train for a in attrs}):
        pairs = {(text, attrs[attr]) for text, attrs in train if attr in attrs}
        values_of: dict[tuple[str, ...], set[str]] = {}  # n-gram -> the values whose descriptions hold it
        common: dict[str, set[tuple[str, ...]]] = {}  # value -> the n-grams all its descriptions hold
        for text, value in pairs:
            for g in grams[text]:
                values_of.setdefault(g, set()).add(value)
            common[value] = common[value] & grams[text] if value in common else set(grams[text])
        out[attr] = {}
        for value in sorted(common):
            own = {g for g in common[value] if values_of[g] == {value}}
            minimal = [g for g in own if not any(s in own for s in _shorter(g))]
            # the shortest only: a value seen in one training description also "owns" longer n-grams across
            # its neighbour's words ("samples and fires on scenarios"), which a held-out description of
            # another value can hold
            out[attr][value] = sorted(g for g in minimal if len(g) == min(map(len, minimal)))
    return out


def _shorter(g: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [g[i:i + n] for n in range(1, len(g)) for i in range(len(g) - n + 1)]


def named_value(text: str, marks: dict[str, list[tuple[str, ...]]]) -> str | None:
    """The one value of an attribute that `text` names (holds one of its marks); None for none or several."""
    grams = ngrams(text)
    named = [value for value, ms in marks.items() if any(m in grams for m in ms)]
    return named[0] if len(named) == 1 else None


def chance_level(train_values: list[str], test_values: list[str]) -> float:
    """Share of `test_values` equal to the most common training value (ties: averaged over the tied values)."""
    if not test_values or not train_values:
        return float("nan")
    counts = Counter(train_values)
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    return sum(sum(t == v for t in test_values) for v in tied) / (len(tied) * len(test_values))


def attribute_scores(train: list[Example], examples: list[Example], preds: dict[str, list[str]],
                     attributes: dict[int, dict[str, str]]) -> tuple[dict, dict, dict]:
    """Per-attribute accuracy of each method's descriptions on the feature examples of one split.

    Returns ({question type: {method: {"attribute:<name>": share right, "attribute_mean": ...}}},
    {method: [per example: {attribute: named right} or None where the example has no attributes]},
    {question type: {"chance": {attribute: share}, "marks": {attribute: {value: [mark text]}}, "n": items}}).
    """
    def attrs(ex: Example) -> dict[str, str] | None:
        return attributes.get(ex.meta.get("cluster_id")) if ex.task == "features_explain" else None

    scores: dict = {}
    correct: dict[str, list] = {m: [None] * len(examples) for m in preds}
    info: dict = {}
    for q in dict.fromkeys(ex.question_type for ex in examples):
        pool = [(ex.target, attrs(ex)) for ex in train if ex.question_type == q and attrs(ex)]
        idx = [i for i, ex in enumerate(examples) if ex.question_type == q and attrs(examples[i])]
        if not pool or not idx:
            continue
        marks = value_marks(pool)
        names = sorted({a for i in idx for a in attrs(examples[i])})
        for method, p in preds.items():
            for i in idx:
                truth = attrs(examples[i])
                correct[method][i] = {a: a in truth and a in marks and named_value(p[i], marks[a]) == truth[a]
                                      for a in names}
            acc = {f"attribute:{a}": sum(correct[method][i][a] for i in idx) / len(idx) for a in names}
            scores.setdefault(q, {})[method] = {**acc, "attribute_mean": sum(acc.values()) / len(acc)}
        info[q] = {"n": len(idx),
                   "chance": {a: chance_level([t[a] for _, t in pool if a in t],
                                              [attrs(examples[i]).get(a) for i in idx]) for a in names},
                   "marks": {a: {v: [" ".join(m) for m in ms] for v, ms in marks.get(a, {}).items()} for a in names}}
    return scores, correct, info
