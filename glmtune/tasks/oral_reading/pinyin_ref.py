"""Passage → reference syllables as ISE would align them: surface-tone symbols and ISE phone labels.

Pinyin comes from `pypinyin` (`Style.TONE3`, neutral tone written 5 and mapped to 0, §2.8).
Sandhi, applied in a deliberately simple, documented way (ISE's symbols are surface tones, §2.8),
only inside a punctuation-delimited run:
- 不 bu4 before a 4th tone → bu2.
- 一 yi1 before a 4th tone → yi2; before a 1st/2nd/3rd tone → yi4; otherwise (run end, neutral) yi1.
- Third tones: in a run of consecutive 3rd-tone syllables, alternate from the right: the last stays
  3, the one before becomes 2, the one before that stays 3, … (九九朵 → jiu3 jiu2 duo3, 所以 → suo2 yi3).
ISE phone labels (§2.5): zero initials are _i _u _v _a _e _o; finals use iii (zhi/chi/shi/ri),
ii (zi/ci/si), v/ve/van/vn for ü, uen, uei, iou; 儿 is its own `er` syllable (`_e` + `er`).
"""

from __future__ import annotations

from dataclasses import dataclass

INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z", "c", "s")
_Y_FINALS = {"yu": "v", "yue": "ve", "yuan": "van", "yun": "vn", "yi": "i", "yin": "in", "ying": "ing",
             "ya": "ia", "yao": "iao", "ye": "ie", "you": "iou", "yan": "ian", "yang": "iang", "yong": "iong", "yo": "io"}
_W_FINALS = {"wu": "u", "wa": "ua", "wo": "uo", "wai": "uai", "wei": "uei", "wan": "uan", "wen": "uen",
             "wang": "uang", "weng": "ueng"}


@dataclass(frozen=True)
class RefSyllable:
    char: str  # the Hanzi
    symbol: str  # pinyin + surface tone digit, neutral = 0
    initial: str  # ISE initial label
    final: str  # ISE final label
    punct_before: bool  # a punctuation mark (or the start) precedes it: §4 long-pause flag, XML sentences
    sentence: int  # index of the punctuation-delimited sentence

    @property
    def tone(self) -> int:
        return int(self.symbol[-1])

    @property
    def toneless(self) -> str:
        return self.symbol[:-1]


def split_pinyin(base: str) -> tuple[str, str]:
    """Toneless pinyin → (ISE initial, ISE final). `lv` is ü as pypinyin writes it."""
    base = base.replace("ü", "v")
    if base in ("er",):
        return "_e", "er"
    if base.startswith("y"):
        return ("_v" if base.startswith("yu") else "_i"), _Y_FINALS.get(base, base[1:])
    if base.startswith("w"):
        return "_u", _W_FINALS.get(base, base[1:])
    for ini in INITIALS:
        if base.startswith(ini) and len(base) > len(ini):
            fin = base[len(ini):]
            if ini in ("j", "q", "x") and fin.startswith("u"):
                fin = "v" + fin[1:]
            elif fin == "i" and ini in ("zh", "ch", "sh", "r"):
                fin = "iii"
            elif fin == "i" and ini in ("z", "c", "s"):
                fin = "ii"
            else:
                fin = {"ui": "uei", "un": "uen", "iu": "iou"}.get(fin, fin)
            return ini, fin
    return "_" + base[0], base  # a, e, o, ai, ang, ou …


def _apply_sandhi(chars: list[str], tones: list[int]) -> list[int]:
    out = list(tones)
    for i, ch in enumerate(chars):
        nxt = tones[i + 1] if i + 1 < len(tones) else None
        if ch == "不" and tones[i] == 4 and nxt == 4:
            out[i] = 2
        elif ch == "一" and tones[i] == 1 and nxt:
            out[i] = 2 if nxt == 4 else 4
    i = len(out) - 1
    while i >= 0:  # alternate inside runs of original third tones, from the right
        if tones[i] == 3 and out[i] == 3:
            j = i
            while j - 1 >= 0 and tones[j - 1] == 3:
                j -= 1
            for k in range(i - 1, j - 1, -1):
                out[k] = 2 if (i - k) % 2 == 1 else 3
            i = j - 1
        else:
            i -= 1
    return out


def reference_syllables(text: str) -> list[RefSyllable]:
    """One `RefSyllable` per CJK character of `text`, with surface tones and ISE phone labels."""
    from pypinyin import Style, pinyin

    from glmtune.tasks.oral_reading.records import is_cjk

    runs: list[list[tuple[str, bool, int]]] = [[]]
    punct, sentence = True, 0
    for ch in text:
        if is_cjk(ch):
            runs[-1].append((ch, punct, sentence))
            punct = False
        elif ch.strip():
            if runs[-1]:
                runs.append([])
            if ch in "。！？!?；;…":
                sentence += 1 if not punct else 0
            punct = True
    out: list[RefSyllable] = []
    for run in runs:
        if not run:
            continue
        chars = [c for c, _, _ in run]
        py = [p[0] for p in pinyin("".join(chars), style=Style.TONE3, neutral_tone_with_five=True, errors="ignore")]
        if len(py) != len(chars):  # pypinyin should give one reading per CJK char; be safe
            py = [pinyin(c, style=Style.TONE3, neutral_tone_with_five=True)[0][0] for c in chars]
        bases = [p[:-1] if p[-1:].isdigit() else p for p in py]
        tones = [int(p[-1]) % 5 if p[-1:].isdigit() else 0 for p in py]  # 5 (neutral) → 0
        tones = _apply_sandhi(chars, tones)
        for (ch, pb, sent), base, tone in zip(run, bases, tones):
            ini, fin = split_pinyin(base)
            out.append(RefSyllable(ch, f"{base}{tone}", ini, fin, pb, sent))
    # renumber sentences densely from 0
    ids = {s: i for i, s in enumerate(dict.fromkeys(r.sentence for r in out))}
    return [RefSyllable(r.char, r.symbol, r.initial, r.final, r.punct_before, ids[r.sentence]) for r in out]
