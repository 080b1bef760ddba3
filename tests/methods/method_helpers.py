"""Test helpers for the method tests (imported as `method_helpers`)."""

import torch
from transformers import TrainerCallback


class Capture(TrainerCallback):
    """Snapshots every parameter before training and at `at_step`, and keeps the final model."""

    def __init__(self, at_step: int = 2):
        self.at_step = at_step
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.model = None

    @staticmethod
    def _snap(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = self._snap(model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.at_step:
            self.after = self._snap(model)

    def on_train_end(self, args, state, control, model=None, **kw):
        self.model = model


def probe_batch(tokenizer):
    """Two right-padded prompts (one shorter) used to compare logits between model variants."""
    a = tokenizer("语速3停顿2 很好 你好")["input_ids"]
    b = tokenizer("你好")["input_ids"]
    n = max(len(a), len(b))
    ids = torch.tensor([a + [tokenizer.pad_token_id] * (n - len(a)), b + [tokenizer.pad_token_id] * (n - len(b))])
    mask = torch.tensor([[1] * len(a) + [0] * (n - len(a)), [1] * len(b) + [0] * (n - len(b))])
    return ids, mask


@torch.no_grad()
def logits_of(model, batch) -> torch.Tensor:
    ids, mask = batch
    model.eval()
    out = model(input_ids=ids, attention_mask=mask).logits.float()
    return out * mask[..., None]  # padded positions are not compared
