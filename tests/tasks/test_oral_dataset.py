"""Answer format, prompts, dataset builder, demo dataset, Zhipu export, scorer and CLI."""

import json
from fractions import Fraction as F

import pytest

from glmtune.tasks.oral_reading.answer import comment, format_answer, parse_answer
from glmtune.tasks.oral_reading.build import build_dataset, build_sample, load_inputs
from glmtune.tasks.oral_reading.demo_data import build_demo_dataset, load_passages, token_budget
from glmtune.tasks.oral_reading.prompts import ceil1, floor1
from glmtune.tasks.oral_reading.score import dimension_stats, score_answers, score_files
from glmtune.tasks.oral_reading.zhipu import export, validate_sample

BANDS = {"语速": 5, "停顿": 3, "声母": 3, "韵母": 3, "声调": 3, "完整度": 5}
# 俗话: one initial error (s) and one final error (ua) over 2 syllables in 0.52 s.
SUHUA = ("sil:{0,62,null,62,sil,0.0,null,null,null};俗:{62,98,su2,36,paper,null,null,null,null};"
         "s:{62,88,null,26,paper,0.0,0.0,1.0,3.0};u:{88,98,null,10,paper,0.0,1.0,0.0,1.0};"
         "话:{98,114,hua4,16,paper,null,null,null,null};h:{98,106,null,8,paper,0.0,0.0,0.0,1.0};"
         "ua:{106,114,null,8,paper,0.0,1.0,1.0,3.0}")


def test_answer_format_and_deterministic_comment():
    line = format_answer(BANDS)
    assert line == ("语速:5;停顿:3;声母:3;韵母:3;声调:3;完整度:5;评语:语速不错，但句中有一些不必要的停顿，"
                    "有少许声母韵母错误，部分声调不够准确，完成度很好。希望继续努力~!")
    assert comment(dict.fromkeys(BANDS, 5)).endswith("继续保持！")
    assert comment(dict.fromkeys(BANDS, 1)).endswith("请多听多读，加油！")


def test_parse_answer_variants():
    full = "语速：2；停顿 : 3; 声母:3;韵母：3 ；声调:3;完整度:5;评语：朗读不够流利"
    scores, remark, problem = parse_answer(full)
    assert scores == {"语速": 2, "停顿": 3, "声母": 3, "韵母": 3, "声调": 3, "完整度": 5} and remark == "朗读不够流利"
    assert problem == ""
    # the seed's own example dropped 声调: invalid
    assert parse_answer("语速:2;停顿:3;声母:3;韵母:3;完整度:5;评语:…")[2] == "missing 声调"
    assert "not an integer" in parse_answer("语速:2.5;停顿:3;声母:3;韵母:3;声调:3;完整度:5")[2]
    assert "out of order" in parse_answer("停顿:3;语速:2;声母:3;韵母:3;声调:3;完整度:5")[2]
    assert parse_answer("")[0] is None and parse_answer("语速:6;停顿:3;声母:3;韵母:3;声调:3;完整度:5")[0] is None


def test_display_rounds_towards_the_worse_side():
    assert floor1(F(8996, 100)) == "89.9" and floor1(F(90)) == "90.0"
    assert ceil1(F(301, 100)) == "3.1" and ceil1(F(3)) == "3.0"


def _items(tmp_path):
    src = tmp_path / "ise.jsonl"
    rows = [{"id": "a", "text": "俗话", "ise": SUHUA, "labels": dict(BANDS, 语速=2), "remark": "不错"},
            {"id": "b", "text": "俗话", "ise": SUHUA}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8")
    return load_inputs(src)


def test_build_evidence_and_raw_samples(tmp_path):
    a, b = _items(tmp_path)
    ev = build_sample(a, "evidence", "rubric")
    # 2 syllables, 1 initial and 1 final error → 50% each (band 1); 2 syll / 0.52 s = 230.7/min (5)
    assert ev["rubric"] == {"语速": 5, "停顿": 5, "声母": 1, "韵母": 1, "声调": 5, "完整度": 5}
    user = ev["messages"][1]["content"]
    assert "总字数N=2" in user and "声母错1，正确率50.0%" in user and "语速230.7字/分钟" in user
    assert "句中停顿fil0个，占0.0%" in user and "完整度100.0%" in user
    assert ev["messages"][2]["content"].startswith("语速:5;停顿:5;声母:1;韵母:1;声调:5;完整度:5;评语:")
    teacher = build_sample(a, "raw", "teacher")
    assert teacher["messages"][0]["content"].startswith("你是一个给留学生中文口语打分的国汉老师")
    assert SUHUA in teacher["messages"][1]["content"]  # the user's string verbatim
    assert teacher["messages"][2]["content"] == "语速:2;停顿:3;声母:3;韵母:3;声调:3;完整度:5;评语:不错"
    assert build_sample(b, "raw", "teacher") is None
    report = build_dataset([a, b], tmp_path / "out.jsonl", "evidence", "teacher")
    assert report.written == 1 and report.skipped == ["b"] and report.warnings == {"float_int": 2}
    with pytest.raises(ValueError):
        build_sample(a, "bogus")


def test_demo_dataset_split_by_passage_deterministic_and_short(tmp_path, tiny_glm4):
    from transformers import AutoTokenizer

    paths = build_demo_dataset(tmp_path / "d", n=60, seed=3)
    again = build_demo_dataset(tmp_path / "e", n=60, seed=3)
    assert paths["train"].read_text() == again["train"].read_text()
    train = [json.loads(x) for x in paths["train"].read_text("utf-8").splitlines()]
    test = [json.loads(x) for x in paths["test"].read_text("utf-8").splitlines()]
    assert len(train) + len(test) == 60 and test and train
    passage = (lambda r: r["messages"][1]["content"].splitlines()[0])
    assert not {passage(r) for r in train} & {passage(r) for r in test}
    for r in train + test:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert parse_answer(r["messages"][2]["content"])[0] == r["rubric"]
    raw = build_demo_dataset(tmp_path / "r", n=60, seed=3, mode="raw")
    raw_recs = [json.loads(x) for x in raw["train"].read_text("utf-8").splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_glm4)
    budget = token_budget(tok, raw_recs, train)
    assert budget["evidence"]["max"] <= 900 and budget["raw"]["p50"] > 5 * budget["evidence"]["p50"]
    assert len(load_passages()) == 40


def test_zhipu_validation_and_export(tmp_path):
    good = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                         {"role": "assistant", "content": "a"}]}
    assert validate_sample(good) == []
    assert validate_sample({**good, "id": 1}) == ["extra top-level keys ['id']"]
    bad_role = {"messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "a"}]}
    assert any("role 'bot'" in p for p in validate_sample(bad_role))
    assert validate_sample({"messages": [{"role": "user", "content": "u"}]}) == ["the last message must be the assistant's"]
    assert any("empty" in p for p in validate_sample({"messages": [{"role": "user", "content": " "},
                                                                   {"role": "assistant", "content": "a"}]}))
    assert any("system message" in p for p in validate_sample(
        {"messages": [{"role": "user", "content": "u"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "a"}]}))
    long_ = {"messages": [{"role": "user", "content": "字" * 9000}, {"role": "assistant", "content": "a"}]}
    assert any("per-sample limit 8192" in p for p in validate_sample(long_))
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({**good, "id": "x", "rubric": {}}) + "\n" + json.dumps(long_) + "\n{oops\n", "utf-8")
    rep = export(src, tmp_path / "z.jsonl")
    assert rep.written == 1 and len(rep.problems) == 2 and rep.problems[0].startswith(f"{src}:2:")
    assert json.loads((tmp_path / "z.jsonl").read_text()) == good


