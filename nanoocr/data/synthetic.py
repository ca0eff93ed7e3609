"""Built-in synthetic data: real rendered images, made offline, for demos, tests and the Tier-1 overfit run.

Every generator is `gen(n, seed=0) -> Iterator[record]` yielding unified records (PNG bytes) and is
deterministic: the same (n, seed) gives byte-identical images and texts on the same stack.

| name       | image                                         | answer                          |
|------------|-----------------------------------------------|---------------------------------|
| text_page  | 800x1000 page of wrapped prose                | the lines, "\\n"-joined          |
| receipt    | narrow monospace till receipt                 | its lines                       |
| chart      | matplotlib (Agg) bar or line chart            | its data table "label | value"  |
| table      | ruled grid table                              | the table as HTML               |
| formula    | matplotlib mathtext rendering                 | the LaTeX source                |
| overfit10  | exactly 10 short distinct texts, large glyphs | the text (the Tier-1 set)       |
| gundam10   | 10 pages >= 2000 px with ~10 px text          | the text (needs Gundam crops)   |
| reading    | words / lines / blocks, many fonts, degraded  | the text (nanoocr.data.reading) |
| reading_unseen_words | the same with held-out words        | the text                        |
| reading_unseen_fonts | the same in held-out fonts          | the text                        |
| reading_fine (_unseen_words) | one 80-120 px word on a 1600-2048 px page | the text               |
| reading_crop (_unseen_words, _unseen_fonts, _nonce, _nonce_words) | the same samples cut to the text | the text |
| reading_big (_unseen_words, _unseen_fonts, _nonce) | one word at an em of 80-120 px, cropped | the text   |
| reading_cells (_unseen_words, _unseen_fonts, _nonce) | one word, one letter per 64 px cell    | the text   |
| reading_small (_unseen_words, _unseen_fonts, _nonce) | one word at 14-28 px, cut to its box | the text   |

Notable features:
- fonts: DejaVu from /usr/share/fonts/truetype/dejavu when installed, else PIL's scalable default font
  (`ImageFont.load_default(size=...)`, Pillow >= 10.1), so it works on any machine;
- randomness comes only from `random.Random(f"{name}:{seed}")` (string seeding is stable across runs and
  platforms, unlike `hash()`); PNGs are written without timestamps, so bytes are reproducible;
- gundam10 glyphs are ~10 px tall on a 2400x1600 page: the 1024 global view shrinks them to ~4 px,
  so only the 640 px local crops can read them — the point of Gundam mode.
"""
from __future__ import annotations

import io
import random
import textwrap
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageDraw, ImageFont

from nanoocr.data.reading import READING_GENERATORS  # unbounded; its own module: fonts, word lists, splits
from nanoocr.data.records import FORMULA_PROMPT, IMAGE_TAG, OCR_PROMPT, TABLE_PROMPT, qa

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")

WORDS = ("apple river stone light green quiet north table window garden paper silver morning "
         "orange simple market bridge yellow summer winter doctor engine forest island letter "
         "mountain number ocean pencil rabbit school thunder violet wooden yesterday zebra "
         "bottle candle dinner eagle farmer guitar hammer jacket kitchen lemon mirror needle "
         "pillow rocket saddle tiger umbrella valley wagon yogurt anchor basket cotton desert "
         "feather honey lantern meadow planet spider tunnel velvet whistle").split()


@lru_cache(maxsize=None)
def font(size: int, mono: bool = False):
    """DejaVu (Sans or Sans Mono) at `size` px when installed, else PIL's scalable default font."""
    path = DEJAVU / ("DejaVuSansMono.ttf" if mono else "DejaVuSans.ttf")
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # PIL writes no timestamp chunk: same pixels -> same bytes
    return buf.getvalue()


def record(name: str, seed: int, i: int, img_png: bytes, prompt: str, answer: str) -> dict:
    return qa(prompt, answer, img_png, f"{name}-s{seed}-{i:04d}", f"synthetic:{name}")


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def draw_lines(size: tuple[int, int], lines: list[str], fnt, xy: tuple[int, int], spacing: float = 1.4,
               bg=(255, 255, 255), fg=(0, 0, 0)) -> Image.Image:
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    x, y = xy
    step = int(fnt.size * spacing)
    for line in lines:
        draw.text((x, y), line, font=fnt, fill=fg)
        y += step
    return img


