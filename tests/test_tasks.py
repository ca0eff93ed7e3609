"""Each source Task on a small fixture written in that source's real schema, plus Task slicing and TaskMixture."""
import io
import json
import tarfile
import zipfile

import datasets
import pytest
from PIL import Image

from nanoocr.data.records import validate_record
from nanoocr.data.tasks import (GSM8K, MMLU, ChartQA, CustomJSON, DocBank, FigureQA, LaTeXFormulas, LLaVACC3M, OlmOCR,
                           PlotQA, PubTables1M, SmolTalk, Task, TaskMixture)


def img_bytes(color="white", size=(40, 30), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def to_parquet(path, data: dict, features: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(data, features=datasets.Features(features)).to_parquet(str(path))
    return path


def one_pdf(text: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3, 2))
    fig.text(0.1, 0.5, text)
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    plt.close(fig)
    return buf.getvalue()


IMAGE = datasets.Image()
STR = datasets.Value("string")


def test_chartqa(tmp_path):
    png = img_bytes()
    f = to_parquet(tmp_path / "c.parquet", {"image": [{"bytes": png, "path": None}], "query": ["Max value?"],
                                            "label": [["42"]], "human_or_machine": [1]},
                   {"image": IMAGE, "query": STR, "label": datasets.Sequence(STR),
                    "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    rec = validate_record(ChartQA(str(f))[0])
    assert rec["image"] == png  # original bytes, not a re-encode of the decoded image
    assert rec["messages"] == [{"role": "user", "content": "<image>\nMax value?"}, {"role": "assistant", "content": "42"}]


def test_plotqa_and_latex_formulas_hub_layout(tmp_path):
    jpg = img_bytes(fmt="JPEG")
    f = to_parquet(tmp_path / "p.parquet", {"image": [{"bytes": jpg, "path": None}], "text": ["a line plot"]},
                   {"image": IMAGE, "text": STR})
    assert validate_record(PlotQA(str(f))[0])["messages"][1]["content"] == "a line plot"
    # LaTeX-formulas as a local copy of the hub repo: README configs + cleaned_formulas/train-*.parquet.
    repo = tmp_path / "latex-formulas"
    to_parquet(repo / "cleaned_formulas" / "train-00000-of-00001.parquet",
               {"image": [{"bytes": jpg, "path": None}] * 2, "latex_formula": [r"\frac{a}{b}", "x^{2}"]},
               {"image": IMAGE, "latex_formula": STR})
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: cleaned_formulas\n  data_files:\n"
                                    "  - split: train\n    path: cleaned_formulas/train-*\n---\n")
    task = LaTeXFormulas(str(repo))
    assert len(task) == 2 and validate_record(task[1])["messages"][1]["content"] == "x^{2}"


def test_figureqa_multi_turn(tmp_path):
    f = to_parquet(tmp_path / "f.parquet",
                   {"image": [{"bytes": img_bytes(), "path": None}],
                    "qa": [[{"question": "Is Red the minimum?", "answer": "Yes"},
                            {"question": "Is Blue the maximum?", "answer": "No"}]]},
                   {"image": datasets.Image(decode=False), "qa": [{"question": STR, "answer": STR}]})
    msgs = validate_record(FigureQA(str(f))[0])["messages"]
    assert [m["content"] for m in msgs] == ["<image>\nIs Red the minimum?", "Yes", "Is Blue the maximum?", "No"]


def test_text_tasks(tmp_path):
    smol = to_parquet(tmp_path / "s.parquet",
                      {"messages": [[{"content": "Be kind.", "role": "system"}, {"content": "Hi", "role": "user"},
                                     {"content": "Hello!", "role": "assistant"}]], "source": ["x"]},
                      {"messages": [{"content": STR, "role": STR}], "source": STR})
    rec = validate_record(SmolTalk(str(smol))[0])
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"] and rec["image"] is None
    # cais/mmlu auxiliary_train nests the fields under a `train` struct.
    letters = datasets.ClassLabel(names=list("ABCD"))
    mmlu = to_parquet(tmp_path / "m.parquet",
                      {"train": [{"question": "2+2?", "subject": "", "choices": ["3", "4", "5", "6"], "answer": 1}]},
                      {"train": {"question": STR, "subject": STR, "choices": datasets.Sequence(STR), "answer": letters}})
    msgs = validate_record(MMLU(str(mmlu))[0])["messages"]
    assert "- 4=B" in msgs[0]["content"] and msgs[1]["content"] == "B"
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "Half of 48?", "answer": "48/2 = <<48/2=24>>24\n#### 24"}) + "\n")
    assert validate_record(GSM8K(str(gsm))[0])["messages"][1]["content"] == "48/2 = 24\n#### 24"
    custom = tmp_path / "identity.jsonl"
    custom.write_bytes(b'[{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "nanoocr"}]\n'
                       b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}\n'
                       b'{"messages": [\n')
    task = CustomJSON(custom)
    assert len(task) == 3 and validate_record(task[0])["messages"][1]["content"] == "nanoocr"
    assert validate_record(task[1])["messages"][1]["content"] == "Hey"
    assert "entry 3: not valid JSON" in task[2]["error"]


