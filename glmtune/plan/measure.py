"""Throughput and memory: a few real training steps on this machine (`glmtune plan --measure`), a
FLOPs-based figure for a named GPU (the CPU memory tally the estimator is tested against lives in
tests/plan/memory_tally.py).

Stated throughput: training FLOPs per token = 6·N for full fine-tuning (forward 2N, backward 4N;
Kaplan et al. 2020 §2.1) + attention 12·L·s·q_dim (PaLM, Chowdhery et al. 2022, App. B); frozen-base
methods skip the weight gradients (4·N); gradient checkpointing recomputes the forward (+2·N); QLoRA
dequantises every matmul (~1.3× slower, Dettmers et al. 2023 report similar). Divided by the GPU's
dense 16-bit peak × model FLOPs utilisation (MFU) 0.35 — what HF-Trainer runs of 7-9B models reach;
`--measure` or `plan.tokens_per_second` replace the guess with a number.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

MFU = 0.35


def flops_per_token(facts, method: str, seq: int, gradient_checkpointing: bool) -> float:
    from glmtune.methods import get

    m = get(method)
    n = facts.param_count()
    attn = 12 * facts.layers * seq * facts.q_dim
    f = (6 if m.trains_all_weights else 4) * n + attn   # attention has no weights: its backward is the same
    if gradient_checkpointing:
        f += 2 * n + attn / 3
    return f * m.compute_factor


def stated_tokens_per_second(facts, method: str, gpu, seq: int, gradient_checkpointing: bool,
                             mfu: float = MFU) -> float | None:
    if gpu is None or not gpu.tflops:
        return None
    return gpu.tflops * 1e12 * mfu / flops_per_token(facts, method, seq, gradient_checkpointing)


@dataclass
class Throughput:
    device: str
    steps: int
    tokens_per_second: float          # real (non-padding) tokens
    padded_tokens_per_second: float
    seconds_per_step: float           # per micro-batch
    peak_bytes: int | None
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def measure_training(cfg, steps: int = 4, warmup: int = 1) -> Throughput:
    """Run `warmup + steps` real micro-batches of glmtune's own training path (method.prepare,
    chunked loss, AdamW) on the configured model and data; return the measured throughput."""
    import random

    import torch

    from glmtune.data.collate import PadCollator
    from glmtune.data.dataset import prepare
    from glmtune.methods.loading import load_for_training, mixed_half
    from glmtune.models.load import stop_token_ids
    from glmtune.models.loss import causal_lm_loss_sum, plain_loss_sum

    method, loaded = load_for_training(cfg)
    tok = loaded.tokenizer
    data = prepare(cfg, tok, stop_token_ids(tok, loaded.family))
    model = method.prepare(loaded, cfg.method, cfg.train)
    half = mixed_half(cfg.train.precision)
    if half is not None:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if cfg.train.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers' new name; the old one goes in v6
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda" and getattr(loaded.model, "hf_device_map", None) is None:
        model.to(dev)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    collate = PadCollator(tok.pad_token_id)
    rng = random.Random(cfg.train.seed)
    chunk = cfg.train.loss_chunk_size
    real = padded = 0
    elapsed = 0.0
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k in range(warmup + steps):
        feats = [data.train[rng.randrange(len(data.train))] for _ in range(cfg.train.batch_size)]
        batch = {key: v.to(dev) for key, v in collate([{"input_ids": e.input_ids, "labels": e.labels}
                                                       for e in feats]).items()}
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev, dtype=half, enabled=half is not None):
            loss, n = causal_lm_loss_sum(model, batch, chunk) if chunk > 0 else plain_loss_sum(model, batch)
        (loss / max(n, 1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        if k >= warmup:
            elapsed += time.perf_counter() - t0
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
    peak = int(torch.cuda.max_memory_allocated()) if dev == "cuda" else None
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return Throughput(name, steps, real / elapsed, padded / elapsed, elapsed / steps, peak,
                      note="measured on this machine; optimizer step included, data loading not")
