"""A method that cannot run on a model, or with these settings, stops with one MethodError line (exit 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from glmtune.errors import GlmtuneError, MethodError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def remote_glm4(tmp: Path):
    """glm-4-9b-chat's original remote-code module tree at a tiny size (as in test_lora_targets.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tmp.mkdir()
    for f in ("configuration_chatglm.py", "modeling_chatglm.py"):
        shutil.copy2(ASSETS / "real" / "glm-4-9b-chat" / f, tmp / f)
    shutil.copy2(ASSETS / "chatglm_equiv" / "glm-4-9b-chat" / "config.json", tmp / "config.json")
    cfg = AutoConfig.from_pretrained(tmp, trust_remote_code=True)
    cfg.max_length = cfg.seq_length  # the remote code needs it under transformers 5
    return AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)


def test_ptuning_on_remote_code_without_prefix_support(tmp_path):
    """glm-4-9b-chat's original remote code has no `transformer.prefix_encoder` (ChatGLM3's has): P-Tuning v2 on
    it is refused with the reason, not an AttributeError deep in PEFT."""
    from glmtune.config.schema import TrainSection
    from glmtune.methods import get
    from glmtune.methods.ptuning import PtuningConfig
    from glmtune.models.families import family_of
    from glmtune.models.load import Loaded
    model = remote_glm4(tmp_path / "m")
    loaded = Loaded(model, None, family_of("chatglm"), tmp_path / "m")
    with pytest.raises(MethodError, match="no transformer.prefix_encoder") as err:
        get("ptuning").prepare(loaded, PtuningConfig(pre_seq_len=4), TrainSection())
    assert isinstance(err.value, GlmtuneError) and err.value.exit_code == 2


def test_freeze_names_what_is_missing(tiny_glm4):
    from glmtune.config.schema import ModelSection
    from glmtune.methods.freeze import FreezeConfig, trainable_module_names
    from glmtune.models.load import load

    model = load(ModelSection(path=str(tiny_glm4))).model
    with pytest.raises(MethodError, match="method.trainable_layers=9 but the model has 2 layers"):
        trainable_module_names(model, FreezeConfig(trainable_layers=9))
    with pytest.raises(MethodError, match=r"no module named 'nope'; top-level modules: \['lm_head', 'model'\]"):
        trainable_module_names(model, FreezeConfig(trainable_layers=0, trainable_modules=["nope"]))
