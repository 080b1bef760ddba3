"""The shipped ChatGLM3 LoRA and P-Tuning v2 configs are translations of the official finetune_demo configs
(tests/assets/real/official_finetune/chatglm3_{lora,ptuning_v2}.yaml, unmodified): every value the official
file sets, or leaves to a Trainer/PEFT default, is checked through glmtune's config loader."""

from pathlib import Path

import pytest
import yaml

from glmtune.config import load_config

ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = ROOT / "tests" / "assets" / "real" / "official_finetune"
SHIPPED = ROOT / "glmtune" / "configs" / "chatglm3_6b"
PAIRS = [("lora.yaml", "chatglm3_lora.yaml"), ("ptuning.yaml", "chatglm3_ptuning_v2.yaml")]


@pytest.mark.parametrize("ours,theirs", PAIRS)
def test_shipped_chatglm3_config_translates_the_official_one(ours, theirs):
    off = yaml.safe_load((OFFICIAL / theirs).read_text())
    cfg = load_config(SHIPPED / ours)
    text = (SHIPPED / ours).read_text()
    assert text.splitlines()[0] == f"# glmtune train glmtune/configs/chatglm3_6b/{ours}"
    assert "No glmtune equivalent" in text and theirs in text

    d, ta, peft = off["data_config"], off["training_args"], off["peft_config"]
    assert Path(cfg.data.train).name == d["train_file"]
    assert Path(cfg.data.validation).name == d["val_file"]
    assert Path(cfg.data.test).name == d["test_file"]
    assert cfg.data.format == "conversations"  # the demo's {"conversations": [...]} rows
    # process_batch keeps input_ids[:max_input_length + max_output_length + 1]
    assert cfg.data.cutoff_len == off["max_input_length"] + off["max_output_length"] + 1
    assert cfg.data.overlength == "truncate"

    t = cfg.train
    assert t.output_dir == ta["output_dir"]
    assert t.max_steps == ta["max_steps"]
    assert t.lr == float(ta["learning_rate"])
    assert t.batch_size == ta["per_device_train_batch_size"] and t.grad_accum == 1
    assert ta["save_strategy"] == "steps" and t.save_steps == ta["save_steps"] and t.save_total_limit is None
    assert ta["logging_strategy"] == "steps" and t.logging_steps == ta["logging_steps"]
    assert ta["evaluation_strategy"] == "steps" and t.eval_steps == ta["eval_steps"]
    # transformers.TrainingArguments defaults the official run inherits
    assert (t.scheduler, t.warmup_steps, t.warmup_ratio, t.weight_decay, t.max_grad_norm, t.seed) == \
        ("linear", 0, 0.0, 0.0, 1.0, 42)
    assert t.precision == "fp32" and not ta.get("bf16") and not ta.get("fp16")
    assert t.gradient_checkpointing  # finetune_hf.py: model.gradient_checkpointing_enable()
    assert not t.group_by_length and not t.packing

    e = cfg.eval
    assert ta["predict_with_generate"] and e.during_training_every == ta["eval_steps"]
    assert e.batch_size == ta["per_device_eval_batch_size"]
    assert e.max_new_tokens == ta["generation_config"]["max_new_tokens"]
    assert e.during_training_samples == 50  # finetune_hf.py: eval_dataset=val_dataset.select(list(range(50)))

    m = cfg.method
    assert cfg.model.trust_remote_code
    if peft["peft_type"] == "LORA":
        assert m.name == "lora"
        assert (m.rank, m.alpha, m.dropout) == (peft["r"], peft["lora_alpha"], peft["lora_dropout"])
        # no target_modules: PEFT's default for model_type chatglm, split by glmtune's conversion
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        assert "target_modules" not in peft and DEFAULTS["chatglm"] == ["query_key_value"]
        assert m.targets == ["q_proj", "k_proj", "v_proj"]
    else:
        assert peft["peft_type"] == "PREFIX_TUNING" and m.name == "ptuning"
        assert m.pre_seq_len == peft["num_virtual_tokens"]  # finetune_hf.py: config.pre_seq_len = num_virtual_tokens
        real = ROOT / "tests" / "assets" / "real" / "chatglm3-6b"
        # prefix_projection is left at the model config's value: absent from config.json, False in ChatGLMConfig
        assert "prefix_projection" not in (real / "config.json").read_text()
        assert "prefix_projection=False," in (real / "configuration_chatglm.py").read_text()
        assert m.prefix_projection is False
