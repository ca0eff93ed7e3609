"""nanoocr.eval.benchmarks.make_sets: real-page sets in Fox's, OmniDocBench's and olmOCR-Bench's formats, built
from PDFs whose text this test draws itself (matplotlib's PDF backend writes a real text layer). The written
files are read back through the repo's own readers AND checked against the format facts written out here
(docs/FACTS.md "Benchmark formats"); the ground truth is checked against the strings the test drew."""
import io
import json
import shutil
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from nanoocr.eval.benchmarks import fox, make_sets, olmocr_bench, omnidocbench

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in ("pdftotext", "pdftoppm", "pdfseparate")),
                                reason="poppler-utils not installed")

DPI = 150
W, H = int(8.5 * DPI), 11 * DPI  # a US-letter page rendered at 150 dpi: 1275 x 1650 px
PAGES = {  # document -> pages: (running head, title, paragraphs, page number); None: a page of graphics only
    "a_manual.pdf": [
        ("Test Manual, Chapter One", "Introduction to Testing", [
            "The first paragraph explains why tests need real pages. It has two sentences that are long enough.",
            "A second paragraph follows after a gap. Its words differ from the first one entirely, as they should.",
            "Reading order runs from the top of the page down. The third paragraph closes this page of text."], "7"),
        ("Test Manual, Chapter Two", "Shell Variables", [
            "Variables hold strings that the shell expands later. Quoting keeps spaces inside a single word.",
            "An unset variable expands to nothing at all. The set builtin lists every variable and its value.",
            "Exported variables reach the environment of child processes. Others stay in the current shell."], "8"),
        None,
    ],
    "b_policy.pdf": [
        ("Policy Manual", "Package Names", [
            "Every package has a name made of lower case letters. Digits and plus signs may appear in it too.",
            "Binary packages are built from a source package. The control file describes each of them fully.",
            "A maintainer uploads new versions to the archive. Each upload is signed with the maintainer key."], "iv"),
        ("Policy Manual", "Appendix", [], "v"),  # under 200 characters: near-empty
    ],
}
WIDTH_CHARS = 60


def wrap(paragraph: str) -> list[str]:
    return textwrap.wrap(paragraph, WIDTH_CHARS)  # no hyphenation: every line ends at a word


def write_pdf(path: Path, pages) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(path) as pdf:  # TrueType: a plain text layer
        for page in pages:
            fig = plt.figure(figsize=(8.5, 11))
            if page is None:
                fig.add_artist(plt.Rectangle((0.2, 0.4), 0.3, 0.2, color="black"))
            else:
                head, title, paras, number = page
                fig.text(0.1, 0.965, head, fontsize=9)
                fig.text(0.1, 0.86, title, fontsize=20)
                y = 0.8
                for para in paras:
                    fig.text(0.1, y, "\n".join(wrap(para)), fontsize=11, va="top", linespacing=1.3)
                    y -= 0.03 * len(wrap(para)) + 0.04
                fig.text(0.5, 0.02, number, fontsize=9)
            pdf.savefig(fig)
            plt.close(fig)


def fox_gt(page) -> str:
    """What Fox's GT must be for a page drawn above: lines by newlines, blocks (head, title, each paragraph,
    the page number) by blank lines, in reading order."""
    head, title, paras, number = page
    return "\n\n".join([head, title, *("\n".join(wrap(p)) for p in paras), number])


def sentences(page) -> list[str]:
    return [s if s.endswith(".") else s + "." for p in page[2] for s in p.split(". ")]


@pytest.fixture(scope="module")
def pdf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdfs")
    for name, pages in PAGES.items():
        write_pdf(root / name, pages)
    (root / "c_broken.pdf").write_bytes(b"this is not a PDF at all\n")
    return root


