"""Checks run before the first training step (`glmtune train` calls `preflight`; `glmtune plan` prints them).

fatal = the run would train on nothing useful (every sample cut, cutoff below the template's own
length, a cloud-only model); train stops unless plan.strict=false. warn = likely a bad run (warm-up
longer than 30% of the steps, tiny data × many epochs, lr far from the method's range, memory).
The job glmtune was first built for (the oral-scoring recipe, glmtune/tasks/oral_reading): cutoff 192
with a rubric prompt of ~700 tokens truncates every sample, and 100 warm-up steps are ~48% of a 210-step
run — both caught here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from glmtune.plan.advice import lr_range, recommend_cutoff
from glmtune.plan.schedule import length_report, schedule


@dataclass(frozen=True)
class Finding:
    level: Literal["fatal", "warn", "info"]
    code: str
    message: str

    def to_json(self) -> dict:
        return asdict(self)


def _world(cfg) -> int:
    return int(getattr(cfg.plan, "world_size", 1) or 1)


def preflight(cfg, stats, facts, split: tuple[int, int] | None = None) -> list[Finding]:
    """Findings for training `cfg` on data `stats` (DataStats-shaped) with model `facts` (ModelFacts).

    `split` = (train, validation) counts when the caller knows them exactly.
    """
    out: list[Finding] = []
    d, t, method = cfg.data, cfg.train, cfg.method.name
    if getattr(stats, "approximate", False):
        out.append(Finding("info", "approximate_lengths", getattr(stats, "note", "token counts are estimates")))
    if not stats.total:
        return out + [Finding("fatal", "no_data", "no training samples")]
    lr = length_report(stats, d.cutoff_len, d.overlength)
    rec, _ = recommend_cutoff(stats, facts.context)
    fix = f"set data.cutoff_len={rec} (covers ≥99% of samples)"
    if d.cutoff_len <= lr.template_overhead:
        out.append(Finding("fatal", "cutoff_below_template",
                           f"data.cutoff_len={d.cutoff_len} is not longer than the chat template's own "
                           f"{lr.template_overhead} tokens: no sample can fit; {fix}"))
    if lr.over_cutoff == lr.samples:
        what = {"drop": "dropped — nothing is left to train on", "error": "rejected (overlength=error)",
                "truncate": f"truncated ({lr.prompt_tokens_cut} prompt tokens and {lr.supervised_lost} answer "
                            f"tokens cut): the model would learn answers without the input they depend on"}
        out.append(Finding("fatal", "all_truncated",
                           f"100% of {lr.samples} samples are longer than data.cutoff_len={d.cutoff_len} "
                           f"(p50 {lr.total.p50}, p99 {lr.total.p99} tokens) and would be {what[d.overlength]}; {fix}"))
    elif lr.over_cutoff:
        share = lr.over_share
        level = "fatal" if d.overlength == "error" else ("warn" if share > 0.01 or lr.supervised_lost else "info")
        out.append(Finding(level, "over_cutoff",
                           f"{lr.over_cutoff} of {lr.samples} samples ({share:.1%}) exceed data.cutoff_len="
                           f"{d.cutoff_len} and are {'dropped' if d.overlength == 'drop' else d.overlength + 'd'}; "
                           f"{lr.supervised_lost} answer tokens lost; {fix}"))
    if lr.prompt_over_cutoff and lr.over_cutoff != lr.samples:
        out.append(Finding("warn", "prompt_over_cutoff",
                           f"{lr.prompt_over_cutoff} samples have a prompt alone ≥ cutoff_len={d.cutoff_len}"))
    if d.cutoff_len > facts.context:
        out.append(Finding("warn", "context_exceeded",
                           f"data.cutoff_len={d.cutoff_len} exceeds {facts.name}'s context of {facts.context}"))
    sched = schedule(stats, cfg, _world(cfg), split=split)
    if sched.total_steps and sched.warmup_steps >= sched.total_steps:
        out.append(Finding("warn", "warmup_exceeds_run",
                           f"warm-up {sched.warmup_steps} steps ≥ the run's {sched.total_steps} steps: the learning "
                           f"rate never reaches train.lr={t.lr:g}; use train.warmup_ratio=0.05 (warmup_steps=0)"))
    elif sched.warmup_share > 0.30:
        out.append(Finding("warn", "warmup_share",
                           f"warm-up is {sched.warmup_steps} of {sched.total_steps} steps ({sched.warmup_share:.0%}; "
                           f"{t.epochs:g} epochs × {sched.steps_per_epoch} steps/epoch from {sched.train} samples / "
                           f"effective batch {sched.effective_batch}): most of the run is spent ramping up; "
                           f"3–10% is usual — use train.warmup_ratio=0.05 and train.warmup_steps=0"))
    if sched.train < 1000 and sched.epochs > 5:
        out.append(Finding("warn", "forgetting_risk",
                           f"{sched.train} samples × {sched.epochs:g} epochs: small data seen many times over-fits "
                           f"and erodes general ability (catastrophic forgetting); prefer 3–5 epochs "
                           f"with early stopping on a validation split, or mix in general chat data"))
    lo, _, hi = lr_range(method)
    if t.lr > 3 * hi or t.lr < lo / 3:
        out.append(Finding("warn", "lr_out_of_range",
                           f"train.lr={t.lr:g} is far outside the usual {lo:g}–{hi:g} for {method}"))
    if sched.val < 10 and not d.validation and sched.samples >= 50:
        out.append(Finding("warn", "small_validation",
                           f"only {sched.val} validation samples: too few to see over-fitting; use "
                           f"data.val_size={min(50, max(20, sched.samples // 10))}"))
    if sched.total_steps < 10:
        out.append(Finding("warn", "few_steps", f"only {sched.total_steps} optimizer steps in the whole run"))
    from glmtune.methods import REGISTRY, get

    if facts.quantized_bits and get(method).updates_base_weights:
        others = "/".join(n for n, m in REGISTRY.items() if not (m.updates_base_weights or m.quantizes_base))
        out.append(Finding("fatal", "quantized_base",
                           f"{facts.name} ships {facts.quantized_bits}-bit weights: {method} would train their "
                           f"dequantized, rounded copy; use {others} on it or the unquantised checkpoint"))
    if facts.quantized_bits:
        out.append(_quantized_base(cfg, facts))
    out += _memory_findings(cfg, stats, facts)
    return out


def _quantized_base(cfg, facts) -> Finding:
    """What an INT4/INT8 ChatGLM-6B base costs: glmtune dequantizes it when converting (models/convert_chatglm6b.py)."""
    from glmtune.plan.memory import GIB, setup_from_config

    st = setup_from_config(cfg)
    bits, lin, n_all = facts.quantized_bits, facts.linear_params(), facts.param_count()
    return Finding("info", "quantized_base_memory",
                   f"{facts.name} ships INT{bits} layer weights ({lin * bits / 8 / GIB:.1f} GiB packed); glmtune "
                   f"dequantizes them when it loads the checkpoint, so in memory the frozen base costs what the "
                   f"unquantised model does: {n_all * st.load_bytes / GIB:.1f} GiB at {st.load_bytes} B/param "
                   f"(model.dtype); for a ~4-bit base in memory use method.name=qlora")


def _memory_findings(cfg, stats, facts) -> list[Finding]:
    from glmtune.plan.memory import GIB, cheapest_fix, estimate, parse_gpu, setup_from_config

    p = cfg.plan
    if not (p.gpu or p.gpu_mem_gb):
        return []
    gpu = parse_gpu(p.gpu, p.gpu_mem_gb)
    st = setup_from_config(cfg, gpu=gpu)
    est = estimate(facts, cfg.method.name, st)
    budget = gpu.mem_gib * GIB
    if est.total <= budget:
        return [Finding("info", "memory_fits", f"~{est.total / GIB:.1f} GiB of {gpu.mem_gib:g} GiB on {gpu.name}")]
    fix = cheapest_fix(facts, cfg.method.name, st, budget, min_seq=None, bf16=gpu.bf16)
    hint = f"; cheapest change that fits: {fix[0]} (~{fix[1].total / GIB:.1f} GiB)" if fix else \
        "; nothing short of more GPUs (DeepSpeed ZeRO-3 / FSDP) fits"
    return [Finding("warn", "memory_exceeds",
                    f"~{est.total / GIB:.1f} GiB needed, {gpu.name} has {gpu.mem_gib:g} GiB{hint}")]
