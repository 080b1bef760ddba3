"""Text metrics: hand-computed BLEU-4 (char and jieba-word) and ROUGE, empties, and parity with the
peers' exact formulas (ChatGLM-6B ptuning/main.py, LLaMA-Factory metric.py = char BLEU; ChatGLM3
finetune_hf.py = word BLEU)."""

import math

import pytest

from glmtune.evaluate.metrics import TEXT_SPEC, score_pair, score_texts, word_tokens


def test_pair_with_one_substitution():
    # pred 猫坐在垫子上 / ref 狗坐在垫子上, 6 chars each.
    # char: 1-gram 5/6 (all but 猫); 2-gram 4/5 (猫坐 misses); 3-gram 3/4; 4-gram 2/3; c = r = 6 -> BP = 1
    #   BLEU = (5/6 * 4/5 * 3/4 * 2/3)^(1/4) = (1/3)^(1/4)
    # jieba: [猫, 坐在, 垫子, 上] vs [狗, 坐在, 垫子, 上]
    #   1-gram 3/4; 2-gram 2/3; 3-gram 1/2; 4-gram 0/1 -> method3: 1/(2^1 * 1) = 1/2; BP = 1
    #   BLEU = (3/4 * 2/3 * 1/2 * 1/2)^(1/4) = (1/8)^(1/4)
    # ROUGE on the words (distinct n-grams): R1 P = R = 3/4; R2 P = R = 2/3; LCS 3 -> P = R = 3/4
    assert word_tokens("猫坐在垫子上") == ["猫", "坐在", "垫子", "上"]
    s = score_pair("猫坐在垫子上", "狗坐在垫子上")
    assert s["bleu4_char"] == pytest.approx(100 * (1 / 3) ** 0.25, abs=1e-9)
    assert s["bleu4_word"] == pytest.approx(100 * (1 / 8) ** 0.25, abs=1e-9)
    assert s["rouge1"] == pytest.approx(75.0, abs=1e-5)
    assert s["rouge2"] == pytest.approx(100 * 2 / 3, abs=1e-5)
    assert s["rougeL"] == pytest.approx(75.0, abs=1e-5)


def test_pair_with_smoothing_on_words():
    # pred 今天天气很好 / ref 今天天气不错
    # char: 1-gram 今天天气 match 4/6; 2-gram 今天 天天 天气 3/5; 3-gram 今天天 天天气 2/4; 4-gram 今天天气 1/3
    #   BLEU = (4/6 * 3/5 * 2/4 * 1/3)^(1/4) = (1/15)^(1/4), BP = 1
    # words: [今天天气, 很, 好] vs [今天天气, 不错]: 1-gram 1/3; 2-gram 0/2 -> 1/(2*2); 3-gram 0/1 -> 1/(4*1);
    #   4-gram: no 4-gram in 3 words, nltk's denominator is max(1, 0) = 1 -> 1/(8*1); c = 3 > r = 2 -> BP = 1
    #   BLEU = (1/3 * 1/4 * 1/4 * 1/8)^(1/4) = (1/384)^(1/4)
    # ROUGE-1: P = 1/3, R = 1/2 -> F = 0.4; ROUGE-2: no shared bigram -> 0; ROUGE-L: LCS 1 -> 0.4
    s = score_pair("今天天气很好", "今天天气不错")
    assert s["bleu4_char"] == pytest.approx(100 * (1 / 15) ** 0.25, abs=1e-9)
    assert s["bleu4_word"] == pytest.approx(100 * (1 / 384) ** 0.25, abs=1e-9)
    assert s["rouge1"] == pytest.approx(40.0, abs=1e-5)
    assert s["rouge2"] == 0.0
    assert s["rougeL"] == pytest.approx(40.0, abs=1e-5)


