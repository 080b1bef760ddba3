"""Typed model of one iFlytek ISE (Chinese, `ent=cn_vip`) result, whatever format it came from.

An `IseRecord` is the ordered list of syllable-level nodes of the recording: `Syllable`s (paper
nodes, each with its initial and final `Phone`) and `PauseNode`s (sil/fil). Spans are ISE frames of
10 ms (docs/oral_scoring_spec.md §0.1, §2.2); `time_len` is never stored because it is `end - beg` (§0.1).

Every repair a parser makes is a `ParseWarning` with a machine-readable `kind` (§3): nothing is
fixed silently. Kinds used by the parsers are listed in `WARNING_KINDS`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from glmtune.config.load import ConfigError

FRAMES_PER_SECOND = 100  # §2.2: beg_pos/end_pos/time_len are 10 ms frames

DP_NORMAL, DP_OMIT, DP_INSERT, DP_REPEAT, DP_SUB = 0, 16, 32, 64, 128
REFERENCE_DP = frozenset({DP_NORMAL, DP_OMIT, DP_SUB})  # §0.4: N counts dp 0/16/128
NEUTRAL_TONE_DIGITS = frozenset({0, 5, 6, 7, 8, 9})  # §2.8: 0 and 5-9 all mean neutral

WARNING_KINDS = {
    "null_variant": "a null written as pull/nul/nuII/None/NaN/-/'' (§3 row 3)",
    "extra_fields": "more than 9 (or 6) values; null extras dropped, non-null extras drop the row (§3 row 4)",
    "missing_fields": "fewer values than the format has; right-padded with null (§3 row 4)",
    "float_int": "integers written as floats (0.0, 1.0): pandas NaN-coercion artefacts (§3 row 5)",
    "bad_int": "a non-integral or unreadable integer (1.O, 2.5) became null (§3 row 5)",
    "dedup": "consecutive sil/fil rows with the same span merged (§3 row 6)",
    "time_len": "time_len disagrees with end-beg; positions trusted (§3 row 9)",
    "bad_span": "end < beg; positions nulled (§3 row 9)",
    "truncation_marker": "a trailing ......, … or } marks truncated data (§3 row 10)",
    "score_block": "a leading ISE score block was skipped; its values are kept in ise_scores (§3 row 10)",
    "keyless_row": "a {…} body without a key was skipped (would double-count a phone) (§3 row 13)",
    "junk_row": "legend/JSON/OCR fragment dropped: non-numeric beg/end or < 6 values (§3 row 13)",
    "orphan_phone": "a phone with no open syllable slot opened a synthetic syllable (§3 row 2)",
    "missing_dp": "a syllable without dp on itself or its phones; dp inferred from key/symbol (§3 row 1)",
    "text_mismatch": "N differs from the CJK count of the displayed text (§3 row 12)",
    "xml": "an XML attribute could not be read",
    "log_prefix": "text before the XML (e.g. `sid:… 最终识别结果` log lines) was skipped",
}

# ISE's top-level except_info codes (§2.9; iFlytek's ISE result documentation). A code not listed here
# is shown as its number.
EXCEPT_INFO = {
    "0": "正常",
    "28673": "无语音输入或音量过小",
    "28676": "乱读：所读内容与试题不符",
    "28680": "音频信噪比低",
    "28690": "音频截幅",
}
# A rejected result (is_rejected="true") reports phone_score and tone_score as exactly 0.3 × the values
# recomputed by §2.9 (checked on 120 real rejected results with except_info 28676 and 28689).
REJECTED_SCORE_FACTOR = 0.3


class OralInputError(ConfigError):
    """An input that is not a readable ISE result; the message names the file (and line) and why."""

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_cjk(s: str | None) -> bool:
    return bool(s) and all(_CJK.match(c) for c in s)


def cjk_count(text: str | None) -> int:
    return len(_CJK.findall(text or ""))


@dataclass(frozen=True)
class ParseWarning:
    kind: str
    message: str
    row: int | None = None  # 0-based index of the record body in the input, when there is one

    def __str__(self) -> str:
        where = f"row {self.row}: " if self.row is not None else ""
        return f"[{self.kind}] {where}{self.message}"


@dataclass
class Phone:
    is_yun: int  # 0 initial (声母, incl. pseudo-initials _i _u _v _a _e _o), 1 final (韵母) §2.5
    label: str | None = None  # ISE phone label (s, ua, iii, _i); the compact row's key
    beg: int | None = None
    end: int | None = None
    dp: int | None = None
    perr: int | None = None
    perr_level: int | None = None  # §2.6: severity only, never used to count errors
    mono_tone: str | None = None  # §2.7: the REFERENCE tone, not the detected one

    @property
    def ise_correct(self) -> bool:
        """§2.9: ISE counts a phone correct iff perr=0, or a final with a tone-only error (perr=2)."""
        return self.perr == 0 or (self.is_yun == 1 and self.perr == 2)


@dataclass
class Syllable:
    key: str | None  # Hanzi for reference syllables, toneless pinyin for inserted/repeated ones
    symbol: str | None = None  # pinyin + surface tone digit (su2, qi0); toneless for dp 32/64
    beg: int | None = None
    end: int | None = None
    initial: Phone | None = None
    final: Phone | None = None
    declared_dp: int | None = None  # the XML syll's own dp_message; compact syll rows carry none
    synthetic: bool = False  # opened by a phone without a syllable row (legacy format, §3 row 11)

    @property
    def dp(self) -> int:
        """§3 row 1: the syllable's dp comes from its phones when the row itself has none."""
        if self.declared_dp is not None:
            return self.declared_dp
        for ph in (self.final, self.initial):
            if ph is not None and ph.dp is not None:
                return ph.dp
        return DP_NORMAL if self.looks_like_reference else DP_INSERT

    @property
    def looks_like_reference(self) -> bool:
        """§3 row 1: reference ⇔ key is CJK or symbol ends in a digit."""
        return is_cjk(self.key) or bool(self.symbol and self.symbol[-1:].isdigit())

    @property
    def is_reference(self) -> bool:
        return self.dp in REFERENCE_DP

    @property
    def tone(self) -> int | None:
        """Surface tone 1-4, 0 for neutral (§2.8: 0 and 5-9), None when the symbol has no digit."""
        if self.symbol and self.symbol[-1:].isdigit():
            d = int(self.symbol[-1])
        elif self.final is not None and self.final.mono_tone and self.final.mono_tone[-1:].isdigit():
            d = int(self.final.mono_tone[-1])  # §2.7: mono_tone is the reference tone (legacy rows)
        else:
            return None
        return 0 if d in NEUTRAL_TONE_DIGITS else d

    @property
    def timed(self) -> bool:
        return self.beg is not None and self.end is not None and self.end > self.beg

    # §0.3: perr is meaningful only when dp ∈ {0,128}.
    @property
    def initial_error(self) -> bool:
        return self.dp in (DP_NORMAL, DP_SUB) and self.initial is not None and self.initial.perr == 1

    @property
    def final_error(self) -> bool:
        return self.dp in (DP_NORMAL, DP_SUB) and self.final is not None and self.final.perr in (1, 3)

    @property
    def tone_error(self) -> bool:
        # §0.5: neutral-tone syllables are never tone errors (ISE never flags them).
        if self.tone == 0:
            return False
        return self.dp in (DP_NORMAL, DP_SUB) and self.final is not None and self.final.perr in (2, 3)

    def phones(self) -> list[Phone]:
        return [p for p in (self.initial, self.final) if p is not None]