def test_llava_cc3m_zip(tmp_path):
    jpg = img_bytes("red", fmt="JPEG")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as z:
        z.writestr("GCC_train_000000001.jpg", jpg)
    rows = [{"id": "GCC_train_000000001", "image": "GCC_train_000000001.jpg",
             "conversations": [{"from": "human", "value": "Give a brief description of the image.\n<image>"},
                               {"from": "gpt", "value": "a red square"}]},
            {"id": "GCC_train_000000002", "image": "GCC_train_000000002.jpg",
             "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "x"}]}]
    (tmp_path / "chat.json").write_text(json.dumps(rows))
    task = LLaVACC3M(tmp_path)
    rec = validate_record(task[0])
    assert rec["image"] == jpg and rec["id"] == "GCC_train_000000001"
    assert rec["messages"][0]["content"] == "<image>\nGive a brief description of the image."
    assert "not in the image archive" in task[1]["error"]


def test_docbank(tmp_path):
    (tmp_path / "txt").mkdir()
    (tmp_path / "img").mkdir()
    rows = [("Deep", 100, 50, 150, 60), ("Learning", 160, 50, 230, 60), ("##LTFigure##", 0, 0, 1, 1),
            ('"quoted"', 100, 70, 160, 80)]
    tsv = "".join(f"{t}\t{x0}\t{y0}\t{x1}\t{y1}\t0\t0\t0\tTimes\tparagraph\n" for t, x0, y0, x1, y1 in rows)
    (tmp_path / "txt" / "page_1.txt").write_text(tsv)
    jpg = img_bytes(fmt="JPEG")
    (tmp_path / "img" / "page_1_ori.jpg").write_bytes(jpg)
    (tmp_path / "txt" / "orphan.txt").write_text(tsv)
    task = DocBank(tmp_path)
    assert len(task) == 2
    assert "orphan_ori.jpg not found" in task[0]["error"]
    rec = validate_record(task[1])
    assert rec["messages"][1]["content"] == 'Deep Learning\n"quoted"' and rec["image"] == jpg


def test_pubtables_html(tmp_path):
    def obj(name, box):
        return (f"<object><name>{name}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
                f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
    xml = ("<annotation><filename>PMC1_table_0.jpg</filename>" + obj("table", (0, 0, 200, 60))
           + obj("table row", (0, 0, 200, 30)) + obj("table row", (0, 30, 200, 60))
           + obj("table column", (0, 0, 100, 60)) + obj("table column", (100, 0, 200, 60))
           + obj("table column header", (0, 0, 200, 30)) + "</annotation>")
    for d in ("train", "images", "words"):
        (tmp_path / d).mkdir()
    (tmp_path / "train" / "PMC1_table_0.xml").write_text(xml)
    (tmp_path / "images" / "PMC1_table_0.jpg").write_bytes(img_bytes(size=(200, 60), fmt="JPEG"))
    words = [{"bbox": [10, 5, 40, 20], "text": "Name", "block_num": 0, "line_num": 0, "span_num": 0},
             {"bbox": [110, 5, 150, 20], "text": "Value", "block_num": 0, "line_num": 0, "span_num": 1},
             {"bbox": [10, 35, 40, 50], "text": "a<b", "block_num": 0, "line_num": 1, "span_num": 0},
             {"bbox": [110, 35, 150, 50], "text": "7", "block_num": 0, "line_num": 1, "span_num": 1}]
    (tmp_path / "words" / "PMC1_table_0_words.json").write_text(json.dumps(words))
    rec = validate_record(PubTables1M(tmp_path)[0])
    assert rec["messages"][1]["content"] == ("<table><tr><th>Name</th><th>Value</th></tr>"
                                             "<tr><td>a&lt;b</td><td>7</td></tr></table>")


def test_olmocr_parquet_with_tarballs_and_extracted_layout(tmp_path):
    pdf = one_pdf("olmOCR page")
    (tmp_path / "repo" / "pdf_tarballs").mkdir(parents=True)
    with tarfile.open(tmp_path / "repo" / "pdf_tarballs" / "chunk_00000.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("abc_3.pdf")
        info.size = len(pdf)
        tar.addfile(info, io.BytesIO(pdf))
    to_parquet(tmp_path / "repo" / "train.parquet",
               {"url": ["http://x"], "page_number": [3], "id": ["abc_3"], "natural_text": ["# Title\n\nBody"],
                "pdf_relpath": ["pdf_tarballs/chunk_00000.tar.gz:abc_3.pdf"], "primary_language": ["en"],
                "is_rotation_valid": [True], "rotation_correction": [0], "is_table": [False], "is_diagram": [False]},
               {"url": STR, "page_number": datasets.Value("int32"), "id": STR, "natural_text": STR, "pdf_relpath": STR,
                "primary_language": STR, "is_rotation_valid": datasets.Value("bool"),
                "rotation_correction": datasets.Value("int32"), "is_table": datasets.Value("bool"),
                "is_diagram": datasets.Value("bool")})
    rec = validate_record(OlmOCR(str(tmp_path / "repo" / "train.parquet"))[0])
    assert rec["id"] == "abc_3" and rec["messages"][1]["content"] == "# Title\n\nBody"
    assert Image.open(io.BytesIO(rec["image"])).size == (432, 288)  # 3x2 in at 144 dpi
    # olmOCR's prepare_olmocrmix layout: page.pdf + page.md with front matter.
    ext = tmp_path / "extracted"
    ext.mkdir()
    (ext / "p1.pdf").write_bytes(pdf)
    (ext / "p1.md").write_text("---\nprimary_language: en\nis_rotation_valid: True\n---\nHello text\n")
    rec = validate_record(OlmOCR(str(ext))[0])
    assert rec["messages"][1]["content"] == "Hello text\n"


class Numbers(Task):
    name = "numbers"

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"id": f"{self.name}{self.n}:{index}"}


def test_task_slicing_and_mixture():
    assert [r["id"] for r in Numbers(10, start=2, stop=9, step=3)] == ["numbers10:2", "numbers10:5", "numbers10:8"]
    with pytest.raises(IndexError):
        Numbers(3)[3]
    tasks = [Numbers(3), Numbers(4)]
    a = [r["id"] for r in TaskMixture(tasks, seed=1)]
    assert a == [r["id"] for r in TaskMixture(tasks, seed=1)]
    assert sorted(a) == sorted([f"numbers3:{i}" for i in range(3)] + [f"numbers4:{i}" for i in range(4)])
    assert a != [r["id"] for r in TaskMixture(tasks, seed=2)]
