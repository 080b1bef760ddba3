"""Agreement between two lists of labels: exact match, MAE, Pearson, Spearman, quadratic-weighted kappa.

Pure Python on purpose: these functions are imported by the structured-answer metrics (`fields.py`)
and by the oral-reading scorer, and are called on a few hundred pairs, so numpy/scipy would only add
import time. The tests check them against `scipy.stats` and `sklearn.metrics` on random data.

Undefined cases return ``None`` instead of raising or returning NaN, because a report must keep going
when, say, a freshly tuned model answers "3" for every field (a constant column has no correlation):
- empty input                      -> None for every function
- fewer than 2 pairs or a constant column -> None for `pearson` / `spearman`
- expected disagreement of zero (one category only) -> None for `qwk`
Lengths that differ are a caller bug and raise ``ValueError``.

>>> exact_match([1, 2, 3], [1, 2, 4]), mae([1, 2, 3], [1, 2, 5])
(0.6666666666666666, 0.6666666666666666)
>>> pearson([1, 2, 3], [2, 4, 6]), spearman([1, 2, 3], [1, 3, 2]), pearson([1, 1], [1, 2])
(1.0, 0.5, None)
>>> qwk([1, 2, 3], [1, 2, 3]), confusion([1, 2, 2], [1, 2, 1])
(1.0, Confusion(labels=[1, 2], matrix=[[1, 0], [1, 1]]))
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

__all__ = ["Confusion", "confusion", "exact_match", "mae", "pearson", "qwk", "spearman"]


def _check(a: Sequence, b: Sequence) -> int:
    if len(a) != len(b):
        raise ValueError(f"label lists differ in length: {len(a)} vs {len(b)}")
    return len(a)


def exact_match(y_true: Sequence, y_pred: Sequence) -> float | None:
    """Share of positions where the two labels are equal (any hashable values)."""
    n = _check(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / n if n else None


def mae(y_true: Sequence[float], y_pred: Sequence[float]) -> float | None:
    """Mean absolute error."""
    n = _check(y_true, y_pred)
    return sum(abs(t - p) for t, p in zip(y_true, y_pred)) / n if n else None


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r = cov(x, y) / (sd(x) sd(y)); None when n < 2 or either side is constant."""
    n = _check(x, y)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    r = sxy / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))  # clamp rounding noise, as scipy does


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties get the mean of their positions (scipy.stats.rankdata 'average')."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho = Pearson's r of the average ranks (tie-corrected, like scipy.stats.spearmanr)."""
    _check(x, y)
    return pearson(_average_ranks(x), _average_ranks(y))


@dataclass(frozen=True)
class Confusion:
    labels: list           # row/column order
    matrix: list[list[int]]  # matrix[i][j] = count of (true = labels[i], predicted = labels[j])

    def total(self) -> int:
        return sum(map(sum, self.matrix))


def _sort_key(v):
    # numbers first in numeric order, then anything else by its text, so mixed labels never crash
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def confusion(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence | None = None) -> Confusion | None:
    """Count matrix of true (rows) vs predicted (columns) labels.

    `labels` fixes the order and size (e.g. the allowed values 1..5, so an unused band still shows as an
    empty row); pairs with a label outside it are not counted, like sklearn.metrics.confusion_matrix.
    Without `labels`, the sorted union of both sides is used; None for empty input.
    """
    n = _check(y_true, y_pred)
    if labels is None:
        if n == 0:
            return None
        labels = sorted(set(y_true) | set(y_pred), key=_sort_key)
    labels = list(labels)
    index = {v: i for i, v in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return Confusion(labels, matrix)


def qwk(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], labels: Sequence | None = None) -> float | None:
    """Quadratic-weighted Cohen's kappa.

    kappa = 1 - sum(w * O) / sum(w * E), with O the observed confusion matrix, E = outer(row sums,
    column sums) / N the matrix expected by chance, and w[i][j] = (i - j)^2 over category *indices*
    (Cohen 1968, "Weighted kappa", Psychol. Bull. 70(4); the Kaggle ASAP form; identical to
    sklearn.metrics.cohen_kappa_score(weights="quadratic"), whose (K-1)^2 normaliser cancels).
    Categories are `labels` (ordered, e.g. 1..5) or the sorted union of both sides.
    None when there are no pairs or chance disagreement is zero (both raters used one category).
    """
    cm = confusion(y_true, y_pred, labels)
    if cm is None or cm.total() == 0:
        return None
    k, n = len(cm.labels), cm.total()
    rows = [sum(r) for r in cm.matrix]
    cols = [sum(cm.matrix[i][j] for i in range(k)) for j in range(k)]
    observed = sum((i - j) ** 2 * cm.matrix[i][j] for i in range(k) for j in range(k))
    expected = sum((i - j) ** 2 * rows[i] * cols[j] / n for i in range(k) for j in range(k))
    if expected == 0:
        return None
    return 1.0 - observed / expected
