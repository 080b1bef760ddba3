"""The metric engine (§0, §4) on a hand-worked record, its XML twin (§2.9 ISE scores), and every band edge."""

from fractions import Fraction as F

import pytest

from glmtune.tasks.oral_reading.parse_compact import parse_compact
from glmtune.tasks.oral_reading.parse_xml import parse_any, parse_xml
from glmtune.tasks.oral_reading.records import IseRecord, PauseNode, Phone, Syllable
from glmtune.tasks.oral_reading.rubric import (
    ACC_EDGES, COMPLETE_EDGES, RATE_EDGES, band_high_is_good, band_pause, compute_metrics,
)

# 我们学习汉语。 read as: 我 tone error; 们 (neutral) flagged perr 2 (ignored); internal fil; 学 initial
# error; 习 omitted; a repetition "xi"; 汉 final+tone error (perr 3); 语 substituted (dp 128, perr 1/1);
# an inserted "ba"; trailing sil and fil.
CASE = ";".join([
    "sil:{0,50,null,50,sil,0,null,null,null}",
    "我:{50,80,wo3,30,paper,null,null,null,null}", "_u:{50,60,null,10,paper,0,0,0,1}", "uo:{60,80,null,20,paper,0,1,2,1}",
    "们:{80,100,men0,20,paper,null,null,null,null}", "m:{80,90,null,10,paper,0,0,0,1}", "en:{90,100,null,10,paper,0,1,2,1}",
    "fil:{100,130,null,30,fil,32,null,null,null}",
    "学:{130,160,xue2,30,paper,null,null,null,null}", "x:{130,140,null,10,paper,0,0,1,3}", "ve:{140,160,null,20,paper,0,1,0,1}",
    "习:{160,160,xi2,0,paper,null,null,null,null}", "x:{null,null,null,null,paper,16,0,16,null}",
    "i:{null,null,null,null,paper,16,1,16,null}",
    "xi:{160,180,xi,20,paper,null,null,null,null}", "x:{160,170,null,10,paper,64,0,64,null}",
    "i:{170,180,null,10,paper,64,1,64,null}",
    "汉:{180,220,han4,40,paper,null,null,null,null}", "h:{180,190,null,10,paper,0,0,0,1}", "an:{190,220,null,30,paper,0,1,3,3}",
    "语:{220,250,yu3,30,paper,null,null,null,null}", "_v:{220,230,null,10,paper,128,0,1,3}",
    "v:{230,250,null,20,paper,128,1,1,3}",
    "ba:{250,270,ba,20,paper,null,null,null,null}", "b:{250,260,null,10,paper,32,0,32,null}",
    "a:{260,270,null,10,paper,32,1,32,null}",
    "sil:{270,300,null,30,sil,0,null,null,null}", "fil:{300,310,null,10,fil,32,null,null,null}",
])


def _phone(is_yun, label, b, e, dp, perr, level=None, tone=None):
    a = f'beg_pos="{b}" end_pos="{e}" time_len="{e - b}" ' if b is not None else ""
    lv = f'perr_level_msg="{level}" ' if level else ""
    mt = f'mono_tone="{tone}" ' if tone else ""
    return (f'<phone {a}content="{label}" dp_message="{dp}" is_yun="{is_yun}" {mt}{lv}perr_msg="{perr}" '
            f'rec_node_type="paper"></phone>')


def _syll(content, symbol, b, e, dp, ini, fin):
    return (f'<syll beg_pos="{b}" content="{content}" dp_message="{dp}" end_pos="{e}" rec_node_type="paper" '
            f'symbol="{symbol}" time_len="{e - b}">{ini}{fin}</syll>')


def _node(kind, b, e, dp):
    a = f'beg_pos="{b}" content="{kind}" dp_message="{dp}" end_pos="{e}" rec_node_type="{kind}" time_len="{e - b}"'
    return f"<syll {a}><phone {a}></phone></syll>"


