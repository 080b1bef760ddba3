"""Token-length statistics with the model's real chat template (prompt vs supervised tokens)."""

from __future__ import annotations

from dataclasses import dataclass, field

from glmtune.data.formats import Conversation
from glmtune.data.render import IGNORE, Renderer


@dataclass
class DataStats:
    """Per-sample lengths before any truncation; `template_overhead` = tokens of an empty exchange."""

    total: list[int] = field(default_factory=list)
    prompt: list[int] = field(default_factory=list)
    supervised: list[int] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)
    template_overhead: int = 0

    @property
    def n(self) -> int:
        return len(self.total)


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100); 0 for no data. >>> percentile([1, 2, 3, 4], 50)
    2
    """
    if not values:
        return 0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summarize(values: list[int]) -> dict:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else 0, "mean": round(sum(values) / len(values), 1) if values else 0}


def template_overhead(renderer: Renderer, probe: str = "你好") -> int:
    """Tokens one user/assistant exchange costs beyond its text, closing token included. Measured with real text:
    templates such as GLM-4's skip a turn whose content is empty, so an empty exchange would under-count."""
    text = len(renderer.tokenizer.encode(probe, add_special_tokens=False))
    ids, _ = renderer.render([{"role": "user", "content": probe}, {"role": "assistant", "content": probe}])
    return len(ids) - 2 * text


def compute_stats(conversations: list[Conversation], renderer: Renderer) -> DataStats:
    st = DataStats()
    st.template_overhead = template_overhead(renderer)
    for conv in conversations:
        ids, labels = renderer.render(conv.messages)
        sup = sum(1 for x in labels if x != IGNORE)
        st.total.append(len(ids))
        st.supervised.append(sup)
        st.prompt.append(len(ids) - sup)
        st.turns.append(sum(1 for m in conv.messages if m["role"] == "assistant"))
    return st


def truncation_preview(st: DataStats, cutoff: int) -> dict:
    """What a cutoff would do: samples over it and supervised tokens they hold."""
    over = [i for i, n in enumerate(st.total) if n > cutoff]
    return {"cutoff_len": cutoff, "samples_over": len(over),
            "share_over": round(len(over) / st.n, 4) if st.n else 0.0,
            "supervised_tokens_in_over": sum(st.supervised[i] for i in over)}
