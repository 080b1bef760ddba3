"""Issue 15: the recipe on inputs shaped like the real ISE data (one test per row of the issue's table).

Every input here is hand-made in the shape of the real files: an iFlytek ISE `read_sentence` XML result
(the WebAPI layout: xml_result > read_sentence > rec_paper > read_sentence > sentence > word > syll >
phone), a rejected one, the flattener's TSV, a plain text file, XML after `sid:… 最终识别结果` log lines,
a truncated XML, an .xlsx, the legacy 6-field string with its `{{流畅度分:…,总分【模型回归】:…}` score
block and empty fields, a recording where nothing was read.
"""

import json

import pytest

from glmtune.config.load import ConfigError
from glmtune.tasks.oral_reading.answer import comment, format_answer, parse_answer
from glmtune.tasks.oral_reading.build import Item, build_dataset, build_sample, load_inputs
from glmtune.tasks.oral_reading.parse_compact import parse_compact
from glmtune.tasks.oral_reading.parse_xml import parse_any
from glmtune.tasks.oral_reading.rubric import compute_metrics


def _phone(beg, end, content, is_yun, perr, level=1, tone=None, dp=0):
    pos = f'beg_pos="{beg}" ' if beg is not None else ""
    end_ = f'end_pos="{end}" ' if end is not None else ""
    tl = f'time_len="{end - beg}" ' if beg is not None else ""
    mono = f'mono_tone="{tone}" ' if tone else ""
    lvl = f'perr_level_msg="{level}" ' if level is not None else ""
    return (f'<phone {pos}content="{content}" dp_message="{dp}" {end_}is_yun="{is_yun}" {mono}{lvl}'
            f'perr_msg="{perr}" rec_node_type="paper" {tl}></phone>')


def ise_xml(rejected=False, except_info="0", phone_score=None, tone_score=None):
    """你好吗 read with one final error on 好 (ao perr 1), after a leading sil and a fil before 吗.

    Recomputed by §2.9: phone_score = 5 correct of 6 phones = 83.333333, tone_score = 3/3 = 100.
    """
    ph = 83.333333 if phone_score is None else phone_score
    to = 100.0 if tone_score is None else tone_score
    sylls = (
        '<word beg_pos="0" content="你" end_pos="60" symbol="ni3" time_len="60">'
        '<syll beg_pos="0" content="sil" dp_message="0" end_pos="40" rec_node_type="sil" time_len="40">'
        '<phone beg_pos="0" content="sil" dp_message="0" end_pos="40" rec_node_type="sil" time_len="40"></phone></syll>'
        '<syll beg_pos="40" content="你" dp_message="0" end_pos="60" rec_node_type="paper" symbol="ni3" time_len="20">'
        + _phone(40, 48, "n", 0, 0) + _phone(48, 60, "i", 1, 0, tone="TONE3") + "</syll></word>"
        '<word beg_pos="60" content="好" end_pos="90" symbol="hao3" time_len="30">'
        '<syll beg_pos="60" content="好" dp_message="0" end_pos="90" rec_node_type="paper" symbol="hao3" time_len="30">'
        + _phone(60, 70, "h", 0, 0) + _phone(70, 90, "ao", 1, 1, level=3, tone="TONE3") + "</syll></word>"
        '<word beg_pos="90" content="吗" end_pos="130" symbol="ma5" time_len="40">'
        '<syll beg_pos="90" content="fil" dp_message="32" end_pos="105" rec_node_type="fil" time_len="15">'
        '<phone beg_pos="90" content="fil" dp_message="32" end_pos="105" rec_node_type="fil" time_len="15"></phone></syll>'
        '<syll beg_pos="105" content="吗" dp_message="0" end_pos="130" rec_node_type="paper" symbol="ma0" time_len="25">'
        + _phone(105, 112, "m", 0, 0) + _phone(112, 130, "a", 1, 0, tone="TONE0") + "</syll></word>")
    top = (f'accuracy_score="0.000000" beg_pos="0" content="你好吗？" emotion_score="0.000000" end_pos="130" '
           f'except_info="{except_info}" fluency_score="61.250000" integrity_score="100.000000" '
           f'is_rejected="{"true" if rejected else "false"}" phone_score="{ph:.6f}" time_len="130" '
           f'tone_score="{to:.6f}" total_score="60.100000"')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n  <xml_result>\n'
            '      <read_sentence lan="cn" type="study" version="7,0,0,1024">\n          <rec_paper>\n'
            f'              <read_sentence {top}>\n'
            '                  <sentence beg_pos="0" content="你好吗" end_pos="130" fluency_score="0.000000" '
            'phone_score="83.333336" time_len="130" tone_score="100.000000" total_score="61.000000">'
            f'{sylls}</sentence>\n              </read_sentence>\n          </rec_paper>\n'
            '      </read_sentence>\n  </xml_result>')


