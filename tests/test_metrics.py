"""OCR metrics against worked examples computed by hand (docs/FACTS.md "Metric definitions").

Every expected number below is derived in the comment next to it, never from the code under test.
Lengths are Unicode code points. Chinese segmentation is pinned to the no-jieba fallback (single
characters) so the expected sets do not depend on whether jieba happens to be installed.
"""
import sys

import pytest

from nanoocr.eval.metrics import (cer, edit_distance, edit_distance_omnidoc, exact_match, fox_scores,
                             normalize_omnidoc, score, summarize)
from nanoocr.eval.metrics import LOWER_IS_BETTER, METRICS


@pytest.fixture(autouse=True)
def no_jieba(monkeypatch):
    # A None entry in sys.modules makes `import jieba` raise ImportError: the single-character fallback.
    monkeypatch.setitem(sys.modules, "jieba", None)


def test_edit_distance_and_cer_on_kitten_sitting():
    # kitten → sitting: k→s, e→i, insert g = 3 edits. max(len) = max(6, 7) = 7 → 3/7.
    assert edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert edit_distance("sitting", "kitten") == pytest.approx(3 / 7)  # symmetric
    # CER divides by the REFERENCE length: gt "sitting" (7) → 3/7; gt "kitten" (6) → 3/6 = 0.5.
    assert cer("kitten", "sitting") == pytest.approx(3 / 7)
    assert cer("sitting", "kitten") == pytest.approx(0.5)


def test_cer_can_exceed_one():
    # pred "abcdef" vs gt "ab": delete c,d,e,f = 4 edits; CER = 4/2 = 2.0; normalized ED = 4/6.
    assert cer("abcdef", "ab") == pytest.approx(2.0)
    assert edit_distance("abcdef", "ab") == pytest.approx(4 / 6)


def test_cjk_edit_distance():
    # gt 今天天氣很好 (6 chars), pred 今天天气好 (5): substitute 气→氣, insert 很 = 2 edits.
    # ED = 2 / max(5, 6) = 1/3; CER = 2 / len(gt) = 2/6 = 1/3.
    assert edit_distance("今天天气好", "今天天氣很好") == pytest.approx(1 / 3)
    assert cer("今天天气好", "今天天氣很好") == pytest.approx(1 / 3)


def test_emoji_counts_code_points():
    # "ok 👍🏽" = o, k, space, 👍, 🏽(skin-tone modifier) = 5 code points; "ok 👍" = 4.
    # One deletion (the modifier): ED = 1/5, CER = 1/4.
    assert edit_distance("ok 👍🏽", "ok 👍") == pytest.approx(1 / 5)
    assert cer("ok 👍🏽", "ok 👍") == pytest.approx(1 / 4)
    # 👍 vs 👎: one substitution out of 1 → 1.0.
    assert edit_distance("👍", "👎") == 1.0


def test_empty_strings():
    # Both empty: nothing to edit → 0 everywhere, a perfect match, Fox 1/1/1 by convention.
    assert score("", "") == {"exact_match": 1.0, "cer": 0.0, "edit_distance": 0.0, "edit_distance_omnidoc": 0.0,
                             "fox_precision": 1.0, "fox_recall": 1.0, "fox_f1": 1.0}
    # Empty prediction, gt "abc": 3 insertions / max(0, 3) = 1; CER 3/3 = 1; no predicted word → P = R = F1 = 0.
    assert score("", "abc") == {"exact_match": 0.0, "cer": 1.0, "edit_distance": 1.0, "edit_distance_omnidoc": 1.0,
                                "fox_precision": 0.0, "fox_recall": 0.0, "fox_f1": 0.0}
    # Empty gt, prediction "abc": ED 3/3 = 1; CER has no reference length, defined as 1 for any output.
    s = score("abc", "")
    assert (s["edit_distance"], s["cer"], s["exact_match"], s["fox_f1"]) == (1.0, 1.0, 0.0, 0.0)
    # Whitespace-only vs empty: exact match strips, Fox sees no words on either side.
    assert exact_match("  \n", "") == 1.0 and fox_scores(" ", "") == (1.0, 1.0, 1.0)


def test_identical_strings():
    for text in ("Hello, world!", "今天天气很好", "ok 👍🏽", "$\\alpha$ = 0.5"):
        s = score(text, text)
        assert s == {"exact_match": 1.0, "cer": 0.0, "edit_distance": 0.0, "edit_distance_omnidoc": 0.0,
                     "fox_precision": 1.0, "fox_recall": 1.0, "fox_f1": 1.0}, text


def test_exact_match():
    assert exact_match(" abc\n", "abc") == 1.0  # surrounding whitespace stripped
    assert exact_match("abc", "abd") == 0.0
    assert exact_match("ABC", "abc") == 0.0  # case-sensitive
    assert exact_match("a  b", "a b") == 0.0  # inner whitespace is content


