"""PubTables-1M (bsmock/pubtables-1m), structure-recognition part: cropped table images → HTML.

Files (tar.gz release, no `datasets` schema): `images/<name>.jpg`, PASCAL-VOC XML annotations
`<split>/<name>.xml` whose objects are "table", "table row", "table column", "table column header",
"table projected row header", "table spanning cell" with `bndbox` xmin/ymin/xmax/ymax, and
`words/<name>_words.json`: a list of {"bbox": [x0, y0, x1, y1], "text", "span_num", "line_num",
"block_num"} in image coordinates. A word belongs to the row and column containing its centre; rows inside
the column-header box become `<th>` cells. Spanning cells are not merged (each grid cell is emitted).
(File layout from the dataset card and the table-transformer repo; not confirmed against a real file.)"""
import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from nanoocr.data.records import TABLE_PROMPT, qa
from nanoocr.data.tasks.common import Task


def boxes(root, name: str) -> list[list[float]]:
    out = []
    for obj in root.iter("object"):
        if obj.findtext("name") == name:
            b = obj.find("bndbox")
            out.append([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
    return out


def _index(spans: list[list[float]], v: float, lo: int, hi: int) -> int | None:
    return next((i for i, s in enumerate(spans) if s[lo] <= v <= s[hi]), None)


def table_html(xml_text: str, words: list[dict]) -> str:
    root = ET.fromstring(xml_text)
    rows = sorted(boxes(root, "table row"), key=lambda b: b[1])
    cols = sorted(boxes(root, "table column"), key=lambda b: b[0])
    headers = boxes(root, "table column header")
    cells = [[[] for _ in cols] for _ in rows]
    order = sorted(words, key=lambda w: (w.get("block_num", 0), w.get("line_num", 0), w.get("span_num", 0), w["bbox"][0]))
    for w in order:
        x0, y0, x1, y1 = w["bbox"]
        r, c = _index(rows, (y0 + y1) / 2, 1, 3), _index(cols, (x0 + x1) / 2, 0, 2)
        if r is not None and c is not None:
            cells[r][c].append(w["text"])
    out = ["<table>"]
    for r, row in enumerate(rows):
        cy = (row[1] + row[3]) / 2
        tag = "th" if any(h[1] <= cy <= h[3] for h in headers) else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(' '.join(c))}</{tag}>" for c in cells[r]) + "</tr>")
    return "".join(out + ["</table>"])


class PubTables1M(Task):
    name = "pubtables1m"
    HUB_ID = "bsmock/pubtables-1m"

    def __init__(self, source, split="train", **kwargs):
        super().__init__(**kwargs)
        root = Path(source)
        ann = root / split if (root / split).is_dir() else root
        self.xmls = sorted(ann.rglob("*.xml"))
        self.images = {p.stem: p for p in root.rglob("*.jpg")}
        self.words = {p.name[: -len("_words.json")]: p for p in root.rglob("*_words.json")}

    def num_examples(self):
        return len(self.xmls)

    def get_example(self, index):
        xml = self.xmls[index]
        name = xml.stem
        if name not in self.images or name not in self.words:
            return {"id": name, "source": self.name, "error": f"image or words file missing for {name}"}
        try:
            answer = table_html(xml.read_text(encoding="utf-8"), json.loads(self.words[name].read_text(encoding="utf-8")))
        except (ET.ParseError, ValueError, KeyError, TypeError, AttributeError) as e:
            return {"id": name, "source": self.name, "error": f"bad PubTables annotation {xml.name}: {e}"}
        return qa(TABLE_PROMPT, answer, self.images[name].read_bytes(), name, self.name)
