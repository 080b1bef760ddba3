"""Run `glmtune.plan` checks before training: print warnings, stop on a fatal finding (plan.strict)."""

from __future__ import annotations

from glmtune.errors import GlmtuneError


class PreflightError(GlmtuneError, RuntimeError):
    """A fatal plan finding (plan.strict) stops training before it starts (exit 2)."""


def run_preflight(cfg, data, loaded, quiet: bool = False) -> list:
    from glmtune.data.stats import compute_stats
    from glmtune.plan.facts import facts_for_loaded
    from glmtune.plan.preflight import preflight

    stats = compute_stats(data.train_conversations + data.val_conversations, data.renderer)
    split = (len(data.train_conversations), len(data.val_conversations))
    findings = preflight(cfg, stats, facts_for_loaded(loaded), split=split)
    fatal = [f for f in findings if f.level == "fatal"]
    if not quiet:
        for f in findings:
            print(f"[plan:{f.level}] {f.code}: {f.message}", flush=True)
    if fatal and cfg.plan.strict:
        raise PreflightError("training stopped by the pre-flight check (set plan.strict=false to override):\n  "
                             + "\n  ".join(f.message for f in fatal))
    return findings
