"""Recommended hyper-parameters, each with the reason, derived from the data and the memory estimate.

Ranges are the ones the method papers and the peers' shipped configs use:
  * LoRA / QLoRA lr 1e-4 … 5e-4 (Hu et al. 2021 used 2e-4 for GPT-3-scale; LLaMA-Factory examples 1e-4;
    ChatGLM3 finetune_demo configs/lora.yaml 5e-4 at batch 4);
  * full / freeze lr 1e-5 … 2e-5 (full) and ~5e-5 (freeze): LLaMA-Factory full-SFT examples 1e-5;
  * P-Tuning v2 lr ~1e-2 … 2e-2 (ChatGLM-6B ptuning/train.sh: LR=2e-2, PRE_SEQ_LEN=128);
  * warm-up 3–10 % of the steps (Goyal et al. 2017 warm-up; LLaMA-Factory examples warmup_ratio 0.1);
  * validation 10 % capped at ~50 samples, at least ~20 when the data allows (enough to see the loss
    turn, few enough not to starve a 200-sample training set).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from glmtune.plan.schedule import percentile, round_up



def lr_range(method: str) -> tuple[float, float, float]:
    """(low, recommended, high) train.lr of a registered method (each method module carries its own)."""
    from glmtune.methods import get

    return get(method).lr_range


@dataclass
class Advice:
    key: str            # config key, e.g. data.cutoff_len
    value: object
    current: object
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def recommend_cutoff(stats, context: int, coverage: float = 99.0) -> tuple[int, str]:
    p = percentile(list(stats.total), coverage)
    cut = min(round_up(p), context)
    covered = sum(1 for x in stats.total if x <= cut) / max(len(stats.total), 1)
    reason = (f"p{coverage:g} of the rendered length is {p} tokens; {cut} (rounded up to a multiple of "
              f"{64 if cut <= 1024 else 128}) keeps {covered:.0%} of samples whole")
    if cut == context and p > context:
        reason += f"; capped at the model's context {context}"
    return cut, reason


def recommend_val(n: int) -> tuple[int, str]:
    k = min(50, max(round(0.1 * n), min(20, n // 5)))
    return k, f"10% of {n} samples, capped at 50 and at least 20 where that leaves ≥80% for training"


def recommend_epochs(n_train: int, method: str) -> tuple[int, str]:
    from glmtune.methods import get

    base, why = get(method).epochs(3 if n_train >= 1000 else (4 if n_train >= 300 else 5))
    return base, f"{n_train} training samples; {why}; keep the checkpoint with the lowest validation loss"


def recommend_lr(method: str, effective_batch: int) -> tuple[float, str]:
    lo, rec, hi = lr_range(method)
    return rec, f"{method}: usual range {lo:g}–{hi:g}; {rec:g} suits an effective batch of {effective_batch}"


def recommend_batch(n_train: int, fits_batch: int, sized: bool = True) -> tuple[int, int, str]:
    """Micro-batch = the largest that fits (≤ 8); accumulate to an effective batch of about n/20 in [4, 32]."""
    target = 2 ** round(math.log2(min(32, max(4, n_train / 20)))) if n_train else 4
    micro = max(1, min(fits_batch, target, 8))
    accum = max(1, math.ceil(target / micro))
    why = ("the largest that fits the memory estimate at the recommended cutoff" if sized
           else "the configured one (give --gpu to size it to the memory)")
    return micro, accum, (f"effective batch {micro * accum} ≈ n/20 for {n_train} samples (≥ ~20 optimizer steps "
                          f"per epoch is what lets warm-up and decay work); micro-batch {micro} is {why}, "
                          f"the rest is accumulation")


def advise(cfg, stats, facts, sched, largest_fitting_batch: int | None = None) -> list[Advice]:
    """All recommendations for `cfg` on `stats`. `sched` is the schedule of the *recommended* settings' data."""
    method = cfg.method.name
    out: list[Advice] = []
    cut, why = recommend_cutoff(stats, facts.context)
    out.append(Advice("data.cutoff_len", cut, cfg.data.cutoff_len, why))
    n = len(stats.total)
    k, why = recommend_val(n)
    out.append(Advice("data.val_size", k, cfg.data.val_size, why))
    n_train = n - k
    micro, accum, why = recommend_batch(n_train, largest_fitting_batch or cfg.train.batch_size,
                                        sized=largest_fitting_batch is not None)
    out.append(Advice("train.batch_size", micro, cfg.train.batch_size, why))
    out.append(Advice("train.grad_accum", accum, cfg.train.grad_accum, "see train.batch_size"))
    ep, why = recommend_epochs(n_train, method)
    out.append(Advice("train.epochs", ep, cfg.train.epochs, why))
    lr, why = recommend_lr(method, micro * accum)
    out.append(Advice("train.lr", lr, cfg.train.lr, why))
    steps = math.ceil(ep * math.ceil(math.ceil(n_train / micro) / accum))
    ratio = 0.1 if steps < 100 else 0.05
    out.append(Advice("train.warmup_ratio", ratio, cfg.train.warmup_ratio,
                      f"{ratio:.0%} of {steps} steps = {math.ceil(ratio * steps)} warm-up steps (3–10% is usual; "
                      f"short runs take the upper end); set train.warmup_steps=0 so the ratio applies"))
    if cfg.train.warmup_steps > 0:
        out.append(Advice("train.warmup_steps", 0, cfg.train.warmup_steps,
                          f"a fixed {cfg.train.warmup_steps} steps is {sched.warmup_share:.0%} of this run"))
    from glmtune.methods import get

    if get(method).early_stop_on_small_data and n_train < 1000:
        out.append(Advice("train.eval_steps", max(1, steps // 10), cfg.train.eval_steps,
                          "small data over-fits fast: evaluate ~10 times per run and stop early "
                          "(train.early_stopping_patience=3)"))
    return out