def test_dimension_stats_hand_worked():
    s = dimension_stats([1, 3, 5, 5], [1, 3, 3, None])
    assert s["exact"] == 0.5 and s["n_valid"] == 3 and s["mae"] == pytest.approx(0.6667)
    assert s["confusion"][4][2] == 1 and s["confusion"][0][0] == 1
    # constant prediction: PCC/SCC undefined → None, never NaN
    c = dimension_stats([1, 3, 5], [3, 3, 3])
    assert c["pearson"] is None and c["spearman"] is None and c["exact"] == pytest.approx(0.3333)
    assert dimension_stats([3, 3], [3, 3])["qwk"] is None
    perfect = dimension_stats([1, 3, 5], [1, 3, 5])
    assert perfect["pearson"] == perfect["spearman"] == perfect["qwk"] == 1.0


def test_score_answers_and_files(tmp_path):
    labels = [BANDS, dict(BANDS, 语速=1), dict(BANDS, 语速=3)]
    answers = [format_answer(BANDS), "语速:3;停顿:3;声母:3;韵母:3;声调:3;完整度:5", "胡言乱语"]
    rep = score_answers(answers, labels, rubric=labels)
    assert rep["format_valid_rate"] == pytest.approx(0.6667)
    assert rep["dimensions"]["语速"]["exact"] == pytest.approx(0.3333)
    assert rep["baselines"]["rubric"]["语速"]["exact"] == 1.0
    assert rep["baselines"]["constant"]["停顿"]["value"] == 3 and rep["baselines"]["constant"]["停顿"]["exact"] == 1.0
    ref = tmp_path / "ref.jsonl"
    pred = tmp_path / "pred.jsonl"
    ref.write_text("\n".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": "q"},
                                                                     {"role": "assistant", "content": format_answer(lab)}],
                                         "rubric": lab}, ensure_ascii=False) for i, lab in enumerate(labels)), "utf-8")
    pred.write_text("\n".join(json.dumps({"id": str(i), "prediction": a}, ensure_ascii=False)
                              for i, a in reversed(list(enumerate(answers)))), "utf-8")
    assert score_files(pred, ref)["dimensions"] == rep["dimensions"]


def test_cli_end_to_end(tmp_path, capsys):
    from glmtune.cli import main

    assert main(["oral", "synth", "--n", "12", "--seed", "1", "--out", str(tmp_path / "s"), "--xml"]) == 0
    xml = sorted((tmp_path / "s" / "xml").iterdir())[0]
    capsys.readouterr()
    assert main(["oral", "metrics", str(xml), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # synth writes ISE-style scores into the XML, so the recomputation must agree with them
    assert shown["ise_style"] == pytest.approx(shown["ise_reported"]) and set(shown["bands"]) == set(BANDS)
    assert main(["oral", "build", str(tmp_path / "s" / "ise.jsonl"), "--out", str(tmp_path / "b.jsonl"),
                 "--mode", "raw", "--zhipu", str(tmp_path / "z.jsonl")]) == 0
    assert len((tmp_path / "z.jsonl").read_text("utf-8").splitlines()) == 12
    ref = tmp_path / "s" / "train.jsonl"
    assert main(["oral", "score", "--pred", str(ref), "--ref", str(ref), "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text("utf-8"))
    assert report["format_valid_rate"] == 1.0
    assert all(d["exact"] == 1.0 for d in report["dimensions"].values())