REJECTED = ise_xml(rejected=True, except_info="28676", phone_score=0.3 * 83.333333, tone_score=30.0)

# The flattener's TSV (one row per syll/phone node), saved as .txt next to the XML in the real folders.
TSV = ("filename\tcontent\tbeg_pos\tend_pos\tsymbol\ttime_len\trec_node_type\tdp_message\tis_yun\tperr_msg\tperr_level_msg\n"
       "a.xml\tsil\t0\t40\t\t40\tsil\t\t\t\t\n"
       "a.xml\t你\t40\t60\tni3\t20\tpaper\t\t\t\t\n"
       "a.xml\tn\t40\t48\t\t8\tpaper\t0\t0\t0\t1\n")
LOG_PREFIX = ("sid:ise000e8f2c@hu18c0a1b2c3d4e5f6g call success!,data is:{\"status\": 2}\n"
              "最终识别结果：\n")

# The upstream converter's legacy 6-field text: an intro, the ISE score block in double braces,
# phone rows {beg,end,dp,mono_tone,is_yun,perr} with '' for absent values, a closing '}'.
LEGACY = ("此数据为留学生音频量化数据，每条数据格式为：{content:{beg_pos,end_pos,dp_message,mono_tone,is_yun,perr_msg};}"
          "（数据为空代表数据无此属性）。量化数据如下：{{流畅度分:61.25,完整度分:100.0,声韵分:83.333333,调型分:100.0,"
          "总分【模型回归】:60.1};sil:{0,40,0,,,};n:{40,48,0,,0,0};i:{48,60,0,TONE3,1,0};h:{60,70,0,,0,0};"
          "ao:{70,90,0,TONE3,1,1};fil:{90,105,32,,,};m:{105,112,0,,0,0};a:{112,130,0,TONE0,1,0};}")


def _json_metrics(tmp_path, capsys, name, data, *extra):
    from glmtune.cli import main

    f = tmp_path / name
    f.write_text(data, "utf-8")
    capsys.readouterr()
    rc = main(["oral", "metrics", str(f), *extra])
    return rc, capsys.readouterr()


# -- row 1: a rejected result ------------------------------------------------------------------------

def test_row1_rejected_result_is_shown_with_reason_and_ises_factor(tmp_path, capsys):
    rc, out = _json_metrics(tmp_path, capsys, "rej.xml", REJECTED, "--json")
    assert rc == 0
    shown = json.loads(out.out)
    rej = shown["rejection"]
    assert rej["is_rejected"] is True and rej["except_info"] == "28676" and "乱读" in rej["reason"]
    assert rej["ise_factor"] == 0.3
    # ISE's reported scores are 0.3 × the recomputed ones, and the report reproduces that
    assert shown["ise_style"]["phone_score"] == pytest.approx(83.3333, abs=1e-3)
    for k in ("phone_score", "tone_score"):
        assert shown["ise_expected"][k] == pytest.approx(shown["ise_reported"][k], abs=1e-3)
    rc, out = _json_metrics(tmp_path, capsys, "rej.xml", REJECTED)
    assert "拒识" in out.out and "28676" in out.out and "×0.3" in out.out
    # a normal result says nothing about rejection
    rc, out = _json_metrics(tmp_path, capsys, "ok.xml", ise_xml(), "--json")
    assert json.loads(out.out)["rejection"] is None