def wrap_px(text: str, fnt, max_width: int) -> list[str]:
    """Greedy word wrap by measured pixel width (character counts misjudge proportional fonts)."""
    lines: list[str] = []
    for word in text.split():
        if lines and fnt.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def text_page(n: int, seed: int = 0) -> Iterator[dict]:
    """Pages of wrapped prose at 18-26 px on off-white paper."""
    rng = random.Random(f"text_page:{seed}")
    for i in range(n):
        size = rng.randint(18, 26)
        width_chars = int(700 / (0.6 * size))
        lines = textwrap.wrap(". ".join(sentence(rng, 6, 14) for _ in range(rng.randint(3, 6))) + ".", width_chars)
        shade = rng.randint(235, 255)
        img = draw_lines((800, 1000), lines[:30], font(size), (50, 60), bg=(shade, shade, shade - rng.randint(0, 10)))
        yield record("text_page", seed, i, png_bytes(img), OCR_PROMPT, "\n".join(lines[:30]))


def receipt(n: int, seed: int = 0) -> Iterator[dict]:
    """Till receipts: shop name, 3-8 priced items, total — monospace, so columns align."""
    rng = random.Random(f"receipt:{seed}")
    for i in range(n):
        items = [(rng.choice(WORDS).upper(), rng.randint(50, 2500)) for _ in range(rng.randint(3, 8))]
        lines = [f"{rng.choice(WORDS).upper()} {rng.choice(WORDS).upper()} STORE", f"RECEIPT #{rng.randint(1000, 9999)}", ""]
        lines += [f"{name:<16}{cents / 100:>8.2f}" for name, cents in items]
        lines += ["", f"{'TOTAL':<16}{sum(c for _, c in items) / 100:>8.2f}"]
        img = draw_lines((480, 80 + 30 * len(lines)), lines, font(20, mono=True), (40, 40))
        yield record("receipt", seed, i, png_bytes(img), OCR_PROMPT, "\n".join(lines))


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    # No "Software" metadata: the PNG then depends only on the pixels.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.2)
    return buf.getvalue()


def chart(n: int, seed: int = 0) -> Iterator[dict]:
    """Bar or line charts of 3-6 labelled values; the answer is the underlying data table."""
    import matplotlib
    matplotlib.use("Agg")  # headless; must precede pyplot's import
    import matplotlib.pyplot as plt

    rng = random.Random(f"chart:{seed}")
    for i in range(n):
        labels = rng.sample(WORDS, rng.randint(3, 6))
        values = [rng.randint(1, 100) for _ in labels]
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        if rng.random() < 0.5:
            ax.bar(labels, values, color="tab:blue")
        else:
            ax.plot(labels, values, marker="o")
        for x, v in zip(labels, values):
            ax.annotate(str(v), (x, v), ha="center", va="bottom")
        ax.set_title(f"{rng.choice(WORDS).title()} by {rng.choice(WORDS)}")
        data = _figure_png(fig)
        plt.close(fig)
        answer = "\n".join(["label | value"] + [f"{k} | {v}" for k, v in zip(labels, values)])
        yield record("chart", seed, i, data, f"{IMAGE_TAG}\nConvert the chart to a data table.", answer)


def table(n: int, seed: int = 0) -> Iterator[dict]:
    """Ruled tables with a header row; the answer is the same table as HTML."""
    rng = random.Random(f"table:{seed}")
    fnt = font(20)
    for i in range(n):
        rows, cols = rng.randint(3, 6), rng.randint(2, 4)
        cells = [[rng.choice(WORDS).title() for _ in range(cols)]]
        cells += [[str(rng.randint(0, 999)) if c else rng.choice(WORDS) for c in range(cols)] for _ in range(rows - 1)]
        cw, rh = 160, 40
        img = Image.new("RGB", (cols * cw + 40, rows * rh + 40), "white")
        draw = ImageDraw.Draw(img)
        for r, row in enumerate(cells):
            for c, text in enumerate(row):
                x0, y0 = 20 + c * cw, 20 + r * rh
                draw.rectangle((x0, y0, x0 + cw, y0 + rh), outline="black", width=2 if r == 0 else 1)
                draw.text((x0 + 8, y0 + 8), text, font=fnt, fill="black")
        head = "<tr>" + "".join(f"<th>{t}</th>" for t in cells[0]) + "</tr>"
        body = "".join("<tr>" + "".join(f"<td>{t}</td>" for t in row) + "</tr>" for row in cells[1:])
        yield record("table", seed, i, png_bytes(img), TABLE_PROMPT, f"<table>{head}{body}</table>")


