"""DocBank (liminghao1630/DocBank, the 500K release): arXiv pages with word-level annotations.

Files (release zips, no `datasets` schema on the hub): `DocBank_500K_txt/<name>.txt` — one token per line,
tab-separated: token, x0, y0, x1, y1 (0-1000 normalized), R, G, B, font name, label — and
`DocBank_500K_ori_img/<name>_ori.jpg`, the page image. Tokens are in reading order; the target text joins
them with spaces and starts a new line when a token starts below the previous one (the files carry no
explicit line breaks). `##LTLine##`/`##LTFigure##` placeholders for non-text objects are dropped."""
import csv
from pathlib import Path

from nanoocr.data.records import OCR_PROMPT, qa
from nanoocr.data.tasks.common import Task


def page_text(txt_path: Path) -> str:
    lines: list[list[str]] = []
    prev_bottom = None
    with open(txt_path, encoding="utf-8", newline="") as f:
        # Tokens may contain quote characters: no quoting at all, tabs only.
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 5 or row[0].startswith("##LT"):
                continue
            token, top, bottom = row[0], int(row[2]), int(row[4])
            if prev_bottom is None or top >= prev_bottom:  # starts below the previous token: new line
                lines.append([])
            lines[-1].append(token)
            prev_bottom = bottom
    return "\n".join(" ".join(words) for words in lines)


class DocBank(Task):
    name = "docbank"
    HUB_ID = "liminghao1630/DocBank"

    def __init__(self, source, **kwargs):
        super().__init__(**kwargs)
        root = Path(source)
        self.images = {p.name[: -len("_ori.jpg")]: p for p in root.rglob("*_ori.jpg")}
        self.texts = sorted(root.rglob("*.txt"))

    def num_examples(self):
        return len(self.texts)

    def get_example(self, index):
        txt = self.texts[index]
        image = self.images.get(txt.stem)
        if image is None:
            return {"id": txt.stem, "source": self.name, "error": f"page image {txt.stem}_ori.jpg not found"}
        try:
            text = page_text(txt)
        except (UnicodeDecodeError, ValueError) as e:
            return {"id": txt.stem, "source": self.name, "error": f"bad DocBank annotation {txt.name}: {e}"}
        return qa(OCR_PROMPT, text, image.read_bytes(), txt.stem, self.name)