def test_omnidoc_normalization():
    # Inline LaTeX → unicode, then only letters/digits/CJK: "+", spaces, ",", "!" go; α, β, 角度 stay.
    assert normalize_omnidoc("Let $\\alpha + \\beta$ be 2 angles, 角度!") == "Letαβbe2angles角度"
    # \( \) delimiters, braces/superscripts dropped: x^{2} → x2.
    assert normalize_omnidoc("area \\(x^{2}\\) m") == "areax2m"
    # CJK punctuation (，。) is punctuation; kana and Hangul are letters.
    assert normalize_omnidoc("你好，世界。") == "你好世界"
    assert normalize_omnidoc("ひらがな 한국어") == "ひらがな한국어"
    # Emoji and underscores are neither letters nor digits.
    assert normalize_omnidoc("ok 👍 snake_case") == "oksnakecase"
    # NFC: decomposed e + U+0301 becomes the letter é instead of e plus a dropped combining mark.
    assert normalize_omnidoc("cafe\u0301") == "café"


def test_omnidoc_edit_distance():
    # The LaTeX/unicode and punctuation differences vanish after normalization: both → "Letαβbe2angles角度".
    pred, gt = "Let α+β be 2 angles 角度", "Let $\\alpha+\\beta$ be 2 angles, 角度!"
    assert edit_distance_omnidoc(pred, gt) == 0.0
    assert edit_distance(pred, gt) > 0.0
    # Case is kept: "helloworld" vs "HelloWorld" → 2 substitutions / 10 = 0.2.
    assert edit_distance_omnidoc("hello world", "Hello, World!") == pytest.approx(0.2)
    # Everything removed on both sides (punctuation only) → two empty strings → 0.
    assert edit_distance_omnidoc("...", "!!") == 0.0


def test_fox_word_sets():
    # pred words {the, cat, sat, on, mat} (5 unique), gt {the, cat, is, on, mat, today} (6);
    # common {the, cat, on, mat} = 4 → P = 4/5, R = 4/6 = 2/3, F1 = 2PR/(P+R) = (16/15)/(22/15) = 8/11.
    p, r, f = fox_scores("the cat sat on the mat", "the cat is on the mat today")
    assert (p, r, f) == pytest.approx((4 / 5, 2 / 3, 8 / 11))
    # Duplicates do not count: pred {a, b}, gt {a, b, c} → P = 2/2, R = 2/3, F1 = (4/3)/(5/3) = 4/5.
    assert fox_scores("a a a b", "a b c") == pytest.approx((1.0, 2 / 3, 4 / 5))
    # Disjoint → all zero (no division by zero in F1).
    assert fox_scores("x y", "a b") == (0.0, 0.0, 0.0)
    # Words are whitespace tokens: "mat." ≠ "mat" → pred {mat.}, gt {mat}: 0 common.
    assert fox_scores("mat.", "mat") == (0.0, 0.0, 0.0)


def test_fox_cjk_and_emoji():
    # No jieba: Chinese splits into characters. {我, 爱, 北, 京} vs {我, 爱, 上, 海}: 2 common of 4 each
    # → P = R = F1 = 1/2.
    assert fox_scores("我爱北京", "我爱上海") == pytest.approx((0.5, 0.5, 0.5))
    # A Latin run glued to CJK stays one word: "GPT模型" → {GPT, 模, 型} = "GPT 模型" → perfect.
    assert fox_scores("GPT模型", "GPT 模型") == (1.0, 1.0, 1.0)
    # Emoji are ordinary whitespace tokens: {ok, 👍} vs {ok, 👎}: 1 of 2 each → 1/2.
    assert fox_scores("ok 👍", "ok 👎") == pytest.approx((0.5, 0.5, 0.5))


def test_summarize_means_over_pages():
    # Page 1: kitten/sitting ED 3/7; page 2: identical ED 0 → mean 3/14. Exact match (0 + 1)/2 = 0.5.
    rows = [score("kitten", "sitting"), score("same", "same")]
    s = summarize(rows)
    assert s["n"] == 2
    assert s["edit_distance"] == pytest.approx(3 / 14)
    assert s["exact_match"] == pytest.approx(0.5)
    assert s["fox_f1"] == pytest.approx(0.5)  # (0 + 1)/2: {kitten} vs {sitting} share nothing
    assert summarize([])["n"] == 0


def test_one_metric_list():
    """METRICS is the list every report iterates: exactly score()'s keys, in its order, and summarize's."""
    assert list(score("a b", "a c")) == list(METRICS)
    assert list(summarize([score("a", "a")])) == [*METRICS, "n"]
    assert LOWER_IS_BETTER == {"cer", "edit_distance", "edit_distance_omnidoc"} and LOWER_IS_BETTER <= set(METRICS)
    from nanoocr.eval import evaluate
    assert evaluate.METRICS is METRICS  # the evaluate table uses this list, not a copy
