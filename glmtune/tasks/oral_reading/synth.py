"""Synthetic ISE results with controlled, known error counts (for tests, demos and pre-training data).

`simulate(text, params, seed)` walks the passage's reference syllables (`pinyin_ref`) and decides per
syllable: omitted (dp 16), substituted (dp 128, real perr kept), or read with independent initial /
final / tone errors (perr 1/2/3 on the final, §2.5); after a syllable it may add a repetition
(dp 64, toneless pinyin of that syllable) or an insertion (dp 32, a random toneless syllable).
Pauses: a sil at every punctuation, optional leading/trailing fil, and internal fil nodes (§2.3).
Durations follow the requested speaking rate (syllables per minute of articulation) with jitter.
Everything is drawn from `random.Random(seed)`: same inputs → same record.

The returned `Truth` holds the counts by construction, so a test can check that serialize → parse →
`rubric.compute_metrics` recovers them exactly.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from glmtune.tasks.oral_reading.pinyin_ref import reference_syllables, split_pinyin
from glmtune.tasks.oral_reading.records import (
    DP_INSERT, DP_NORMAL, DP_OMIT, DP_REPEAT, DP_SUB, IseRecord, PauseNode, Phone, Syllable,
)

_INVENTORY = ("ba", "de", "shang", "nan", "bu", "ma", "ta", "shi", "zhe", "ge", "yi", "hen", "le", "wo", "ni")


@dataclass(frozen=True)
class SynthParams:
    p_initial: float = 0.1
    p_final: float = 0.1
    p_tone: float = 0.15
    p_omit: float = 0.0
    p_sub: float = 0.0
    p_ins: float = 0.0
    p_rep: float = 0.0
    p_fil: float = 0.05  # per gap between two syllables
    rate_spm: float = 150.0  # articulation rate, syllables per minute
    p_lead_fil: float = 0.3
    p_trail_fil: float = 0.1


@dataclass
class Truth:
    n: int = 0
    n_omit: int = 0
    n_sub: int = 0
    n_ins: int = 0
    n_rep: int = 0
    e_init: int = 0
    e_final: int = 0
    e_tone: int = 0
    f_int: int = 0
    f_lead: int = 0
    f_trail: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def random_params(rng: random.Random) -> SynthParams:
    """Parameters spread so every band of every dimension occurs (§0.9)."""
    level = rng.choice(("good", "good", "mid", "mid", "weak"))
    err = {"good": 0.05, "mid": 0.18, "weak": 0.35}[level]
    return SynthParams(
        p_initial=rng.uniform(0, err), p_final=rng.uniform(0, err), p_tone=rng.uniform(0, err * 1.4),
        p_omit=rng.choice((0, 0, 0, 0.02, 0.05, 0.15)), p_sub=rng.choice((0, 0, 0.03)),
        p_ins=rng.choice((0, 0, 0.02, 0.06)), p_rep=rng.choice((0, 0, 0.03, 0.08)),
        p_fil=rng.choice((0, 0.02, 0.06, 0.1, 0.2)),
        rate_spm=rng.choice((rng.uniform(40, 90), rng.uniform(90, 160), rng.uniform(150, 240))),
        p_lead_fil=0.3, p_trail_fil=0.1,
    )


def _level(rng: random.Random, perr: int) -> int:
    """perr_level consistent with the observed joint distribution (§2.6)."""
    return {0: 1 if rng.random() < 0.95 else 2, 1: 3 if rng.random() < 0.8 else 2,
            2: 1 if rng.random() < 0.9 else 2, 3: 3 if rng.random() < 0.85 else 2}[perr]


class _Clock:
    def __init__(self, rng: random.Random, rate_spm: float):
        self.rng, self.pos = rng, 0
        self.frames = max(8.0, 6000.0 / max(rate_spm, 1.0))  # 100 frames/s × 60 s / rate

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        beg = self.pos
        self.pos += self.rng.randint(lo, hi)
        return beg, self.pos

    def syllable(self) -> tuple[int, int, int]:
        d = max(6, round(self.frames * self.rng.uniform(0.8, 1.2)))
        beg = self.pos
        self.pos += d
        return beg, beg + max(2, round(d * self.rng.uniform(0.3, 0.5))), self.pos


def _read_syllable(rng: random.Random, char: str, symbol: str, ini: str, fin: str, clock: _Clock,
                   dp: int, perr_i: int, perr_f: int) -> Syllable:
    b, mid, e = clock.syllable()
    tone = f"TONE{symbol[-1]}" if symbol[-1:].isdigit() else None
    echo = dp in (DP_INSERT, DP_REPEAT)
    return Syllable(char, symbol, b, e,
                    Phone(0, ini, b, mid, dp, dp if echo else perr_i, None if echo else _level(rng, perr_i)),
                    Phone(1, fin, mid, e, dp, dp if echo else perr_f, None if echo else _level(rng, perr_f), tone))


def simulate(text: str, params: SynthParams, seed: int) -> tuple[IseRecord, Truth]:
    rng = random.Random(seed)
    refs = reference_syllables(text)
    rec, t = IseRecord(text=text, source_format="synth"), Truth(n=len(refs))
    clock = _Clock(rng, params.rate_spm)
    fil_events: list[tuple[int, int]] = []  # (index in items, timed paper syllables seen before it)
    timed_seen = 0

    def add_pause(kind: str, lo: int, hi: int) -> None:
        b, e = clock.span(lo, hi)
        rec.items.append(PauseNode(kind, b, e, DP_INSERT if kind == "fil" else DP_NORMAL))
        if kind == "fil":
            fil_events.append((len(rec.items) - 1, timed_seen))

    add_pause("sil", 20, 80)
    if rng.random() < params.p_lead_fil:
        add_pause("fil", 1, 30)
        add_pause("sil", 5, 30)
    for i, r in enumerate(refs):
        if i > 0 and r.punct_before:
            add_pause("sil", 20, 90)
        elif i > 0 and rng.random() < params.p_fil:
            add_pause("fil", 8, 40)
        u = rng.random()
        if u < params.p_omit:
            t.n_omit += 1
            t.e_init, t.e_final, t.e_tone = t.e_init + 1, t.e_final + 1, t.e_tone + 1
            rec.items.append(Syllable(r.char, r.symbol, clock.pos, clock.pos,
                                      Phone(0, r.initial, None, None, DP_OMIT, DP_OMIT),
                                      Phone(1, r.final, None, None, DP_OMIT, DP_OMIT, None, f"TONE{r.tone}")))
            continue
        dp = DP_SUB if u < params.p_omit + params.p_sub else DP_NORMAL
        t.n_sub += dp == DP_SUB
        ini_err = rng.random() < params.p_initial
        fin_err = rng.random() < params.p_final
        tone_err = r.tone != 0 and rng.random() < params.p_tone  # §0.5: neutral never a tone error
        if dp == DP_SUB and not (fin_err or ini_err):
            fin_err = True  # a substitution is a misread syllable: at least one segment wrong
        perr_f = 3 if fin_err and tone_err else 1 if fin_err else 2 if tone_err else 0
        t.e_init, t.e_final, t.e_tone = t.e_init + ini_err, t.e_final + fin_err, t.e_tone + tone_err
        rec.items.append(_read_syllable(rng, r.char, r.symbol, r.initial, r.final, clock, dp, int(ini_err), perr_f))
        timed_seen += 1
        if rng.random() < params.p_rep:
            t.n_rep += 1
            rec.items.append(_read_syllable(rng, r.toneless, r.toneless, r.initial, r.final, clock, DP_REPEAT, 0, 0))
            timed_seen += 1
        if rng.random() < params.p_ins:
            t.n_ins += 1
            base = rng.choice(_INVENTORY)
            ini, fin = split_pinyin(base)
            rec.items.append(_read_syllable(rng, base, base, ini, fin, clock, DP_INSERT, 0, 0))
            timed_seen += 1
    if rng.random() < params.p_trail_fil:
        add_pause("sil", 5, 30)
        add_pause("fil", 5, 40)
    add_pause("sil", 20, 80)
    for _, before in fil_events:  # §0.7: internal ⇔ a timed paper syllable on both sides
        if before == 0:
            t.f_lead += 1
        elif before == timed_seen:
            t.f_trail += 1
        else:
            t.f_int += 1
    return rec, t


TEACHER_NOISE = 0.7  # sd of the per-label noise, on the 1-5 scale
TEACHER_HALO = 0.4  # weight of the item's overall impression in every dimension


def teacher_like_labels(m, rng: random.Random, noise: float = TEACHER_NOISE, halo: float = TEACHER_HALO) -> dict[str, int]:
    """Synthetic labels that behave like the upstream teachers' (docs/oral_scoring_spec.md §5), for demos of
    `oral baseline`: scores 1-5 with 2s and 4s, driven by the metrics `m` (an `OralMetrics`) through smooth
    ramps rather than the rubric's steps, holistic (each dimension pulled towards the item's mean
    impression: the real labels correlate 0.23-0.62 across dimensions) and noisy (Gaussian, sd `noise`)."""
    clip = (lambda v: max(0.0, min(1.0, v)))
    acc = (lambda a: 1 + 4 * clip((float(a) - 0.55) / 0.45))
    latent = {
        "语速": 1 + 4 * clip((float(m.rate_per_min) - 40) / 150),
        "停顿": 5 - 4 * clip(float(m.pause_ratio) / 0.15),
        "声母": acc(m.acc_initial),
        "韵母": acc(m.acc_final),
        "声调": acc(m.acc_tone),
        "完整度": 1 + 4 * clip((float(m.completeness) - 0.7) / 0.3),
    }
    mean = sum(latent.values()) / len(latent)
    return {d: max(1, min(5, round((1 - halo) * v + halo * mean + rng.gauss(0, noise)))) for d, v in latent.items()}
