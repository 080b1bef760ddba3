"""The seed job (seed 000): GLM-4 + LoRA, ~200 rubric-prompt samples, advised cutoff 192 and warm-up 100.

The plan must say before training that every sample is truncated at 192 and that 100 warm-up steps are
~48% of the 7 × ceil(180 / 6) = 210-step run, and recommend a cutoff covering ≥ 99% of samples.
"""

import pytest

from glmtune.config import load_config
from glmtune.data.render import Renderer
from glmtune.data.stats import compute_stats
from glmtune.data.formats import read_file
from glmtune.models.load import load_tokenizer, stop_token_ids
from glmtune.models.families import family_of
from glmtune.plan.advice import advise, recommend_cutoff
from glmtune.plan.facts import model_facts
from glmtune.plan.preflight import preflight
from glmtune.plan.schedule import length_report, percentile, schedule


@pytest.fixture(scope="module")
def seed_setup(seed_jsonl, tiny_glm4, seed_advice):
    cfg = load_config(None, ["model.path=tiny:glm4", f"data.train={seed_jsonl}", *seed_advice])
    convs, issues = read_file(seed_jsonl)
    assert not issues and len(convs) == 200
    tok = load_tokenizer(tiny_glm4)
    stats = compute_stats(convs, Renderer(tok, stop_token_ids(tok, family_of("glm4"))))
    return cfg, stats, model_facts("tiny:glm4"), seed_advice


def test_every_sample_truncated_at_192(seed_setup):
    cfg, stats, facts, advice = seed_setup
    rep = length_report(stats, 192, "truncate")
    assert rep.samples == 200 and rep.over_cutoff == 200 and rep.over_share == 1.0
    assert min(stats.prompt) > 192          # the rubric prompt alone is longer than the advised cutoff
    findings = {f.code: f for f in preflight(cfg, stats, facts)}
    assert findings["all_truncated"].level == "fatal"
    assert "100% of 200 samples" in findings["all_truncated"].message


def test_recommended_cutoff_covers_p99(seed_setup):
    cfg, stats, facts, advice = seed_setup
    cut, reason = recommend_cutoff(stats, facts.context)
    assert cut >= percentile(stats.total, 99) and cut % 64 == 0
    assert sum(1 for x in stats.total if x <= cut) >= 0.99 * len(stats.total)
    rec = {a.key: a for a in advise(cfg, stats, facts, schedule(stats, cfg))}
    assert rec["data.cutoff_len"].value == cut and rec["data.cutoff_len"].current == 192
    # with that cutoff nothing fatal about lengths remains
    fixed = load_config(None, [*advice, "model.path=tiny:glm4", f"data.cutoff_len={cut}"])
    codes = {f.code for f in preflight(fixed, stats, facts)}
    assert "all_truncated" not in codes and "over_cutoff" not in codes


def test_warmup_share_flagged(seed_setup):
    cfg, stats, facts, advice = seed_setup
    s = schedule(stats, cfg)
    assert (s.train, s.val, s.steps_per_epoch, s.total_steps, s.warmup_steps) == (180, 20, 30, 210, 100)
    assert s.warmup_share == pytest.approx(100 / 210)
    f = {f.code: f for f in preflight(cfg, stats, facts)}["warmup_share"]
    assert f.level == "warn" and "48%" in f.message and "100 of 210" in f.message
    rec = {a.key: a.value for a in advise(cfg, stats, facts, s)}
    assert 0.03 <= rec["train.warmup_ratio"] <= 0.10 and rec["train.warmup_steps"] == 0


def test_forgetting_and_validation(seed_setup):
    cfg, stats, facts, advice = seed_setup
    codes = {f.code: f.level for f in preflight(cfg, stats, facts)}
    assert codes["forgetting_risk"] == "warn"            # 180 samples × 7 epochs
    assert "lr_out_of_range" not in codes                # 5e-4 is inside LoRA's range
    rec = {a.key: a.value for a in advise(cfg, stats, facts, schedule(stats, cfg))}
    assert rec["data.val_size"] == 20 and rec["train.epochs"] <= 5
