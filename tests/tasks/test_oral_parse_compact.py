"""docs/oral_scoring_spec.md §3: one test (or more) per row of the parsing table, on hand-written records."""

from glmtune.tasks.oral_reading.parse_compact import null_kind, parse_compact
from glmtune.tasks.oral_reading.records import PauseNode, Syllable
from glmtune.tasks.oral_reading.rubric import compute_metrics


def kinds(rec):
    return [w.kind for w in rec.warnings]


# 俗话 read with one initial error (s perr 1) and one final error (ua perr 1).
SUHUA = ("sil:{0,62,null,62,sil,0,null,null,null};俗:{62,98,su2,36,paper,null,null,null,null};"
         "s:{62,88,null,26,paper,0,0,1,3};u:{88,98,null,10,paper,0,1,0,1};"
         "话:{98,114,hua4,16,paper,null,null,null,null};h:{98,106,null,8,paper,0,0,0,1};"
         "ua:{106,114,null,8,paper,0,1,1,3}")


def test_row1_syllable_rows_take_dp_from_phones_and_neutral_digits():
    rec = parse_compact(SUHUA)
    assert rec.warnings == []
    su, hua = rec.syllables
    assert (su.key, su.symbol, su.beg, su.end, su.dp, su.tone) == ("俗", "su2", 62, 98, 0, 2)
    assert su.initial.label == "s" and su.initial.perr == 1 and su.final.perr == 0
    assert hua.final.perr == 1 and hua.final_error and not hua.tone_error
    # neutral: 0 and 5-9 are all neutral (§2.8); a neutral final with perr 2 is not a tone error
    for digit in "056789":
        s = parse_compact(f"了:{{0,10,le{digit},10,paper,null,null,null,null}};l:{{0,4,null,4,paper,0,0,0,1}};"
                          f"e:{{4,10,null,6,paper,0,1,2,1}}").syllables[0]
        assert s.tone == 0 and not s.tone_error
    # a syllable without phones: reference iff key is CJK or symbol ends in a digit
    rec = parse_compact("好:{0,9,hao3,9,paper,null,null,null,null};ba:{9,20,ba,11,paper,null,null,null,null}")
    assert [s.dp for s in rec.syllables] == [0, 32]


def test_row2_phones_attach_to_preceding_syllable_else_open_synthetic():
    rec = parse_compact("s:{62,88,pull,26,paper,0,0,1,3};u:{88,98,xyz,10,paper,0,1,0,1};"
                        "u:{98,100,null,2,paper,0,1,0,1}")
    # no syllable precedes the first phone; the second final finds its slot taken
    assert kinds(rec).count("orphan_phone") == 2
    first, second = rec.syllables
    assert first.synthetic and first.initial.label == "s" and first.final.label == "u"
    assert (first.beg, first.end) == (62, 98)  # span grows with attached phones
    assert second.initial is None and second.final.beg == 98
    # anything in a phone's symbol slot is ignored (xyz) but a null variant is still reported
    assert "null_variant" in kinds(rec)


def test_row3_null_variants():
    for tok in ("pull", "nul", "nuII", "nu1l", "None", "NaN", "nan", "", "-"):
        assert null_kind(tok) == "variant", tok
    assert null_kind("null") == "null"
    for tok in ("nan2", "nuo", "hua4", "0.0", "sil", "paper"):
        assert null_kind(tok) is None, tok
    rec = parse_compact("话:{98,114,hua4,16,paper,null,null,null,null};h:{98,106,null,8,paper,0,0,0,1};"
                        "ua:{106,114,pull,8,paper,0,1,1,nuII}")
    assert kinds(rec) == ["null_variant", "null_variant"]
    assert rec.syllables[0].final.perr == 1 and rec.syllables[0].final.perr_level is None
    # exception: an inserted syllable whose pinyin is `nan` keeps it
    rec = parse_compact("nan:{0,20,nan,20,paper,null,null,null,null};n:{0,8,null,8,paper,32,0,32,null};"
                        "an:{8,20,null,12,paper,32,1,32,null}")
    assert rec.syllables[0].symbol == "nan" and rec.syllables[0].dp == 32 and kinds(rec) == []


