"""`train.gradient_checkpointing=true` (on in every shipped 6B/9B config) with every method: the layers
really recompute (the checkpoint wrapper runs during training), and the trained weights equal a run
without it, since non-reentrant recomputation changes memory, not the maths. Catches a method whose
frozen inputs leave checkpointed layers without gradients (the weights would then not move)."""

import pytest
import torch

from glmtune.methods import REGISTRY
from glmtune.train.trainer import train

from method_helpers import Capture
from test_matrix import SETUPS, make_cfg


@pytest.fixture
def count_recomputes(monkeypatch):
    """Counts calls into torch's checkpoint function as transformers' checkpointed layers call it."""
    import transformers.modeling_utils as modeling_utils

    calls = {"n": 0}
    original = modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    return calls


def trained(memo_file, out, method, checkpointing: bool):
    cfg = make_cfg(memo_file, out, method, "glm4", 2, 1)
    cfg.train.max_steps = 3
    cfg.train.gradient_checkpointing = checkpointing
    if "dropout" in type(cfg.method).model_fields:
        cfg.method.dropout = 0.0  # the two runs must draw the same (no) noise
    cap = Capture(at_step=3)
    train(cfg, callbacks=[cap], quiet=True)
    return cap


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_checkpointing_recomputes_and_trains_the_same_weights(method, memo_file, tmp_path, count_recomputes):
    plain = trained(memo_file, tmp_path / "plain", method, False)
    assert count_recomputes["n"] == 0
    ckpt = trained(memo_file, tmp_path / "ckpt", method, True)
    assert count_recomputes["n"] > 0, "gradient_checkpointing=true but no layer was checkpointed"

    _, expect = SETUPS[method]
    trainable = [n for n in ckpt.before if expect(n)]
    assert trainable
    for n in trainable:
        assert not torch.equal(ckpt.before[n], ckpt.after[n]), f"{n} did not move with checkpointing on"
        torch.testing.assert_close(ckpt.after[n], plain.after[n], rtol=1e-4, atol=1e-5, msg=n)
