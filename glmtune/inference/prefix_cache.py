"""LRU of prompt-prefix KV caches for the batching engine (exact reuse; see batching.py)."""

from __future__ import annotations

import collections


class PrefixCache:
    """LRU of KV caches of prompt prefixes, bounded by the total number of cached tokens.

    Keys are (adapter, token ids): a prefix's KV depends on its tokens and on the weights only (causal
    attention, positions counted from 0), so any cached entry that is a prefix of a prompt can stand in
    for prefilling those tokens. Values are per-layer (keys, values) tensors [1, kv_heads, n, head_dim].
    """

    def __init__(self, max_tokens: int, min_tokens: int = 16):
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self._entries: collections.OrderedDict[tuple, list] = collections.OrderedDict()
        self.tokens = 0
        self.hits = self.misses = self.hit_tokens = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter, ids: list[int]) -> tuple[int, list | None]:
        """Longest cached prefix of `ids` (strictly shorter: at least one token is left to prefill)."""
        best, n_ids = None, len(ids)
        for key in self._entries:
            a, pre = key
            n = len(pre)
            if a == adapter and n < n_ids and (best is None or n > len(best[1])) and ids[n - 1] == pre[-1] \
                    and tuple(ids[:n]) == pre:
                best = key
        if best is None:
            self.misses += 1
            return 0, None
        self._entries.move_to_end(best)
        self.hits += 1
        self.hit_tokens += len(best[1])
        return len(best[1]), self._entries[best]

    def store(self, adapter, prefix: list[int], kv: list, offset: int = 0) -> bool:
        """Keep the first offset + len(prefix) positions of `kv` (per layer (keys, values), batch of one);
        `offset` = positions ahead of the tokens (P-Tuning's virtual prefix), kept with them."""
        n = len(prefix)
        if n < self.min_tokens or n > self.max_tokens:
            return False
        key = (adapter, tuple(prefix))
        if key in self._entries:
            self._entries.move_to_end(key)
            return False
        self._entries[key] = [(k[:, :, :offset + n].clone(), v[:, :, :offset + n].clone()) for k, v in kv]
        self.tokens += n
        while self.tokens > self.max_tokens:
            (_, old), _ = self._entries.popitem(last=False)
            self.tokens -= len(old)
            self.evictions += 1
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def stats(self) -> dict:
        return {"entries": len(self._entries), "tokens": self.tokens, "max_tokens": self.max_tokens,
                "hits": self.hits, "misses": self.misses, "hit_tokens": self.hit_tokens, "evictions": self.evictions}