def test_row1_rejected_in_evidence_prompt_and_builder_keep_flag_drop(tmp_path):
    rej = Item("rej", None, parse_any(REJECTED))
    ok = Item("ok", None, parse_any(ise_xml()))
    user = build_sample(rej, "evidence", "rubric")["messages"][1]["content"]
    assert "ISE拒识" in user and "28676" in user
    assert "拒识" not in build_sample(ok, "evidence", "rubric")["messages"][1]["content"]
    assert "拒识" not in build_sample(rej, "evidence", "rubric", rejected="keep")["messages"][1]["content"]
    counts = {}
    for policy in ("keep", "flag", "drop"):
        rep = build_dataset([rej, ok], tmp_path / f"{policy}.jsonl", "evidence", "rubric", rejected=policy)
        counts[policy] = (rep.written, rep.rejected)
        rows = [json.loads(x) for x in (tmp_path / f"{policy}.jsonl").read_text("utf-8").splitlines()]
        assert [r["id"] for r in rows] == (["ok"] if policy == "drop" else ["rej", "ok"])
    assert counts == {"keep": (2, {"keep": 1}), "flag": (2, {"flag": 1}), "drop": (1, {"drop": 1})}


# -- row 2: files that are not ISE results --------------------------------------------------------------

@pytest.mark.parametrize("name,data,why", [
    ("table.txt", TSV, "tab-separated table"),
    ("notes.txt", "今天天气怎么样？\n这是一段朗读文本，不是评测结果。\n", "no ISE result"),
    ("empty.txt", "", "empty"),
])
def test_row2_not_an_ise_result_is_a_clear_error(tmp_path, capsys, name, data, why):
    rc, out = _json_metrics(tmp_path, capsys, name, data, "--json")
    assert rc == 2 and out.out == ""
    line = out.err.strip()
    assert line.startswith(f"error: {tmp_path / name}") and why in line and "\n" not in line
    with pytest.raises(ConfigError):
        parse_any(data, source=name)


def test_row2_xml_after_log_lines_is_read(tmp_path, capsys):
    rc, out = _json_metrics(tmp_path, capsys, "logged.txt", LOG_PREFIX + ise_xml(), "--json")
    assert rc == 0
    shown = json.loads(out.out)
    assert shown["n"] == 3 and shown["bands"]["声母"] == 5
    assert any("log_prefix" in w and "2 line" in w for w in shown["warnings"])


# -- row 4: a truncated XML ---------------------------------------------------------------------------