def test_row4_extra_and_missing_fields():
    rec = parse_compact("说:{114,172,shuo1,58,paper,null,null,null,null,null}")
    assert kinds(rec) == ["extra_fields"] and rec.syllables[0].symbol == "shuo1"
    rec = parse_compact("说:{114,172,shuo1,58,paper,null,null,null,null,7}")
    assert kinds(rec) == ["extra_fields"] and rec.items == []  # non-null extra: dropped, not guessed
    rec = parse_compact("说:{114,172,shuo1,58,paper,null,null}")
    assert kinds(rec) == ["missing_fields"] and rec.syllables[0].end == 172


def test_row5_float_coded_ints():
    rec = parse_compact("俗:{62,98,su2,36,paper,null,null,null,null};s:{62,88,null,26,paper,0.0,0.0,1.0,3.0};"
                        "u:{88,98,null,10,paper,0.0,1.0,1.O,2.5}")
    su = rec.syllables[0]
    assert su.initial.perr == 1 and su.initial.perr_level == 3 and su.final.is_yun == 1
    assert su.final.perr is None and su.final.perr_level is None
    assert kinds(rec).count("bad_int") == 2 and kinds(rec).count("float_int") == 1
    assert "6 integers" in next(w.message for w in rec.warnings if w.kind == "float_int")


def test_row6_duplicate_sil_rows_are_merged():
    rec = parse_compact("sil:{0,62,null,62,sil,null,null,null,null};sil:{0,62,null,62,sil,0,null,null,null};"
                        "fil:{62,70,null,8,fil,null,null,null,null};fil:{62,70,null,8,fil,32,null,null,null};"
                        "fil:{70,80,null,10,fil,32,null,null,null}")
    assert kinds(rec) == ["dedup", "dedup"]
    assert [(p.kind, p.beg, p.end, p.dp) for p in rec.pauses] == [("sil", 0, 62, 0), ("fil", 62, 70, 32),
                                                                  ("fil", 70, 80, 32)]


def test_row7_omitted_syllable_in_n_but_not_in_timing():
    rec = parse_compact("你:{0,30,ni3,30,paper,null,null,null,null};n:{0,10,null,10,paper,0,0,0,1};"
                        "i:{10,30,null,20,paper,0,1,0,1};"
                        "好:{30,30,hao3,0,paper,null,null,null,null};h:{null,null,null,null,paper,16,0,16,null};"
                        "ao:{null,null,null,null,paper,16,1,16,null}")
    omit = rec.syllables[1]
    assert omit.dp == 16 and not omit.timed and omit.initial.beg is None
    m = compute_metrics(rec)
    assert (m.n, m.n_omit, m.n_read, m.e_init, m.e_final, m.e_tone) == (2, 1, 1, 1, 1, 1)
    assert (m.t0, m.t1) == (0, 30) and m.rate_per_min == 200  # 1 syllable in 0.3 s


def test_row8_pinyin_keys_decided_by_is_yun_not_spelling():
    rec = parse_compact("e:{0,20,e,20,paper,null,null,null,null};_e:{0,5,null,5,paper,32,0,32,null};"
                        "e:{5,20,null,15,paper,32,1,32,null};a:{20,30,a,10,paper,null,null,null,null};"
                        "_a:{20,24,null,4,paper,64,0,64,null};a:{24,30,null,6,paper,64,1,64,null}")
    assert [(s.key, s.dp) for s in rec.syllables] == [("e", 32), ("a", 64)]
    assert all(s.initial and s.final for s in rec.syllables) and kinds(rec) == []


def test_row9_time_len_and_reversed_spans():
    rec = parse_compact("好:{30,60,hao3,99,paper,null,null,null,null}")
    assert kinds(rec) == ["time_len"] and (rec.syllables[0].beg, rec.syllables[0].end) == (30, 60)
    rec = parse_compact("好:{60,30,hao3,30,paper,null,null,null,null}")
    assert kinds(rec) == ["bad_span"] and (rec.syllables[0].beg, rec.syllables[0].end) == (None, None)


