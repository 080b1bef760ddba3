"""KV storage and attention helpers for the batching engine: preallocated per-layer buffers (a decode
step writes one column in place) and mask-free attention for prefilling after a cached prefix on CPU."""

from __future__ import annotations

import contextlib


def buffer_layer_class():
    """A DynamicLayer over a preallocated [slots, heads, capacity, dim] buffer whose live part is rows [:b],
    columns [s:n]: `update` writes the new positions in place and exposes a view of the live part (built
    lazily: transformers is imported late). The scheduler moves `b` and `s` as rows join and leave."""
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, kbuf, vbuf, n: int, b: int | None = None, s: int = 0):
            super().__init__()
            self.kbuf, self.vbuf, self.n = kbuf, vbuf, n
            self.b = kbuf.shape[0] if b is None else b
            self.s = s
            self.dtype, self.device = kbuf.dtype, kbuf.device
            self.is_initialized = True
            self._views()

        def _views(self):
            self.keys = self.kbuf[:self.b, :, self.s:self.n]
            self.values = self.vbuf[:self.b, :, self.s:self.n]

        def live(self, b: int, s: int) -> None:
            self.b, self.s = b, s
            self._views()

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[2]
            if self.n + m > self.kbuf.shape[2]:  # the scheduler reserves room; this is only a fallback
                self.kbuf = _grow(self.kbuf, self.n, self.n + m + 64)
                self.vbuf = _grow(self.vbuf, self.n, self.n + m + 64)
            self.kbuf[:self.b, :, self.n:self.n + m] = key_states
            self.vbuf[:self.b, :, self.n:self.n + m] = value_states
            self.n += m
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.n - self.s

    return BufferLayer


def _grow(buf, n: int, cap: int):
    new = buf.new_empty(*buf.shape[:2], cap, buf.shape[3])
    new[:, :, :n] = buf[:, :, :n]
    return new



SPLIT_ATTENTION = "glmtune_prefix_split"


def _prefix_split_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for prefilling the rest of a prompt after a cached prefix (batch of one, no padding, CPU).

    transformers would build a [q, past + q] mask, and masked SDPA on CPU computes every block of it
    (half of them fully masked). Instead: all new queries over the past keys (no mask), plus the new
    queries over the new keys (is_causal, which skips the masked half), merged with the two
    log-sum-exps: exactly softmax over the union, i.e. what one causal prefill computes, in fewer FLOPs.
    """
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    b, heads, q, d = query.shape
    kv_heads, past = key.shape[1], key.shape[2] - q
    rep = heads // kv_heads
    # new queries x past keys: no mask, so the query heads of one KV group can share it as one sequence
    o1, l1 = flash(query.reshape(b, kv_heads, rep * q, d), key[:, :, :past], value[:, :, :past], 0.0, False,
                   scale=scaling)[:2]
    kn, vn = key[:, :, past:], value[:, :, past:]
    if rep > 1:
        kn = kn[:, :, None].expand(b, kv_heads, rep, q, d).reshape(b, heads, q, d)
        vn = vn[:, :, None].expand(b, kv_heads, rep, q, d).reshape(b, heads, q, d)
    o2, l2 = flash(query, kn, vn, 0.0, True, scale=scaling)[:2]
    l1 = l1.reshape(b, heads, q, 1)
    l2 = l2.reshape(b, heads, q, 1)
    lse = torch.logaddexp(l1, l2)
    out = o1.reshape(b, heads, q, d).float() * torch.exp(l1 - lse) + o2.float() * torch.exp(l2 - lse)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def split_attention(model, on: bool):
    """Run `model` with _prefix_split_attention (and no mask built) inside the block when `on`."""
    if not on:
        yield
        return
    from transformers import AttentionInterface

    AttentionInterface.register(SPLIT_ATTENTION, _prefix_split_attention)
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = SPLIT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def new_cache(layers: list):
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layers = layers
    return cache
