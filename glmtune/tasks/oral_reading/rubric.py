"""The rubric metric engine: docs/oral_scoring_spec.md §0 and §4, computed exactly with `fractions.Fraction`.

    N      = #reference syllables (dp ∈ {0,16,128}); never the Hanzi count of the text (§0.4)
    E_*    = errors over read reference syllables + N_omit (an omission is one error of each kind, §0.5)
    声母/韵母/声调 = 1 − E/N; 声韵 = 1 − (E_init+E_final)/(2N)
    字/分钟 = 60·N_read / ((t1 − t0)/100), t0/t1 = first onset/last offset of timed paper syllables (§0.6)
    停顿   = F_int / N, fil strictly inside [t0, t1] (§0.7)
    完整度 = max(0, 1 − (N_ins + N_omit + N_rep)/N), N_ins = paper dp-32 syllables only (§0.8)
    bands  = inclusive lower edges compared as Fractions (§0.9)
    total  = (0.55·A + 0.25·F + 0.10·C [+ 0.10·感情]) [/0.90 without 感情] (§0.10)

Deviations / choices beyond the spec:
- N = 0 (nothing to grade): every accuracy and the completeness are 0 and `empty` is set, so a
  blank recording bands 1 instead of dividing by zero.
- No timed syllable: 字/分钟 is 0 (band 1); `duration_s` is None.
- Nothing read (N_read = 0, including N = 0): 停顿 bands 1 like every other dimension. With no
  syllable read there is no fil between two syllables, so the ratio 0/N would otherwise band 5
  ("no unreasonable pauses") for a recording in which nothing was said.
- A result ISE rejected (`is_rejected="true"`, §2.9) is graded like any other, but `rejection` carries
  the flag, `except_info` and its reason, and `ise_expected` = 0.3 × `ise_style`: ISE reports the
  phone/tone scores of a rejected result as exactly 0.3 × the §2.9 values.
- `ise_style` recomputes ISE's phone_score/tone_score by §2.9 so they can sit next to ISE's own
  values from XML (`IseRecord.ise_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from glmtune.tasks.oral_reading.records import (
    DP_INSERT, DP_NORMAL, DP_OMIT, DP_REPEAT, DP_SUB, FRAMES_PER_SECOND, REJECTED_SCORE_FACTOR, IseRecord,
    PauseNode, Syllable, cjk_count,
)

DIMENSIONS = ("语速", "停顿", "声母", "韵母", "声调", "完整度")  # the answer's order (§4 output format)
ACC_EDGES = (Fraction(9, 10), Fraction(7, 10))
RATE_EDGES = (Fraction(120), Fraction(60))
PAUSE_EDGES = (Fraction(3, 100), Fraction(10, 100))
COMPLETE_EDGES = (Fraction(95, 100), Fraction(85, 100))
LONG_SIL_FRAMES = 100  # §4: informational long-pause flag, ≥ 1.0 s
_PUNCT = set("，。！？；：、,.!?;:…—\"“”‘’（）()《》「」『』 \n")


def band_high_is_good(value: Fraction, edges: tuple[Fraction, Fraction]) -> int:
    """5 if value ≥ edges[0], 3 if value ≥ edges[1], else 1 (inclusive lower edges, §0.9)."""
    return 5 if value >= edges[0] else 3 if value >= edges[1] else 1


def band_pause(ratio: Fraction) -> int:
    """停顿: ≤ 3% → 5, ≤ 10% → 3, else 1 (§0.9)."""
    return 5 if ratio <= PAUSE_EDGES[0] else 3 if ratio <= PAUSE_EDGES[1] else 1


@dataclass
class OralMetrics:
    n: int
    n_omit: int
    n_sub: int
    n_read: int
    n_ins: int
    n_rep: int
    e_init: int
    e_final: int
    e_tone: int
    acc_initial: Fraction
    acc_final: Fraction
    acc_tone: Fraction
    acc_segmental: Fraction  # 声韵
    t0: int | None
    t1: int | None
    rate_per_min: Fraction
    f_int: int
    f_lead: int
    f_trail: int
    pause_ratio: Fraction
    completeness: Fraction
    long_sil_nonpunct: int | None
    text_chars: int | None
    partial: bool
    empty: bool
    bands: dict[str, int] = field(default_factory=dict)
    band_segmental: int = 1
    ise_style: dict[str, float] = field(default_factory=dict)
    ise_reported: dict[str, float] = field(default_factory=dict)
    rejection: dict | None = None  # {"is_rejected", "except_info", "reason", "ise_factor"} when ISE rejected it
    ise_expected: dict[str, float] = field(default_factory=dict)  # what ISE should report: ise_style × factor

    @property
    def duration_s(self) -> Fraction | None:
        return None if self.t0 is None else Fraction(self.t1 - self.t0, FRAMES_PER_SECOND)

    def weighted_total(self, emotion: int | None = None) -> Fraction:
        """§0.10 on the 1-5 scale; without 感情 renormalised by 0.90. Multiply by 20 for /100."""
        a = Fraction(self.band_segmental + self.bands["声调"], 2)
        f = Fraction(self.bands["语速"] + self.bands["停顿"], 2)
        c = self.bands["完整度"]
        base = Fraction(55, 100) * a + Fraction(25, 100) * f + Fraction(10, 100) * c
        if emotion is None:
            return base / Fraction(90, 100)
        return base + Fraction(10, 100) * emotion


def _frac(num: int, den: int) -> Fraction:
    return Fraction(num, den) if den else Fraction(0)


def compute_metrics(rec: IseRecord, text: str | None = None) -> OralMetrics:
    text = text if text is not None else rec.text
    sylls = rec.syllables
    ref = [s for s in sylls if s.dp in (DP_NORMAL, DP_OMIT, DP_SUB)]
    read = [s for s in ref if s.dp in (DP_NORMAL, DP_SUB)]
    n, n_omit = len(ref), sum(s.dp == DP_OMIT for s in ref)
    n_sub = sum(s.dp == DP_SUB for s in ref)
    n_ins = sum(s.dp == DP_INSERT for s in sylls)
    n_rep = sum(s.dp == DP_REPEAT for s in sylls)
    e_init = sum(s.initial_error for s in read) + n_omit
    e_final = sum(s.final_error for s in read) + n_omit
    e_tone = sum(s.tone_error for s in read) + n_omit
    empty = n == 0
    one = Fraction(1)
    acc = (lambda e: Fraction(0) if empty else one - Fraction(e, n))

    # §4 timing: paper syllables (ref, inserted, repeated) with e > b, omissions excluded.
    timed = [s for s in sylls if s.timed and s.dp != DP_OMIT]
    t0 = min((s.beg for s in timed), default=None)
    t1 = max((s.end for s in timed), default=None)
    n_read = n - n_omit
    rate = Fraction(0) if t0 is None or t1 == t0 else Fraction(60 * n_read * FRAMES_PER_SECOND, t1 - t0)

    fils = [p for p in rec.pauses if p.kind == "fil" and p.beg is not None and p.end is not None]
    if t0 is None:
        f_int, f_lead, f_trail = 0, len(fils), 0
    else:
        f_int = sum(p.beg >= t0 and p.end <= t1 for p in fils)
        f_lead = sum(p.beg < t0 for p in fils)
        f_trail = len(fils) - f_int - f_lead
    pause_ratio = _frac(f_int, n)
    completeness = Fraction(0) if empty else max(Fraction(0), one - Fraction(n_ins + n_omit + n_rep, n))

    chars = cjk_count(text) if text else None
    if chars is not None and chars != n and not any(w.kind == "text_mismatch" for w in rec.warnings):
        rec.warn("text_mismatch", f"N={n} reference syllables but the text has {chars} CJK characters")
    m = OralMetrics(
        n=n, n_omit=n_omit, n_sub=n_sub, n_read=n_read, n_ins=n_ins, n_rep=n_rep,
        e_init=e_init, e_final=e_final, e_tone=e_tone,
        acc_initial=acc(e_init), acc_final=acc(e_final), acc_tone=acc(e_tone),
        acc_segmental=Fraction(0) if empty else one - Fraction(e_init + e_final, 2 * n),
        t0=t0, t1=t1, rate_per_min=rate, f_int=f_int, f_lead=f_lead, f_trail=f_trail,
        pause_ratio=pause_ratio, completeness=completeness,
        long_sil_nonpunct=_long_sil_nonpunct(rec, text) if chars == n else None,
        text_chars=chars, partial=bool(rec.truncated and chars is not None and n < chars), empty=empty,
        ise_reported=dict(rec.ise_scores),
    )
    m.bands = {
        "语速": band_high_is_good(rate, RATE_EDGES),
        "停顿": band_pause(pause_ratio) if n_read > 0 else 1,  # nothing read: no fluency to credit
        "声母": band_high_is_good(m.acc_initial, ACC_EDGES),
        "韵母": band_high_is_good(m.acc_final, ACC_EDGES),
        "声调": band_high_is_good(m.acc_tone, ACC_EDGES),
        "完整度": band_high_is_good(completeness, COMPLETE_EDGES),
    }
    m.band_segmental = band_high_is_good(m.acc_segmental, ACC_EDGES)
    m.ise_style = ise_style_scores(rec)
    factor = REJECTED_SCORE_FACTOR if rec.rejected else 1.0
    m.ise_expected = {k: v * factor for k, v in m.ise_style.items()}
    if rec.rejected:
        m.rejection = {"is_rejected": True, "except_info": rec.except_info, "reason": rec.except_reason(),
                       "ise_factor": REJECTED_SCORE_FACTOR}
    return m


def ise_style_scores(rec: IseRecord) -> dict[str, float]:
    """§2.9 ISE conventions over ALL paper syllables (incl. dp 16/32/64):
    phone_score = 100·correct phones/phones; tone_score = 100·#(final perr ∈ {0,1})/#syllables."""
    sylls = rec.syllables
    phones = [p for s in sylls for p in s.phones()]
    out: dict[str, float] = {}
    if phones:
        out["phone_score"] = 100.0 * sum(p.ise_correct for p in phones) / len(phones)
    if sylls:
        out["tone_score"] = 100.0 * sum(s.final is not None and s.final.perr in (0, 1) for s in sylls) / len(sylls)
    return out


