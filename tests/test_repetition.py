"""Repetition: the end-of-output loop metric and the no-repeat n-gram decoding guard.

Expected values are worked out by hand in the comments (the guard's from vLLM NGramPerReqLogitsProcessor's
rule: prefix = last n-1 generated tokens; n-grams starting in [max(0, len - window), len - n]), never read off
the code under test. One test checks the guard against a brute-force restatement of the rule.
"""
import random

import pytest
import torch

from nanoocr.eval.repetition import (DEFAULT, RepetitionConfig, ends_in_loop, loop_at_end, ngram_repeats,
                                     olmocr_repeat_failure, repetition_summary, tail_repeats)
from nanoocr.model.ngram_guard import GUARD_PRESETS, NGramGuard, single_token_ids

# ----------------------------------------------------------------------------------------------- metric


def test_ngram_repeats_hand_worked():
    # "abab": size 1 "b" once; size 2 "ab","ab" twice; size 3 "bab" once.
    assert ngram_repeats("abab", 3) == [1, 2, 1]
    # "aabaabaa": size 1 "aa" at the end: 2; size 2 "aa" then "ab" != "aa": 1; size 3 "baa","baa" then "a" (too short): 2
    assert ngram_repeats("aabaabaa", 3) == [2, 1, 2]
    assert ngram_repeats("", 3) == [0, 0, 0]
    assert ngram_repeats("abc", 5) == [1, 1, 1, 0, 0]   # longer than the text: 0
    assert tail_repeats("abcabcabcabc", 3) == 4
    assert tail_repeats("abcabcxyz", 3) == 1           # the repeats are not at the end


def test_olmocr_rule_is_more_than_30_copies_of_up_to_5_characters():
    assert olmocr_repeat_failure("x" + "ab" * 30) is None                # 30 copies: not MORE than 30
    assert olmocr_repeat_failure("x" + "ab" * 31) == "Text ends with 31 repeating 2-grams, invalid"
    # a 6-character unit is outside olmOCR's 1..5 sizes, whatever its count
    assert olmocr_repeat_failure("x" + "abcdef" * 100) is None


def test_a_word_loop_is_flagged():
    text = "Results are shown below. " + "the cat " * 50
    loop = loop_at_end(text)
    # rstrip drops the last space: the tail is "below. the cat ... the cat", unit " the cat" (8 chars); the
    # first copy's leading space is the one after "below.", so all 50 copies count: 400 characters
    assert loop == {"period": 8, "repeats": 50, "chars": 400, "unit": " the cat"}
    assert olmocr_repeat_failure(text) is None  # olmOCR's 5-character limit misses this loop


def test_a_line_loop_is_flagged_by_the_length_rule():
    # a 60-character line repeated 8 times = 480 characters: >= 5 copies and >= 400 characters (rule b)
    line = "| 2021 | Revenue grew strongly in all regions as expected |\n"
    assert len(line) == 60
    assert loop_at_end("# Report\n" + line * 8)["period"] == 60
    # 6 copies = 360 characters < 400: a table with six identical rows is not a loop
    assert loop_at_end("# Report\n" + line * 6) is None


def test_a_truncated_final_copy_is_still_a_loop():
    # the budget cut the last copy after "ab": the unit read from the end is "cab"
    text = "intro " + "abc" * 40 + "ab"
    assert loop_at_end(text)["period"] == 3 and loop_at_end(text)["unit"] == "cab"


def test_legitimate_repetition_is_not_flagged():
    md_table = "| a | b |\n|---|---|\n" + "| 0 | 0 |\n" * 4  # four identical rows, 40 repeated characters
    html_table = "<table>" + "<tr><td>1</td><td>1</td></tr>" * 4 + "</table>"
    html_open = "<table>" + "<tr><td>1</td><td>1</td></tr>" * 4  # even ending on the rows: 4 x 29 = 116 chars
    for text in ["ha ha", "ha ha ha", "哈哈哈", "Chapter 1 ........ 5", md_table, html_table, html_open, "", "a"]:
        assert not ends_in_loop(text), text


def test_cjk_loop_and_trailing_whitespace():
    assert loop_at_end("第一章\n" + "这是一个测试。" * 40)["period"] == 7  # 40 copies > 30
    # a writer's final newline must not hide the loop
    assert ends_in_loop("x " + "abc" * 40 + "\n")
    # newlines emitted to the budget: 31 > 30 whitespace characters
    assert loop_at_end("text" + "\n" * 31)["repeats"] == 31
    assert not ends_in_loop("text" + "\n" * 3)


