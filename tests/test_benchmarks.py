"""Benchmark readers, scorers and writers on fixtures written in each benchmark's own format.

Every expected number is worked out by hand in the comment beside it. Chinese word segmentation is pinned to
the no-jieba fallback (characters) and pylatexenc to absent, so the numbers do not depend on what is installed.
"""
import io
import json
import random
import shutil
import sys

import pytest
from PIL import Image
from rapidfuzz.distance import Levenshtein

from nanoocr.eval.benchmarks import BENCHMARKS, fox, olmocr_bench, omnidocbench
from nanoocr.eval.benchmarks.olmocr_bench import near_match_starts, normalize_text, run_test


@pytest.fixture(autouse=True)
def pinned_optional_libs(monkeypatch):
    # a None entry in sys.modules makes the import raise ImportError: the documented fallbacks
    monkeypatch.setitem(sys.modules, "jieba", None)
    monkeypatch.setitem(sys.modules, "pylatexenc", None)
    monkeypatch.setitem(sys.modules, "pylatexenc.latex2text", None)


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path)


def test_every_benchmark_has_the_same_interface():
    for mod in BENCHMARKS.values():
        for name in ("read", "score", "summarize", "write_predictions", "PROMPT"):
            assert hasattr(mod, name), (mod.__name__, name)
        assert mod.PROMPT == "<image>\nFree OCR."


# ------------------------------------------------------------------------------------------------ Fox

GT_EN = "the cat sat on the mat"
GT_LONG = "a page at the top edge"
GT_OUT = "a page over the range"


@pytest.fixture
def fox_dir(tmp_path):
    entries = [{"image": f"en_{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nPlease give the OCR results of this page:"},
        {"from": "gpt", "value": gt}]} for i, gt in enumerate([GT_EN, GT_LONG, GT_OUT])]
    (tmp_path / "en_page_ocr.json").write_text(json.dumps(entries))
    for i in range(3):
        _png(tmp_path / "en_pdf_png" / f"en_{i}.png")
    cn = [{"image": "cn_0.png", "conversations": [{"from": "human", "value": "<image>\nOCR:"},
                                                  {"from": "gpt", "value": "今天天气很好"}]}]
    (tmp_path / "cn_page_ocr.json").write_text(json.dumps(cn, ensure_ascii=False))
    return tmp_path


def test_fox_reader_filters_and_bins_by_token_count(fox_dir):
    counts = {GT_EN: 650, GT_LONG: 1300, GT_OUT: 1301}  # 1300 is the last bin's top edge; 1301 is out
    recs = fox.read(fox_dir, count_tokens=counts.__getitem__)
    assert [(r["id"], r["gt_tokens"], r["bin"]) for r in recs] == [("en_0.png", 650, "600-700"),
                                                                    ("en_1.png", 1300, "1200-1300")]
    r = recs[0]
    assert r["image"] == fox_dir / "en_pdf_png" / "en_0.png" and r["image"].is_file()
    assert r["prompt"] == "<image>\nFree OCR." and r["benchmark_prompt"].startswith("<image>\nPlease")
    assert len(fox.read(fox_dir)) == 3  # no tokenizer: every page, unbinned
    assert [fox.token_bin(n) for n in (599, 600, 699, 700, 1299, 1300, 1301)] == \
        [None, "600-700", "600-700", "700-800", "1200-1300", "1200-1300", None]
    with pytest.raises(ValueError, match="no such file"):
        fox.read(fox_dir / "missing")