def _long_sil_nonpunct(rec: IseRecord, text: str | None) -> int:
    """#sil ≥ 1 s right before reference syllable i > 0 whose text position has no punctuation before it."""
    punct_before: list[bool] = []
    seen_punct = False
    for ch in text or "":
        if ch in _PUNCT or not ch.strip():
            seen_punct = True
        elif cjk_count(ch):
            punct_before.append(seen_punct)
            seen_punct = False
    count, i, long_sil = 0, 0, False
    for item in rec.items:
        if isinstance(item, PauseNode):
            long_sil = long_sil or (item.kind == "sil" and item.time_len >= LONG_SIL_FRAMES)
        elif isinstance(item, Syllable):
            if item.is_reference:
                if i > 0 and long_sil and i < len(punct_before) and not punct_before[i]:
                    count += 1
                i += 1
            long_sil = False
    return count


def metrics_table(m: OralMetrics) -> list[tuple[str, str, str]]:
    """(name, value, band) rows shared by the CLI table and the evidence prompt."""
    pct = (lambda f: f"{float(f) * 100:.1f}%")
    dur = m.duration_s
    return [
        ("总音节数N", str(m.n), ""),
        ("漏读/替换/增读/回读", f"{m.n_omit}/{m.n_sub}/{m.n_ins}/{m.n_rep}", ""),
        ("声母", f"错{m.e_init}，正确率{pct(m.acc_initial)}", str(m.bands["声母"])),
        ("韵母", f"错{m.e_final}，正确率{pct(m.acc_final)}", str(m.bands["韵母"])),
        ("声调", f"错{m.e_tone}，正确率{pct(m.acc_tone)}", str(m.bands["声调"])),
        ("声韵", pct(m.acc_segmental), str(m.band_segmental)),
        ("语速", f"{float(m.rate_per_min):.1f}字/分钟（{float(dur) if dur is not None else 0:.2f}秒）", str(m.bands["语速"])),
        ("停顿", f"句中fil {m.f_int}，占{pct(m.pause_ratio)}（句首{m.f_lead}，句尾{m.f_trail}）", str(m.bands["停顿"])),
        ("完整度", pct(m.completeness), str(m.bands["完整度"])),
    ] + ([("ISE拒识", f"except_info={m.rejection['except_info']}（{m.rejection['reason']}），"
                      f"ISE分数=重算值×{m.rejection['ise_factor']}", "")] if m.rejection else [])
