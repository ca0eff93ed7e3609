"""convert_to_mds with pdf:, synthetic: and task: inputs; nanoocr.data.pdf on generated and real PDFs; usage errors."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nanoocr.data import convert as convert_to_mds
from nanoocr.data.pdf import page_count, page_record, pdf_pages

REAL_PDF = Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf")


def make_pdf(path: Path, pages: list[str]) -> None:
    """A PDF with one line of real (extractable) text per page; "" makes a page without text."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(4, 3))
            if text:
                fig.text(0.1, 0.5, text, fontsize=14)
            pdf.savefig(fig)
            plt.close(fig)


def read_mds(out: Path) -> list[dict]:
    """All rows, in order, through Streaming's own dataset class (which also decompresses zstd shards)."""
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(out), shuffle=False, batch_size=1)
    return [ds[i] for i in range(len(ds))]


def test_pdf_pages_generated_and_broken(tmp_path):
    make_pdf(tmp_path / "doc.pdf", ["Hello first page", "Second page here", ""])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not a real pdf\n")
    recs = list(pdf_pages(tmp_path, workers=2))
    assert [r["id"] for r in recs] == ["doc.pdf#p1", "doc.pdf#p2", "doc.pdf#p3", "sub/broken.pdf"]
    assert recs[0]["messages"][1]["content"] == "Hello first page"
    assert recs[1]["messages"][1]["content"] == "Second page here"
    assert "no text layer" in recs[2]["error"]
    assert "unreadable PDF" in recs[3]["error"]
    img = Image.open(io.BytesIO(recs[0]["image"]))
    assert img.format == "PNG" and img.size == (576, 432)  # 4x3 in at 144 dpi


@pytest.mark.skipif(not REAL_PDF.exists(), reason="no Debian PDF documentation installed")
def test_real_pdf_page():
    assert page_count(REAL_PDF) == 17
    rec = page_record(REAL_PDF, 1, "spec#p1")
    assert "Shared MIME-info Database" in rec["messages"][1]["content"]
    # 144 dpi = 2 pixels per PDF point; the page size is what pdfinfo reports (poppler rounds to +-1 px).
    info = subprocess.run(["pdfinfo", str(REAL_PDF)], capture_output=True, text=True).stdout
    w_pt, h_pt = [float(x) for x in info.split("Page size:")[1].split()[0:3:2]]
    w, h = Image.open(io.BytesIO(rec["image"])).size
    assert abs(w - 2 * w_pt) <= 1 and abs(h - 2 * h_pt) <= 1, ((w, h), (w_pt, h_pt))


def test_convert_pdf_synthetic_task_subprocess(tmp_path):
    import datasets

    (tmp_path / "pdfs").mkdir()
    make_pdf(tmp_path / "pdfs" / "a.pdf", ["Page one text", ""])
    chart = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(chart, format="PNG")
    fixture = tmp_path / "chartqa.parquet"
    datasets.Dataset.from_dict(
        {"image": [{"bytes": chart.getvalue(), "path": None}], "query": ["Highest bar?"], "label": [["Blue"]],
         "human_or_machine": [0]},
        features=datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                    "label": datasets.Sequence(datasets.Value("string")),
                                    "human_or_machine": datasets.ClassLabel(names=["human", "machine"])}),
    ).to_parquet(fixture)
    out = tmp_path / "mds"
    cmd = [sys.executable, "-m", "nanoocr.convert_to_mds", "--input", f"pdf:{tmp_path / 'pdfs'}",
           "--input", "synthetic:table:3:7", "--input", f"task:ChartQA:{fixture}", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["read"], summary["written"], summary["rejected"]) == (6, 5, 1), summary
    assert summary["by_source"][f"pdf:{tmp_path / 'pdfs'}"] == {"read": 2, "written": 1, "rejected": 1}
    rows = read_mds(out)  # zstd shards: read back through Streaming's reader
    assert [r["id"] for r in rows] == ["a.pdf#p1", "table-s7-0000", "table-s7-0001", "table-s7-0002", "chartqa:train:0"]
    assert rows[0]["messages"][1]["content"] == "Page one text"
    assert rows[4]["image"] == chart.getvalue()
    assert rows[4]["messages"] == [{"role": "user", "content": "<image>\nHighest bar?"},
                                   {"role": "assistant", "content": "Blue"}]
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert rejected == [{"id": "a.pdf#p2", "reason": "PDF page has no text layer (scanned or blank page)",
                         "source": f"pdf:{tmp_path / 'pdfs'}"}]


@pytest.mark.parametrize("spec", ["nope.jsonl", "pdf:/no/such/dir", "synthetic:nope:3", "synthetic:table:x", "synthetic:overfit10:5",
                                  "task:NotATask", "hf:someone/unknown", "weird:thing"])
def test_usage_errors_exit_2(tmp_path, spec, capsys):
    with pytest.raises(SystemExit) as e:
        convert_to_mds.main(["--input", spec, "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert spec.split(":")[0] in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--max-side", "0"), ("--max-side", "-3"), ("--max-pixels", "0"),
                                        ("--max-pixels", "-1")])