def test_fox_scores_by_hand(fox_dir):
    en = fox.read(fox_dir)[0]
    s = fox.score("the cat sat on a hat", en)
    # GT words {the, cat, sat, on, mat} (5), output {the, cat, sat, on, a, hat} (6), common 4.
    # Fox's precision = common / |GT| = 4/5, its recall = common / |output| = 4/6, f1 = 2pr/(p+r) = 8/11.
    assert s["precision"] == pytest.approx(4 / 5) and s["recall"] == pytest.approx(4 / 6)
    assert s["f1"] == pytest.approx(8 / 11)
    # "the mat" -> "a hat": "the" -> "a" is 2 deletions + 1 substitution, "mat" -> "hat" 1 substitution: 4 edits
    # (the length gap forces 2 deletions, and no 2-deletion subsequence of "the mat" is 1 edit from "a hat");
    # over max(22, 20) = 22
    assert s["edit_distance"] == pytest.approx(4 / 22) and s["one_minus_edit_distance"] == pytest.approx(18 / 22)
    assert s["segmenter"] == "whitespace"

    empty = fox.score("", en)  # no output words: precision 0 (Fox's nltk would return None), ED 22/22
    assert (empty["precision"], empty["recall"], empty["f1"], empty["edit_distance"]) == (0.0, 0.0, 0.0, 1.0)

    cn = fox.read(fox_dir, lang="cn")[0]
    c = fox.score("今天天气好", cn)
    # characters (jieba pinned off): GT {今, 天, 气, 很, 好} (5), output {今, 天, 气, 好} (4): p 4/5, r 4/4;
    # ED: delete 很 = 1 / 6
    assert (c["precision"], c["recall"], c["segmenter"]) == (pytest.approx(0.8), 1.0, "chars")
    assert c["edit_distance"] == pytest.approx(1 / 6)


def test_fox_summary_bins_and_runner_json(fox_dir, tmp_path):
    counts = {GT_EN: 650, GT_LONG: 1300, GT_OUT: 1301}
    recs = fox.read(fox_dir, count_tokens=counts.__getitem__)
    preds = ["the cat sat on the mat", ""]
    rows = [{"id": r["id"], "pred": p, **fox.score(p, r)} for r, p in zip(recs, preds)]
    s = fox.summarize(rows)
    # page 1 exact (precision 1, ED 0), page 2 empty (precision 0, ED 1): means 0.5 / 0.5
    assert s["n"] == 2 and s["precision"] == 0.5 and s["edit_distance"] == 0.5
    assert [(b["bin"], b["n"], b["precision"], b["one_minus_edit_distance"]) for b in s["bins"]] == \
        [("600-700", 1, 1.0, 1.0), ("1200-1300", 1, 0.0, 0.0)]
    out = fox.write_predictions(tmp_path / "out" / "results_final.json", recs, preds)
    items = json.loads(out.read_text())
    # Fox's runner layout: the ground truth under "label", the output under "answer"
    assert items[0] == {"image": "en_0.png", "question": "<image>\nFree OCR.", "label": GT_EN, "answer": preds[0]}
    with pytest.raises(ValueError, match=".json"):
        fox.write_predictions(tmp_path / "out", recs, preds)


# --------------------------------------------------------------------------------------- OmniDocBench

def _det(cat, order, text=None, anno_id=0, **kw):
    d = {"category_type": cat, "poly": [0, 0, 10, 0, 10, 10, 0, 10], "ignore": False, "order": order,
         "anno_id": anno_id, **kw}
    if text is not None:
        d["text"] = text
    return d


@pytest.fixture
def omni_dir(tmp_path):
    page_en = {
        "layout_dets": [
            _det("header", 0, "Journal of Tests", 1),
            _det("title", 1, "Introduction", 2),
            _det("text_block", 2, r"Energy $\alpha$-helix forms.", 3),   # inline LaTeX in the ground truth
            _det("text_block", 3, "The first half ", 10),                  # truncated into the next block
            _det("text_block", 4, "and the second.", 11),
            _det("page_number", 5, "7", 12),
            _det("text_block", 6, "Skip me", 13, ignore=True),
            _det("equation_isolated", 7, anno_id=14, latex=r"$$E=mc^2$$"),
        ],
        "page_info": {"page_no": 0, "height": 100, "width": 80, "image_path": "doc_en.jpg",
                      "page_attribute": {"language": "english"}},
        "extra": {"relation": [{"source_anno_id": 10, "target_anno_id": 11, "relation_type": "truncated"}]},
    }
    page_zh = {"layout_dets": [_det("text_block", 1, "今天天气很好", 1)],
               "page_info": {"image_path": "doc_zh.png", "page_attribute": {"language": "simplified_chinese"}},
               "extra": {"relation": []}}
    page_fig = {"layout_dets": [_det("figure", 1, anno_id=1)],
                "page_info": {"image_path": "doc_fig.jpg", "page_attribute": {"language": "english"}},
                "extra": {"relation": []}}
    (tmp_path / "OmniDocBench.json").write_text(json.dumps([page_en, page_zh, page_fig], ensure_ascii=False))
    for name in ("doc_en.jpg", "doc_zh.png", "doc_fig.jpg"):
        _png(tmp_path / "images" / name)
    return tmp_path


