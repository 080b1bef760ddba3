"""agreement.py: hand-worked values, undefined cases, and parity with scipy / scikit-learn on random data."""

import random

import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from glmtune.evaluate.agreement import confusion, exact_match, mae, pearson, qwk, spearman


def test_hand_values():
    y, p = [1, 2, 3, 4], [1, 3, 3, 2]
    assert exact_match(y, p) == 0.5                      # positions 0 and 2 agree
    assert mae(y, p) == pytest.approx((0 + 1 + 0 + 2) / 4)
    # x mean 2.5, y mean 2.25; sxy = (-1.5)(-1.25)+(-0.5)(0.75)+(0.5)(0.75)+(1.5)(-0.25) = 1.5
    # sxx = 5, syy = 1.5625+0.5625+0.5625+0.0625 = 2.75 -> r = 1.5 / sqrt(13.75)
    assert pearson(y, p) == pytest.approx(1.5 / 13.75 ** 0.5)
    # ranks of p with ties averaged: [1, 3.5, 3.5, 2]; Pearson of [1,2,3,4] with that
    assert spearman(y, p) == pytest.approx(pearson([1, 2, 3, 4], [1, 3.5, 3.5, 2]))


def test_qwk_by_hand():
    # Two categories {1, 2}, pairs (1,1) (1,2) (2,2) (2,2): O = [[1,1],[0,2]], rows (2,2), cols (1,3), N = 4
    # weights (i-j)^2: only off-diagonal = 1; observed = 1; expected = (2*3 + 2*1)/4 = 2 -> kappa = 1 - 1/2
    assert qwk([1, 1, 2, 2], [1, 2, 2, 2]) == pytest.approx(0.5)
    # with labels 1..3 fixed the empty band does not change the value
    assert qwk([1, 1, 2, 2], [1, 2, 2, 2], labels=[1, 2, 3]) == pytest.approx(0.5)


def test_undefined_cases_return_none():
    assert exact_match([], []) is None and mae([], []) is None
    assert pearson([3, 3, 3], [1, 2, 3]) is None        # constant side
    assert spearman([1], [1]) is None                   # n < 2
    assert qwk([3, 3], [3, 3]) is None                  # one category: chance disagreement 0
    assert qwk([], []) is None and confusion([], []) is None
    with pytest.raises(ValueError):
        mae([1, 2], [1])


def test_confusion_fixed_labels_and_order():
    cm = confusion([1, 2, 2, 5], [1, 2, 1, 9], labels=[1, 2, 3, 4, 5])
    assert cm.labels == [1, 2, 3, 4, 5]
    assert cm.matrix[0][0] == 1 and cm.matrix[1][1] == 1 and cm.matrix[1][0] == 1
    assert cm.total() == 3                              # (5, 9) has a label outside the list


@pytest.mark.parametrize("seed", range(5))
def test_parity_with_scipy_and_sklearn(seed):
    rng = random.Random(seed)
    y = [rng.randint(1, 5) for _ in range(60)]
    p = [min(5, max(1, v + rng.choice([-2, -1, 0, 0, 1]))) for v in y]
    assert pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0], abs=1e-12)
    assert spearman(y, p) == pytest.approx(stats.spearmanr(y, p)[0], abs=1e-12)
    assert qwk(y, p) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"), abs=1e-12)
    assert qwk(y, p, labels=[1, 2, 3, 4, 5]) == pytest.approx(
        cohen_kappa_score(y, p, labels=[1, 2, 3, 4, 5], weights="quadratic"), abs=1e-12)
    assert confusion(y, p, [1, 2, 3, 4, 5]).matrix == confusion_matrix(y, p, labels=[1, 2, 3, 4, 5]).tolist()
    xs = [rng.gauss(0, 1) for _ in range(40)]
    ys = [x * 0.5 + rng.gauss(0, 1) for x in xs]
    assert pearson(xs, ys) == pytest.approx(stats.pearsonr(xs, ys)[0], abs=1e-12)
    assert spearman(xs, ys) == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-12)