def test_brevity_penalty():
    # pred 我喜欢中文 (5 chars) / ref 我喜欢学习中文 (7 chars)
    # char: 1-gram 5/5; 2-gram 我喜 喜欢 中文 = 3/4; 3-gram 我喜欢 = 1/3; 4-gram 0/2 -> 1/(2*2)
    #   geometric mean (1 * 3/4 * 1/3 * 1/4)^(1/4) = (1/16)^(1/4) = 1/2; BP = exp(1 - 7/5)
    # words [我, 喜欢, 中文] vs [我, 喜欢, 学习, 中文]: 1-gram 3/3; 2-gram 1/2; 3-gram 0/1 -> 1/2; 4-gram 0/1 -> 1/4
    #   mean (1 * 1/2 * 1/2 * 1/4)^(1/4) = 1/2; BP = exp(1 - 4/3)
    # ROUGE-1 P = 1, R = 3/4 -> F = 6/7; ROUGE-2 P = 1/2, R = 1/3 -> F = 0.4; ROUGE-L LCS 3 -> 6/7
    s = score_pair("我喜欢中文", "我喜欢学习中文")
    assert s["bleu4_char"] == pytest.approx(100 * 0.5 * math.exp(1 - 7 / 5), abs=1e-9)
    assert s["bleu4_word"] == pytest.approx(100 * 0.5 * math.exp(1 - 4 / 3), abs=1e-9)
    assert s["rouge1"] == pytest.approx(100 * 6 / 7, abs=1e-5)
    assert s["rouge2"] == pytest.approx(40.0, abs=1e-5)
    assert s["rougeL"] == pytest.approx(100 * 6 / 7, abs=1e-5)


def test_empty_and_whitespace_predictions_score_zero_and_are_counted():
    out = score_texts(["猫坐在垫子上", "", "   \n", None], ["狗坐在垫子上", "好", "好", "好"])
    assert out["spec"] == TEXT_SPEC and out["n"] == 4
    assert out["empty_predictions"] == 3 and out["empty_references"] == 0
    for s in out["per_sample"][1:]:
        assert set(s.values()) == {0.0}
    # the mean runs over all 4 samples, the empties pulling it down
    assert out["bleu4_char"] == pytest.approx(100 * (1 / 3) ** 0.25 / 4, abs=1e-9)
    assert out["rouge1"] == pytest.approx(75.0 / 4, abs=1e-5)


def test_empty_reference_and_punctuation_only_do_not_crash():
    assert set(score_pair("好", "").values()) == {0.0}
    s = score_pair("。", "。")                         # one token each, identical
    assert s["rouge1"] == pytest.approx(100.0, abs=1e-5) and s["bleu4_char"] > 0
    assert score_texts([], [])["bleu4_char"] is None


@pytest.mark.parametrize("pred,ref", [("他说：你好！我们明天去北京。", "他说你好，我们明天去上海吧。"),
                                      ("hello world, this is a test", "hello world this was a test"),
                                      ("语速:3;停顿:5;评语:很好", "语速:3;停顿:4;评语:还行")])
def test_parity_with_peer_formulas(pred, ref):
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    s = score_pair(pred, ref)
    # ChatGLM-6B ptuning/main.py compute_metrics and LLaMA-Factory ComputeSimilarity: character BLEU
    peer_char = sentence_bleu([list(ref)], list(pred), smoothing_function=SmoothingFunction().method3)
    assert s["bleu4_char"] == pytest.approx(round(peer_char * 100, 4), abs=1e-4)
    # ChatGLM3 finetune_hf.py compute_metrics: jieba-word BLEU (reported as a fraction there)
    pt, lt = list(jieba.cut(pred)), list(jieba.cut(ref))
    peer_word = sentence_bleu([lt], pt, smoothing_function=SmoothingFunction().method3)
    assert s["bleu4_word"] == pytest.approx(peer_word * 100, abs=1e-9)
    r = Rouge().get_scores(" ".join(pt), " ".join(lt))[0]
    assert s["rouge1"] == pytest.approx(r["rouge-1"]["f"] * 100) and s["rougeL"] == pytest.approx(r["rouge-l"]["f"] * 100)