# GT after normalization, in reading order: "Introduction" (12) + "Energyαhelixforms" (17) +
# "Thefirsthalfandthesecond" (24, the truncated pair joined) = 53 characters; header, page number and the
# ignore-flagged block are not scored.
GT_NORM = "IntroductionEnergyαhelixformsThefirsthalfandthesecond"


def test_omnidocbench_normalization_by_hand():
    # inline $\alpha$ -> α (it holds a backslash); $x$ is left as is and its $ dropped by the cleaning;
    # tabs/newlines removed; \w keeps letters of every script, digits and _; CJK kept
    assert omnidocbench.normalize(r"Energy $\alpha$-helix, $x$ and a_b" + "\t中文 ²") == "Energyαhelixxanda_b中文²"
    assert omnidocbench.normalize("Energy α-helix forms.") == omnidocbench.normalize(r"Energy $\alpha$-helix forms.")
    assert omnidocbench.normalize(r"\(\frac{a}{b}\) ok") == "abok"  # unknown command dropped, braces dropped


def test_omnidocbench_reader(omni_dir):
    recs = omnidocbench.read(omni_dir)
    assert [(r["id"], r["language"]) for r in recs] == \
        [("doc_en.jpg", "english"), ("doc_zh.png", "simplified_chinese"), ("doc_fig.jpg", "english")]
    assert recs[0]["image"] == omni_dir / "images" / "doc_en.jpg"
    assert recs[0]["gt"] == "Introduction\n\nEnergy $\\alpha$-helix forms.\n\nThe first half and the second."
    blocks = omnidocbench.page_blocks(recs[0]["page"])
    assert [(b["order"], b["scored"]) for b in blocks] == [(0, False), (1, True), (2, True), (3, True), (5, False), (6, False)]