def test_config_and_rate():
    # the period bound: a 12-character unit is invisible with max_period 10
    text = "x" + "hello world " * 40
    assert ends_in_loop(text) and not ends_in_loop(text, RepetitionConfig(max_period=10))
    texts = ["the cat " * 50, "ha ha", "A normal page.", "x" + "ab" * 31]
    s = repetition_summary(texts, stopped=[False, True, True, True])
    # flagged: texts 0 and 3 (2 of 4); olmOCR's rule: only text 3; no stop: text 0
    assert s == {"n": 4, "n_looped": 2, "repetition_rate": 0.5, "olmocr_repeat_fail_rate": 0.25, "no_stop_rate": 0.25}
    assert repetition_summary([])["repetition_rate"] == 0.0
    assert DEFAULT.max_repeats == 30


# ------------------------------------------------------------------------------------------------ guard


def test_guard_bans_the_token_that_completes_a_seen_ngram():
    g = NGramGuard(ngram_size=3, window_size=100, whitelist_token_ids=())
    # prefix (1, 2); 3-grams starting at 0..3: (1,2,3) (2,3,9) (3,9,1) (9,1,2): only (1,2,3) has the prefix -> ban 3
    assert g.banned([1, 2, 3, 9, 1, 2]) == {3}
    # two earlier continuations of (1, 2): 7 and 8
    assert g.banned([1, 2, 7, 1, 2, 8, 1, 2]) == {7, 8}
    assert g.banned([1, 2]) == set()            # fewer than ngram_size tokens: nothing
    assert g.banned([1, 2, 3]) == set()         # prefix (2, 3); the only 3-gram (1,2,3) starts with (1, 2)


def test_guard_window_edges():
    history = [1, 2, 3, 9, 1, 2]  # len 6, n 3: starts run up to 6 - 3 = 3
    # window 6: start max(0, 0) = 0 includes (1,2,3) -> ban 3
    assert NGramGuard(3, 6, ()).banned(history) == {3}
    # window 5: start 1: (2,3,9) (3,9,1) (9,1,2): the n-gram at 0 is outside even though its LAST token is inside
    assert NGramGuard(3, 5, ()).banned(history) == set()
    # window smaller than the n-gram: start 4 > 3, nothing to search
    assert NGramGuard(3, 2, ()).banned(history) == set()


def test_guard_whitelist_and_bigrams():
    # n 2: prefix (5,); 2-grams (5,6) (6,5): ban 6 -- unless 6 is whitelisted
    assert NGramGuard(2, 90, ()).banned([5, 6, 5]) == {6}
    assert NGramGuard(2, 90, {6}).banned([5, 6, 5]) == set()
    assert NGramGuard(2, 90, {6}).banned([5, 6, 5, 7, 5]) == {7}  # 6 spared, 7 banned


def test_guard_ngram_size_one_bans_nothing_as_vllm():
    # vLLM's prefix ids[-(1-1):] = ids[-0:] is the whole history, never equal to a 1-gram's empty head
    assert NGramGuard(1, 90, ()).banned([4, 4, 4, 4]) == set()


def test_guard_matches_a_brute_force_restatement():
    # token t is banned iff (last n-1 tokens + t) occurs as an n-gram starting in the window
    rng = random.Random(0)
    for _ in range(300):
        n, w = rng.randint(2, 5), rng.randint(1, 12)
        h = [rng.randint(0, 3) for _ in range(rng.randint(0, 20))]
        grams = {tuple(h[i:i + n]) for i in range(max(0, len(h) - w), len(h) - n + 1)} if len(h) >= n else set()
        expect = {t for t in range(4) if len(h) >= n and tuple(h[len(h) - n + 1:]) + (t,) in grams}
        assert NGramGuard(n, w, ()).banned(h) == expect, (n, w, h)


def test_guard_masks_logits_1d_and_batched():
    g = NGramGuard(3, 90, {7})
    logits = torch.zeros(10)
    out = g([1, 2, 3, 9, 1, 2], logits)
    assert out is logits and out[3] == float("-inf") and torch.isfinite(out[[0, 1, 2, 4, 5, 6, 7, 8, 9]]).all()
    batch = torch.zeros(3, 10)
    # row 0 bans 3; row 1 would ban 7 (whitelisted) -> nothing; row 2 bans 8 and 9
    g([[1, 2, 3, 0, 1, 2], [1, 2, 7, 0, 1, 2], [4, 4, 8, 4, 4, 9, 4, 4]], batch)
    assert (batch == float("-inf")).nonzero().tolist() == [[0, 3], [2, 8], [2, 9]]
    with pytest.raises(AssertionError):
        g([[1, 2, 3]], torch.zeros(2, 10))  # one history for two rows


