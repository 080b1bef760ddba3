"""ISE XML (read_syllable / read_word / read_sentence / read_chapter, §2.1) → `IseRecord`.

All `syll` nodes are taken in document order, wherever they sit (sentence/word nesting only groups
them, and non-text nodes may hang under the following word, §2.1). The top `read_xxx` element under
`rec_paper` gives ISE's own scores (`IseRecord.ise_scores`: total/phone/tone/fluency/integrity
[/accuracy/emotion]), `except_info` and `is_rejected` (§2.9). The passage text is its `content`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from glmtune.tasks.oral_reading.records import IseRecord, OralInputError, PauseNode, Phone, Syllable

CATEGORIES = ("read_syllable", "read_word", "read_sentence", "read_chapter")
SCORE_ATTRS = ("total_score", "phone_score", "tone_score", "fluency_score", "integrity_score",
               "accuracy_score", "emotion_score")


def _int(el: ET.Element, name: str, rec: IseRecord) -> int | None:
    raw = el.get(name)
    if raw is None or raw == "":
        return None
    try:
        val = float(raw)
    except ValueError:
        rec.warn("xml", f"{el.tag}@{name}={raw!r} is not a number")
        return None
    if not val.is_integer():
        rec.warn("bad_int", f"{el.tag}@{name}={raw!r} is not integral")
        return None
    return int(val)


def _span(el: ET.Element, rec: IseRecord) -> tuple[int | None, int | None]:
    beg, end, tl = _int(el, "beg_pos", rec), _int(el, "end_pos", rec), _int(el, "time_len", rec)
    if beg is not None and end is not None:
        if end < beg:
            rec.warn("bad_span", f"{el.tag} end {end} < beg {beg}; positions nulled")
            return None, None
        if tl is not None and tl != end - beg:
            rec.warn("time_len", f"{el.tag} time_len {tl} != end-beg {end - beg}; recomputed")
    return beg, end


_XML_START = re.compile(r"<\?xml\b|<xml_result\b")


def parse_xml(xml: str | bytes, passage: str | None = None, source: str = "<input>") -> IseRecord:
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8-sig")
    rec = IseRecord(source_format="xml")
    start = _XML_START.search(xml)
    if start and xml[:start.start()].strip(" \t\r\n\ufeff"):
        prefix = xml[:start.start()].strip()
        rec.warn("log_prefix", f"{len(prefix.splitlines())} line(s) before the XML skipped: {prefix[:60]!r}")
        xml = xml[start.start():]
    try:
        root = ET.fromstring(xml.lstrip("\ufeff \t\r\n").encode("utf-8"))  # a declaration must come first
    except ET.ParseError as err:
        line, col = err.position
        raise OralInputError(f"{source}: truncated or malformed XML ({str(err).split(':')[0]} at line {line}, "
                             f"column {col})") from None
    top = None
    for paper in root.iter("rec_paper"):
        top = next((c for c in paper if c.tag in CATEGORIES), None)
        if top is not None:
            break
    if top is not None:
        for name in SCORE_ATTRS:
            if top.get(name) not in (None, ""):
                try:
                    rec.ise_scores[name] = float(top.get(name))
                except ValueError:
                    rec.warn("xml", f"{name}={top.get(name)!r} is not a number")
        rec.text = top.get("content")
        rec.except_info = top.get("except_info")
        if top.get("is_rejected") is not None:
            rec.is_rejected = top.get("is_rejected").lower() == "true"
    if passage is not None:
        rec.text = passage
    for syll in (top if top is not None else root).iter("syll"):
        beg, end = _span(syll, rec)
        kind = (syll.get("rec_node_type") or "").lower()
        content = syll.get("content")
        if kind in ("sil", "fil") or content in ("sil", "fil"):
            rec.items.append(PauseNode(kind or content, beg, end, _int(syll, "dp_message", rec)))
            continue
        s = Syllable(content, syll.get("symbol"), beg, end, declared_dp=_int(syll, "dp_message", rec))
        for ph in syll.iter("phone"):
            is_yun = _int(ph, "is_yun", rec)
            if is_yun not in (0, 1):
                continue
            pb, pe = _span(ph, rec)
            phone = Phone(is_yun, ph.get("content"), pb, pe, _int(ph, "dp_message", rec), _int(ph, "perr_msg", rec),
                          _int(ph, "perr_level_msg", rec), ph.get("mono_tone"))
            setattr(s, "final" if is_yun else "initial", phone)
        rec.items.append(s)
    if not rec.syllables:
        flags = f" (is_rejected={top.get('is_rejected')}, except_info={top.get('except_info')})" if top is not None else ""
        raise OralInputError(f"{source}: XML without ISE syllable nodes{flags}: not a Chinese ISE result "
                             "(xml_result > rec_paper > … > syll)")
    return rec


def _not_ise_reason(data: str) -> str:
    text = data.strip()
    if not text:
        return "empty file: no ISE result"
    first = text.splitlines()[0]
    if first.count("\t") >= 2:
        cols = [c.strip() for c in first.split("\t")]
        return (f"a tab-separated table (header: {', '.join(cols[:4])}, … {len(cols)} columns), not an ISE result: "
                "give the ISE XML or the compact `key:{…}` string")
    return (f"no ISE result found: neither XML nor `key:{{…}}` records (starts with {text[:30]!r})")


def parse_any(data: str, passage: str | None = None, source: str = "<input>") -> IseRecord:
    """XML when the input holds `<?xml`/`<xml_result` (after optional log lines), else the compact/legacy
    text format. Raises `OralInputError` ("source: why") when the data hold no ISE syllable at all."""
    if isinstance(data, bytes):
        data = data.decode("utf-8-sig")
    head = data.lstrip("\ufeff \t\r\n")
    if head.startswith("<") or _XML_START.search(data):
        return parse_xml(data, passage, source)
    from glmtune.tasks.oral_reading.parse_compact import parse_compact

    if "{" not in data:
        raise OralInputError(f"{source}: {_not_ise_reason(data)}")
    rec = parse_compact(data, passage)
    if not rec.syllables:
        if "\t" in data.strip().splitlines()[0]:
            raise OralInputError(f"{source}: {_not_ise_reason(data)}")
        raise OralInputError(f"{source}: no ISE syllable among the `{{…}}` records"
                             f" ({len(rec.warnings)} parser warning(s), e.g. {rec.warnings[0] if rec.warnings else '-'})")
    return rec
