"""Parser for the flattened ISE text formats (docs/oral_scoring_spec.md §3).

- compact9 (the seed's): `key:{beg_pos,end_pos,symbol,time_len,rec_node_type,dp_message,is_yun,perr_msg,perr_level_msg}`
  records joined by `;`. Syllable rows carry symbol and span; each is followed by its initial and
  final phone rows; sil/fil rows are one row (or two, deduplicated).
- legacy6 (the upstream 978-row set): `key:{beg,end,dp,mono_tone,is_yun,perr}` with phone rows only,
  usually after a leading ISE score block; initial+final pairs become synthetic syllables (§3 row 11).
  The upstream converter writes that block in braces right after `量化数据如下：{`, as
  `{流畅度分:…,完整度分:…,声韵分:…,调型分:…,总分【模型回归】:…}`, and leaves absent values empty
  (`sil:{0,40,0,,,}`): the block is read into `ise_scores`, and an empty field is this format's
  ordinary null (no `null_variant` warning; in compact9 an empty field is still a variant).

The format is decided per document: legacy6 when no row has rec_node_type (paper/sil/fil) as its
5th value and some row has 6-8 values.
Every repair is a typed `ParseWarning` (see records.WARNING_KINDS); `parse_compact(s).warnings`.
"""

from __future__ import annotations

import re

from glmtune.tasks.oral_reading.records import (
    DP_OMIT, IseRecord, PauseNode, Phone, Syllable,
)

FIELDS9 = ("beg", "end", "symbol", "time_len", "node_type", "dp", "is_yun", "perr", "perr_level")
FIELDS6 = ("beg", "end", "dp", "mono_tone", "is_yun", "perr")
_INT_FIELDS = {"beg", "end", "time_len", "dp", "is_yun", "perr", "perr_level"}

# §3 row 10: full-width separators the upstream PDF/OCR produced.
_FULLWIDTH = str.maketrans({"：": ":", "，": ",", "；": ";", "｛": "{", "｝": "}"})
_BODY = re.compile(r"\{([^{}]*)\}")
_TRUNC = re.compile(r"(\.{3,}|…+|。{3,})\s*[。.]?\s*$")
_NULL_WORDS = {"null", "none", "nan", "", "-"}
_SCORE_NAMES = {
    "总分": "total_score", "声韵分": "phone_score", "调型分": "tone_score", "流畅度分": "fluency_score",
    "完整度分": "integrity_score", "准确度分": "accuracy_score", "情感分": "emotion_score",
}
_SCORE = re.compile(r"([A-Za-z_]+_score|总分|声韵分|调型分|流畅度分|完整度分|准确度分|情感分)(?:【[^】]*】)?"
                    r"\s*[:=]\s*(-?\d+(?:\.\d+)?)")


def _ocr_fold(tok: str) -> str:
    """OCR confuses l with I, 1 and |; fold them before measuring the distance to 'null'."""
    return tok.translate(str.maketrans({"I": "l", "1": "l", "|": "l"})).lower()


def _within_one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) <= 1
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def null_kind(tok: str) -> str | None:
    """'null' for an exact null, 'variant' for an OCR/typo null (§3 row 3), None for a value."""
    if tok == "null":
        return "null"
    if tok in ("None", "NaN", "nan", "", "-") or tok.lower() in _NULL_WORDS:
        return "variant"
    if len(tok) >= 3 and not re.search(r"\d", tok.replace("1", "l")) and _within_one_edit(_ocr_fold(tok), "null"):
        return "variant"
    return None


