"""Pack an eager CPU model's nn.Linear weights once for oneDNN (`serve.packed_linear`).

Why hand-written: PyTorch exposes oneDNN's pre-packed linear (`torch.ops.mkldnn._reorder_linear_weight` +
`torch.ops.mkldnn._linear_pointwise`) only inside torch.compile/inductor's freezing path, which needs a
compiled graph (recompiles per batch shape, minutes on CPU); no library (transformers, accelerate, peft, optimum)
packs the Linear layers of an eager Hugging Face model. vLLM's CPU backend does the same thing for its own models.
F.linear calls MKL on the unpacked weight each step; with the packed weight the linear layers alone run about twice
as fast for 4-16 rows on one thread, a whole SmolLM2-135M decode step about 1.2x (benchmarks/packed_linear.py). Results differ from F.linear in the last bits (other summation
order), like any change of BLAS kernel.
"""

from __future__ import annotations

import torch

_DTYPES = (torch.float32,)


def packable(model) -> str | None:
    """None if `pack_linears` applies to `model`, else a one-line reason why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn.is_available() is false)"
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        return f"the model is on {', '.join(sorted(devices))}, packing is for CPU only"
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes <= set(_DTYPES):
        return f"the model is {', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))}, packing is for float32 only"
    return None


def _packed_forward(module):
    w, b = module._packed_weight, module.bias
    out_features = module.out_features

    def forward(x):
        if x.dtype != w.dtype or x.device.type != "cpu":
            raise RuntimeError(f"packed Linear got a {x.dtype} input on {x.device}; it was packed for {w.dtype} on cpu")
        lead = x.shape[:-1]
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), w, b, "none", [], "")
        return y.reshape(*lead, out_features)

    return forward


def pack_linears(model, batch_hint: int = 16) -> dict:
    """Replace the forward of every plain `torch.nn.Linear` (exact type: bitsandbytes and PEFT LoRA wrappers are left
    alone; a LoRA layer's `base_layer` is packed, its small lora_A/lora_B are not) by oneDNN's linear on a weight
    packed once. The original weight's storage is freed (`module.weight` becomes an empty tensor) so memory is not
    doubled and any later use of the old weight fails loudly. Weights shared with another parameter (tied
    embeddings) are skipped. Raises ValueError if the model is not packable (see `packable`).
    Returns {"packed", "skipped_tied", "skipped_other"}."""
    why = packable(model)
    if why:
        raise ValueError(why)
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[p.data_ptr()] = owners.get(p.data_ptr(), 0) + 1
    counts = {"packed": 0, "skipped_tied": 0, "skipped_other": 0}
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear:
            continue
        if hasattr(module, "_packed_weight"):  # already packed
            continue
        w = module.weight
        if "lora_" in name:
            counts["skipped_other"] += 1
            continue
        if owners.get(w.data_ptr(), 0) > 1:
            counts["skipped_tied"] += 1
            continue
        if w.dtype not in _DTYPES or w.dim() != 2 or w.numel() == 0:
            counts["skipped_other"] += 1
            continue
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), batch_hint)
        module._packed_weight = packed  # a plain attribute: not in state_dict, not a parameter
        # Free the unpacked storage: an empty parameter keeps `module.weight` (PEFT and others read its dtype and
        # device) but any matmul with it fails on the shape.
        module.weight = torch.nn.Parameter(torch.empty(0, dtype=w.dtype), requires_grad=False)
        module.forward = _packed_forward(module)
        counts["packed"] += 1
    return counts


def apply_packed_linear(model) -> str:
    """`serve.packed_linear`: pack `model` if it can be, and return the one line to print either way."""
    why = packable(model)
    if why:
        return f"serve.packed_linear not applied: {why}"
    c = pack_linears(model)
    return (f"serve.packed_linear: {c['packed']} Linear layers packed for oneDNN, {c['skipped_tied']} skipped "
            f"(weight tied to another parameter), {c['skipped_other']} skipped (LoRA or other)")
