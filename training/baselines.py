"""Text-only baselines over the explainer's exact input text (the rendered prompt string).

If one of these matches the explainer, the explainer's score says nothing about the model it explains:
the answer was readable from the text. Each is fitted per question type on the training examples:
- majority: the most common training target;
- nearest neighbour: the target of the training prompt with the highest TF-IDF cosine;
- text classifier: TF-IDF + logistic regression (scikit-learn), predicting the target string.
Features are word 1-2-grams plus character 3-5-grams within words, so a nonce trigger that shares
letters with a training trigger is still visible to them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

TEXT_BASELINES = ("majority", "nearest_neighbour", "text_classifier")


def _vectoriser():
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True)

    def fit(texts):
        return hstack([words.fit_transform(texts), chars.fit_transform(texts)]).tocsr()

    def transform(texts):
        return hstack([words.transform(texts), chars.transform(texts)]).tocsr()

    return fit, transform


def majority(train_targets: Sequence[str], test_texts: Sequence[str]) -> list[str]:
    """The most common training target for every test item (ties: the first seen)."""
    return [Counter(train_targets).most_common(1)[0][0]] * len(test_texts)


def nearest_neighbour(train_texts: Sequence[str], train_targets: Sequence[str], test_texts: Sequence[str]) -> list[str]:
    """Target of the most similar training text (TF-IDF cosine; rows are unit-norm, so a dot product)."""
    fit, transform = _vectoriser()
    train_m = fit(list(train_texts))
    # TfidfVectorizer rows are l2-normalised per block; renormalise the stacked row
    sims = (_unit(transform(list(test_texts))) @ _unit(train_m).T).toarray()  # [n_test, n_train]
    return [train_targets[int(j)] for j in sims.argmax(axis=1)]


def text_classifier(train_texts: Sequence[str], train_targets: Sequence[str], test_texts: Sequence[str],
                    seed: int = 0) -> list[str]:
    """TF-IDF + multinomial logistic regression predicting the target string."""
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(train_targets))
    if len(classes) == 1:
        return [classes[0]] * len(test_texts)
    fit, transform = _vectoriser()
    clf = LogisticRegression(C=10.0, max_iter=2000, random_state=seed)
    clf.fit(fit(list(train_texts)), list(train_targets))
    return [str(p) for p in clf.predict(transform(list(test_texts)))]


def predict_all(train_texts: Sequence[str], train_targets: Sequence[str], test_texts: Sequence[str],
                seed: int = 0) -> dict[str, list[str]]:
    """Every text baseline's predictions for `test_texts`, keyed as TEXT_BASELINES."""
    return {"majority": majority(train_targets, test_texts),
            "nearest_neighbour": nearest_neighbour(train_texts, train_targets, test_texts),
            "text_classifier": text_classifier(train_texts, train_targets, test_texts, seed)}


def _unit(m):
    from scipy.sparse import diags

    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return diags(1.0 / np.maximum(norms, 1e-12)) @ m
