"""Training-memory estimate per method: weights, gradients, optimizer, activations, logits, overhead.

Static part (per parameter): the usual mixed-precision accounting (Rajbhandari et al. 2020, ZeRO, §3):
AdamW keeps m and v (8 B per fp32 trainable parameter); gradients match the trainable parameter's
dtype; with mixed precision the trainable weights stay fp32 (the "master copy") and autocast holds a
16-bit compute copy of each, so full fine-tuning costs 4 + 2 + 4 + 8 = 18 B/param (16 B/param without
the autocast copy, which is LLaMA-Factory's "Full AMP 7B 120 GB" row). QLoRA: NF4 base linears at 0.5 B
+ quantisation constants (blocks of 64 with fp32 absmax -> +0.0625 B, or ~0.0157 B with double
quantisation; Dettmers et al. 2023, §2); embeddings and the LM head stay in the load dtype.

Activations: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
§4.1) count 34·s·b·h + 5·a·s²·b bytes per GPT layer (16-bit, MHA, 4h GELU MLP, dropout, materialised
softmax). We redo their per-tensor count for the decoder layers glmtune trains — RMSNorm, GQA
(q_dim = heads·head_dim, kv_dim = kv_heads·head_dim), SwiGLU, no dropout, SDPA/flash attention (no s²
term) — in elements per token per layer, and checked every term against the tensors autograd saves in
transformers 5 (tests/plan/test_memory_measured.py):

    RMSNorm internals         n_norms·h        fp32 (HF RMSNorm upcasts)
    linear inputs             h + q_dim + h + i   (qkv input, o_proj input, gate_up input, down input)
    attention core            3·q_dim + 2.5·kv_dim (q, k, v after RoPE, SDPA output + logsumexp)
    SwiGLU core               3·i   (gate_up output 2i, SiLU output i); GELU MLP: i
    + full/freeze             n_norms·h (normalised input, needed for the norm weight's gradient)
    + LoRA/QLoRA              rank per adapted module; with lora dropout > 0 a dropped copy of each
                              adapted module's input
    + P-Tuning v2             keys/values are (s + prefix) long

Gradient checkpointing keeps only each layer's input (h per token) and recomputes one layer at a time
in backward (Chen et al. 2016), so one layer's activations come back as workspace. Frozen layers below
the first trainable one save nothing (freeze tuning). Logits: glmtune computes the LM head + loss in
chunks of `train.loss_chunk_size` supervised tokens, so only chunk × vocab × 12 B (fp32 logits,
log-probs, their gradient) are alive; with loss_chunk_size 0 the whole b·s × vocab logits are kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from glmtune.plan.facts import ModelFacts

GIB = 1024 ** 3
CUDA_CONTEXT_GIB = 0.8          # CUDA context + cuBLAS workspace: 0.5-1 GB in practice
FRAGMENTATION = 0.05            # caching-allocator slack on the dynamic part

# name -> (memory GiB, dense bf16/fp16 tensor TFLOPS, bf16 supported). Vendor datasheets (dense, no sparsity).
GPUS: dict[str, tuple[float, float, bool]] = {
    "H200-141GB": (141, 989, True), "H100-80GB": (80, 989, True), "H800-80GB": (80, 989, True),
    "A100-80GB": (80, 312, True), "A100-40GB": (40, 312, True), "A800-80GB": (80, 312, True),
    "L40S-48GB": (48, 362, True), "A6000-48GB": (48, 155, True), "L20-48GB": (48, 119, True),
    "A10-24GB": (24, 125, True), "L4-24GB": (24, 121, True), "RTX4090-24GB": (24, 165, True),
    "RTX3090-24GB": (24, 71, True), "RTX4080-16GB": (16, 97, True), "RTX3060-12GB": (12, 51, True),
    "V100-32GB": (32, 125, False), "V100-16GB": (16, 125, False), "T4-16GB": (16, 65, False),
}


@dataclass(frozen=True)
class GPU:
    name: str
    mem_gib: float
    tflops: float | None = None
    bf16: bool = True


def parse_gpu(name: str | None = None, mem: str | float | None = None) -> GPU | None:
    """`--gpu RTX4090-24GB` (case/dash-insensitive; 'RTX4090' alone works) or `--gpu-mem 24GB`."""
    if mem is not None:
        gib = float(str(mem).upper().replace("GIB", "").replace("GB", "").strip())
        base = parse_gpu(name) if name else None
        return GPU(base.name if base else f"{gib:g}GB GPU", gib, base.tflops if base else None,
                   base.bf16 if base else True)
    if not name:
        return None
    norm = name.upper().replace("-", "").replace("_", "").replace(" ", "")
    for key, (gib, tf, bf16) in GPUS.items():
        k = key.upper().replace("-", "")
        if norm == k or norm == k.rsplit(str(int(gib)), 1)[0]:
            return GPU(key, gib, tf, bf16)
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)} (or give --gpu-mem 24GB)")


@dataclass
class MemorySetup:
    """What the estimate depends on, taken from a RunConfig by `setup_from_config`."""
    seq: int
    batch: int = 1
    load_bytes: int = 4          # dtype the base weights are loaded in
    compute_bytes: int = 4       # activation dtype (2 under bf16/fp16 autocast or pure_bf16)
    mixed: bool = False          # autocast: trainable weights fp32 + a 16-bit compute copy
    pure16: bool = False         # pure_bf16: trainable weights, grads and AdamW states in bf16
    gradient_checkpointing: bool = False
    loss_chunk: int = 1024
    lora_rank: int = 8
    lora_targets: tuple[str, ...] | str = "all"
    lora_dropout: float = 0.05
    freeze_layers: int = 2       # trainable last layers for `freeze` (LLaMA-Factory default 2)
    prefix_tokens: int = 128     # P-Tuning v2 pre_seq_len
    double_quant: bool = True
    supervised: int | None = None  # supervised tokens per sample (logits kept on the whole-forward path)
    gpu: bool = True             # add CUDA context + allocator slack


@dataclass
class MemoryEstimate:
    method: str
    trainable_params: int
    weights: float
    master_copy: float
    gradients: float
    optimizer: float
    activations: float           # saved for backward (+ one layer's recompute/gradient workspace)
    activations_saved: float
    logits: float
    logits_saved: float
    overhead: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return (self.weights + self.master_copy + self.gradients + self.optimizer + self.activations
                + self.logits + self.overhead)

    def to_json(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def _method(method):
    from glmtune.methods import get

    return get(method) if isinstance(method, str) else method


def trainable_params(facts: ModelFacts, method: str, st: MemorySetup) -> int:
    return _method(method).trainable_params(facts, st)


def layer_activation_elems(facts: ModelFacts, method: str, st: MemorySetup) -> tuple[float, float]:
    """(fp32 elements, compute-dtype elements) autograd saves per token for one decoder layer."""
    m = _method(method)
    h, i, q, kv = facts.hidden, facts.intermediate, facts.q_dim, facts.kv_dim
    fp32 = facts.norms_per_layer * h
    kv_scale = (st.seq + st.prefix_tokens) / st.seq if m.is_prefix else 1.0
    mlp_core = 3 * i if facts.mlp == "swiglu" else i
    comp = (2 * h + q + i) + (3 * q + 2.5 * kv * kv_scale) + mlp_core
    return fp32, comp + m.extra_activation_elems(facts, st)


def activation_bytes(facts: ModelFacts, method: str, st: MemorySetup) -> tuple[float, float]:
    """(saved bytes, saved + workspace bytes) for one micro-batch."""
    m = _method(method)
    tokens = st.seq * st.batch
    fp32, comp = layer_activation_elems(facts, m, st)
    per_layer = tokens * (4 * fp32 + st.compute_bytes * comp)
    grad_layers = m.gradient_layers(facts, st)
    # final norm + lm_head input (and its 16-bit copy for the head's weight gradient when everything trains)
    head = tokens * facts.hidden * (4 + st.compute_bytes * (2 if m.trains_all_weights else 1))
    if st.gradient_checkpointing:
        saved = grad_layers * tokens * facts.hidden * st.compute_bytes + head
    else:
        saved = grad_layers * per_layer + head
    return saved, saved + per_layer


def logits_bytes(facts: ModelFacts, st: MemorySetup, method: str | None = None) -> tuple[float, float]:
    """(saved bytes, peak bytes) of the LM-head output and loss buffers (`glmtune.models.loss`)."""
    tokens = st.seq * st.batch
    prefix = method is not None and _method(method).is_prefix
    whole_forward = prefix or facts.family == "chatglm"
    if st.loss_chunk and st.loss_chunk > 0 and not whole_forward:
        # chunk rows: 16-bit logits -> fp32 copy -> log-probs -> gradient, recomputed per chunk
        per = 12.0 + (st.compute_bytes if st.compute_bytes == 2 else 0)
        return 0.0, min(st.loss_chunk, tokens) * facts.vocab * per
    if whole_forward and st.loss_chunk and st.supervised:
        tokens = st.batch * min(st.seq, st.supervised + 1)   # logits_to_keep = supervised positions
    saved = tokens * facts.vocab * 4.0   # fp32 log-softmax kept for backward
    # peak: 16/32-bit logits + their fp32 copy + log-probs while the loss is formed (same size in backward)
    return saved, tokens * facts.vocab * (st.compute_bytes + 8.0)


def estimate(facts: ModelFacts, method: str, st: MemorySetup) -> MemoryEstimate:
    m = _method(method)
    n_train = m.trainable_params(facts, st)
    notes: list[str] = []
    train_bytes = 2 if st.pure16 else 4
    frozen_w = m.frozen_weight_bytes(facts, st, n_train)
    if m.quantizes_base:
        notes.append("base linears in NF4 (0.5 B/param + constants); embeddings and LM head in the load dtype")
    if facts.quantized_bits:
        # An INT4/INT8 ChatGLM-6B checkpoint is dequantized to the load dtype when glmtune converts it
        # (models/convert_chatglm6b.py): in memory its base weighs what the fp16 model does.
        notes.append(f"the checkpoint ships INT{facts.quantized_bits} weights "
                     f"({facts.param_count() * facts.quantized_bits / 8 / GIB:.1f} GiB if all were packed); glmtune "
                     f"dequantizes them at load, so the frozen base takes {st.load_bytes} B/param like the "
                     f"unquantised model; a method that quantizes the base keeps it at ~4 bits")
    weights = float(frozen_w + n_train * train_bytes)
    master = n_train * 2.0 if st.mixed else 0.0
    grads = n_train * float(train_bytes)
    optim = n_train * 2.0 * train_bytes
    saved, act = activation_bytes(facts, m, st)
    lsaved, logit = logits_bytes(facts, st, m)
    overhead = (CUDA_CONTEXT_GIB * GIB + FRAGMENTATION * (act + logit)) if st.gpu else 0.0
    if m.trains_all_weights and st.mixed:
        notes.append("mixed precision: fp32 weights are the master copy, autocast keeps a 16-bit compute copy")
    return MemoryEstimate(m.name, n_train, weights, master, grads, optim, act, saved, logit, lsaved, overhead, notes)


def setup_from_config(cfg, seq: int | None = None, gpu: GPU | None = None) -> MemorySetup:
    """MemorySetup from a RunConfig: dtypes follow `glmtune.models.load.torch_dtype` (what train loads)."""
    from glmtune.models.load import torch_dtype

    prec = cfg.train.precision
    dtype = cfg.model.dtype
    method = _method(cfg.method.name)
    if dtype == "auto" and prec in ("bf16", "fp16") and method.freezes_base:
        dtype = "bfloat16" if prec == "bf16" else "float16"   # as glmtune.train.trainer.load_for_training
    load_bytes = torch_dtype(dtype, prec).itemsize
    return MemorySetup(
        seq=seq or cfg.data.cutoff_len, batch=cfg.train.batch_size, load_bytes=load_bytes,
        compute_bytes=4 if prec == "fp32" else 2, mixed=prec in ("fp16", "bf16"), pure16=prec == "pure_bf16",
        gradient_checkpointing=cfg.train.gradient_checkpointing, loss_chunk=cfg.train.loss_chunk_size,
        gpu=gpu is not None or _cuda_available(), **method.memory_setup(cfg.method))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def cheapest_fix(facts: ModelFacts, method: str, st: MemorySetup, budget_bytes: float,
                 min_seq: int | None = None, bf16: bool = True) -> tuple[str, MemoryEstimate] | None:
    """The first change, in order of preference (least quality/speed cost first), that fits the budget:
    16-bit base weights, gradient checkpointing, smaller micro-batch with more accumulation, QLoRA,
    a shorter cutoff (never below `min_seq`). Changes accumulate: later steps keep the earlier ones."""
    from dataclasses import replace

    from glmtune.methods import REGISTRY

    steps: list[tuple[str, str, MemorySetup, str]] = []   # (kind, advice, setup, method)
    cur = st
    m = _method(method)
    method = m.name
    if cur.load_bytes == 4 and not m.trains_all_weights:
        dt, pr = ("bfloat16", "bf16") if bf16 else ("float16", "fp16")
        cur = replace(cur, load_bytes=2, compute_bytes=2, mixed=not cur.pure16)
        steps.append(("dtype", f"load the frozen base in 16-bit (model.dtype={dt} train.precision={pr})", cur, method))
    if not cur.gradient_checkpointing:
        cur = replace(cur, gradient_checkpointing=True)
        steps.append(("gc", "train.gradient_checkpointing=true", cur, method))
    b = cur.batch
    while b > 1:
        b = max(1, b // 2)
        cur = replace(cur, batch=b)
        steps.append(("batch", f"train.batch_size={b} with train.grad_accum ×{math.ceil(st.batch / b)} "
                      f"(same effective batch)", cur, method))
    quantized = next((q for q in REGISTRY.values() if q.quantizes_base), None)
    if quantized is not None and not (m.is_prefix or m.quantizes_base):
        method = quantized.name
        steps.append(("quantize", f"{quantized.label or method} (method.name={method})", cur, method))
    seq = cur.seq
    floor = max(64, min_seq or 64)
    while seq // 2 >= floor:
        seq = seq // 2
        steps.append(("cutoff", f"data.cutoff_len={seq} (truncates more samples)", replace(cur, seq=seq), method))
    so_far: dict[str, str] = {}
    for kind, text, s, meth in steps:
        so_far[kind] = text
        est = estimate(facts, meth, s)
        if est.total <= budget_bytes:
            return " + ".join(so_far.values()), est
    return None