# The same recording as ISE XML. Scores worked by hand with §2.9's formulas over the 8 paper syllables
# (我 们 学 习 xi 汉 语 ba = 16 phones): correct phones = 我 2 (perr 2 counts) + 们 2 + 学 1 + 汉 1 = 6
# → phone_score 37.5; finals with perr ∈ {0,1}: 学 (0), 语 (1) → tone_score 2/8 = 25.0.
CASE_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><xml_result><read_sentence lan="cn" type="study" version="7,0,0,1024">'
    '<rec_paper><read_sentence beg_pos="0" content="我们学习汉语。" end_pos="310" except_info="0" '
    'fluency_score="61.5" integrity_score="83.333336" is_rejected="false" phone_score="37.500000" time_len="310" '
    'tone_score="25.000000" total_score="40.1">'
    '<sentence beg_pos="0" content="我们学习汉语" end_pos="310">'
    '<word content="我" symbol="wo3">' + _node("sil", 0, 50, 0)
    + _syll("我", "wo3", 50, 80, 0, _phone(0, "_u", 50, 60, 0, 0, 1), _phone(1, "uo", 60, 80, 0, 2, 1, "TONE3")) + "</word>"
    + '<word content="们" symbol="men5">'
    + _syll("们", "men0", 80, 100, 0, _phone(0, "m", 80, 90, 0, 0, 1), _phone(1, "en", 90, 100, 0, 2, 1, "TONE0")) + "</word>"
    + '<word content="学" symbol="xue2">' + _node("fil", 100, 130, 32)
    + _syll("学", "xue2", 130, 160, 0, _phone(0, "x", 130, 140, 0, 1, 3), _phone(1, "ve", 140, 160, 0, 0, 1, "TONE2")) + "</word>"
    + '<word content="习" symbol="xi2">'
    + _syll("习", "xi2", 160, 160, 16, _phone(0, "x", None, None, 16, 16), _phone(1, "i", None, None, 16, 16, None, "TONE2"))
    + "</word>" + '<word content="汉" symbol="han4">'
    + _syll("xi", "xi", 160, 180, 64, _phone(0, "x", 160, 170, 64, 64), _phone(1, "i", 170, 180, 64, 64))
    + _syll("汉", "han4", 180, 220, 0, _phone(0, "h", 180, 190, 0, 0, 1), _phone(1, "an", 190, 220, 0, 3, 3, "TONE4")) + "</word>"
    + '<word content="语" symbol="yu3">'
    + _syll("语", "yu3", 220, 250, 128, _phone(0, "_v", 220, 230, 128, 1, 3), _phone(1, "v", 230, 250, 128, 1, 3, "TONE3"))
    + _syll("ba", "ba", 250, 270, 32, _phone(0, "b", 250, 260, 32, 32), _phone(1, "a", 260, 270, 32, 32))
    + _node("sil", 270, 300, 0) + _node("fil", 300, 310, 32)
    + "</word></sentence></read_sentence></rec_paper></read_sentence></xml_result>"
)

EXPECTED = dict(n=6, n_omit=1, n_sub=1, n_read=5, n_ins=1, n_rep=1, e_init=3, e_final=3, e_tone=3,
                t0=50, t1=270, f_int=1, f_lead=0, f_trail=1)


def _check_case(m):
    assert {k: getattr(m, k) for k in EXPECTED} == EXPECTED
    assert m.acc_initial == m.acc_final == m.acc_tone == m.acc_segmental == F(1, 2)
    assert m.rate_per_min == F(1500, 11)  # 60 × 5 / 2.2 s = 136.36…
    assert m.pause_ratio == F(1, 6) and m.completeness == F(1, 2)
    assert m.bands == {"语速": 5, "停顿": 1, "声母": 1, "韵母": 1, "声调": 1, "完整度": 1}
    # A = (1+1)/2 = 1, F = (5+1)/2 = 3, C = 1: (0.55 + 0.75 + 0.10)/0.90 = 14/9; with 感情 3: 1.4 + 0.3
    assert m.weighted_total() == F(14, 9) and m.weighted_total(emotion=3) == F(17, 10)
    assert m.ise_style == {"phone_score": 37.5, "tone_score": 25.0}


def test_engine_on_hand_worked_compact_record():
    rec = parse_compact(CASE, passage="我们学习汉语。")
    assert rec.warnings == []
    _check_case(compute_metrics(rec))


def test_xml_twin_gives_same_metrics_and_ise_scores_match_recomputation():
    rec = parse_xml(CASE_XML)
    assert rec.warnings == [] and rec.text == "我们学习汉语。" and rec.is_rejected is False
    m = compute_metrics(rec)
    _check_case(m)
    for key in ("phone_score", "tone_score"):
        assert m.ise_style[key] == pytest.approx(m.ise_reported[key])
    assert m.ise_reported["integrity_score"] == pytest.approx(83.333336)
    assert parse_any("\n  " + CASE_XML).source_format == "xml"


