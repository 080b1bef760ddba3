"""The CPU memory tally of one real training step, which `glmtune.plan.memory`'s estimate is tested against
(imported by tests/plan/test_memory_measured.py as `memory_tally`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MeasuredMemory:
    """Bytes alive at the peak of one optimizer step, by component (CPU-measurable)."""
    weights: int
    gradients: int
    optimizer: int
    activations: int          # unique storages autograd saved for backward (+ the returned logits)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def _storage_bytes(tensors) -> tuple[int, set]:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        qs = getattr(t, "quant_state", None)   # bitsandbytes 4-bit: absmax / nested constants
        if qs is not None:
            for x in (getattr(qs, "absmax", None), getattr(getattr(qs, "state2", None), "absmax", None),
                      getattr(qs, "offset", None)):
                if x is not None and hasattr(x, "untyped_storage"):
                    seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
    return sum(seen.values()), set(seen)


def measure_step_memory(model, batch: dict, loss_fn, lr: float = 1e-4) -> MeasuredMemory:
    """One forward + backward + AdamW step; tallies what each component really holds.

    `tracemalloc` cannot see torch's allocator, and CPU torch keeps no peak counter, so activations are
    counted with a `saved_tensors_hooks` pack hook: every tensor autograd keeps for backward, deduplicated
    by storage and excluding parameters — the memory that is alive between forward and backward.
    """
    import torch

    params = list(model.parameters())
    weights, param_ptrs = _storage_bytes(params)
    saved: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(model, batch)
    activations = sum(saved.values())
    loss.backward()
    trainable = [p for p in params if p.requires_grad]
    grads = sum(p.grad.untyped_storage().nbytes() for p in trainable if p.grad is not None)
    opt = torch.optim.AdamW(trainable, lr=lr)
    opt.step()
    states = sum(v.untyped_storage().nbytes() for s in opt.state.values() for v in s.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    return MeasuredMemory(weights, grads, states, activations)
