"""The bar a fine-tuned grader must beat: a small learner from the computed metrics to the teacher labels.

`glmtune oral baseline DATA` reads the same inputs as `oral build` (a JSONL of `{id, text, ise, labels}`
or a folder + label file), computes each item's metrics with the rubric engine (the evidence the
`evidence` prompt shows), and fits one scikit-learn classifier per dimension on them:

- `logistic` (default): standardised features → multinomial logistic regression;
- `boosting`: histogram gradient boosting (depth 3).

Predictions are out-of-fold: `GroupKFold` by passage text, so an item is always predicted by a model
that never saw its passage (the same rule the demo split and docs/oral_scoring_spec.md §6 use). Each
dimension is then scored (exact, within ±1, MAE, QWK, Spearman; statistics from
`glmtune.evaluate.agreement`) for four systems on the same items:

- `learner`: the out-of-fold predictions above;
- `rubric`: the engine's bands (§4), which only use 5/3/1;
- `constant`: the modal label of the training folds (the same per-fold rule as the learner);
- `tuned`: a fine-tuned model's answers, given `--pred predictions.jsonl` (joined by id; every system is
  then scored on the predicted items only).

Why hand-written around sklearn: sklearn has the learners and `GroupKFold`; the per-dimension loop,
the per-fold constant and the join with model answers are this task's own.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from glmtune.tasks.oral_reading.rubric import DIMENSIONS, OralMetrics, compute_metrics

LEARNERS = ("logistic", "boosting")
SYSTEMS = ("learner", "rubric", "constant", "tuned")
FEATURES = ("acc_initial", "acc_final", "acc_tone", "acc_segmental", "rate_per_min", "pause_ratio",
            "completeness", "omit_share", "sub_share", "ins_share", "rep_share", "fil_lead", "fil_trail", "n",
            "ise_phone_style", "ise_tone_style")


def features(m: OralMetrics) -> list[float]:
    """The evidence features of one item, in `FEATURES` order (shares are per reference syllable)."""
    n = m.n or 1
    return [float(m.acc_initial), float(m.acc_final), float(m.acc_tone), float(m.acc_segmental),
            float(m.rate_per_min), float(m.pause_ratio), float(m.completeness), m.n_omit / n, m.n_sub / n,
            m.n_ins / n, m.n_rep / n, float(m.f_lead), float(m.f_trail), float(m.n),
            m.ise_style.get("phone_score", 0.0), m.ise_style.get("tone_score", 0.0)]


def _model(learner: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if learner == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    if learner == "boosting":
        return HistGradientBoostingClassifier(max_depth=3, max_iter=100, learning_rate=0.1, random_state=seed)
    raise ValueError(f"learner must be one of {LEARNERS}, got {learner!r}")


def out_of_fold(x: list[list[float]], y: list[int], groups: list[str], learner: str = "logistic", k: int = 5,
                seed: int = 0) -> tuple[list[int], list[int], int]:
    """(learner predictions, per-fold constant predictions, folds used), each item predicted by a model
    fitted on the other passages only. A training fold with a single label predicts that label."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"grouped k-fold needs at least 2 passages, got {n_groups}")
    folds = min(k, n_groups)
    xa, ya = np.asarray(x, dtype=float), np.asarray(y)
    pred, const = [0] * len(y), [0] * len(y)
    for train, test in GroupKFold(n_splits=folds).split(xa, ya, groups):
        mode = Counter(ya[train].tolist()).most_common(1)[0][0]
        for i in test:
            const[i] = int(mode)
        if len(set(ya[train].tolist())) == 1:
            out = [mode] * len(test)
        else:
            out = _model(learner, seed).fit(xa[train], ya[train]).predict(xa[test]).tolist()
        for i, p in zip(test, out):
            pred[i] = int(p)
    return pred, const, folds


def stats(y_true: list[int], y_pred: list[int | None]) -> dict:
    """exact / within ±1 (invalid answers are misses) and MAE / QWK / Spearman / Pearson on valid pairs."""
    from glmtune.tasks.oral_reading.score import dimension_stats

    s = dimension_stats(y_true, y_pred)
    s["within1"] = (round(sum(p is not None and abs(t - p) <= 1 for t, p in zip(y_true, y_pred)) / len(y_true), 4)
                    if y_true else None)
    return s


def _tuned_answers(path: Path) -> dict[str, dict[str, int] | None]:
    from glmtune.tasks.oral_reading.answer import parse_answer
    from glmtune.tasks.oral_reading.score import _prediction_text

    out = {}
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if line.strip():
            obj = json.loads(line)
            if "id" not in obj:
                from glmtune.tasks.oral_reading.records import OralInputError

                raise OralInputError(f"{path}:{n}: a prediction without an id cannot be joined to the data")
            text = _prediction_text(obj)
            out[str(obj["id"])] = parse_answer(text)[0] if text else None
    return out