def test_row10_fullwidth_score_block_and_truncation():
    text = ("量化数据如下：总分:58.02，声韵分:75.0，调型分:84.68\n"
            "sil：｛0，62，null，62，sil，0，null，null，null｝；\n 俗：{62，98，su2，36，paper，null，null，null，null}；"
            "s:{62,88,null,26,paper,0,0,0,1};  u:{88,98,null,10,paper,0,1,0,1}......")
    rec = parse_compact(text, passage="俗话说")
    assert rec.ise_scores == {"total_score": 58.02, "phone_score": 75.0, "tone_score": 84.68}
    assert sorted(set(kinds(rec))) == ["score_block", "truncation_marker"]
    assert rec.truncated and [type(i) for i in rec.items] == [PauseNode, Syllable]
    m = compute_metrics(rec)
    assert m.partial and m.n == 1 and m.text_chars == 3
    assert parse_compact(SUHUA + "…").truncated and not parse_compact(SUHUA).truncated


def test_row11_legacy_six_field_rows_pair_into_synthetic_syllables():
    text = ("total_score:60.5,phone_score:75.0,tone_score:50.0;"
            "sil:{0,40,0,null,null,null};_u:{40,50,0,TONE3,0,0};uo:{50,70,0,TONE3,1,2};"
            "m:{70,80,0,TONE0,0,0};en:{80,90,0,0,1,2};fil:{90,100,32,null,null,null};"
            "x:{100,110,0,2,0,1};ve:{110,130,0,2.0,1,3}")
    rec = parse_compact(text)
    assert rec.source_format == "legacy6"
    assert rec.ise_scores["phone_score"] == 75.0 and "score_block" in kinds(rec)
    assert "orphan_phone" not in kinds(rec)
    wo, men, xue = rec.syllables
    assert wo.synthetic and (wo.beg, wo.end, wo.tone) == (40, 70, 3)
    assert men.tone == 0 and not men.tone_error  # neutral from mono_tone
    m = compute_metrics(rec)
    assert (m.n, m.e_init, m.e_final, m.e_tone, m.f_int) == (3, 1, 1, 2, 1)


def test_row12_text_count_mismatch_warns_and_disables_long_pause_flag():
    rec = parse_compact(SUHUA, passage="俗话说20年")
    m = compute_metrics(rec)
    assert m.n == 2 and m.text_chars == 4 and m.long_sil_nonpunct is None
    assert "text_mismatch" in kinds(rec)


def test_row13_seed_ocr_artefacts():
    # the seed's own sample (hand-copied): legend, "(null为空值) sil:", "s: {", pull, junk text and a
    # keyless duplicate of the ua record after a page break, a 10-value row, a trailing "......"
    seed = ("此数据为学生音频量化数据,格式为: content:\n\n{beg_pos,end_pos,symbol,time_len,rec_node_type,dp_message,"
            "is_yun,perr_msg,perr_level_msg}; (null为空值) sil:{0,62,null,62,sil,0.0,null,null,null};"
            "俗:{62,98,su2,36,paper,null,null,null,null};s: {62,88,null,26,paper,0.0,0.0,1.0,3.0};"
            "u:{88,98,null,10,paper,0.0,1.0,0.0,1.0};话: {98,114,hua4,16,paper,null,null,null,null};"
            "h:{98,106,null,8,paper,0.0,0.0,0.0,1.0};ua: {106,114,pull,8,paper,0.0,1.0,1.0,3.0}; 位是一位\n\n"
            "{106,114,null,8,paper,0.0,1.0,1.0,3.0};说:{114,172,shuo1,58,paper,null,null,null,null,null}......")
    rec = parse_compact(seed)
    assert sorted(kinds(rec)) == sorted(["truncation_marker", "junk_row", "null_variant", "keyless_row",
                                         "extra_fields", "float_int"])
    assert [s.key for s in rec.syllables] == ["俗", "话", "说"]
    assert rec.syllables[1].final.perr == 1 and rec.pauses[0].end == 62
    m = compute_metrics(rec)
    assert (m.n, m.e_init, m.e_final, m.e_tone) == (3, 1, 1, 0)  # the keyless duplicate did not count
    # rubric JSON fragments ("key": {…}) are never records
    rec = parse_compact('{"准确度": {"声母/韵母": {"正确率90%-100%": {"量化值": 5, "描述": "正确率很高"}}}}' + SUHUA)
    assert [s.key for s in rec.syllables] == ["俗", "话"]
    assert "junk_row" in kinds(rec)