@pytest.fixture(scope="module")
def built(pdf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sets") / "sets"
    summary = make_sets.build(pdf_dir, str(out), dpi=DPI, seed=0, verbose=False)
    return out, summary


KEPT = {"a_manual_p1": PAGES["a_manual.pdf"][0], "a_manual_p2": PAGES["a_manual.pdf"][1],
        "b_policy_p1": PAGES["b_policy.pdf"][0]}


def test_every_page_is_accounted_for(built):
    out, s = built
    # 5 pages in 2 PDFs + 1 unreadable file: 3 written, the figure page, the near-empty page and the file rejected
    assert (s["read"], s["written"], s["rejected"]) == (6, 3, 3)
    assert s["by_reason"] == {"no text layer": 1, "near-empty": 1, "unreadable PDF": 1}
    assert s["by_document"] == {"a_manual.pdf": {"read": 3, "written": 2, "rejected": 1},
                                "b_policy.pdf": {"read": 2, "written": 1, "rejected": 1},
                                "c_broken.pdf": {"read": 1, "written": 0, "rejected": 1}}
    rejected = {r["id"]: r["reason"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert rejected["a_manual.pdf#p3"].startswith("no text layer")
    assert rejected["b_policy.pdf#p2"].startswith("near-empty")
    assert rejected["c_broken.pdf"].startswith("unreadable PDF: c_broken.pdf")
    assert json.loads((out / "summary.json").read_text()) == s
    assert [p["name"] for p in s["pages"]] == list(KEPT)


def _png_size(path: Path):
    img = Image.open(path)
    assert img.format == "PNG"
    return img.size


def test_fox_format_and_reader(built):
    out, _ = built
    entries = json.loads((out / "fox" / "en_page_ocr.json").read_text())
    # Fox's en_page_ocr.json: a list of {"image": file name in en_pdf_png/, "conversations": [human, gpt]}
    for e in entries:
        assert set(e) == {"image", "conversations"} and isinstance(e["image"], str)
        human, gpt = e["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and isinstance(gpt["value"], str)
        assert _png_size(out / "fox" / "en_pdf_png" / e["image"]) == (W, H)
    recs = fox.read(out / "fox")
    assert [r["id"] for r in recs] == [f"{n}.png" for n in KEPT]
    assert [r["gt"] for r in recs] == [fox_gt(p) for p in KEPT.values()]
    assert fox.score(recs[0]["gt"], recs[0])["edit_distance"] == 0.0


def test_omnidocbench_format_and_reader(built):
    out, _ = built
    pages = json.loads((out / "omnidocbench" / "OmniDocBench.json").read_text())
    assert len(pages) == 3
    for name, page, drawn in zip(KEPT, pages, KEPT.values()):
        assert set(page) == {"layout_dets", "page_info", "extra"} and page["extra"] == {"relation": []}
        info = page["page_info"]
        assert (info["image_path"], info["width"], info["height"]) == (f"{name}.png", W, H)
        assert isinstance(info["page_no"], int) and info["page_attribute"]["language"] == "english"
        assert _png_size(out / "omnidocbench" / "images" / info["image_path"]) == (W, H)
        dets = page["layout_dets"]
        head, title, paras, number = drawn
        # categories from the geometry: the running head, the 20 pt title, the paragraphs, the page number
        assert [d["category_type"] for d in dets] == ["header", "title", *["text_block"] * len(paras), "page_number"]
        assert [d["text"] for d in dets] == [head, title, *paras, number]  # a block's lines joined by spaces
        assert [d["order"] for d in dets] == [None, 1, 2, 3, 4, None]   # headers etc. carry no order, as theirs
        for d in dets:
            assert d["ignore"] is False and isinstance(d["anno_id"], int)
            poly = d["poly"]  # 8 numbers: x0 y0, x1 y0, x1 y1, x0 y1 in pixels of the image
            assert len(poly) == 8 and all(isinstance(v, (int, float)) for v in poly)
            x0, y0, x1, y1 = poly[0], poly[1], poly[4], poly[5]
            assert poly[2:4] == [x1, y0] and poly[6:8] == [x0, y1] and 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert [s["text"] for s in d["line_with_spans"]] == (wrap(d["text"]) if d["text"] in paras else [d["text"]])
        # the title was drawn at x = 0.1 of the width, its baseline at 0.86 of the height from the bottom
        x0, y0, y1 = dets[1]["poly"][0], dets[1]["poly"][1], dets[1]["poly"][5]
        assert abs(x0 - 0.1 * W) < 3 and 0.10 * H < y0 < y1 < (1 - 0.86) * H + 0.01 * H, dets[1]["poly"]
    recs = omnidocbench.read(out / "omnidocbench")
    assert [r["id"] for r in recs] == [f"{n}.png" for n in KEPT]
    assert recs[0]["gt"] == "\n\n".join([KEPT["a_manual_p1"][1], *KEPT["a_manual_p1"][2]])  # scored text only
    row = omnidocbench.score(fox_gt(KEPT["a_manual_p1"]), recs[0])  # the whole page, head and number included
    assert row["text_edit"] == 0.0 and row["reading_order_edit"] == 0.0 and row["dropped_paragraphs"] == 2


def test_olmocr_bench_format_and_reader(built):
    out, _ = built
    root = out / "olmocr-bench"
    assert sorted(p.name for p in root.glob("*.jsonl")) == ["pages.jsonl"]
    tests = [json.loads(x) for x in (root / "pages.jsonl").read_text().splitlines()]
    fields = {"present": {"text": str}, "absent": {"text": str}, "order": {"before": str, "after": str}}
    for t in tests:  # olmOCR-Bench's test fields: pdf, page, id, type, max_diffs (+ text / before, after)
        assert set(t) == {"pdf", "page", "id", "type", "max_diffs", *fields[t["type"]]}, t
        assert isinstance(t["max_diffs"], int) and t["page"] == 1 and t["pdf"].startswith("pages/")
        assert all(isinstance(t[k], typ) for k, typ in fields[t["type"]].items())
    by_pdf = {}
    for t in tests:
        by_pdf.setdefault(t["pdf"], []).append(t)
    assert sorted(by_pdf) == [f"pages/{n}.pdf" for n in KEPT]
    from nanoocr.data.pdf import page_count, page_text
    for name, drawn in KEPT.items():
        page_tests = by_pdf[f"pages/{name}.pdf"]
        assert Counter(t["type"] for t in page_tests) == {"present": 3, "absent": 1, "order": 1}
        pdf = root / "pdfs" / "pages" / f"{name}.pdf"
        assert page_count(pdf) == 1 and drawn[1] in page_text(pdf, 1)  # the right page, cut out alone
        mine = sentences(drawn)
        other = [s for n, p in KEPT.items() if n.split("_p")[0] != name.split("_p")[0] for s in sentences(p)]
        for t in page_tests:
            if t["type"] == "present":
                assert t["text"] in mine
            elif t["type"] == "absent":
                assert t["text"] in other  # from a page of the other document
            else:
                assert mine.index(t["before"]) < mine.index(t["after"])
            # the page's own text passes every test; an empty output fails present and order, passes absent
            assert run(t, fox_gt(drawn)) is True
            assert run(t, "") is (t["type"] == "absent")
    recs = olmocr_bench.read(root)
    assert [r["id"] for r in recs] == [f"pages/{n}.pdf#p1" for n in KEPT]
    for r in recs:
        assert r["image"][:8] == b"\x89PNG\r\n\x1a\n" and {t["type"] for t in r["tests"]} == \
            {"present", "absent", "order", "baseline"}  # the reader adds olmOCR's baseline test per PDF


def run(test, md):
    return olmocr_bench.run_test(test, md)[0]


def test_deterministic_and_sampled(pdf_dir, built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    make_sets.build(pdf_dir, str(again), dpi=DPI, seed=0, verbose=False)
    for rel in ("fox/en_page_ocr.json", "omnidocbench/OmniDocBench.json", "olmocr-bench/pages.jsonl",
                "fox/en_pdf_png/a_manual_p1.png", "rejected.jsonl"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel
    small = tmp_path / "small"
    s = make_sets.build(pdf_dir, str(small), formats=("fox",), dpi=DPI, max_pages=2, seed=0, verbose=False)
    assert (s["written"], s["by_reason"]["not sampled"]) == (2, 1) and s["read"] == 6
    assert sorted(p.name for p in small.iterdir()) == ["fox", "rejected.jsonl", "summary.json"]


def test_cli_usage_errors_and_nothing_kept(pdf_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        make_sets.main(["--pdf", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    shutil.copy(pdf_dir / "c_broken.pdf", only_bad)
    out = tmp_path / "none"
    assert make_sets.main(["--pdf", str(only_bad), "--out", str(out)]) == 1
    assert not any(out.iterdir())  # nothing published; the reports are beside it
    s = json.loads((tmp_path / "none.rejected" / "summary.json").read_text())
    assert (s["read"], s["written"], s["by_reason"]) == (1, 0, {"unreadable PDF": 1})


def test_page_names():
    assert make_sets.page_name("doc/bash/bashref.pdf#p20") == "doc_bash_bashref_p20"
    assert make_sets.page_name("debian-policy/policy.pdf.gz#p3") == "debian-policy_policy_p3"
