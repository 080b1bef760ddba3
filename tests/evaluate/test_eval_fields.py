"""Structured answers: parsing (full-width separators, comments with separators, junk), the YAML spec,
and the per-field metrics on a predictions file that contains invalid lines."""

import json

import pytest

from glmtune.evaluate.fields import FieldSpec, parse_answer, score_fields

ORAL = FieldSpec.builtin("oral")
REF = "语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:读得流利"


def test_valid_answer_halfwidth_and_fullwidth():
    a = parse_answer(REF, ORAL)
    assert a.valid and a.values == {"语速": 3, "停顿": 4, "声母": 5, "韵母": 2, "声调": 1, "完整度": 5, "评语": "读得流利"}
    b = parse_answer("语速：3；停顿：4；声母:5;韵母:2;声调:1;完整度:5;评语：读得流利；", ORAL)
    assert b.valid and b.values == a.values           # full-width separators, trailing separator tolerated


def test_comment_may_contain_separators_and_field_words():
    a = parse_answer("语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:语速很快;注意:停顿", ORAL)
    assert a.valid and a.values["评语"] == "语速很快;注意:停顿"


@pytest.mark.parametrize("text,error", [
    ("", "empty answer"),
    ("我觉得读得很好", "no field found"),
    ("评分如下 语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "unexpected text before the first field: '评分如下'"),
    ("语速:6;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "语速: 6 not in allowed values [1, 2, 3, 4, 5]"),
    ("语速:三;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "语速: '三' is not int"),
    ("语速:3;语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "field 语速 appears more than once"),
    ("语速:3 停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "missing pair separator before 停顿"),
    ("语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5", "missing field 评语"),
])
def test_invalid_answers_say_why(text, error):
    a = parse_answer(text, ORAL)
    assert not a.valid and error in a.errors


def test_yaml_spec(tmp_path):
    p = tmp_path / "essay.yaml"
    p.write_text("name: essay\npair_separators: ['|']\nkv_separators: ['=']\nfields:\n"
                 "  - {name: grade, type: str, allowed: [A, B, C]}\n  - {name: score, type: float}\n  - words\n",
                 encoding="utf-8")
    spec = FieldSpec.load(p)
    assert spec.name == "essay" and [f.type for f in spec.fields] == ["str", "float", "str"]
    a = parse_answer("grade=B | score=7.5 | words=short", spec)
    assert a.valid and a.values == {"grade": "B", "score": 7.5, "words": "short"}
    assert "grade: D not in allowed values ['A', 'B', 'C']" in parse_answer("grade=D|score=1|words=x", spec).errors
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields:\n  - {name: a, kind: int}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.yaml"):
        FieldSpec.load(bad)
    with pytest.raises(FileNotFoundError):
        FieldSpec.load(tmp_path / "nope.yaml")


def test_predictions_file_with_invalid_lines(tmp_path):
    """Six predictions against six references; worked by hand below."""
    refs = ["语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好",
            "语速:1;停顿:2;声母:3;韵母:4;声调:5;完整度:5;评语:好",
            "语速:5;停顿:5;声母:5;韵母:5;声调:5;完整度:4;评语:好",
            "语速:2;停顿:2;声母:2;韵母:2;声调:2;完整度:3;评语:差",
            "语速:4;停顿:3;声母:2;韵母:1;声调:2;完整度:5;评语:好",
            "语速:3;停顿:3;声母:3;韵母:3;声调:3;完整度:5;评语:好"]
    preds = ["语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好",      # valid, all exact
             "语速:2;停顿:2;声母:3;韵母:4;声调:5;完整度:5;评语:好",      # valid, 语速 off by 1
             "语速：5；停顿：5；声母：5；韵母：5；声调：5；完整度：4；评语：好",  # valid (full-width)
             "语速:9;停顿:2",                                           # invalid: 9 not allowed, fields missing
             "",                                                        # empty
             "这段朗读不错"]                                             # no fields at all
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"prediction": p, "reference": r}, ensure_ascii=False) + "\n"
                            for p, r in zip(preds, refs)), encoding="utf-8")
    rows = [json.loads(x) for x in path.read_text("utf-8").splitlines()]
    s = score_fields([r["prediction"] for r in rows], [r["reference"] for r in rows], ORAL)
    assert s["n"] == 6 and s["valid"] == 3 and s["format_validity"] == pytest.approx(0.5)
    assert s["invalid_references"] == 0
    assert s["errors"]["empty answer"] == 1 and s["errors"]["no field found"] == 1
    assert s["errors"]["语速: value not in allowed values"] == 1
    sp = s["fields"]["语速"]
    # 语速 pairs where the prediction parsed: (3,3) (1,2) (5,5); line 4's 9 is not allowed -> missing
    assert (sp["n"], sp["n_pairs"]) == (6, 3) and sp["coverage"] == pytest.approx(0.5)
    assert sp["exact_match"] == pytest.approx(2 / 6)      # missing predictions count as wrong
    assert sp["mae"] == pytest.approx(1 / 3)
    # Pearson of ref [3,1,5] vs pred [3,2,5]: means 3 and 10/3; sxy = 0*(-1/3) + (-2)(-4/3) + 2(5/3) = 6
    # sxx = 8, syy = 1/9 + 16/9 + 25/9 = 42/9 -> r = 6 / sqrt(8 * 42/9)
    assert sp["pearson"] == pytest.approx(6 / (8 * 42 / 9) ** 0.5)
    assert sp["spearman"] == pytest.approx(1.0)            # same order
    # QWK on labels 1..5 (indices 0..4): O has (3,3) (1,2) (5,5); observed = (0-1)^2 * 1 = 1
    # rows: 1,3,5 once each; cols: 2,3,5 once each; expected = sum (i-j)^2 r_i c_j / 3 over
    # i in {0,2,4}, j in {1,2,4}: (1+4+16 + 1+0+4 + 9+4+0) / 3 = 39/3 = 13 -> kappa = 1 - 1/13
    assert sp["qwk"] == pytest.approx(1 - 1 / 13)
    assert sp["confusion"]["labels"] == [1, 2, 3, 4, 5]
    assert sp["confusion"]["matrix"][0][1] == 1 and sum(map(sum, sp["confusion"]["matrix"])) == 3
    assert s["fields"]["评语"]["exact_match"] == pytest.approx(3 / 6) and "qwk" not in s["fields"]["评语"]
    assert s["fields"]["完整度"]["confusion"]["labels"] == [1, 2, 3, 4, 5]
    # a field without an allowed list: the confusion matrix is over the observed labels
    open_spec = FieldSpec.from_dict({"fields": [{"name": "完整度", "type": "int"}]})
    o = score_fields([p.split("评语")[0] for p in preds], [r.split("评语")[0] for r in refs], open_spec)
    assert o["fields"]["完整度"]["confusion"]["labels"] == [4, 5]
    assert [x["valid"] for x in s["per_sample"]] == [True, True, True, False, False, False]


def test_oral_spec_bands_completeness_like_the_task_parser():
    from glmtune.tasks.oral_reading.answer import parse_answer as task_parse

    for text in ("语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:5;评语:好", "语速:3;停顿:4;声母:5;韵母:2;声调:1;完整度:7;评语:好"):
        assert parse_answer(text, ORAL).valid == (task_parse(text)[0] is not None), text
