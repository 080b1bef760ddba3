"""What an INT4/INT8 ChatGLM-6B base costs in the plan: glmtune dequantizes it when loading, so in memory it costs
what chatglm-6b does, and the plan says so (packed size, dequantized size, qlora for a ~4-bit base)."""

from dataclasses import replace

from glmtune.config import load_config
from glmtune.data.stats import DataStats
from glmtune.plan.facts import BUILTIN
from glmtune.plan.memory import GIB, MemorySetup, estimate
from glmtune.plan.preflight import preflight


def test_int4_base_weighs_the_dequantized_model():
    st = MemorySetup(seq=512, batch=1, load_bytes=2)
    for method in ("ptuning", "lora"):
        q, full = estimate(BUILTIN["chatglm-6b-int4"], method, st), estimate(BUILTIN["chatglm-6b"], method, st)
        assert q.weights == full.weights  # 2 B/param: the dequantized fp16 base
        assert any("INT4" in n and "dequantizes" in n for n in q.notes)
    # qlora is the ~4-bit route, also on the INT4 checkpoint
    assert estimate(BUILTIN["chatglm-6b-int4"], "qlora", st).weights < 0.4 * full.weights


def test_preflight_states_the_int4_cost():
    cfg = load_config(None, ["method.name=ptuning", "method.pre_seq_len=64", "model.dtype=float16",
                             "train.precision=fp16", "data.cutoff_len=512"])
    stats = DataStats(total=[300] * 100, prompt=[250] * 100, supervised=[50] * 100, turns=[1] * 100, template_overhead=12)
    found = {f.code: f for f in preflight(cfg, stats, BUILTIN["chatglm-6b-int4"])}
    msg = found["quantized_base_memory"].message
    facts = BUILTIN["chatglm-6b"]
    assert f"{facts.param_count() * 2 / GIB:.1f} GiB at 2 B/param" in msg and "INT4" in msg and "qlora" in msg
    int8 = replace(BUILTIN["chatglm-6b-int4"], quantized_bits=8)
    assert "INT8" in {f.code: f for f in preflight(cfg, stats, int8)}["quantized_base_memory"].message
    assert "quantized_base_memory" not in {f.code for f in preflight(cfg, stats, facts)}