class _Rows:
    """Turns raw `key:{…}` bodies into value dicts, warning on every repair."""

    def __init__(self, rec: IseRecord):
        self.rec = rec
        self.float_ints = 0

    def to_int(self, tok: str, name: str, row: int) -> int | None:
        try:
            if re.fullmatch(r"-?\d+", tok):
                return int(tok)
            val = float(tok)
        except ValueError:
            self.rec.warn("bad_int", f"{name}={tok!r} is not an integer; set to null", row)
            return None
        if val != val or not val.is_integer():
            self.rec.warn("bad_int", f"{name}={tok!r} is not integral; set to null", row)
            return None
        self.float_ints += 1  # §3 row 5: 0.0/1.0 are pandas artefacts; reported once per document
        return int(val)

    def values(self, key: str, toks: list[str], names: tuple[str, ...], row: int) -> dict | None:
        n = len(names)
        if len(toks) > n:
            extras = toks[n:]
            if all(null_kind(t) for t in extras):
                self.rec.warn("extra_fields", f"{len(toks)} values for {n} fields; null extras dropped", row)
                toks = toks[:n]
            else:
                self.rec.warn("extra_fields", f"{len(toks)} values with non-null extras {extras}; row dropped", row)
                return None
        elif len(toks) < n:
            self.rec.warn("missing_fields", f"{len(toks)} values for {n} fields; padded with null", row)
            toks = toks + ["null"] * (n - len(toks))
        out: dict = {}
        for name, tok in zip(names, toks):
            kind = null_kind(tok)
            if kind == "variant" and tok == "" and self.rec.source_format == "legacy6":
                kind = "null"  # the legacy converter writes absent values as empty fields
            if kind == "variant" and not (name == "symbol" and tok == "nan" and key == "nan"):
                self.rec.warn("null_variant", f"{name}={tok!r} read as null", row)
            if kind is not None and not (name == "symbol" and tok == "nan" and key == "nan"):
                out[name] = None
            elif name in _INT_FIELDS:
                out[name] = self.to_int(tok, name, row)
            else:
                out[name] = tok
        return out


def _split_bodies(text: str):
    """Yield (row_index, key or None, [tokens]) for each `{…}` body; key = last token before ':'."""
    last = 0
    for i, m in enumerate(_BODY.finditer(text)):
        pre = text[last:m.start()].rstrip()
        last = m.end()
        key = None
        if pre.endswith(":"):
            head = re.split(r"[\s;]+", pre[:-1].rstrip())
            key = head[-1] if head and head[-1] else None
        yield i, key, [t.strip() for t in m.group(1).split(",")]


def _is_number_or_null(tok: str) -> bool:
    if null_kind(tok):
        return True
    try:
        float(tok)
        return True
    except ValueError:
        return False


def parse_compact(text: str, passage: str | None = None) -> IseRecord:
    """Parse a compact9 or legacy6 string (or a whole prompt containing one) into an `IseRecord`."""
    rec = IseRecord(text=passage)
    text = text.translate(_FULLWIDTH)
    # §3 row 13: parse only the quantized part, not a rubric JSON that may precede it.
    for marker in ("量化数据如下", "量化数据"):  # the first is the legacy converter's, after its own legend
        if marker in text:
            text = text[text.index(marker):]
            break
    if _TRUNC.search(text.rstrip().rstrip("}").rstrip()) or _TRUNC.search(text.rstrip()):
        rec.truncated = True
        rec.warn("truncation_marker", "the data end with a truncation marker (...... or …)")
    first = text.find("{")
    head = text[:first] if first >= 0 else text
    for name, val in _SCORE.findall(head):
        rec.ise_scores[_SCORE_NAMES.get(name, name)] = float(val)
    if rec.ise_scores:
        rec.warn("score_block", f"leading score block skipped: {rec.ise_scores}")

    bodies = list(_split_bodies(text))
    # compact9 rows carry rec_node_type (paper/sil/fil) as 5th value; legacy6 rows never do.
    keyed = [t for _, k, t in bodies if k]
    compact_votes = sum(len(t) >= 5 and t[4].strip().lower() in ("paper", "sil", "fil") for t in keyed)
    legacy = compact_votes == 0 and any(6 <= len(t) <= 8 for t in keyed)
    rec.source_format = "legacy6" if legacy else "compact9"
    names = FIELDS6 if legacy else FIELDS9
    rows = _Rows(rec)
    for i, key, toks in bodies:
        block = [_SCORE.fullmatch(t) for t in toks]
        if key is None and all(block):  # the legacy `{流畅度分:…,总分【模型回归】:…}` block
            for m in block:
                rec.ise_scores[_SCORE_NAMES.get(m.group(1), m.group(1))] = float(m.group(2))
            rec.warn("score_block", f"ISE score block read: {rec.ise_scores}", i)
            continue
        if len(toks) < 6 or not (_is_number_or_null(toks[0]) and _is_number_or_null(toks[1])):
            rec.warn("junk_row", f"dropped non-record body {key or ''}{{{','.join(toks)[:40]}}}", i)
            continue
        if key is None:
            rec.warn("keyless_row", f"skipped keyless body {{{','.join(toks)}}}", i)
            continue
        vals = rows.values(key, toks, names, i)
        if vals is not None:
            _add_row(rec, key, vals, i)
    if rows.float_ints:
        rec.warn("float_int", f"{rows.float_ints} integers were written as floats (e.g. 0.0)")
    return rec