@dataclass
class PauseNode:
    kind: str  # "sil" or "fil" (§2.3)
    beg: int | None = None
    end: int | None = None
    dp: int | None = None  # fil always has 32 in real data

    @property
    def time_len(self) -> int:
        return (self.end - self.beg) if self.beg is not None and self.end is not None else 0


Item = Syllable | PauseNode


@dataclass
class IseRecord:
    items: list[Item] = field(default_factory=list)
    warnings: list[ParseWarning] = field(default_factory=list)
    source_format: str = "compact9"  # compact9 | legacy6 | xml | synth
    text: str | None = None  # the displayed passage, when known
    ise_scores: dict[str, float] = field(default_factory=dict)  # ISE's own scores (XML or score block)
    truncated: bool = False  # a truncation marker was present (§3 row 10)
    except_info: str | None = None  # §2.9 top-level flags (XML only)
    is_rejected: bool | None = None

    @property
    def rejected(self) -> bool:
        return bool(self.is_rejected)

    def except_reason(self) -> str | None:
        if self.except_info is None:
            return None
        return EXCEPT_INFO.get(str(self.except_info), f"ISE异常码{self.except_info}")

    @property
    def syllables(self) -> list[Syllable]:
        return [i for i in self.items if isinstance(i, Syllable)]

    @property
    def pauses(self) -> list[PauseNode]:
        return [i for i in self.items if isinstance(i, PauseNode)]

    def warn(self, kind: str, message: str, row: int | None = None) -> None:
        assert kind in WARNING_KINDS, kind
        self.warnings.append(ParseWarning(kind, message, row))

    def warning_counts(self) -> Counter:
        return Counter(w.kind for w in self.warnings)