def _random_formula(rng: random.Random) -> str:
    a, b, c = rng.sample("abcxyzmnpq", 3)
    k, m = rng.randint(2, 9), rng.randint(2, 9)
    return rng.choice([
        rf"\frac{{{a}}}{{{b}}} + {c}^{{{k}}}",
        rf"\sqrt{{{a}^{{2}} + {b}^{{2}}}} = {c}",
        rf"\sum_{{i=1}}^{{{m}}} {a}_{{i}} = {k}",
        rf"\int_{{0}}^{{{k}}} {a}\,d{a} = \frac{{{k * k}}}{{2}}",
        rf"{a}^{{{k}}} \cdot {b}^{{{m}}} = {c}",
        rf"\alpha {a} + \beta {b} \leq {k}",
    ])


def formula(n: int, seed: int = 0) -> Iterator[dict]:
    """Printed formulas rendered by matplotlib's mathtext (no LaTeX install needed); answer = LaTeX."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = random.Random(f"formula:{seed}")
    for i in range(n):
        latex = _random_formula(rng)
        fig = plt.figure(figsize=(4, 1))
        fig.text(0.5, 0.5, f"${latex}$", fontsize=rng.randint(18, 26), ha="center", va="center")
        data = _figure_png(fig)
        plt.close(fig)
        yield record("formula", seed, i, data, FORMULA_PROMPT, latex)


def overfit10(n: int = 10, seed: int = 0) -> Iterator[dict]:
    """The Tier-1 overfit set: 10 distinct 3-8 word texts, large and centred (about 10-25 tokens each)."""
    if n != 10:
        raise ValueError(f"overfit10 makes exactly 10 samples, asked for {n}")
    rng = random.Random(f"overfit10:{seed}")
    # Distinct first words make the ten answers distinct from their very first token.
    firsts = rng.sample(WORDS, 10)
    for i, first in enumerate(firsts):
        text = " ".join([first] + [rng.choice(WORDS) for _ in range(rng.randint(2, 7))])
        w, h = rng.choice([(640, 480), (800, 600), (1000, 800)])
        size = rng.randint(40, 52)
        fnt = font(size)
        lines = wrap_px(text, fnt, w - 80)
        img = Image.new("RGB", (w, h), "white")
        draw = ImageDraw.Draw(img)
        y = (h - len(lines) * int(size * 1.4)) // 2
        for line in lines:
            x = (w - draw.textlength(line, font=fnt)) // 2
            draw.text((x, y), line, font=fnt, fill="black")
            y += int(size * 1.4)
        yield record("overfit10", seed, i, png_bytes(img), OCR_PROMPT, "\n".join(lines))


def gundam10(n: int = 10, seed: int = 0) -> Iterator[dict]:
    """10 large pages (2400x1600 or 1600x2400) with ~10 px text blocks that a 1024 global view cannot read."""
    rng = random.Random(f"gundam10:{seed}")
    fnt = font(10)
    for i in range(n):
        w, h = (2400, 1600) if rng.random() < 0.5 else (1600, 2400)
        lines = [sentence(rng, 8, 14) for _ in range(rng.randint(6, 10))]
        xy = (rng.randint(60, w // 3), rng.randint(60, h // 2))
        img = draw_lines((w, h), lines, fnt, xy)
        yield record("gundam10", seed, i, png_bytes(img), OCR_PROMPT, "\n".join(lines))


GENERATORS: dict[str, Callable[..., Iterator[dict]]] = {
    "text_page": text_page, "receipt": receipt, "chart": chart, "table": table,
    "formula": formula, "overfit10": overfit10, "gundam10": gundam10, **READING_GENERATORS,
}