def test_omnidocbench_scores_by_hand(omni_dir):
    en, zh, fig = omnidocbench.read(omni_dir)
    pred = ("Journal of Tests\n\n# Introduction\n\nEnergy α-helix forms.\n\n$$E=mc^2$$\n\n"
            "The first half and the second.\n\n7")
    s = omnidocbench.score(pred, en)
    # the header and the page number match ignored blocks exactly: dropped; display math removed;
    # the rest normalizes to GT_NORM: 0 edits; found in order 1, 2, 3 -> reading order 0
    assert (s["text_edit"], s["reading_order_edit"], s["dropped_paragraphs"], s["n_blocks"]) == (0.0, 0.0, 2, 3)

    typo = omnidocbench.score("Introduction\n\nEnergy $\\alpha$-helix farms.\n\nThe first half and the second.", en)
    assert typo["text_edit"] == pytest.approx(1 / 53)  # o -> a; the LaTeX α equals the unicode one

    swapped = omnidocbench.score("The first half and the second.\n\nIntroduction\n\nEnergy α-helix forms.", en)
    # found at positions 0 (order 3), 24 (order 1), 36 (order 2): [3, 1, 2] vs [1, 2, 3]:
    # delete the trailing 3, insert a leading 3 = 2 edits / 3
    assert swapped["reading_order_edit"] == pytest.approx(2 / 3)
    assert Levenshtein.distance([1, 2, 3], [3, 1, 2]) == 2

    empty = omnidocbench.score("", en)  # 53 deletions / 53; none of the 3 blocks found: [1,2,3] vs [] = 3/3
    assert (empty["text_edit"], empty["reading_order_edit"]) == (1.0, 1.0)

    z = omnidocbench.score("今天天气好", zh)  # delete 很: 1 / 6; the one block is found: order [1] vs [1]
    assert (z["text_edit"], z["reading_order_edit"]) == (pytest.approx(1 / 6), 0.0)
    assert omnidocbench.score("anything", fig)["text_edit"] is None  # no text on the page: not scored

    rows = [{"id": r["id"], **omnidocbench.score(p, r)} for r, p in zip((en, zh, fig), (pred, "今天天气好", "x"))]
    summ = omnidocbench.summarize(rows)
    # text pages: en 0 and zh 1/6 -> mean 1/12; whole = (0 + 1) edits / (53 + 6) characters
    assert summ["text_edit"] == pytest.approx(1 / 12) and summ["text_edit_whole"] == pytest.approx(1 / 59)
    assert summ["n_text_pages"] == 2 and summ["n_pages"] == 3
    assert summ["by_language"]["simplified_chinese"]["text_edit"] == pytest.approx(1 / 6)
    assert summ["by_language"]["english"]["text_edit"] == 0.0
    assert "table TEDS / TEDS-S" in summ["not_computed"] and "formula CDM" in summ["not_computed"]
    assert summ["latex_to_unicode"].startswith("table (pylatexenc not installed")


def test_omnidocbench_text_edit_ignores_paragraph_order_and_repeated_blocks_find_their_own_place():
    # docs/FACTS.md "Benchmark formats": OmniDocBench pairs prediction paragraphs with GT blocks whatever their
    # order (quick_match), so its text edit
    # of a page whose paragraphs come in the wrong order is 0, and only reading_order_edit charges it: normalized
    # GT "Alphabetagamma" (order 1) and "Deltaepsilon" (order 2); the prediction lists 2 then 1, so the predicted
    # order is [2, 1] against [1, 2]: Levenshtein 2 (two substitutions) / 2 = 1.0
    page = {"layout_dets": [_det("text_block", 1, "Alpha beta gamma", 1), _det("text_block", 2, "Delta epsilon", 2)]}
    row = omnidocbench.score("Delta epsilon\n\nAlpha beta gamma", {"page": page})
    assert row["text_edit"] == 0.0 and row["reading_order_edit"] == 1.0
    # a block repeated on the page ("make install" at orders 1 and 3) takes the next occurrence, not the first one
    # twice: the prediction in the page's own order scores [1, 2, 3] vs [1, 2, 3], 0 (placing both at the first
    # "makeinstall" would give [1, 3, 2]: 2 edits / 3)
    page = {"layout_dets": [_det("text_block", 1, "make install", 1), _det("text_block", 2, "Then rebuild it.", 2),
                            _det("text_block", 3, "make install", 3)]}
    row = omnidocbench.score("make install\n\nThen rebuild it.\n\nmake install", {"page": page})
    assert row["text_edit"] == 0.0 and row["reading_order_edit"] == 0.0


def test_omnidocbench_predictions_are_named_by_image_stem(omni_dir, tmp_path):
    recs = omnidocbench.read(omni_dir)
    paths = omnidocbench.write_predictions(tmp_path / "pred", recs, ["a", "b", "c"])
    assert [p.name for p in paths] == ["doc_en.md", "doc_zh.md", "doc_fig.md"]
    assert (tmp_path / "pred" / "doc_zh.md").read_text() == "b"


# -------------------------------------------------------------------------------------- olmOCR-Bench