def test_xml_time_len_mismatch_is_a_warning():
    bad = CASE_XML.replace('beg_pos="50" content="我" dp_message="0" end_pos="80" rec_node_type="paper" '
                           'symbol="wo3" time_len="30"',
                           'beg_pos="50" content="我" dp_message="0" end_pos="80" rec_node_type="paper" '
                           'symbol="wo3" time_len="31"')
    assert [w.kind for w in parse_xml(bad).warnings] == ["time_len"]


@pytest.mark.parametrize("value,band", [
    (F(9, 10), 5), (F(899, 1000), 3), (F(7, 10), 3), (F(699, 1000), 1), (F(1), 5), (F(0), 1)])
def test_accuracy_band_edges(value, band):
    assert band_high_is_good(value, ACC_EDGES) == band


@pytest.mark.parametrize("value,band", [
    (F(120), 5), (F(11999, 100), 3), (F(60), 3), (F(5999, 100), 1), (F(0), 1)])
def test_rate_band_edges(value, band):
    assert band_high_is_good(value, RATE_EDGES) == band


@pytest.mark.parametrize("value,band", [
    (F(0), 5), (F(3, 100), 5), (F(301, 10000), 3), (F(10, 100), 3), (F(1001, 10000), 1)])
def test_pause_band_edges(value, band):
    assert band_pause(value) == band


@pytest.mark.parametrize("value,band", [
    (F(95, 100), 5), (F(949, 1000), 3), (F(85, 100), 3), (F(849, 1000), 1)])
def test_completeness_band_edges(value, band):
    assert band_high_is_good(value, COMPLETE_EDGES) == band


def _read(key, b, e, perr_i=0, perr_f=0, symbol="ma1"):
    mid = (b + e) // 2
    return Syllable(key, symbol, b, e, Phone(0, "m", b, mid, 0, perr_i, 1), Phone(1, "a", mid, e, 0, perr_f, 1))


def test_edges_hit_exactly_through_the_engine():
    # 10 syllables, 1 initial error → 0.9 exactly → 5 (a float 1 - 0.1 would still be fine, 1 - 1/10 as
    # Fraction is exact); 3 errors → 0.7 → 3. 10 syllables over 500 frames = 120/min → 5.
    items = [_read("妈", 50 * i, 50 * i + 50, perr_i=int(i == 0), perr_f=1 if i < 3 else 0) for i in range(10)]
    m = compute_metrics(IseRecord(items=items))
    assert m.acc_initial == F(9, 10) and m.bands["声母"] == 5
    assert m.acc_final == F(7, 10) and m.bands["韵母"] == 3
    assert m.rate_per_min == 120 and m.bands["语速"] == 5
    # one internal fil in 10 syllables = 10% → 3; a repetition → completeness 0.9 → 3
    items.insert(5, PauseNode("fil", 250, 250))
    items.insert(3, Syllable("ma", "ma", 150, 150, Phone(0, "m", None, None, 64, 64), Phone(1, "a", None, None, 64, 64)))
    m = compute_metrics(IseRecord(items=items))
    assert m.pause_ratio == F(1, 10) and m.bands["停顿"] == 3
    assert m.completeness == F(9, 10) and m.bands["完整度"] == 3


def test_empty_recording_and_clamped_completeness():
    m = compute_metrics(IseRecord())
    # nothing read: every band is 1, 停顿 included (issue 15 row 9: it used to band 5)
    assert m.empty and m.n == 0 and set(m.bands.values()) == {1}
    assert m.rate_per_min == 0 and m.duration_s is None
    # 2 reference syllables and 3 insertions: 1 - 3/2 < 0 → clamped to 0
    ins = [Syllable("ba", "ba", 100 + 10 * i, 110 + 10 * i, Phone(0, "b", None, None, 32, 32),
                    Phone(1, "a", None, None, 32, 32)) for i in range(3)]
    m = compute_metrics(IseRecord(items=[_read("妈", 0, 50), _read("妈", 50, 100)] + ins))
    assert m.completeness == 0 and m.n_ins == 3


def test_long_silence_flag_respects_punctuation():
    # 你好，朋友: a 1.2 s sil before 朋 (after a comma) does not count; a 1.0 s sil before 友 does.
    items = [_read("你", 0, 30), _read("好", 30, 60), PauseNode("sil", 60, 180), _read("朋", 180, 210),
             PauseNode("sil", 210, 310), _read("友", 310, 340)]
    m = compute_metrics(IseRecord(items=items, text="你好，朋友"))
    assert m.long_sil_nonpunct == 1
    assert compute_metrics(IseRecord(items=items, text="你好朋友")).long_sil_nonpunct == 2
