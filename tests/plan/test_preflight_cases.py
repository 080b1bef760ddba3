"""Pre-flight findings on hand-built length statistics (no tokenizer needed)."""

from glmtune.config import load_config
from glmtune.data.stats import DataStats
from glmtune.plan.facts import BUILTIN
from glmtune.plan.preflight import preflight
from glmtune.plan.schedule import length_report, schedule

FACTS = BUILTIN["glm-4-9b-chat-hf"]


def stats(n=100, total=300, prompt=250, overhead=12):
    return DataStats(total=[total] * n, prompt=[prompt] * n, supervised=[total - prompt] * n, turns=[1] * n,
                     template_overhead=overhead)


def codes(cfg, st):
    return {f.code: f.level for f in preflight(cfg, st, FACTS)}


def test_clean_config_has_no_warnings():
    cfg = load_config(None, ["data.cutoff_len=512", "train.epochs=3", "train.batch_size=4"])
    assert not [c for c, lvl in codes(cfg, stats(2000)).items() if lvl != "info"]


def test_cutoff_below_template_is_fatal():
    c = codes(load_config(None, ["data.cutoff_len=8"]), stats())
    assert c["cutoff_below_template"] == "fatal" and c["all_truncated"] == "fatal"


def test_drop_policy_counts_lost_answers():
    st = DataStats(total=[100, 200, 400], prompt=[80, 150, 300], supervised=[20, 50, 100], turns=[1, 1, 1],
                   template_overhead=6)
    rep = length_report(st, 256, "drop")
    assert (rep.dropped, rep.supervised_lost) == (1, 100)
    rep = length_report(st, 256, "truncate")
    assert (rep.truncated, rep.supervised_lost, rep.prompt_tokens_cut) == (1, 0, 144)
    rep = length_report(st, 150, "truncate")   # 400-token sample: 250 over, 294 prompt removable
    assert rep.supervised_lost == 0 and rep.over_cutoff == 2


def test_warmup_longer_than_run_lr_and_steps():
    cfg = load_config(None, ["train.warmup_steps=500", "train.lr=1e-2", "data.cutoff_len=512"])
    c = codes(cfg, stats(100))
    assert c["warmup_exceeds_run"] == "warn" and c["lr_out_of_range"] == "warn"
    full = load_config(None, ["method.name=lora", "train.lr=2e-4", "data.cutoff_len=512"])
    assert "lr_out_of_range" not in codes(full, stats(100))


def test_overlength_error_is_fatal_and_memory_warning():
    cfg = load_config(None, ["data.cutoff_len=280", "data.overlength=error"])
    st = DataStats(total=[300] * 5 + [200] * 95, prompt=[150] * 100, supervised=[50] * 100, turns=[1] * 100,
                   template_overhead=6)
    assert codes(cfg, st)["over_cutoff"] == "fatal"
    cfg = load_config(None, ["data.cutoff_len=512", "plan.gpu=T4-16GB", "train.batch_size=8"])
    f = {x.code: x for x in preflight(cfg, stats(500), FACTS)}
    assert f["memory_exceeds"].level == "warn" and "cheapest change" in f["memory_exceeds"].message


def test_schedule_world_size_and_accumulation():
    cfg = load_config(None, ["train.batch_size=4", "train.grad_accum=4", "plan.world_size=2", "train.epochs=2",
                             "data.val_size=0"])
    s = schedule(stats(1000), cfg, world_size=2)
    assert s.effective_batch == 32 and s.steps_per_epoch == 32 and s.total_steps == 64
    assert s.warmup_steps == 4   # ceil(0.05 × 64)
