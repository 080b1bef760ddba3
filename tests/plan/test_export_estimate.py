"""`glmtune plan` reports the host memory of exporting the run (streamed merge + streamed verification)."""

import json

from glmtune.cli import main
from glmtune.config import load_config
from glmtune.plan.export_memory import MERGE_BASE_BYTES, VERIFY_BASE_BYTES, export_estimate
from glmtune.plan.facts import builtin_facts
from glmtune.plan.memory import setup_from_config


def _estimate(method, *overrides):
    cfg = load_config(None, [f"method.name={method}", *overrides])
    return export_estimate(builtin_facts("glm-4-9b-chat-hf"), method, cfg.export, setup_from_config(cfg, seq=512))


def test_9b_export_needs_a_shard_and_a_layer_not_the_model():
    est = _estimate("lora")
    layer_fp32 = 4 * builtin_facts("glm-4-9b-chat-hf").layer_params()
    assert est["verify_bytes"] > layer_fp32 and est["verify_bytes"] < 2 * layer_fp32
    assert est["merge_bytes"] > 2e9  # the default 2GB shard is held while it fills
    assert est["peak_bytes"] < 0.15 * est["whole_model_fp32_bytes"]
    smaller = _estimate("lora", "export.size=500MB")
    # Below the embedding's size (151552 x 4096 bf16, 1.24 GB) the embedding read is what is held.
    assert smaller["merge_bytes"] == est["merge_bytes"] - 2e9 + 151552 * 4096 * 2
    assert _estimate("lora", "export.verify=false")["verify_bytes"] is None
    # QLoRA's verification also holds the 4-bit training model (a quarter of the bf16 size or so).
    assert _estimate("qlora")["verify_bytes"] > est["verify_bytes"] + 4e9
    assert _estimate("full", "export.size=500MB")["merge_bytes"] == 151552 * 4096 * 2  # a copy: no adapter
    assert _estimate("ptuning")["peak_bytes"] is None
    assert est["peak_bytes"] == max(MERGE_BASE_BYTES + est["merge_bytes"], VERIFY_BASE_BYTES + est["verify_bytes"])


def test_plan_prints_and_writes_the_export_estimate(tmp_path, capsys):
    main(["plan", "model.path=glm-4-9b-chat-hf", "--gpu", "RTX4090-24GB", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["export"]["peak_bytes"] > 0
    assert "export (lora, host RAM, streamed): peak" in out