def _fix_span(rec: IseRecord, vals: dict, row: int) -> tuple[int | None, int | None]:
    beg, end, tl = vals.get("beg"), vals.get("end"), vals.get("time_len")
    if beg is not None and end is not None:
        if end < beg:
            rec.warn("bad_span", f"end {end} < beg {beg}; positions nulled", row)
            return None, None
        if tl is not None and tl != end - beg:
            rec.warn("time_len", f"time_len {tl} != end-beg {end - beg}; recomputed from positions", row)
    return beg, end


def _add_row(rec: IseRecord, key: str, v: dict, row: int) -> None:
    beg, end = _fix_span(rec, v, row)
    node_type = (v.get("node_type") or "").lower()
    kind = key.lower() if key.lower() in ("sil", "fil") else node_type if node_type in ("sil", "fil") else None
    if kind:
        prev = rec.items[-1] if rec.items else None
        # §3 row 6: the flattener emits syll + phone rows for one sil/fil; merge same-span repeats.
        if isinstance(prev, PauseNode) and prev.kind == kind and (prev.beg, prev.end) == (beg, end):
            prev.dp = prev.dp if prev.dp is not None else v.get("dp")
            rec.warn("dedup", f"duplicate {kind} row {beg}-{end} merged", row)
            return
        rec.items.append(PauseNode(kind, beg, end, v.get("dp")))
        return
    is_yun = v.get("is_yun")
    if is_yun in (0, 1):  # §3 rows 2/8: a phone iff is_yun ∈ {0,1}, never by key spelling
        mono = v.get("mono_tone")
        digit = re.fullmatch(r"(?:TONE)?(\d)(?:\.0)?", mono or "", re.I)
        phone = Phone(is_yun, key, beg, end, v.get("dp"), v.get("perr"), v.get("perr_level"),
                      f"TONE{digit.group(1)}" if digit else None)
        _attach(rec, phone, row)
        return
    if rec.source_format == "legacy6":
        rec.warn("junk_row", f"legacy row {key!r} is neither phone nor sil/fil; dropped", row)
        return
    rec.items.append(Syllable(key, v.get("symbol"), beg, end))


def _attach(rec: IseRecord, phone: Phone, row: int) -> None:
    slot = "final" if phone.is_yun == 1 else "initial"
    prev = rec.items[-1] if rec.items else None
    # An initial may not follow a final of the same syllable: that means a new syllable.
    if isinstance(prev, Syllable) and getattr(prev, slot) is None and not (slot == "initial" and prev.final):
        setattr(prev, slot, phone)
        if prev.synthetic:
            _extend(prev, phone)
        return
    if rec.source_format != "legacy6":
        rec.warn("orphan_phone", f"phone {phone.label!r} has no open syllable; synthetic syllable opened", row)
    syl = Syllable(None, None, phone.beg, phone.end, synthetic=True)
    setattr(syl, slot, phone)
    if phone.dp == DP_OMIT and phone.beg is None:
        syl.beg = syl.end = None
    rec.items.append(syl)


def _extend(syl: Syllable, phone: Phone) -> None:
    if phone.beg is not None and (syl.beg is None or phone.beg < syl.beg):
        syl.beg = phone.beg
    if phone.end is not None and (syl.end is None or phone.end > syl.end):
        syl.end = phone.end
