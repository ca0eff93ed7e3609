"""Grounding output: DeepSeek-OCR's `<|ref|>LABEL<|/ref|><|det|>[[x1,y1,x2,y2],...]<|/det|>` spans -> boxes
-> rectangles drawn on the page (what `python -m nanoocr.sample --boxes out.png` writes).

Coordinates are normalized to 0-999 over the original page (docs/FACTS.md "Grounding"): pixel x =
int(x / 999 * width), as DeepSeek-OCR's own drawing code maps them. A model's output is untrusted text, so the
parser never raises: what parsed comes back with a list of problems (an unclosed span at the end of a cut-off
generation, a box without four numbers, coordinates outside 0-999, x2 < x1), each naming the span.
"""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# DeepSeek-OCR's own pattern (run_dpsk_ocr_image.py `re_match`, DOTALL), with whitespace allowed between the
# two tags.
SPAN = re.compile(r"<\|ref\|>(.*?)<\|/ref\|>\s*<\|det\|>(.*?)<\|/det\|>", re.DOTALL)
TAGS = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>")
BOX = re.compile(r"\[([^\[\]]*)\]")  # an innermost [...]: one box
NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*")
MAX_COORD = 999
MAX_BOXES = 10_000  # a looping generation can emit thousands of spans: bound what is drawn
MAX_REPORTED = 20  # problems listed by save_boxes; the rest are counted
# Distinct, saturated colours (one per ref, cycling): DeepSeek-OCR picks random ones.
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40)]


def _snippet(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _box(inner: str):
    """'x1, y1, x2, y2' -> (x1, y1, x2, y2) floats, or the reason it is not a box."""
    parts = inner.split(",")
    if len(parts) != 4 or not all(NUMBER.fullmatch(p) for p in parts):
        return f"not four numbers: [{inner.strip()}]"
    x1, y1, x2, y2 = (float(p) for p in parts)
    if not all(0 <= v <= MAX_COORD for v in (x1, y1, x2, y2)):
        return f"coordinates outside 0-{MAX_COORD}: [{inner.strip()}]"
    if x2 < x1 or y2 < y1:
        return f"x2 < x1 or y2 < y1: [{inner.strip()}]"
    return tuple(int(v) if v.is_integer() else v for v in (x1, y1, x2, y2))


def parse_grounding(text: str):
    """-> (refs, problems): refs [(label, [(x1, y1, x2, y2), ...]), ...] in the text's order, coordinates in
    0-999 as written (ints, or floats where the model wrote decimals); problems: one line per span or box that
    did not parse (a ref whose boxes all failed is left out of refs). Never raises."""
    refs, problems, covered = [], [], []
    total = 0
    for n, m in enumerate(SPAN.finditer(text), 1):
        covered.append(m.span())
        label, det = m.group(1).strip(), m.group(2)
        where = f"span {n} ({_snippet(label)})"
        if any(tag in label or tag in det for tag in TAGS):
            problems.append(f"{where}: a tag inside the span: {_snippet(m.group(0))}")
            continue
        boxes = []
        inners = BOX.findall(det)
        if not inners:
            problems.append(f"{where}: no [x1,y1,x2,y2] box in <|det|>{_snippet(det)}")
        rest = BOX.sub("", det)  # what is left once the boxes are cut out: brackets, commas, spaces only
        if inners and re.sub(r"[\s,\[\]]", "", rest):
            problems.append(f"{where}: text outside the boxes in <|det|>{_snippet(det)}")
        for inner in inners:
            box = _box(inner)
            if isinstance(box, str):
                problems.append(f"{where}: {box}")
            elif total >= MAX_BOXES:
                problems.append(f"{where}: more than {MAX_BOXES} boxes, the rest dropped")
                break
            else:
                boxes.append(box)
                total += 1
        if boxes:
            refs.append((label, boxes))
    # Tags outside every complete span: a generation cut off mid-span, or a span out of order. An unclosed
    # <|ref|> is reported once, with what follows it up to the next <|ref|> (its <|det|> included).
    refs_at = [m.start() for m in re.finditer(re.escape("<|ref|>"), text)]
    for tag in ("<|ref|>", "<|det|>"):
        for m in re.finditer(re.escape(tag), text):
            if any(a <= m.start() < b for a, b in covered):
                continue
            problems.append(f"unclosed {tag} at character {m.start()}: {_snippet(text[m.start():m.start() + 80])}")
            if tag == "<|ref|>":
                covered.append((m.start(), next((p for p in refs_at if p > m.start()), len(text))))
    return refs, problems


def to_pixels(box, width: int, height: int) -> tuple[int, int, int, int]:
    """A 0-999 box -> pixel (x1, y1, x2, y2) on a width x height page: int(x / 999 * width), DeepSeek-OCR's
    mapping (so 999 is the page's right / bottom edge, one past the last pixel)."""
    x1, y1, x2, y2 = box
    return (int(x1 / MAX_COORD * width), int(y1 / MAX_COORD * height),
            int(x2 / MAX_COORD * width), int(y2 / MAX_COORD * height))


def draw_boxes(image: Image.Image, refs, width: int = 2) -> Image.Image:
    """A copy of `image` (RGB) with each ref's boxes outlined (`width` px, inside the box) in its colour
    and its label above the box's top-left corner, as DeepSeek-OCR draws them (without its tinted fill)."""
    out = image.convert("RGB")  # always a copy
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    W, H = out.size
    for i, (label, boxes) in enumerate(refs):
        colour = PALETTE[i % len(PALETTE)]
        for box in boxes:
            x1, y1, x2, y2 = to_pixels(box, W, H)
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
            if label:
                tx, ty = x1, max(0, y1 - 15)
                left, top, right, bottom = draw.textbbox((tx, ty), label, font=font)
                draw.rectangle([left, top, right, bottom], fill=(255, 255, 255))
                draw.text((tx, ty), label, font=font, fill=colour)
    return out


def check_boxes_path(path: Path) -> str | None:
    """Why `path` cannot take the drawn page (no such folder, an extension PIL does not write), or None."""
    if not path.parent.is_dir():
        return f"--boxes {path}: no such folder {path.parent}"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return f"--boxes {path}: exists and is not a regular file (a symlink or folder is not overwritten)"
    if path.suffix.lower() not in Image.registered_extensions():
        return f"--boxes {path}: unknown image extension {path.suffix!r} (use .png or .jpg)"
    return None


def save_boxes(image: Image.Image, text: str, path: Path) -> list[str]:
    """Parse `text`'s grounding, draw it on `image`, save to `path` (also with no box: the page as it is).
    -> the lines to report: how many boxes were drawn from how many refs, then every problem."""
    refs, problems = parse_grounding(text)
    draw_boxes(image, refs).save(path)
    n = sum(len(boxes) for _, boxes in refs)
    lines = [f"boxes: {n} box{'es' if n != 1 else ''} from {len(refs)} ref{'s' if len(refs) != 1 else ''} "
             f"drawn on {path}"]
    lines += [f"boxes: not parsed: {p}" for p in problems[:MAX_REPORTED]]
    if len(problems) > MAX_REPORTED:
        lines.append(f"boxes: ... and {len(problems) - MAX_REPORTED} more problems")
    return lines