def test_row4_truncated_xml_names_the_file_without_traceback(tmp_path, capsys):
    full = ise_xml()
    rc, out = _json_metrics(tmp_path, capsys, "cut.xml", full[: len(full) * 2 // 3], "--json")
    assert rc == 2 and "Traceback" not in out.err
    assert out.err.startswith(f"error: {tmp_path / 'cut.xml'}: ") and "truncated" in out.err


# -- rows 3/4: a folder of mixed files ---------------------------------------------------------------------

def _mixed_folder(root):
    root.mkdir()
    (root / "s1_16000.xml").write_text(ise_xml(), "utf-8")
    (root / "s1_16000.txt").write_text(LOG_PREFIX + ise_xml(), "utf-8")  # same stem as the XML
    (root / "s2_16000.xml").write_text(REJECTED, "utf-8")
    (root / "s3_16000.txt").write_text(TSV, "utf-8")
    full = ise_xml()
    (root / "s4_16000.xml").write_text(full[: len(full) // 2], "utf-8")
    (root / "s1_16000.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (root / "s1_16000.pcm").write_bytes(b"\x00\x01" * 64)
    return root


def test_row3_folder_build_counts_every_file_and_keeps_ids_unique(tmp_path):
    from glmtune.tasks.oral_reading.build import load_folder_report

    folder = _mixed_folder(tmp_path / "mixed")
    with pytest.raises(ConfigError, match="s4_16000.xml: truncated"):
        load_inputs(folder)  # on_bad_record=error (the default): the first bad file stops with file:reason
    items, rep = load_folder_report(folder, on_bad_record="skip")
    assert sorted(rep.read) == ["s1_16000.txt", "s1_16000.xml", "s2_16000.xml"]
    assert dict(rep.skipped) == {"s1_16000.pcm": "audio (.pcm): ISE results only",
                                 "s1_16000.xlsx": "spreadsheet (.xlsx) is not read: give the ISE XML or the compact text"}
    assert [f for f, _ in rep.failed] == ["s4_16000.xml", "s3_16000.txt"]  # XML files first
    assert "tab-separated" in dict(rep.failed)["s3_16000.txt"] and "truncated" in dict(rep.failed)["s4_16000.xml"]
    ids = [it.id for it in items]
    assert len(ids) == len(set(ids)) == 3 and rep.renamed == {"s1_16000.txt": "s1_16000.txt"}
    assert all(compute_metrics(it.record).n == 3 for it in items)


# -- row 5: teacher labels 2/4 without 评语 -----------------------------------------------------------------

def test_row5_comment_for_every_label_on_the_1_to_5_scale():
    import itertools

    dims = ("语速", "停顿", "声母", "韵母", "声调", "完整度")
    for combo in itertools.product(range(1, 6), repeat=2):
        bands = dict(zip(dims, (combo[0], combo[1], combo[1], combo[0], combo[0], combo[1])))
        line = format_answer(bands)
        assert parse_answer(line)[0] == bands and comment(bands)
    # the rubric's own 5/3/1 comments are unchanged
    assert comment(dict.fromkeys(dims, 5)).startswith("朗读流畅，语速适中，停顿自然")


def test_row5_teacher_labels_without_remark_build(tmp_path):
    src = tmp_path / "ise.jsonl"
    src.write_text(json.dumps({"id": "t1", "ise": ise_xml(), "labels": {"语速": 4, "停顿": 2, "声母": 4, "韵母": 5,
                                                                        "声调": 2, "完整度": 5}}, ensure_ascii=False), "utf-8")
    rep = build_dataset(load_inputs(src), tmp_path / "o.jsonl", "evidence", "teacher")
    assert rep.written == 1
    answer = json.loads((tmp_path / "o.jsonl").read_text("utf-8"))["messages"][2]["content"]
    assert answer.startswith("语速:4;停顿:2;声母:4;韵母:5;声调:2;完整度:5;评语:")


# -- row 6: the evidence prompt states the scale the labels use --------------------------------------------

def test_row6_evidence_prompt_states_the_label_scale():
    item = Item("t", None, parse_any(ise_xml()), labels={"语速": 4, "停顿": 2, "声母": 4, "韵母": 5, "声调": 2, "完整度": 5})
    teacher = build_sample(item, "evidence", "teacher")["messages"][0]["content"]
    rubric = build_sample(item, "evidence", "rubric")["messages"][0]["content"]
    assert "1-5" in teacher and "2和4" in teacher
    assert "5/3/1" in rubric and "1-5" not in rubric


# -- row 7/8: the legacy 6-field rows -------------------------------------------------------------------

def test_row7_legacy_score_block_is_parsed():
    rec = parse_compact(LEGACY)
    assert rec.source_format == "legacy6"
    assert rec.ise_scores == {"fluency_score": 61.25, "integrity_score": 100.0, "phone_score": 83.333333,
                              "tone_score": 100.0, "total_score": 60.1}
    m = compute_metrics(rec)
    assert m.n == 3 and m.ise_style["phone_score"] == pytest.approx(rec.ise_scores["phone_score"], abs=1e-4)


def test_row8_empty_legacy_fields_are_plain_nulls():
    rec = parse_compact(LEGACY)
    kinds = [w.kind for w in rec.warnings]
    assert "null_variant" not in kinds and "junk_row" not in kinds
    # the same record in XML and legacy form: identical metrics
    a, b = compute_metrics(rec), compute_metrics(parse_any(ise_xml()))
    assert (a.n, a.e_init, a.e_final, a.e_tone, a.f_int, a.bands) == (b.n, b.e_init, b.e_final, b.e_tone, b.f_int, b.bands)


# -- row 9: nothing read -------------------------------------------------------------------------------

def test_row9_fully_omitted_recording_bands_every_dimension_1():
    omitted = "".join(
        f"{c}:{{50,50,{s},0,paper,null,null,null,null}};{i}:{{null,null,null,null,paper,16,0,16,null}};"
        f"{f}:{{null,null,null,null,paper,16,1,16,null}};"
        for c, s, i, f in (("你", "ni3", "n", "i"), ("好", "hao3", "h", "ao")))
    rec = parse_compact("sil:{0,50,null,50,sil,0,null,null,null};" + omitted + "fil:{50,90,null,40,fil,32,null,null,null}")
    m = compute_metrics(rec)
    assert (m.n, m.n_read) == (2, 0)
    assert m.bands == dict.fromkeys(m.bands, 1)


# -- row 10: raw mode on 6-field input -----------------------------------------------------------------

def test_row10_raw_prompt_legend_matches_the_rows(tmp_path):
    src = tmp_path / "ise.jsonl"
    rows = LEGACY[LEGACY.index("量化数据如下"):]  # without the converter's own intro, which restates the legend
    src.write_text(json.dumps({"id": "l1", "text": "你好吗？", "ise": rows}, ensure_ascii=False), "utf-8")
    user = build_sample(load_inputs(src)[0], "raw", "rubric")["messages"][1]["content"]
    assert "{beg_pos,end_pos,dp_message,mono_tone,is_yun,perr_msg}" in user and rows in user
    assert "rec_node_type" not in user


# -- deliverable 4: the mixed-folder build through the CLI ---------------------------------------------------

def test_cli_folder_build_prints_a_counted_report(tmp_path):
    import os
    import subprocess
    import sys

    folder = _mixed_folder(tmp_path / "mixed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "glmtune", "oral", "build", str(folder), "--out", str(tmp_path / "sft.jsonl")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "s4_16000.xml: truncated or malformed XML" in p.stderr and "--on-bad-record skip" in p.stderr
    p = subprocess.run(cmd + ["--on-bad-record", "skip"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert f"{folder}: 3 read, 2 skipped, 2 failed" in out
    assert "skipped s1_16000.xlsx: spreadsheet (.xlsx) is not read" in out and "skipped s1_16000.pcm: audio" in out
    assert "failed  s3_16000.txt: a tab-separated table" in out and "failed  s4_16000.xml: truncated" in out
    assert "renamed s1_16000.txt: id 's1_16000.txt'" in out
    assert "wrote 3 samples" in out and "ISE-rejected results: 1 kept with the rejection in the prompt" in out
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text("utf-8").splitlines()]
    assert sorted(r["id"] for r in rows) == ["s1_16000", "s1_16000.txt", "s2_16000"]
    assert [r["id"] for r in rows if "rejected" in r] == ["s2_16000"]
    p = subprocess.run(cmd + ["--on-bad-record", "skip", "--rejected", "drop"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert "wrote 2 samples" in p.stdout and "1 dropped" in p.stdout


def test_teacher_labels_outside_1_to_5_are_named_not_written(tmp_path):
    from glmtune.tasks.oral_reading.build import load_inputs_report, load_labels

    src = tmp_path / "ise.jsonl"
    good = {"语速": 4, "停顿": "2", "声母": 4.0, "韵母": 5, "声调": 2, "完整度": 5}
    src.write_text("\n".join(json.dumps({"id": i, "ise": ise_xml(), "labels": dict(good, 声调=v)}, ensure_ascii=False)
                             for i, v in (("a", 2), ("b", 6), ("c", 4.5))), "utf-8")
    with pytest.raises(ConfigError, match=r"ise.jsonl:2: id b: label 6 is not an integer 1-5"):
        load_inputs_report(src)
    items, rep = load_inputs_report(src, "skip")
    assert [it.id for it in items] == ["a"] and items[0].labels["停顿"] == 2
    assert [w for w, _ in rep.failed] == ["ise.jsonl:2", "ise.jsonl:3"]
    # the printed line names the place once: "failed  ise.jsonl:2: id b: label 6 ...", not the path again
    failed = [line.strip() for line in rep.lines() if line.strip().startswith("failed")]
    assert failed[0] == "failed  ise.jsonl:2: id b: label 6 is not an integer 1-5", failed
    lab = tmp_path / "labels.jsonl"
    lab.write_text(json.dumps({"id": "a", "answer": "语速:4;停顿:2;声母:4;韵母:5;声调:2;完整度:5"}) + "\n{oops\n", "utf-8")
    with pytest.raises(ConfigError, match=r"labels.jsonl:2: bad JSON"):
        load_labels(lab)
