"""What the trainer will see: length percentiles, what the cutoff drops or truncates, and the step
schedule (steps per epoch, total, warm-up share, effective batch, tokens per step).

Works on any object shaped like `glmtune.data.stats.DataStats` (per-sample lists `total`, `prompt`,
`supervised`, `turns`, and `template_overhead`), so the planner runs on real-tokenizer counts and on
the estimates of `glmtune.plan.facts.estimate_stats` alike.

Step counting follows transformers' Trainer (>= 4.46): optimizer steps per epoch =
ceil(ceil(n_train / (batch × world)) / grad_accum); warm-up steps = warmup_steps if > 0 else
ceil(warmup_ratio × total) (`TrainingArguments.get_warmup_steps`).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field


def percentile(values: list[int], p: float) -> int:
    """Nearest-rank percentile: at least p% of values are <= the result (so a cutoff at p99 covers 99%)."""
    if not values:
        return 0
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def round_up(n: int) -> int:
    """Round a cutoff up to a multiple of 64 (<= 1024) or 128 (above): tensor-core friendly shapes."""
    step = 64 if n <= 1024 else 128
    return max(step, math.ceil(n / step) * step)


@dataclass
class Percentiles:
    p50: int
    p90: int
    p99: int
    max: int
    mean: float

    @classmethod
    def of(cls, values: list[int]) -> "Percentiles":
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99), max(values, default=0),
                   round(sum(values) / max(len(values), 1), 1))


@dataclass
class LengthReport:
    samples: int
    turns: Percentiles
    total: Percentiles
    prompt: Percentiles
    supervised: Percentiles
    template_overhead: int
    cutoff: int
    overlength: str
    over_cutoff: int             # samples longer than the cutoff
    prompt_over_cutoff: int      # samples whose prompt alone does not fit
    dropped: int                 # overlength=drop
    truncated: int               # overlength=truncate
    supervised_total: int
    supervised_lost: int         # supervised tokens the cutoff removes (at least)
    prompt_tokens_cut: int       # prompt tokens truncate removes (the model trains without them)
    approximate: bool = False
    note: str = ""

    @property
    def over_share(self) -> float:
        return self.over_cutoff / max(self.samples, 1)

    def to_json(self) -> dict:
        d = asdict(self)
        d["over_share"] = self.over_share
        return d


def length_report(stats, cutoff: int, overlength: str = "truncate") -> LengthReport:
    total, prompt, sup = list(stats.total), list(stats.prompt), list(stats.supervised)
    over = [k for k, t in enumerate(total) if t > cutoff]
    overhead = int(getattr(stats, "template_overhead", 0))
    lost = cut_prompt = 0
    for k in over:
        excess = total[k] - cutoff
        if overlength == "drop":
            lost += sup[k]
        else:
            # truncate: prompt text goes first (never template or stop tokens), then answer tokens.
            removable = max(0, prompt[k] - overhead)
            cut_prompt += min(excess, removable)
            lost += min(sup[k], max(0, excess - removable))
    return LengthReport(
        samples=len(total), turns=Percentiles.of(list(stats.turns)), total=Percentiles.of(total),
        prompt=Percentiles.of(prompt), supervised=Percentiles.of(sup), template_overhead=overhead, cutoff=cutoff,
        overlength=overlength, over_cutoff=len(over),
        prompt_over_cutoff=sum(1 for p in prompt if p >= cutoff),
        dropped=len(over) if overlength == "drop" else 0,
        truncated=len(over) if overlength == "truncate" else 0,
        supervised_total=sum(sup), supervised_lost=lost, prompt_tokens_cut=cut_prompt,
        approximate=bool(getattr(stats, "approximate", False)), note=str(getattr(stats, "note", "")))


def val_count(n: int, val_size: float) -> int:
    """Validation samples split off n: a share when < 1, a count when >= 1."""
    if val_size <= 0 or n < 2:
        return 0
    k = int(round(n * val_size)) if val_size < 1 else int(val_size)
    return min(max(k, 1), n - 1)


@dataclass
class Schedule:
    samples: int
    val: int
    dropped: int
    train: int
    world_size: int
    batch: int
    grad_accum: int
    effective_batch: int
    steps_per_epoch: int
    epochs: float
    total_steps: int
    warmup_steps: int
    warmup_share: float
    tokens_per_epoch: int          # real (unpadded) tokens after the cutoff
    padded_tokens_per_epoch: int   # what the GPU computes, with the configured batching
    supervised_per_epoch: int
    tokens_per_step: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _padded(lengths: list[int], batch: int, group_by_length: bool, seed: int = 0) -> int:
    """Tokens after padding each micro-batch to its longest sample (a seeded shuffle stands in for the sampler)."""
    order = sorted(lengths) if group_by_length else lengths[:]
    if not group_by_length:
        random.Random(seed).shuffle(order)
    return sum(max(order[k:k + batch]) * len(order[k:k + batch]) for k in range(0, len(order), batch))


def schedule(stats, cfg, world_size: int = 1, cutoff: int | None = None,
             split: tuple[int, int] | None = None) -> Schedule:
    """Steps, warm-up and tokens for a RunConfig `cfg` on data `stats` (train + validation samples, the test
    split already removed, as `glmtune.data.dataset.split_conversations` does). `split` = exact
    (train, validation) counts when known; otherwise validation is split off like `_split` does."""
    d, t = cfg.data, cfg.train
    cutoff = cutoff or d.cutoff_len
    total = list(stats.total)
    n = len(total)
    dropped = sum(1 for x in total if x > cutoff) if d.overlength == "drop" else 0
    if split is not None:
        n_val = split[1]
        dropped = round(dropped * split[0] / max(n, 1))
        n_train = max(0, split[0] - dropped)
    else:
        n_val = 0 if d.validation else val_count(n, d.val_size)
        n_train = max(0, n - n_val - dropped)
    micro = math.ceil(n_train / (t.batch_size * world_size)) if n_train else 0
    per_epoch = max(1, math.ceil(micro / t.grad_accum)) if micro else 0
    steps = t.max_steps if t.max_steps else math.ceil(t.epochs * per_epoch)
    warm = t.warmup_steps if t.warmup_steps > 0 else math.ceil(t.warmup_ratio * steps)
    kept = [min(x, cutoff) for x in total if not (d.overlength == "drop" and x > cutoff)]
    share = n_train / max(len(kept), 1)  # the train split is a random subset of what is kept
    real = int(sum(kept) * share)
    padded = int(_padded(kept, t.batch_size, t.group_by_length) * share)
    sup = [s for s, x in zip(stats.supervised, total) if not (d.overlength == "drop" and x > cutoff)]
    eff = t.batch_size * t.grad_accum * world_size
    notes = []
    if t.max_steps:
        notes.append(f"train.max_steps={t.max_steps} overrides epochs ({steps / max(per_epoch, 1):.1f} epochs)")
    return Schedule(
        samples=n, val=n_val, dropped=dropped, train=n_train, world_size=world_size, batch=t.batch_size,
        grad_accum=t.grad_accum, effective_batch=eff, steps_per_epoch=per_epoch,
        epochs=steps / per_epoch if per_epoch else 0.0, total_steps=steps, warmup_steps=warm,
        warmup_share=warm / steps if steps else 0.0, tokens_per_epoch=real, padded_tokens_per_epoch=padded,
        supervised_per_epoch=int(sum(sup) * share), tokens_per_step=real / per_epoch if per_epoch else 0.0,
        notes=notes)
