"""`IseRecord` → the seed's compact 9-field string, or → ISE XML (read_chapter hierarchy, §2.1).

Compact rows follow the upstream flattener (§0.2, §3): a syllable row `字:{b,e,sym,len,paper,null,null,null,null}`
then its initial and final phone rows with float-coded ints like the seed (`0.0`), omitted phones
`{null,null,null,null,paper,16.0,is_yun,16.0,null}` (§3 row 7); one row per sil/fil (or two with
`pause_rows=2`, which the parser deduplicates, §3 row 6).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from glmtune.tasks.oral_reading.records import IseRecord, PauseNode, Phone, Syllable, is_cjk

_SENTENCE_END = "。！？!?；;…"


def _v(x, float_ints: bool) -> str:
    if x is None:
        return "null"
    return f"{x}.0" if float_ints and isinstance(x, int) else str(x)


def _row(key: str, beg, end, symbol, node_type, dp, is_yun, perr, level, float_ints: bool) -> str:
    tl = end - beg if beg is not None and end is not None else None
    pos = [_v(x, False) for x in (beg, end)]
    vals = [pos[0], pos[1], symbol or "null", _v(tl, False), node_type,
            _v(dp, float_ints), _v(is_yun, float_ints), _v(perr, float_ints), _v(level, float_ints)]
    return f"{key}:{{{','.join(vals)}}}"


def to_compact(rec: IseRecord, float_ints: bool = True, pause_rows: int = 1) -> str:
    rows: list[str] = []
    for item in rec.items:
        if isinstance(item, PauseNode):
            if pause_rows == 2:
                rows.append(_row(item.kind, item.beg, item.end, None, item.kind, None, None, None, None, float_ints))
            rows.append(_row(item.kind, item.beg, item.end, None, item.kind, item.dp, None, None, None, float_ints))
            continue
        rows.append(_row(item.key or "x", item.beg, item.end, item.symbol, "paper", None, None, None, None, float_ints))
        for ph in item.phones():
            rows.append(_row(ph.label or "x", ph.beg, ph.end, None, "paper", ph.dp, ph.is_yun, ph.perr,
                             ph.perr_level, float_ints))
    return ";".join(rows)


def _attrs(**kw) -> str:
    return " ".join(f"{k}={quoteattr(str(v))}" for k, v in kw.items() if v is not None)


def _span(beg, end) -> dict:
    if beg is None or end is None:
        return {}
    return {"beg_pos": beg, "end_pos": end, "time_len": end - beg}


def _phone_xml(ph: Phone) -> str:
    a = _attrs(**_span(ph.beg, ph.end), content=ph.label, dp_message=ph.dp, is_yun=ph.is_yun,
               mono_tone=ph.mono_tone if ph.is_yun == 1 else None, perr_level_msg=ph.perr_level,
               perr_msg=ph.perr, rec_node_type="paper")
    return f"<phone {a}></phone>"


def _item_xml(item) -> str:
    if isinstance(item, PauseNode):
        a = _attrs(**_span(item.beg, item.end), content=item.kind, dp_message=item.dp, rec_node_type=item.kind)
        return f"<syll {a}><phone {a}></phone></syll>"
    a = _attrs(**_span(item.beg, item.end), content=item.key, dp_message=item.dp, rec_node_type="paper",
               symbol=item.symbol)
    return f"<syll {a}>{''.join(_phone_xml(p) for p in item.phones())}</syll>"


def _sentence_ids(text: str | None, n: int) -> list[int]:
    ids, sent = [], 0
    for ch in text or "":
        if is_cjk(ch):
            ids.append(sent)
        elif ch in _SENTENCE_END and ids and ids[-1] == sent:
            sent += 1
    return ids if len(ids) == n else [0] * n


def to_xml(rec: IseRecord, scores: dict[str, float] | None = None, category: str = "read_chapter") -> str:
    """ISE-shaped XML. Non-text nodes join the following word (the preceding one at a sentence end, §2.1)."""
    ref = [s for s in rec.syllables if s.is_reference]
    sent_of = _sentence_ids(rec.text, len(ref))
    sentences: list[list[list]] = []  # sentence → words → items
    pending: list = []
    k = 0
    for item in rec.items:
        if isinstance(item, Syllable) and item.is_reference:
            sid = sent_of[k]
            k += 1
            while len(sentences) <= sid:
                sentences.append([])
            sentences[sid].append(pending + [item])
            pending = []
        else:
            pending.append(item)
    if pending:
        if sentences and sentences[-1]:
            sentences[-1][-1].extend(pending)
        else:
            sentences.append([pending])
    body = []
    for words in sentences:
        ws = []
        for w in words:
            main = next((i for i in w if isinstance(i, Syllable) and i.is_reference), None)
            wa = _attrs(content=main.key if main else "", symbol=main.symbol if main else None)
            ws.append(f"<word {wa}>{''.join(_item_xml(i) for i in w)}</word>")
        content = "".join(i.key for w in words for i in w if isinstance(i, Syllable) and i.is_reference and i.key)
        body.append(f"<sentence {_attrs(content=content)}>{''.join(ws)}</sentence>")
    spans = [(i.beg, i.end) for i in rec.items if i.beg is not None and i.end is not None]
    top = _attrs(**_span(min((b for b, _ in spans), default=0), max((e for _, e in spans), default=0)),
                 content=rec.text or "", except_info="0", is_rejected="false",
                 **{k: f"{v:.6f}" for k, v in (scores or {}).items()})
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<xml_result><{category} lan="cn" type="study" version="7,0,0,1024">'
            f"<rec_paper><{category} {top}>{''.join(body)}</{category}></rec_paper></{category}></xml_result>")