OLMO_TESTS = {
    "arxiv.jsonl": [
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "p_fuzzy", "type": "present", "text": "The quick brown fox", "max_diffs": 2},
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "p_exact", "type": "present", "text": "The quick brown fox"},
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "a1", "type": "absent", "text": "Page 7 of 9"},
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "o1", "type": "order", "before": "Introduction", "after": "Conclusion", "max_diffs": 1},
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "o2", "type": "order", "before": "Conclusion", "after": "Introduction", "max_diffs": 1},
        {"pdf": "arxiv/doc1.pdf", "page": 1, "id": "t1", "type": "table", "cell": "x"},
    ],
    "multi.jsonl": [
        {"pdf": "multi/doc2.pdf", "page": 1, "id": "ci", "type": "present", "text": "HELLO WORLD", "case_sensitive": False},
        {"pdf": "multi/doc2.pdf", "page": 1, "id": "last", "type": "present", "text": "again", "last_n": 5},
        {"pdf": "multi/doc2.pdf", "page": 1, "id": "doc2_base", "type": "baseline"},
        {"pdf": "multi/doc3.pdf", "page": 1, "id": "p3", "type": "present", "text": "Anything"},
        {"pdf": "multi/doc3.pdf", "page": 1, "id": "a3", "type": "absent", "text": "Secret"},
        {"pdf": "multi/doc4.pdf", "page": 1, "id": "p4", "type": "present", "text": "ababab"},
    ],
}
OLMO_PREDS = {
    "arxiv/doc1.pdf#p1": "# Introductin\n\nThe quick brwn fox jumps over the dog.\n\n## Conclusion\nDone.",
    "multi/doc2.pdf#p1": "hello world, again",
    "multi/doc3.pdf#p1": "",                      # an empty prediction
    "multi/doc4.pdf#p1": "x" + "ab" * 40,          # ends in a loop: 40 "ab" > 30
}


@pytest.fixture
def olmo_dir(tmp_path):
    for name, tests in OLMO_TESTS.items():
        (tmp_path / name).write_text("".join(json.dumps(t) + "\n" for t in tests))
    return tmp_path


def test_olmocr_reader_groups_tests_by_page_and_adds_baselines(olmo_dir):
    recs = olmocr_bench.read(olmo_dir, render=False)
    assert [r["id"] for r in recs] == list(OLMO_PREDS)
    ids = {r["id"]: [(t["id"], t["jsonl"]) for t in r["tests"]] for r in recs}
    # doc2 has its own baseline test; doc1, doc3, doc4 get "<pdf>_baseline" in group "baseline", page 1
    assert ("arxiv/doc1.pdf_baseline", "baseline") in ids["arxiv/doc1.pdf#p1"]
    assert not any(t.endswith("_baseline") for t, _ in ids["multi/doc2.pdf#p1"])
    assert all(r["image"] is None for r in recs)