def test_non_positive_image_bounds_exit_2(tmp_path, flag, value, capsys):
    """Accepted, they rejected every image and exited 0; they are usage errors naming the flag."""
    with pytest.raises(SystemExit) as e:
        convert_to_mds.main(["--input", "synthetic:table:1", "--out", str(tmp_path / "o"), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # reported before anything was read or created


def test_unusable_out_exit_2(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.mds").write_text("x")
    (tmp_path / "file").write_text("x")
    for out, why in [(tmp_path / "full", "not empty"), (tmp_path / "file" / "sub", "cannot create")]:
        with pytest.raises(SystemExit) as e:
            convert_to_mds.main(["--input", "synthetic:table:1", "--out", str(out)])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_workers_keep_order_and_limit(tmp_path):
    from nanoocr.data.synthetic import GENERATORS

    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        inputs = [("s", GENERATORS["receipt"](5, 1), None), ("t", GENERATORS["table"](5, 2), None)]
        summary = convert_to_mds.convert(inputs, str(out), workers=workers, compression=None, limit=3)
        assert (summary["read"], summary["written"]) == (6, 6)
        outs.append([(r["id"], r["image"]) for r in read_mds(out)])
    assert outs[0] == outs[1]
    assert [i for i, _ in outs[0]] == [f"receipt-s1-000{k}" for k in range(3)] + [f"table-s2-000{k}" for k in range(3)]


def test_every_record_rejected_exits_1_with_the_most_common_reason(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [{"messages": [{"role": "user", "content": "<image>\nRead."}, {"role": "assistant", "content": "x"}],
             "image": f"missing{i}.png"} for i in range(3)] + [{"messages": "not a list"}]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert convert_to_mds.main(["--input", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err and "all 4 records were rejected" in err, err
    reports = Path(f"{out}.rejected")  # not in out: no index.json there, and out stays usable for a rerun
    assert not (out / "index.json").exists() and f"{reports}/rejected.jsonl" in err, err
    summary = json.loads((reports / "summary.json").read_text())
    top = max(summary["by_reason"], key=summary["by_reason"].get)
    assert summary["by_reason"][top] == 3 and f"most common reason (3x): {top!r}" in err, (summary, err)
    assert summary["reason_examples"][top] in err
    assert len((reports / "rejected.jsonl").read_text().splitlines()) == 4
    # no record at all is a failure too
    (tmp_path / "empty.jsonl").write_text("\n")
    assert convert_to_mds.main(["--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "o2")]) == 1
    assert "held no records" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["hf:allenai/olmOCR-mix-1025", "hf:allenai/olmOCR-mix-1025:01_books:eval",
                                  "task:OlmOCR:allenai/olmOCR-mix-1025"])
def test_olmocr_from_a_hub_id_says_what_to_pass_before_reading(tmp_path, spec, capsys, monkeypatch):
    import nanoocr.data.tasks.common as common

    def no_reading(*args, **kwargs):
        raise AssertionError("the table was read before the missing PDFs were reported")
    monkeypatch.setattr(common, "load_rows", no_reading)
    with pytest.raises(SystemExit) as e:
        convert_to_mds.main(["--input", spec, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "pdf_root" in err and "--pdf-root DIR" in err and "pdf_tarballs" in err, err
    with pytest.raises(SystemExit) as e:  # a --pdf-root that is not a folder is named as such
        convert_to_mds.main(["--input", spec, "--out", str(tmp_path / "o"), "--pdf-root", str(tmp_path / "nope")])
    assert e.value.code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_olmocr_hub_id_with_pdf_root_converts(tmp_path, monkeypatch):
    """`hf:allenai/olmOCR-mix-1025 --pdf-root DIR`: the rows from the hub (here a local parquet standing in
    for the hub table), the PDFs from DIR/pdf_tarballs."""
    import tarfile

    import datasets

    import nanoocr.data.tasks.common as common
    make_pdf(tmp_path / "page.pdf", ["olmOCR page"])
    pdf = (tmp_path / "page.pdf").read_bytes()
    (tmp_path / "repo" / "pdf_tarballs").mkdir(parents=True)
    with tarfile.open(tmp_path / "repo" / "pdf_tarballs" / "chunk_00000.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("abc_1.pdf")
        info.size = len(pdf)
        tar.addfile(info, io.BytesIO(pdf))
    table = tmp_path / "table.parquet"
    datasets.Dataset.from_dict({"id": ["abc_1"], "natural_text": ["Body text"],
                                "pdf_relpath": ["pdf_tarballs/chunk_00000.tar.gz:abc_1.pdf"]}).to_parquet(table)
    seen = []
    real = common.load_rows

    def hub(source, split="train", config=None, image_columns=()):
        seen.append((source, split, config))
        return real(str(table))
    monkeypatch.setattr(common, "load_rows", hub)
    out = tmp_path / "mds"
    assert convert_to_mds.main(["--input", "hf:allenai/olmOCR-mix-1025", "--out", str(out),
                                "--pdf-root", str(tmp_path / "repo")]) == 0
    assert seen == [("allenai/olmOCR-mix-1025", "train", "00_documents")]
    rows = read_mds(out)
    assert [r["id"] for r in rows] == ["abc_1"] and rows[0]["messages"][1]["content"] == "Body text"
    assert rows[0]["image"][:4] == b"\x89PNG"
