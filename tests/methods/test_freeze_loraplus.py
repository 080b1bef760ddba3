"""Freeze layer discovery and its errors; LoRA+ optimizer groups reach the Trainer's optimizer."""

import pytest
from transformers import TrainerCallback

from glmtune.config import ConfigError, load_config
from glmtune.methods.freeze import FreezeConfig, apply_freeze, decoder_layers
from glmtune.train.trainer import load_for_training, train


def tiny_model(arch="glm4"):
    cfg = load_config(None, [f"model.path=tiny:{arch}", "method.name=full"])
    return load_for_training(cfg)[1].model


def test_decoder_layers_found_generically():
    name, layers = decoder_layers(tiny_model("llama"))
    assert name == "model.layers" and len(layers) == 2


def test_freeze_module_names_and_errors():
    model = tiny_model()
    names = apply_freeze(model, FreezeConfig(trainable_layers=0, trainable_modules=["mlp", "lm_head"]))
    assert names and all(".mlp." in n or n.startswith("lm_head") for n in names)
    assert any(n.startswith("model.layers.0.mlp") for n in names)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        apply_freeze(model, FreezeConfig(trainable_modules=["nope"]))
    with pytest.raises(ValueError, match="has 2 layers"):
        apply_freeze(model, FreezeConfig(trainable_layers=3))
    with pytest.raises(ConfigError, match="trainable_layers"):
        load_config(None, ["method.name=freeze", "method.trainable_layers=0"])


class GrabOptimizer(TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kw):
        self.groups = [(g.get("initial_lr", g["lr"]), g["weight_decay"], {id(p) for p in g["params"]}) for g in optimizer.param_groups]
        self.names = {id(p): n for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_loraplus_gives_b_matrices_ratio_times_lr(memo_file, tmp_path, method):
    grab = GrabOptimizer()
    cfg = load_config(None, [f"data.train={memo_file}", "data.val_size=0", f"method.name={method}",
                             "method.loraplus_lr_ratio=16", "train.lr=1e-3", "train.weight_decay=0.1",
                             f"train.output_dir={tmp_path}", "train.max_steps=1", "train.resume=never",
                             "train.save_steps=1000", "plan.strict=false"])
    train(cfg, callbacks=[grab], quiet=True)
    seen = 0
    for lr, wd, ids in grab.groups:
        for i in ids:
            name = grab.names[i]
            assert lr == pytest.approx(1.6e-2 if "lora_B" in name else 1e-3), name
            assert wd == 0.1  # LoRA A/B are matrices: they decay
            seen += 1
    assert seen == sum(1 for n in grab.names.values() if "lora_" in n)


def test_without_loraplus_the_trainer_default_optimizer_is_used(memo_file, tmp_path):
    grab = GrabOptimizer()
    cfg = load_config(None, [f"data.train={memo_file}", "data.val_size=0", "train.lr=1e-3",
                             f"train.output_dir={tmp_path}", "train.max_steps=1", "train.resume=never",
                             "train.save_steps=1000", "plan.strict=false"])
    train(cfg, callbacks=[grab], quiet=True)
    assert {lr for lr, _, ids in grab.groups if ids} == {1e-3}
