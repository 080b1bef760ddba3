"""`glmtune oral baseline`: metrics -> teacher labels with scikit-learn, k-fold by passage, four systems."""

import json
import os
import random
import subprocess
import sys

import pytest

from glmtune.tasks.oral_reading.answer import format_answer
from glmtune.tasks.oral_reading.baseline import out_of_fold, run_baseline, stats, verdict
from glmtune.tasks.oral_reading.demo_data import demo_items
from glmtune.tasks.oral_reading.rubric import DIMENSIONS


def test_stats_within_one_counts_invalid_answers_as_misses():
    s = stats([1, 3, 5, 4], [2, 5, None, 4])
    assert s["within1"] == 0.5 and s["exact"] == 0.25 and s["n_valid"] == 3
    assert s["mae"] == pytest.approx((1 + 2 + 0) / 3, abs=1e-4)


def test_folds_are_grouped_by_passage_so_a_passage_cannot_be_memorised():
    # every passage has its own feature value and its own random label: only memorising the passage
    # predicts the label. Grouped folds never see the passage they predict, so they cannot.
    rng = random.Random(0)
    groups, x, y = [], [], []
    for g in range(30):
        label = rng.choice([1, 2, 3, 4, 5])
        for _ in range(6):
            groups.append(f"p{g}")
            x.append([float(g), rng.random()])
            y.append(label)
    pred, const, folds = out_of_fold(x, y, groups, "boosting", k=5)
    exact = sum(p == t for p, t in zip(pred, y)) / len(y)
    assert folds == 5 and exact < 0.5
    # a leaky split (items of one passage on both sides) would memorise: the same learner, fitted on all
    from sklearn.ensemble import HistGradientBoostingClassifier

    leaky = HistGradientBoostingClassifier(max_depth=3, random_state=0).fit(x, y).predict(x)
    assert sum(p == t for p, t in zip(leaky, y)) / len(y) > 0.9
    # the constant is each training fold's mode
    assert set(const) <= set(y)


def test_learner_recovers_labels_that_follow_the_metrics():
    items = demo_items(120, 3)
    for it in items:  # labels = the rubric bands: a function of the features, so learnable
        from glmtune.tasks.oral_reading.rubric import compute_metrics

        it.labels = compute_metrics(it.record, it.text).bands
    rep = run_baseline(items, k=5)
    assert rep["passages"] > 5 and rep["folds"] == 5
    for d in DIMENSIONS:
        assert rep["dimensions"][d]["rubric"]["exact"] == 1.0
        assert rep["dimensions"][d]["learner"]["exact"] >= 0.8, d
    assert set(rep["predictions"]) == {it.id for it in items}


def test_teacher_like_labels_use_the_whole_scale_and_follow_the_metrics():
    items = demo_items(240, 0, labels="teacher")
    values = [v for it in items for v in it.labels.values()]
    share_2_4 = sum(v in (2, 4) for v in values) / len(values)
    assert set(values) == {1, 2, 3, 4, 5} and 0.3 < share_2_4 < 0.7
    assert items[0].labels == demo_items(1, 0, labels="teacher")[0].labels  # deterministic
    rep = run_baseline(items)
    for d in DIMENSIONS:
        # noisy but related: the learner beats the constant, nobody is perfect
        learner, const = rep["dimensions"][d]["learner"], rep["dimensions"][d]["constant"]
        assert learner["qwk"] > 0.2 and learner["exact"] < 0.8 and const["qwk"] in (0.0, None)


def test_tuned_predictions_are_scored_on_their_items_and_the_verdict_follows(tmp_path):
    items = demo_items(80, 1, labels="teacher")
    test_ids = {it.id for it in items[:30]}
    perfect = tmp_path / "perfect.jsonl"
    perfect.write_text("\n".join(json.dumps({"id": it.id, "prediction": format_answer(it.labels)}, ensure_ascii=False)
                                 for it in items[:30]), "utf-8")
    rep = run_baseline(items, pred_path=perfect)
    assert rep["n_scored"] == 30 == rep["tuned_items"] and rep["tuned_unmatched"] == 0
    assert all(rep["dimensions"][d]["tuned"]["exact"] == 1.0 for d in DIMENSIONS)
    sm = rep["summary"]
    assert verdict(sm).startswith("the tuned model beats")
    flat = tmp_path / "flat.jsonl"
    flat.write_text("\n".join(json.dumps({"id": i, "prediction": "语速:3;停顿:3;声母:3;韵母:3;声调:3;完整度:3"})
                              for i in sorted(test_ids)) + "\n" + json.dumps({"id": "nope", "prediction": "x"}), "utf-8")
    rep = run_baseline(items, pred_path=flat)
    sm = rep["summary"]
    assert rep["tuned_unmatched"] == 1 and "does not beat" in verdict(sm)


