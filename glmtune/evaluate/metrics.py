"""Text metrics for Chinese answers: BLEU-4 (character and jieba-word level) and ROUGE-1/2/L.

Spec `glmtune-text-1` (the version is written into every report, so numbers from different glmtune
versions are never compared silently):

- Both texts are `.strip()`-ed. A prediction or reference that is then empty scores 0 on every
  metric and is counted (`empty_predictions`, `empty_references`); it never raises. (ChatGLM-6B's
  `main.py` crashes here with rouge's "ValueError: Hypothesis is empty", ChatGLM-6B#792.)
- `bleu4_char`: nltk `sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)`,
  uniform 4-gram weights, ×100, averaged over samples. Tokens are the characters (spaces and punctuation
  included). **This is the "BLEU-4" of ChatGLM-6B `ptuning/main.py` (`compute_metrics`, the number in
  its README's ADGEN table) and of LLaMA-Factory `src/llamafactory/train/sft/metric.py`
  (`ComputeSimilarity`).**
- `bleu4_word`: the same with `list(jieba.cut(text))` tokens. **This is the "bleu-4" of ChatGLM3
  `finetune_demo/finetune_hf.py` and GLM-4 `finetune_demo/finetune.py`** (they report the 0-1 fraction,
  not ×100: divide ours by 100 to compare).
- `rouge1/rouge2/rougeL`: `rouge_chinese.Rouge().get_scores(" ".join(jieba(pred)), " ".join(jieba(ref)))`
  f-score ×100, averaged over samples, as all four peers above do. Note rouge_chinese's quirks, kept for
  comparability: ROUGE-N counts *distinct* n-grams (sets, not multisets), ROUGE-L is the LCS over the
  whole token sequence, and F = 2PR / (P + R + 1e-8).
- Peers round each sample to 4 decimals before averaging; we do not (differences < 5e-5).

Formulas: BLEU, Papineni et al. 2002 (modified n-gram precision p_n, brevity penalty
BP = exp(1 - r/c) when c <= r); smoothing method 3 = NIST geometric sequence (mteval-v13a.pl): the
k-th precision with zero matches becomes 1 / (2^k * number of hypothesis n-grams, at least 1) (Chen &
Cherry 2014). ROUGE, Lin 2004.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["TEXT_METRICS", "TEXT_SPEC", "bleu4", "char_tokens", "rouge", "score_pair", "score_texts", "word_tokens"]

TEXT_SPEC = "glmtune-text-1"
TEXT_METRICS = ("bleu4_char", "bleu4_word", "rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # silence "Building prefix dict ..." on every process
    return jieba


def char_tokens(text: str) -> list[str]:
    """One token per character, spaces and punctuation included (ChatGLM-6B / LLaMA-Factory `list(text)`).

    >>> char_tokens("你好 吗")
    ['你', '好', ' ', '吗']
    """
    return list(text)


def word_tokens(text: str) -> list[str]:
    """jieba's default (accurate, HMM on) segmentation, exactly as the peers call it."""
    return list(_jieba().cut(text))


def bleu4(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> float:
    """Sentence BLEU-4 in [0, 1] with smoothing method 3; 0.0 for an empty side."""
    if not pred_tokens or not ref_tokens:
        return 0.0
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns on short hypotheses; the score is still defined
        return float(sentence_bleu([list(ref_tokens)], list(pred_tokens),
                                   smoothing_function=SmoothingFunction().method3))


def rouge(pred_words: Sequence[str], ref_words: Sequence[str]) -> dict[str, float]:
    """rouge_chinese F-scores in [0, 1] for space-joined tokens; zeros when either side has no token."""
    hyp, ref = " ".join(pred_words), " ".join(ref_words)
    if not hyp.split() or not ref.split():  # rouge_chinese raises on these
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    from rouge_chinese import Rouge

    s = Rouge().get_scores(hyp, ref)[0]
    return {"rouge1": s["rouge-1"]["f"], "rouge2": s["rouge-2"]["f"], "rougeL": s["rouge-l"]["f"]}


def score_pair(prediction: str | None, reference: str | None) -> dict[str, float]:
    """All text metrics of one pair, ×100.

    >>> {k: round(v, 2) for k, v in score_pair("猫坐在垫子上", "狗坐在垫子上").items()}
    {'bleu4_char': 75.98, 'bleu4_word': 59.46, 'rouge1': 75.0, 'rouge2': 66.67, 'rougeL': 75.0}
    """
    pred, ref = (prediction or "").strip(), (reference or "").strip()
    if not pred or not ref:
        return dict.fromkeys(TEXT_METRICS, 0.0)
    pw, rw = word_tokens(pred), word_tokens(ref)
    out = {"bleu4_char": bleu4(char_tokens(pred), char_tokens(ref)), "bleu4_word": bleu4(pw, rw), **rouge(pw, rw)}
    return {k: 100.0 * out[k] for k in TEXT_METRICS}


def score_texts(predictions: Sequence[str | None], references: Sequence[str | None]) -> dict:
    """Mean of per-sample scores over *all* samples (empties count as 0), plus the counts behind them.

    Returns {"spec", "n", "empty_predictions", "empty_references", "bleu4_char", ..., "per_sample": [...]}.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    per = [score_pair(p, r) for p, r in zip(predictions, references)]
    n = len(per)
    out: dict = {
        "spec": TEXT_SPEC,
        "n": n,
        "empty_predictions": sum(not (p or "").strip() for p in predictions),
        "empty_references": sum(not (r or "").strip() for r in references),
    }
    for k in TEXT_METRICS:
        out[k] = sum(s[k] for s in per) / n if n else None
    out["per_sample"] = per
    return out