def run_baseline(items: list, k: int = 5, learner: str = "logistic", seed: int = 0,
                 pred_path: Path | None = None) -> dict:
    """The report: per dimension and system, the agreement with the teacher labels; plus the learner's
    out-of-fold predictions by id (for `oral score --baseline`)."""
    labelled = [it for it in items if it.labels and all(d in it.labels for d in DIMENSIONS)]
    if len(labelled) < 2:
        from glmtune.tasks.oral_reading.records import OralInputError

        raise OralInputError(f"the baseline needs teacher labels: {len(labelled)} of {len(items)} items have all six")
    metrics = [compute_metrics(it.record, it.text) for it in labelled]
    x = [features(m) for m in metrics]
    groups = [it.text or it.id for it in labelled]
    ids = [it.id for it in labelled]
    report: dict = {"n_items": len(items), "n_labelled": len(labelled), "learner": learner, "features": list(FEATURES),
                    "passages": len(set(groups)), "label_scale": dict(sorted(Counter(
                        v for it in labelled for v in it.labels.values()).items())), "dimensions": {},
                    "predictions": {i: {} for i in ids}}
    tuned = _tuned_answers(pred_path) if pred_path else None
    keep = [i for i, item_id in enumerate(ids) if tuned is None or item_id in tuned]
    if tuned is not None:
        report["tuned_file"] = str(pred_path)
        report["tuned_items"] = len(keep)
        report["tuned_unmatched"] = sum(1 for t in tuned if t not in set(ids))
        if not keep:
            from glmtune.tasks.oral_reading.records import OralInputError

            raise OralInputError(f"{pred_path}: no prediction id matches an item of the data")
    for d in DIMENSIONS:
        y = [it.labels[d] for it in labelled]
        pred, const, folds = out_of_fold(x, y, groups, learner, k, seed)
        report["folds"] = folds
        for item_id, p in zip(ids, pred):
            report["predictions"][item_id][d] = p
        yk = [y[i] for i in keep]
        systems = {"learner": [pred[i] for i in keep], "rubric": [metrics[i].bands[d] for i in keep],
                   "constant": [const[i] for i in keep]}
        if tuned is not None:
            systems["tuned"] = [(tuned[ids[i]] or {}).get(d) for i in keep]
        report["dimensions"][d] = {name: stats(yk, p) for name, p in systems.items()}
    report["n_scored"] = len(keep)
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> dict:
    """Mean over the six dimensions of exact and QWK per system (None-safe)."""
    out = {}
    for name in SYSTEMS:
        rows = [report["dimensions"][d].get(name) for d in DIMENSIONS]
        if any(r is None for r in rows):
            continue
        mean = (lambda key: round(sum(r[key] or 0.0 for r in rows) / len(rows), 4))
        out[name] = {"exact": mean("exact"), "qwk": mean("qwk"), "within1": mean("within1")}
    return out


def verdict(sm: dict) -> str:
    """One line on what to conclude from the mean exact/QWK per system (`summary`): the bar is the better
    (by QWK) of the metrics-only learner and the rubric formula; the tuned model must beat it."""
    learner, rubric = sm["learner"], sm["rubric"]
    best = max(("learner", learner), ("rubric", rubric), key=lambda kv: (kv[1]["qwk"], kv[1]["exact"]))
    tuned = sm.get("tuned")
    if tuned is None:
        return (f"the bar a tuned model must beat is the {best[0]} (mean exact {best[1]['exact']:.2f}, QWK "
                f"{best[1]['qwk']:.2f}; learner {learner['exact']:.2f} / {learner['qwk']:.2f}, rubric "
                f"{rubric['exact']:.2f} / {rubric['qwk']:.2f})")
    if tuned["qwk"] > best[1]["qwk"] and tuned["exact"] >= best[1]["exact"]:
        return (f"the tuned model beats the best bar ({best[0]}): mean QWK {tuned['qwk']:.2f} vs {best[1]['qwk']:.2f}, "
                f"exact {tuned['exact']:.2f} vs {best[1]['exact']:.2f}: it adds something the metrics alone do not")
    return (f"the tuned model does not beat the {best[0]} bar (mean QWK {tuned['qwk']:.2f} vs {best[1]['qwk']:.2f}, "
            f"exact {tuned['exact']:.2f} vs {best[1]['exact']:.2f}): use the {best[0]} scores, and the model for the "
            "评语 only, until a tuned model beats it")


def holdout_predictions(train_items: list, test_items: list, labels_of, learner: str = "logistic",
                        seed: int = 0) -> list[dict[str, int]]:
    """Fit the learner on `train_items` (labels from `labels_of(item)`) and predict `test_items`, per
    dimension: the baseline on a fixed split, e.g. the demo's held-out passages."""
    import numpy as np

    xtr = np.asarray([features(compute_metrics(it.record, it.text)) for it in train_items], dtype=float)
    xte = np.asarray([features(compute_metrics(it.record, it.text)) for it in test_items], dtype=float)
    out: list[dict[str, int]] = [{} for _ in test_items]
    for d in DIMENSIONS:
        y = [labels_of(it)[d] for it in train_items]
        if len(set(y)) == 1:
            pred = [y[0]] * len(test_items)
        else:
            pred = _model(learner, seed).fit(xtr, y).predict(xte).tolist()
        for row, p in zip(out, pred):
            row[d] = int(p)
    return out