def test_olmocr_tests_by_hand():
    content = normalize_text(OLMO_PREDS["arxiv/doc1.pdf#p1"])
    assert content == "# Introductin The quick brwn fox jumps over the dog. ## Conclusion Done."
    fuzzy, exact = OLMO_TESTS["arxiv.jsonl"][0], OLMO_TESTS["arxiv.jsonl"][1]
    # "The quick brown fox" (19) vs the window "The quick brwn fox " : LCS 18, Indel distance 2, ratio 36/38 = 0.947
    # >= 1 - 2/19 = 0.895: passes with max_diffs 2; with 0 it needs an exact substring, which is not there
    assert "The quick brown fox" not in content
    assert run_test(fuzzy, OLMO_PREDS["arxiv/doc1.pdf#p1"])[0] is True
    assert run_test(exact, OLMO_PREDS["arxiv/doc1.pdf#p1"])[0] is False
    # order: "Introductin" is 1 edit from "Introduction" (it starts at 2); "Conclusion" starts at 56, and within
    # 1 edit its matches start at 55 (" Conclusion"), 56, 57 ("onclusion"): 2 < 57 passes; o2 asks 55 < 2: fails
    assert near_match_starts("Conclusion", content, 1) == [55, 56, 57]
    assert near_match_starts("Introduction", content, 1) == [2]
    assert run_test(OLMO_TESTS["arxiv.jsonl"][3], OLMO_PREDS["arxiv/doc1.pdf#p1"]) == (True, "")
    assert run_test(OLMO_TESTS["arxiv.jsonl"][4], OLMO_PREDS["arxiv/doc1.pdf#p1"])[0] is False
    assert run_test({**OLMO_TESTS["arxiv.jsonl"][3], "max_diffs": 0}, OLMO_PREDS["arxiv/doc1.pdf#p1"])[0] is False
    assert run_test(OLMO_TESTS["arxiv.jsonl"][5], "x") == (None, "table tests are not run offline")
    # NFC: a composed "café" is found in a decomposed output with max_diffs 0
    assert run_test({"type": "present", "text": "caf\u00e9"}, "Le cafe\u0301 noir")[0] is True
    # bold markers are unwrapped before matching
    assert run_test({"type": "present", "text": "bold words"}, "some **bold** words")[0] is True
    # empty output: present fails, absent passes (too short to hold the text)
    assert run_test({"type": "present", "text": "Anything"}, "")[0] is False
    assert run_test({"type": "absent", "text": "Secret"}, "")[0] is True
    # baseline: blank-page check, no alphanumerics, the olmOCR repetition rule, disallowed characters
    assert run_test({"type": "baseline", "max_length": 3}, "ab c")[0] is True      # 3 alphanumerics
    assert run_test({"type": "baseline", "max_length": 2}, "ab c")[0] is False
    assert run_test({"type": "baseline"}, "  --  ")[0] is False
    assert run_test({"type": "baseline"}, "x" + "ab" * 31)[1] == "Text ends with 31 repeating 2-grams, invalid"
    assert run_test({"type": "baseline"}, "x" + "ab" * 30)[0] is True
    assert run_test({"type": "baseline"}, "Tokyo 東京")[0] is False
    assert run_test({"type": "baseline", "check_disallowed_characters": False}, "Tokyo 東京")[0] is True


def test_olmocr_fragment_output_scores_as_olmocrs_code_does():
    # docs/FACTS.md "Benchmark formats": olmOCR's present/absent test has no length check, and partial_ratio aligns
    # the shorter string inside the longer: the output "The quick" is an exact piece of "The quick brown fox", ratio
    # 100 >= threshold 1 - 0/19, so present PASSES and absent FAILS on it (olmocr.bench.tests at f7cfe4c agrees)
    fragment = "The quick"
    assert run_test({"type": "present", "text": "The quick brown fox"}, fragment) == (True, "")
    assert run_test({"type": "absent", "text": "The quick brown fox"}, fragment)[0] is False
    # a fragment that is NOT a piece of the text is still scored by its best alignment: "quick brawn" vs the
    # window "quick brown" is 1 substitution = Indel 2 of 22, ratio 0.909 < 1 - 1/19 = 0.947: fails with max_diffs 1
    assert run_test({"type": "present", "text": "The quick brown fox", "max_diffs": 1}, "quick brawn")[0] is False
    assert run_test({"type": "present", "text": "The quick brown fox", "max_diffs": 2}, "quick brawn")[0] is True


def test_near_match_starts_against_brute_force():
    assert near_match_starts("aa", "aaa", 0) == [0, 1]  # overlapping exact matches, as str.find in a loop
    rng = random.Random(1)
    for _ in range(200):
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 14)))
        pat = "".join(rng.choice("abc") for _ in range(rng.randint(1, 5)))
        k = rng.randint(0, 2)
        brute = sorted({s for s in range(len(text)) for e in range(s + 1, len(text) + 1)
                        if Levenshtein.distance(pat, text[s:e]) <= k})
        assert near_match_starts(pat, text, k) == brute, (pat, text, k)
        assert near_match_starts(pat, text, k, first_only=True, reverse=True) == brute[-1:]