def test_guard_defaults_presets_and_validation():
    g = NGramGuard()
    assert (g.ngram_size, g.window_size, g.whitelist_token_ids) == (30, 90, frozenset({128821, 128822}))
    assert {k: (p.ngram_size, p.window_size) for k, p in GUARD_PRESETS.items()} == \
        {"image": (30, 90), "pdf": (20, 50), "eval": (40, 90)}
    assert NGramGuard(3, 9, None).whitelist_token_ids == frozenset()  # vLLM's default: no whitelist
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            NGramGuard(ngram_size=bad)
    # a tokenizer where "<td>" is one token (id 5) and "</td>" three: only 5 can be whitelisted
    vocab = {"<td>": [5], "</td>": [1, 2, 3]}
    assert single_token_ids(vocab.__getitem__) == frozenset({5})


def test_guard_stops_a_greedy_loop():
    # A toy "model" whose greedy choice continues the cycle 10 11 12 13 forever (logit 5 on the next token in
    # the cycle, then a fallback ladder): without the guard the text loops; with it no 3-gram repeats in the window.
    V = 40

    def logits_for(history):
        x = torch.arange(V, dtype=torch.float32) * -0.01  # fallback: the smallest free id
        nxt = 10 + (history[-1] - 9) % 4 if history and 10 <= history[-1] <= 13 else 10
        x[nxt] = 5.0
        return x

    def greedy(guard, steps=200):
        out = []
        for _ in range(steps):
            x = logits_for(out)
            if guard is not None:
                x = guard(out, x)
            out.append(int(x.argmax()))
        return out

    decode = lambda ids: "".join(chr(ord("a") + i % 26) for i in ids)  # noqa: E731
    plain = greedy(None)
    assert plain[:8] == [10, 11, 12, 13, 10, 11, 12, 13]
    assert ends_in_loop(decode(plain))                                   # the metric sees the loop
    guarded = greedy(NGramGuard(3, 90, ()))
    for t in range(3, len(guarded) + 1):                                  # no 3-gram twice within 90 tokens
        h = guarded[:t]
        assert tuple(h[-3:]) not in {tuple(h[i:i + 3]) for i in range(max(0, t - 1 - 90), t - 3)}


def test_guard_flags_map_whitelist_strings_to_this_tokenizers_ids():
    import argparse

    from nanoocr.eval.repetition import add_guard_args, check_guard_args, guard_kwargs

    class Tok:  # "<td>" is one token (id 7), "</td>" three: only 7 can be whitelisted by id
        def encode(self, text):
            return {"<td>": [7], "</td>": [1, 2, 3], "<tr>": [9]}[text]

    ap = argparse.ArgumentParser()
    add_guard_args(ap)
    args = ap.parse_args([])
    assert (args.no_repeat_ngram, args.no_repeat_window, args.no_repeat_whitelist) == (30, 90, "<td>,</td>")
    kwargs, info = guard_kwargs(args, Tok())
    assert kwargs == {"no_repeat_ngram": 30, "no_repeat_window": 90, "no_repeat_whitelist": frozenset({7})}
    assert info["whitelist"] == {"<td>": 7, "</td>": None} and "</td>" in info["whitelist_left_out"]
    kwargs, info = guard_kwargs(ap.parse_args(["--no-repeat-ngram", "20", "--no-repeat-window", "50",
                                               "--no-repeat-whitelist", "<tr>"]), Tok())
    assert kwargs["no_repeat_whitelist"] == frozenset({9}) and "whitelist_left_out" not in info
    assert guard_kwargs(ap.parse_args(["--no-repeat-whitelist", ""]), Tok())[0]["no_repeat_whitelist"] == frozenset()
    assert guard_kwargs(ap.parse_args(["--no-repeat-ngram", "0"]), Tok())[1]["semantics"] == "off"
    assert check_guard_args(args) is None
    assert "--no-repeat-ngram must be >= 0" in check_guard_args(ap.parse_args(["--no-repeat-ngram", "-1"]))
    assert "--no-repeat-window must be >= 1" in check_guard_args(ap.parse_args(["--no-repeat-window", "0"]))
