"""Task scorer: model answers vs labels, per dimension, with two baselines (§5-6).

Per dimension: exact match, MAE, Pearson (PCC), Spearman (SCC), quadratic-weighted kappa (QWK,
sklearn) and the 5×5 confusion matrix (rows = label 1..5, columns = prediction 1..5). Also the
format-validity rate (`answer.parse_answer`: six integer fields in order).
Invalid answers count as misses in `exact`; correlation-type statistics use the valid pairs only.
Undefined statistics (constant inputs, fewer than 2 pairs) are None, never NaN, never a crash.
Baselines on the same items: `rubric` (the engine's bands, from the reference records' `rubric`
key), `constant` (the modal label of each dimension) and, given the out-of-fold predictions of
`oral baseline` (`learner={id: {dimension: label}}`), `learner`: the metrics-only model a tuned
model must beat (an item it has no prediction for counts as a miss).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from glmtune.tasks.oral_reading.answer import parse_answer
from glmtune.tasks.oral_reading.rubric import DIMENSIONS

SCALE = (1, 2, 3, 4, 5)


def _clean(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def dimension_stats(y_true: list[int], y_pred: list[int | None]) -> dict:
    """Agreement on one dimension; statistics come from `glmtune.evaluate.agreement` (one implementation
    for every report). Invalid answers (None) are misses in `exact`; the other statistics use valid pairs."""
    from glmtune.evaluate import agreement as ag

    pairs = [(t, p) for t, p in zip(y_true, y_pred) if p is not None]
    t, p = [a for a, _ in pairs], [b for _, b in pairs]
    cm = ag.confusion(t, p, labels=list(SCALE))
    return {
        "n": len(y_true),
        "n_valid": len(pairs),
        "exact": _clean(ag.exact_match(y_true, y_pred)),
        "mae": _clean(ag.mae(t, p)),
        "pearson": _clean(ag.pearson(t, p)),
        "spearman": _clean(ag.spearman(t, p)),
        "qwk": _clean(ag.qwk(t, p, labels=list(SCALE))) if len(pairs) >= 2 else None,
        "confusion": cm.matrix if cm else [[0] * len(SCALE) for _ in SCALE],
    }


def score_answers(answers: list[str | None], labels: list[dict[str, int]],
                  rubric: list[dict[str, int]] | None = None, learner: list[dict[str, int] | None] | None = None) -> dict:
    parsed = [parse_answer(a) if a is not None else (None, None, "no prediction") for a in answers]
    valid = [p[0] for p in parsed]
    report: dict = {
        "n": len(labels),
        "format_valid_rate": _clean(sum(v is not None for v in valid) / len(labels)) if labels else None,
        "invalid_examples": [p[2] for p in parsed if p[0] is None][:10],
        "dimensions": {},
        "baselines": {"constant": {}, "rubric": {}},
    }
    for d in DIMENSIONS:
        y = [lab[d] for lab in labels]
        report["dimensions"][d] = dimension_stats(y, [v[d] if v else None for v in valid])
        mode = Counter(y).most_common(1)[0][0] if y else None
        report["baselines"]["constant"][d] = dimension_stats(y, [mode] * len(y))
        report["baselines"]["constant"][d]["value"] = mode
        if rubric is not None:
            report["baselines"]["rubric"][d] = dimension_stats(y, [r.get(d) if r else None for r in rubric])
        if learner is not None:
            report["baselines"].setdefault("learner", {})[d] = dimension_stats(y, [r.get(d) if r else None
                                                                                 for r in learner])
    if learner is not None:
        report["baselines"]["learner_missing"] = sum(r is None for r in learner)
    if rubric is None:
        report["baselines"].pop("rubric")
    return report


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


def _prediction_text(obj: dict) -> str | None:
    for k in ("prediction", "predict", "output", "response", "answer", "generated"):
        if isinstance(obj.get(k), str):
            return obj[k]
    msgs = obj.get("messages")
    if isinstance(msgs, list) and msgs and msgs[-1].get("role") == "assistant":
        return msgs[-1].get("content")
    return None


def _reference(obj: dict) -> tuple[dict[str, int] | None, dict[str, int] | None]:
    from glmtune.tasks.oral_reading.build import _labels_from

    labels, _ = _labels_from(obj)
    if labels is None:
        msgs = obj.get("messages") or []
        if msgs and msgs[-1].get("role") == "assistant":
            labels, _, _ = parse_answer(msgs[-1]["content"])
    return labels, obj.get("rubric")


def score_files(pred_path: Path, ref_path: Path, learner: dict[str, dict[str, int]] | None = None) -> dict:
    """Join predictions and references by `id` (else by line order) and score them; `learner`: the
    baseline's predictions by id, scored as one more baseline."""
    preds, refs = _read_jsonl(pred_path), _read_jsonl(ref_path)
    by_id = {str(p["id"]): p for p in preds if "id" in p}
    answers, labels, rubric, unlabeled, ref_ids = [], [], [], 0, []
    for i, ref in enumerate(refs):
        lab, rub = _reference(ref)
        if lab is None or any(d not in lab for d in DIMENSIONS):
            unlabeled += 1
            continue
        pred = by_id.get(str(ref.get("id"))) if by_id else (preds[i] if i < len(preds) else None)
        answers.append(_prediction_text(pred) if pred else None)
        labels.append(lab)
        rubric.append(rub)
        ref_ids.append(str(ref.get("id")))
    base = [learner.get(i) for i in ref_ids] if learner is not None else None
    report = score_answers(answers, labels, rubric if all(r is not None for r in rubric) and rubric else None, base)
    report["unlabeled_refs"] = unlabeled
    return report