def test_baseline_without_teacher_labels_is_a_clear_error():
    from glmtune.config.load import ConfigError

    with pytest.raises(ConfigError, match="needs teacher labels: 0 of 5"):
        run_baseline(demo_items(5, 0))


def test_cli_synth_baseline_and_score_side_by_side(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = (lambda *a: subprocess.run([sys.executable, "-m", "glmtune", "oral", *a], capture_output=True, text=True,
                                     env=env, timeout=300))
    p = run("synth", "--n", "60", "--seed", "2", "--labels", "teacher", "--out", str(tmp_path / "s"))
    assert p.returncode == 0, p.stderr
    first = json.loads((tmp_path / "s" / "ise.jsonl").read_text("utf-8").splitlines()[0])
    assert set(first["labels"]) == set(DIMENSIONS)
    p = run("baseline", str(tmp_path / "s" / "ise.jsonl"), "--k", "3", "--json", str(tmp_path / "b.json"))
    assert p.returncode == 0, p.stderr
    assert "3-fold by passage" in p.stdout and "conclusion: the bar a tuned model must beat is the" in p.stdout
    for system in ("learner", "rubric", "constant"):
        assert system in p.stdout
    report = json.loads((tmp_path / "b.json").read_text("utf-8"))
    test = tmp_path / "s" / "test.jsonl"
    # the tuned "model" here answers with the reference itself: the learner column must sit next to it
    p = run("score", "--pred", str(test), "--ref", str(test), "--baseline", str(tmp_path / "b.json"),
            "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    scored = json.loads((tmp_path / "r.json").read_text("utf-8"))
    assert "learner" in p.stdout and scored["baselines"]["learner_missing"] == 0
    ids = [json.loads(x)["id"] for x in test.read_text("utf-8").splitlines()]
    labels = [json.loads(x) for x in test.read_text("utf-8").splitlines()]
    from glmtune.tasks.oral_reading.answer import parse_answer

    y = [parse_answer(r["messages"][-1]["content"])[0]["语速"] for r in labels]
    expect = sum(report["predictions"][i]["语速"] == t for i, t in zip(ids, y)) / len(ids)
    assert scored["baselines"]["learner"]["语速"]["exact"] == pytest.approx(expect, abs=1e-4)
    # a file that is not a baseline report: one line, exit 2
    p = run("score", "--pred", str(test), "--ref", str(test), "--baseline", str(test))
    assert p.returncode == 2 and "not an `oral baseline --json` report" in p.stderr


def test_demo_report_puts_the_learner_next_to_the_tuned_model(tmp_path):
    from glmtune.tasks.oral_reading.demo_report import _conclusion, _learner_predictions
    from glmtune.tasks.oral_reading.demo_data import build_demo_dataset
    from glmtune.tasks.oral_reading.score import score_answers

    files = build_demo_dataset(tmp_path / "d", n=240, seed=0)
    test = [json.loads(x) for x in files["test"].read_text("utf-8").splitlines()]
    learner = _learner_predictions(files, [r["id"] for r in test], seed=0)
    labels = [r["rubric"] for r in test]
    assert learner is not None and len(learner) == len(test)
    # rubric labels are a function of the metrics: the learner gets most of them from the training passages
    rep = score_answers([format_answer(lab) for lab in labels], labels, rubric=labels, learner=learner)
    assert all(rep["baselines"]["learner"][d]["exact"] >= 0.7 for d in DIMENSIONS)
    assert _conclusion(rep).startswith("the tuned model")  # a perfect "tuned model" ties the rubric: no win
    flat = score_answers(["语速:3;停顿:3;声母:3;韵母:3;声调:3;完整度:3"] * len(test), labels, rubric=labels,
                         learner=learner)
    assert "does not beat the rubric bar" in _conclusion(flat)