def test_olmocr_scoring_per_jsonl_and_type(olmo_dir):
    recs = olmocr_bench.read(olmo_dir, render=False)
    rows = [{"id": r["id"], "pred": OLMO_PREDS[r["id"]], **olmocr_bench.score(OLMO_PREDS[r["id"]], r)} for r in recs]
    s = olmocr_bench.summarize(rows)
    # arxiv.jsonl: p_fuzzy yes, p_exact no, a1 yes, o1 yes, o2 no -> 3/5 (t1 not run)
    # multi.jsonl: ci yes, last yes, doc2_base yes, p3 no (empty), a3 yes, p4 yes -> 5/6
    # baseline (added): doc1 yes, doc3 no (empty), doc4 no (loop) -> 1/3
    assert {k: (g["passed"], g["total"]) for k, g in s["by_jsonl"].items()} == \
        {"arxiv.jsonl": (3, 5), "baseline": (1, 3), "multi.jsonl": (5, 6)}
    assert s["overall"] == pytest.approx((3 / 5 + 5 / 6 + 1 / 3) / 3)
    # present 4/6 (p_fuzzy, ci, last, p4), absent 2/2, order 1/2, baseline 2/4 (doc2_base, doc1)
    assert {k: (v["pass_rate"], v["n"]) for k, v in s["by_type"].items()} == \
        {"absent": (1.0, 2), "baseline": (0.5, 4), "order": (0.5, 2), "present": (pytest.approx(4 / 6), 6)}
    assert s["not_scored"] == {"table": 1} and "not olmOCR-Bench's leaderboard figure" in s["note"]
    assert rows[0]["page_pass_rate"] == pytest.approx(4 / 6)  # doc1: 3 of its 5 + its baseline = 4 of 6
    # a page without an output fails all its tests: without doc4, multi.jsonl loses p4 -> 4/6
    missing = olmocr_bench.summarize(rows[:3], records=recs)
    assert missing["by_jsonl"]["multi.jsonl"]["passed"] == 4


def test_olmocr_reader_refuses_invalid_tests(tmp_path):
    bad = {"pdf": "a.pdf", "id": "o", "type": "order", "before": "abcd", "after": "efgh", "max_diffs": 3}
    (tmp_path / "x.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:1: .*over half"):  # olmOCR's loader refuses it too
        olmocr_bench.read(tmp_path, render=False)
    (tmp_path / "x.jsonl").write_text(json.dumps({"pdf": "a.pdf", "id": "k", "type": "bogus"}) + "\n")
    with pytest.raises(ValueError, match="unknown type"):
        olmocr_bench.read(tmp_path, render=False)
    with pytest.raises(ValueError, match="no \\*.jsonl"):
        olmocr_bench.read(tmp_path / "empty", render=False)


def test_olmocr_predictions_layout_and_rendering(olmo_dir, tmp_path):
    recs = olmocr_bench.read(olmo_dir, render=False)
    paths = olmocr_bench.write_predictions(tmp_path / "nanoocr", recs, [OLMO_PREDS[r["id"]] for r in recs])
    assert [str(p.relative_to(tmp_path / "nanoocr")) for p in paths] == [
        "arxiv/doc1_pg1_repeat1.md", "multi/doc2_pg1_repeat1.md", "multi/doc3_pg1_repeat1.md", "multi/doc4_pg1_repeat1.md"]
    with pytest.raises(ValueError, match="escapes"):
        olmocr_bench.write_predictions(tmp_path / "nanoocr", [{"pdf": "../../evil.pdf", "page": 1}], ["x"])
    if shutil.which("pdftoppm") is None:
        pytest.skip("poppler-utils not installed")
    (olmo_dir / "pdfs" / "arxiv").mkdir(parents=True)
    Image.new("RGB", (60, 80), "white").save(olmo_dir / "pdfs" / "arxiv" / "doc1.pdf")  # a one-page PDF
    by_id = {r["id"]: r for r in olmocr_bench.read(olmo_dir, render=True)}
    png = by_id["arxiv/doc1.pdf#p1"]["image"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 0
    assert "error" in by_id["multi/doc2.pdf#p1"] and by_id["multi/doc2.pdf#p1"]["image"] is None  # no such PDF
