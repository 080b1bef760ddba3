"""Precision modes: mixed keeps trainable params fp32; pure_bf16 trains everything in bf16; fp16 on CPU
is refused with a message that names the fix."""

import json

import pytest
import torch
from transformers import TrainerCallback

from glmtune.config import load_config
from glmtune.train.trainer import train


@pytest.fixture
def memo_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": f"答案{i}:好"}]}
            for i in range(4)]
    p = tmp_path / "memo.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


class Dtypes(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, optimizer=None, **kw):
        self.trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        self.frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
        self.moments = {s["exp_avg"].dtype for s in optimizer.state.values() if "exp_avg" in s}
        self.n_moments = len(optimizer.state)


def cfg_for(memo_file, tmp_path, method, precision):
    return load_config(None, [f"data.train={memo_file}", "data.val_size=0", f"method.name={method}",
                              f"train.precision={precision}", f"train.output_dir={tmp_path}", "train.max_steps=3",
                              "train.lr=1e-2", "train.resume=never", "train.save_steps=1000", "plan.strict=false"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is refused only without a CUDA GPU")
def test_fp16_on_cpu_is_a_clear_error(memo_file, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU.*use bf16 or fp32"):
        train(cfg_for(memo_file, tmp_path, "lora", "fp16"), quiet=True)


@pytest.mark.parametrize("method,frozen", [("lora", {torch.bfloat16}), ("freeze", {torch.float32}),
                                           ("qlora", None)])
def test_bf16_mixed_keeps_trainable_params_fp32(memo_file, tmp_path, method, frozen):
    d = Dtypes()
    s = train(cfg_for(memo_file, tmp_path, method, "bf16"), callbacks=[d], quiet=True).summary
    assert d.trainable == {torch.float32} and d.moments == {torch.float32}
    if frozen is not None:  # LoRA: frozen base loaded in bf16; freeze: one dtype + autocast (qlora: bnb's own mix)
        assert d.frozen == frozen
    assert s["loss_last"] < s["loss_first"]


@pytest.mark.parametrize("method", ["full", "lora", "ptuning"])
def test_pure_bf16_trains_everything_in_bf16(memo_file, tmp_path, method):
    d = Dtypes()
    s = train(cfg_for(memo_file, tmp_path, method, "pure_bf16"), callbacks=[d], quiet=True).summary
    assert d.trainable == {torch.bfloat16}
    assert d.frozen <= {torch.bfloat16}
    assert d.n_moments > 0 and d.moments == {torch.bfloat16}  # AdamW state follows the bf16 params
    assert s["loss_last"] < s["loss_first"]
