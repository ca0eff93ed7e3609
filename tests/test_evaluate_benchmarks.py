"""`python -m nanoocr.evaluate --benchmark fox|omnidocbench|olmocr-bench DIR` end to end on a tiny export.

The export is a `nano` NanoOCR rigged to loop: every text token embeds to the same vector and lm_head favours
" fox" whatever the context, so greedy decoding writes " fox fox fox ..." and, when the guard bans " fox", falls
back to the next logit, token 0 = <|bos|>, a stop token. What is checked: the files each benchmark path writes
(per_sample.jsonl, skipped.jsonl, summary.json/.md, predictions/ in the benchmark's own layout, Fox's plot), that
every row holds the benchmark's own scores of its output (recomputed here with the benchmark module), that the
summary holds the benchmark's figures and the repetition rate of the rows (recomputed with
repetition_summary), and that the guard flags change generation as vLLM's guard would (loop vs stop).
"""
import json
import shutil

import pytest
from PIL import Image

from nanoocr.eval.benchmarks import fox, olmocr_bench, omnidocbench
from nanoocr.eval.repetition import ends_in_loop, repetition_summary

FLAGS = ["--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    import torch

    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model import presets
    from nanoocr.model.vlm import NanoOCR
    from nanoocr.train.export import export_model
    root = tmp_path_factory.mktemp("bench_export")
    tok = Tokenizer.train_from_iterator(["Free OCR. the quick brown fox jumps over the lazy dog"] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = NanoOCR(presets.build_config("nano", gpt={"vocab_size": tok.vocab_size, "sequence_len": 256},
                                         image_token_id=tok.image_id))
    (fox_id,) = tok.encode(" fox")
    assert tok.bos_id == 0 and fox_id != 0
    with torch.no_grad():  # zero c_proj (nanochat's init): the last hidden state is the direction of v, always
        v = torch.randn(model.gpt.config.n_embd)
        model.gpt.transformer.wte.weight.copy_(v.expand_as(model.gpt.transformer.wte.weight))
        model.gpt.lm_head.weight[fox_id] = v  # logit |v|^2-ish for " fox", 0 for every other token
    export_model(model, tok, root / "export", mode="tiny")
    return root / "export"


def evaluate(export, name, data, out, *extra) -> int:
    from nanoocr.eval.evaluate import main
    return main(["--benchmark", name, str(data), "--model", str(export), "--out", str(out), *FLAGS, *extra])


def outputs(out):
    for name in ("per_sample.jsonl", "skipped.jsonl", "summary.json", "summary.md"):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    skipped = {s["id"]: s["reason"] for s in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == len(rows) and summary["skipped"] == len(skipped)
    assert summary["read"] == summary["n"] + summary["skipped"]
    for row in rows:
        assert row["ends_in_loop"] == ends_in_loop(row["pred"]) and isinstance(row["stopped"], bool), row["id"]
    assert summary["repetition"] == repetition_summary([r["pred"] for r in rows], stopped=[r["stopped"] for r in rows])
    md = (out / "summary.md").read_text()
    assert "## Repetition" in md and "| repetition_rate |" in md and "## Not computed" in md
    return rows, skipped, summary, md


def _png(path, size=(64, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)


# ------------------------------------------------------------------------------------------------ Fox

FOX_GT = ["the quick brown fox", "jumps over the lazy dog " * 3, "Free OCR."]


@pytest.fixture
def fox_dir(tmp_path):
    d = tmp_path / "fox"
    entries = [{"image": f"en_{i}.png", "conversations": [{"from": "human", "value": "<image>\nOCR:"},
                                                           {"from": "gpt", "value": gt}]} for i, gt in enumerate(FOX_GT)]
    entries += [{"image": "missing.png", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "a"}]},
                {"image": "../../outside.png", "conversations": [{"from": "human", "value": "x"},
                                                                 {"from": "gpt", "value": "b"}]}]
    d.mkdir()
    (d / "en_page_ocr.json").write_text(json.dumps(entries))
    for i in range(3):
        _png(d / "en_pdf_png" / f"en_{i}.png")
    _png(tmp_path / "outside.png")  # exists, but outside the benchmark folder: never read
    return d


def test_fox_benchmark_loops_without_the_guard_and_stops_with_it(export, fox_dir, tmp_path):
    from nanoocr.data.tokenizer import Tokenizer
    tok = Tokenizer.from_file(export / "tokenizer.json")
    recs = {r["id"]: r for r in fox.read(fox_dir, count_tokens=lambda t: len(tok.encode(t)), token_range=(0, 1300))}

    out = tmp_path / "raw"
    assert evaluate(export, "fox", fox_dir, out, "--fox-tokens", "0-1300", "--max-new-tokens", "35",
                    "--no-repeat-ngram", "0") == 0
    rows, skipped, summary, md = outputs(out)
    assert [r["id"] for r in rows] == ["en_0.png", "en_1.png", "en_2.png"]
    assert "file not found" in skipped["missing.png"] and "escapes" in skipped["../../outside.png"]
    for row in rows:  # the guard off: 35 x " fox", no stop, a loop by both rules
        assert row["pred"] == " fox" * 35 and not row["stopped"] and row["ends_in_loop"]
        assert row["loop"]["unit"] == " fox" and row["loop"]["repeats"] == 35
        want = fox.score(row["pred"], recs[row["id"]])
        assert {k: row[k] for k in want} == want and row["gt"] == recs[row["id"]]["gt"]
    rep = summary["repetition"]
    assert (rep["repetition_rate"], rep["no_stop_rate"], rep["olmocr_repeat_fail_rate"]) == (1.0, 1.0, 1.0)
    assert summary["guard"]["semantics"] == "off"

    scores = summary["scores"]
    # the benchmark's figures: " fox" x 35 has the one word {fox}; page 0's GT words {the, quick, brown, fox}:
    # Fox's precision 1/4, recall 1/1; pages 1 and 2 share no word with it: 0
    assert [r["precision"] for r in rows] == [0.25, 0.0, 0.0] and scores["precision"] == pytest.approx(0.25 / 3)
    assert scores == fox.summarize(rows) and scores["bins"][0]["bin"] == "0-100" and scores["bins"][0]["n"] == 3
    assert summary["fox"] == {"lang": "en", "token_range": [0, 1300]} and "not DeepSeek's" in summary["not_computed"][0]
    # Fox's runner JSON, which its eval_ocr_test.py scores
    items = json.loads((out / "predictions" / "fox_en.json").read_text())
    assert items == [{"image": r["id"], "question": "<image>\nFree OCR.", "label": r["gt"], "answer": r["pred"]}
                     for r in rows]
    png = (out / "fox_precision_by_bin.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and summary["plot"] == "fox_precision_by_bin.png" and "![" in md

    out = tmp_path / "guarded"  # the default guard, vLLM's 30 / 90: the 31st " fox" is banned, <|bos|> stops
    assert evaluate(export, "fox", fox_dir, out, "--fox-tokens", "0-1300", "--max-new-tokens", "35") == 0
    rows, _, summary, _ = outputs(out)
    assert all(r["pred"] == " fox" * 30 and r["stopped"] and not r["ends_in_loop"] for r in rows)
    assert (summary["repetition"]["repetition_rate"], summary["repetition"]["no_stop_rate"]) == (0.0, 0.0)
    assert summary["guard"]["ngram_size"] == 30 and summary["guard"]["window_size"] == 90
    # <td> / </td> are not single tokens of this tokenizer: nothing whitelisted, and the summary says so
    assert summary["guard"]["whitelist"] == {"<td>": None, "</td>": None} and "whitelist_left_out" in summary["guard"]

    # DeepSeek's protocol by default: 600-1300 ground-truth tokens; these pages are all shorter
    assert evaluate(export, "fox", fox_dir, tmp_path / "protocol", "--max-new-tokens", "2") == 1
    summary = json.loads((tmp_path / "protocol" / "summary.json").read_text())
    assert summary["n"] == 0 and summary["fox"]["token_range"] == [600, 1300] and summary["plot"] is None


# --------------------------------------------------------------------------------------- OmniDocBench

def _det(cat, order, text, anno_id):
    return {"category_type": cat, "poly": [0, 0, 10, 0, 10, 10, 0, 10], "ignore": False, "order": order,
            "anno_id": anno_id, "text": text}


@pytest.fixture
def omni_dir(tmp_path):
    d = tmp_path / "omni"
    pages = [
        {"layout_dets": [_det("title", 1, "The fox", 1), _det("text_block", 2, r"fox $\alpha$ fox", 2),
                         _det("page_number", 3, "7", 3)],
         "page_info": {"image_path": "a/doc_en.jpg", "page_attribute": {"language": "english"}}, "extra": {"relation": []}},
        {"layout_dets": [_det("text_block", 1, "今天天气很好", 1)],
         "page_info": {"image_path": "doc_zh.png", "page_attribute": {"language": "simplified_chinese"}},
         "extra": {"relation": []}},
        {"layout_dets": [_det("text_block", 1, "gone", 1)],
         "page_info": {"image_path": "doc_missing.png", "page_attribute": {"language": "english"}},
         "extra": {"relation": []}},
    ]
    d.mkdir()
    (d / "OmniDocBench.json").write_text(json.dumps(pages, ensure_ascii=False))
    _png(d / "images" / "doc_en.jpg")
    _png(d / "images" / "doc_zh.png")
    return d


def test_omnidocbench_benchmark(export, omni_dir, tmp_path):
    out = tmp_path / "out"
    assert evaluate(export, "omnidocbench", omni_dir, out, "--max-new-tokens", "6") == 0
    rows, skipped, summary, _ = outputs(out)
    recs = {r["id"]: r for r in omnidocbench.read(omni_dir)}
    assert [r["id"] for r in rows] == ["doc_en.jpg", "doc_zh.png"] and "file not found" in skipped["doc_missing.png"]
    for row in rows:
        assert row["pred"] == " fox" * 6
        want = omnidocbench.score(row["pred"], recs[row["id"]])
        assert {k: row[k] for k in want} == want and "page" not in row
    # by hand: the scored GT normalizes to "Thefox" + "foxαfox" = "Thefoxfoxαfox" (13; the page number is not
    # scored), the output to "foxfoxfoxfoxfoxfox" (18). At most the GT's 9 f/o/x can be matched, so >= 18 - 9 = 9
    # edits, and 9 are enough (The<-fox, fox, fox, α<-fox, fox, drop a fox): 9 / 18. The Chinese page shares
    # nothing: 18 edits / 18.
    assert (rows[0]["text_edit"], rows[1]["text_edit"]) == (0.5, 1.0)
    scores = summary["scores"]
    assert scores == omnidocbench.summarize(rows) and scores["n_text_pages"] == 2
    assert scores["text_edit"] == pytest.approx((rows[0]["text_edit"] + 1.0) / 2)
    assert set(scores["by_language"]) == {"english", "simplified_chinese"}
    assert "table TEDS / TEDS-S" in summary["not_computed"] and "formula CDM" in summary["not_computed"]
    # one <image stem>.md per evaluated page, the folder OmniDocBench's end2end config reads
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["doc_en.md", "doc_zh.md"]
    assert (out / "predictions" / "doc_zh.md").read_text() == " fox" * 6

    # a rerun replaces predictions/ whole: a page left from before does not linger
    (out / "predictions" / "old_page.md").write_text("stale")
    assert evaluate(export, "omnidocbench", omni_dir, out, "--max-new-tokens", "2", "--limit", "1") == 0
    assert [p.name for p in (out / "predictions").iterdir()] == ["doc_en.md"]


# -------------------------------------------------------------------------------------- olmOCR-Bench

OLMO = {
    "arxiv.jsonl": [
        {"pdf": "arxiv/d1.pdf", "page": 1, "id": "fox_present", "type": "present", "text": "fox fox", "max_diffs": 0},
        {"pdf": "arxiv/d1.pdf", "page": 1, "id": "cat_present", "type": "present", "text": "the cat"},
        {"pdf": "arxiv/d1.pdf", "page": 1, "id": "dog_absent", "type": "absent", "text": "dog"},
        {"pdf": "arxiv/d1.pdf", "page": 1, "id": "tbl", "type": "table", "cell": "x"},
    ],
    "multi.jsonl": [
        {"pdf": "multi/d2.pdf", "page": 1, "id": "order", "type": "order", "before": "fox", "after": "fox fox fox"},
        {"pdf": "multi/gone.pdf", "page": 1, "id": "gone_present", "type": "present", "text": "anything"},
    ],
}


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils not installed")
def test_olmocr_bench_has_no_ground_truth_text_only_tests(export, tmp_path):
    d = tmp_path / "bench_data"
    d.mkdir()
    for name, tests in OLMO.items():
        (d / name).write_text("".join(json.dumps(t) + "\n" for t in tests))
    for pdf in ("arxiv/d1.pdf", "multi/d2.pdf"):
        (d / "pdfs" / pdf).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 80), "white").save(d / "pdfs" / pdf)  # a one-page PDF
    out = tmp_path / "out"
    assert evaluate(export, "olmocr-bench", d, out, "--max-new-tokens", "6") == 0
    rows, skipped, summary, _ = outputs(out)
    assert [r["id"] for r in rows] == ["arxiv/d1.pdf#p1", "multi/d2.pdf#p1"] and "gt" not in rows[0]
    assert "multi/gone.pdf#p1" in skipped  # the PDF is not there: poppler's reason
    records = olmocr_bench.read(d, render=False)
    by_id = {r["id"]: r for r in records}
    for row in rows:
        assert row["pred"] == " fox" * 6
        assert {k: row[k] for k in ("tests", "page_pass_rate")} == olmocr_bench.score(row["pred"], by_id[row["id"]])
    results = {t["id"]: t["passed"] for row in rows for t in row["tests"]}
    # " fox fox fox fox fox fox": "fox fox" present, "the cat" not, "dog" absent, "fox" before a later
    # "fox fox fox"; the table test is not run; the baselines pass (alphanumeric, 6 copies <= 30, no CJK)
    assert results == {"fox_present": True, "cat_present": False, "dog_absent": True, "tbl": None, "order": True,
                       "arxiv/d1.pdf_baseline": True, "multi/d2.pdf_baseline": True}
    scores = summary["scores"]
    assert scores == olmocr_bench.summarize(rows, records=records)
    # per JSONL: arxiv 2/3; multi: order passes, the missing page's present test fails: 1/2; baseline group: the
    # two rendered pages pass, the missing one fails: 2/3. overall = mean of the three
    assert {k: (g["passed"], g["total"]) for k, g in scores["by_jsonl"].items()} == \
        {"arxiv.jsonl": (2, 3), "multi.jsonl": (1, 2), "baseline": (2, 3)}
    assert scores["overall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert scores["not_scored"] == {"table": 1} and any("table tests" in x for x in summary["not_computed"])
    # a candidate folder for bench_data/: <group>/<name>_pg<page>_repeat1.md
    md = sorted(str(p.relative_to(out / "predictions")) for p in (out / "predictions").rglob("*.md"))
    assert md == ["arxiv/d1_pg1_repeat1.md", "multi/d2_pg1_repeat1.md"]


# ------------------------------------------------------------------------------------------ usage

def test_benchmark_usage_errors(export, fox_dir, tmp_path, capsys):
    from nanoocr.eval.evaluate import main

    def usage(*argv) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--model", str(export), "--device", "cpu"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "Traceback" not in err, err
        return err

    out = str(tmp_path / "out")
    assert "expected one of fox, omnidocbench, olmocr-bench" in usage("--benchmark", "foxx", str(fox_dir), "--out", out)
    assert "not a folder" in usage("--benchmark", "fox", str(fox_dir / "nope"), "--out", out)
    assert "--fox-tokens go with --benchmark fox" in usage("--benchmark", "omnidocbench", str(fox_dir), "--out", out,
                                                           "--fox-tokens", "0-10")
    assert "LO < HI" in usage("--benchmark", "fox", str(fox_dir), "--out", out, "--fox-tokens", "13-5")
    assert "--prompt goes with --benchmark" in usage("--data", str(fox_dir), "--out", out, "--prompt", "<image>\nx")
    assert "exactly once" in usage("--benchmark", "fox", str(fox_dir), "--out", out, "--prompt", "no image")
    assert "not allowed with argument" in usage("--benchmark", "fox", str(fox_dir), "--data", "x", "--out", out)
    assert "--no-repeat-window must be >= 1" in usage("--benchmark", "fox", str(fox_dir), "--out", out,
                                                      "--no-repeat-window", "0")
    # evaluate replaces predictions/ whole, so a folder of somebody else's is refused up front (issue 12's checks)
    foreign = tmp_path / "foreign"
    (foreign / "predictions").mkdir(parents=True)
    (foreign / "predictions" / "mine.md").write_text("keep")
    assert "predictions/ that evaluate did not write" in usage("--benchmark", "fox", str(fox_dir), "--out", str(foreign))
    assert (foreign / "predictions" / "mine.md").read_text() == "keep"
