"""The reading curriculum (nanoocr.data.reading): deterministic and unbounded, the word and font splits hold,
every level occurs, images are real and large enough for the tiny/small views."""
import io
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from nanoocr.data import reading
from nanoocr.data.records import validate_record
from nanoocr.data.synthetic import GENERATORS

N = 150  # samples per split checked: ~30 blocks, ~60 lines, ~60 word images


def answer(rec) -> str:
    return rec["messages"][1]["content"]


def words_of(text: str) -> set[str]:
    """The words of an answer in lower case, punctuation and numbers dropped (the split is case-blind)."""
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


@pytest.fixture(scope="module")
def streams():
    return {name: [reading.sample(name, 0, i) for i in range(N)] for name in reading.SPLITS}


def test_registered_and_deterministic():
    for name in reading.SPLITS:
        assert GENERATORS[name] is reading.READING_GENERATORS[name]
        a, b = list(GENERATORS[name](6, 3)), list(GENERATORS[name](6, 3))
        assert [(r["id"], r["image"], r["messages"]) for r in a] == [(r["id"], r["image"], r["messages"]) for r in b]
        assert [r["image"] for r in a] != [r["image"] for r in GENERATORS[name](6, 4)]


def test_sample_i_independent_of_n_and_unbounded():
    short = list(GENERATORS["reading"](3, 0))
    longer = list(GENERATORS["reading"](8, 0))
    assert [r["image"] for r in short] == [r["image"] for r in longer[:3]]
    # A stream of 10**12 samples starts at once (nothing precomputed) and sample i is the same deep inside it.
    deep = next(itertools.islice(GENERATORS["reading"](10**12, 0), 5, None))
    assert deep["image"] == longer[5]["image"] and deep["id"] == longer[5]["id"]
    assert reading.sample("reading", 0, 10**11)[0]["id"].startswith("reading-s0-100000000000-")


def test_word_split(streams):
    held, train = set(reading.HELD_OUT_WORDS), set(reading.TRAIN_WORDS)
    assert len(reading.WORDS) == len(set(reading.WORDS)) >= 2000
    assert not held & train and held | train == set(reading.WORDS)
    assert 0.07 < len(held) / len(reading.WORDS) < 0.13
    seen = {name: set().union(*(words_of(answer(r)) for r, _ in streams[name])) for name in streams}
    # Independent of the module's own lists: the words the streams actually show.
    assert not seen["reading"] & seen["reading_unseen_words"]
    assert not seen["reading_unseen_fonts"] & seen["reading_unseen_words"]
    assert seen["reading_unseen_words"] <= held and len(seen["reading_unseen_words"]) > 100
    assert seen["reading"] <= train and seen["reading_unseen_fonts"] <= train
    # Nonce words: no word of the list at all (so no held-out word), and not a small vocabulary in disguise.
    for name in reading.NONCE:
        assert not seen[name] & set(reading.WORDS)
        assert len(seen[name]) > 0.8 * sum(len(words_of(answer(r))) for r, _ in streams[name])
        letters = "".join(sorted(seen[name]))
        assert {chr(c) for c in range(ord("a"), ord("z") + 1)} <= set(letters)


def test_font_split(streams):
    train_fonts, held_fonts = reading.font_split()
    assert len(train_fonts) >= 2 and held_fonts and not set(train_fonts) & set(held_fonts)
    used = {name: {info["font"] for _, info in streams[name]} for name in streams}
    for name in streams:  # the id names the level and the font that drew the image
        for rec, info in streams[name]:
            assert rec["id"].split("-", 4)[3:] == [info["level"], Path(info["font"]).stem], rec["id"]
    assert not used["reading"] & used["reading_unseen_fonts"]
    assert not used["reading_unseen_words"] & used["reading_unseen_fonts"]
    assert used["reading_unseen_fonts"] == set(held_fonts)
    assert len(used["reading"]) >= min(len(train_fonts), 10)  # the train stream really mixes its fonts


def test_levels_answers_and_images(streams):
    for name, samples in streams.items():
        levels = [info["level"] for _, info in samples]
        share = {lvl: levels.count(lvl) / len(levels) for lvl in ("word", "line", "block")}
        if name == "reading_nonce_words":  # the curriculum's first stage: words only
            assert share["word"] == 1.0, share
        else:
            assert 0.3 < share["word"] < 0.5 and 0.3 < share["line"] < 0.5 and 0.12 < share["block"] < 0.28, share
        for rec, info in samples[:60]:
            assert validate_record(rec)["image"] == rec["image"]
            assert rec["source"] == f"synthetic:{name}" and rec["messages"][0]["content"] == "<image>\nFree OCR."
            lines = answer(rec).split("\n")
            assert lines == info["lines"] and all(line.strip() == line and line for line in lines)
            n_lines = {"word": 1, "line": 1, "block": len(lines)}[info["level"]]
            assert len(lines) == n_lines and (info["level"] != "block" or 2 <= n_lines <= 5)
            img = Image.open(io.BytesIO(rec["image"]))
            assert img.format == "PNG" and 512 <= img.width <= 640
            assert info["size"] >= 22 and abs(info["fg"] - info["bg"]) >= 90
            # Independent size check from the pixels: the rows holding ink span at least the text's x-height
            # per line (about half the em; 0.35 of it with margin for blur/JPEG), and ink is present at all.
            grey = np.asarray(img.convert("L"), dtype=np.int16)
            ink = np.abs(grey - info["bg"]) > abs(info["fg"] - info["bg"]) / 2
            rows = np.flatnonzero(ink.sum(axis=1) >= 3)
            assert rows.size and rows[-1] - rows[0] + 1 >= 0.35 * info["size"], (rec["id"], rows[:5])


def test_degradations_all_occur(streams):
    infos = [info for samples in streams.values() for _, info in samples]
    for key in ("blur", "noise", "jpeg"):
        share = sum(info[key] is not None for info in infos) / len(infos)
        assert 0.2 < share < 0.4, (key, share)
    assert any(info["bg"] < info["fg"] for info in infos), "some light-on-dark samples"


def test_too_few_fonts_names_the_packages(tmp_path):
    (tmp_path / "dejavu").mkdir()
    (tmp_path / "dejavu" / "DejaVuSans.ttf").write_bytes(b"")
    with pytest.raises(reading.FontsMissing, match="apt-get install fonts-dejavu-core fonts-liberation"):
        reading.font_split(tmp_path)
    with pytest.raises(ValueError, match="unknown reading generator"):
        reading.sample("nope", 0, 0)


def test_pages_split_and_sizes():
    """A word on a page: nonce tokens to train on, held-out words to evaluate. Fine pages are big, which the Base view
    shrinks below the size the reading stages read and Gundam's tiles keep near it (what they are for); spot pages
    are what the Base view sees of one, at the tiny view's cost."""
    from nanoocr.data.images import TILE, gundam_tiles
    samples = {name: [reading.page_sample(name, 0, i) for i in range(30)] for name in reading.PAGES}
    scales = {"fine": [], "spot": []}
    for name, s in samples.items():
        held_out, (lo, hi), level = reading.PAGES[name]
        assert GENERATORS[name] is reading.READING_GENERATORS[name]
        seen = set().union(*(words_of(answer(r).lower()) for r, _ in s))
        if held_out:
            assert seen <= set(reading.HELD_OUT_WORDS) and len(seen) > 20
        else:
            assert not seen & set(reading.WORDS), "train pages are nonce tokens, never a real word"
        for rec, info in s:
            validate_record(rec)
            assert info["level"] == level and rec["id"].startswith(f"{name}-s0-")
            img = Image.open(io.BytesIO(rec["image"]))
            w, h = img.size
            assert img.size == info["page"] and lo <= max(w, h) <= hi and 1.4 < max(w, h) / min(w, h) < 1.6
            assert info["size"] <= reading.PAGE_EM[1] and answer(rec) == info["lines"][0]
            # smaller than PAGE_EM only where the word would not fit across the page: it nearly fills it
            assert info["size"] >= reading.PAGE_EM[0] or info["box"][2] - info["box"][0] > 0.9 * (w - 32)
            x0, y0, x1, y1 = info["box"]  # the ink's box lies on the page, with the margin, and holds the ink
            assert 16 <= x0 < x1 <= w - 16 and 16 <= y0 < y1 <= h - 16
            ink = np.asarray(img.convert("L"), dtype=np.int16)
            assert (abs(ink[y0:y1, x0:x1] - info["bg"]) > 45).any()
            if level == "fine":  # Gundam's tiles: the page resized to the tile grid
                tw, th = gundam_tiles(w, h)
                scales[level].append(((TILE * tw / w) * (TILE * th / h)) ** 0.5)
            else:  # the tiny view: the long side to 512, as the Base view takes a fine page's to 1024
                scales[level].append(512 / max(w, h))
    assert np.median(scales["fine"]) > 0.9, "Gundam's tiles keep most fine pages near 1x"
    assert 0.5 <= min(scales["spot"]) and max(scales["spot"]) <= 0.64, "spot pages at the Base view's 0.5-0.64"
    for name in reading.PAGES:
        assert [r["image"] for r, _ in samples[name][:3]] == [r["image"] for r in GENERATORS[name](3, 0)]
    with pytest.raises(ValueError, match="unknown page reading generator"):
        reading.page_sample("reading_fine_x", 0, 0)


def test_crops_are_their_splits_samples_cut_to_the_text():
    """A reading_crop* sample i is sample i of its split (same text, font, size, contrast), cut to the ink with
    small margins: measured on the pixels, the text starts near the left edge and fills the crop's height."""
    for name, base in reading.CROPS.items():
        assert GENERATORS[name] is reading.READING_GENERATORS[name]
        a, b = list(GENERATORS[name](4, 2)), list(GENERATORS[name](4, 2))
        assert [r["image"] for r in a] == [r["image"] for r in b]
        for i in range(25):
            rec, info = reading.sample(name, 0, i)
            base_rec, base_info = reading.sample(base, 0, i)
            assert answer(rec) == answer(base_rec)
            assert {k: info[k] for k in ("level", "font", "size", "fg", "bg")} == \
                {k: base_info[k] for k in ("level", "font", "size", "fg", "bg")}
            assert rec["id"].startswith(f"{name}-s0-{i:06d}-") and rec["source"] == f"synthetic:{name}"
            validate_record(rec)
            img = Image.open(io.BytesIO(rec["image"]))
            base_img = Image.open(io.BytesIO(base_rec["image"]))
            assert img.width >= reading.CROP_MIN_WIDTH and img.height < base_img.height
            grey = np.asarray(img.convert("L"), dtype=np.int16)
            ink = np.abs(grey - info["bg"]) > abs(info["fg"] - info["bg"]) / 2
            cols, rows = np.flatnonzero(ink.any(axis=0)), np.flatnonzero(ink.any(axis=1))
            slack = 3  # blur and JPEG move the ink's edge by a pixel or two
            assert cols.size and cols[0] <= reading.CROP_MARGIN_X[1] + slack, (rec["id"], cols[:3])
            assert rows[0] <= reading.CROP_MARGIN_Y[1] + slack, (rec["id"], rows[:3])
            assert img.height - 1 - rows[-1] <= reading.CROP_MARGIN_Y[1] + slack, (rec["id"], rows[-3:])
    with pytest.raises(ValueError, match="unknown reading generator"):
        reading.sample("reading_crop_x", 0, 0)


def one_word_samples(splits: dict, level: str, n: int, em: tuple):
    """(split, record, info, answer) of the first n samples of each one-word generator (name -> the split whose words
    and fonts it draws), after the checks they share: registered, deterministic, valid, one word, the em in `em`,
    the word split and the font split."""
    train_fonts, held_fonts = reading.font_split()
    for name, split in splits.items():
        assert GENERATORS[name] is reading.READING_GENERATORS[name]
        assert [r["image"] for r in GENERATORS[name](3, 5)] == [r["image"] for r in GENERATORS[name](3, 5)]
        for i in range(n):
            rec, info = reading.sample(name, 0, i)
            validate_record(rec)
            text = answer(rec)
            assert info["level"] == level and rec["id"].startswith(f"{name}-s0-{i:06d}-{level}-")
            assert text and " " not in text and "\n" not in text and em[0] <= info["size"] <= em[1]
            assert info["font"] in (held_fonts if split == "reading_unseen_fonts" else train_fonts), info["font"]
            if split == "reading_nonce":
                assert not text.isalpha() or text.lower() not in reading.WORDS
            elif text.isalpha():
                assert (text.lower() in reading.HELD_OUT_WORDS) == (split == "reading_unseen_words"), text
            yield split, rec, info, text


def ink_columns(img: Image.Image, info: dict) -> np.ndarray:
    """The pixel columns holding ink: nearer the sample's ink level than its background's."""
    grey = np.asarray(img.convert("L"), dtype=np.int16)
    return np.flatnonzero((np.abs(grey - info["bg"]) > abs(info["fg"] - info["bg"]) / 2).any(axis=0))


def test_big_words_one_word_about_one_letter_per_token():
    """reading_big*: one word of the named split's words and fonts, cropped to the ink; measured on the pixels, the
    tiny view (the crop padded to a square, 512 px) spans about one 64 px token per letter."""
    per_token = []
    for split, rec, info, text in one_word_samples(reading.BIG, "big", 40, reading.BIG_EM):
        img = Image.open(io.BytesIO(rec["image"]))
        cols = ink_columns(img, info)
        assert cols[0] <= reading.CROP_MARGIN_X[1] + 3, (rec["id"], cols[:3])
        per_token.append(len(text) / ((cols[-1] - cols[0] + 1) * 512 / max(img.size) / 64))
    assert 0.8 < float(np.median(per_token)) < 1.25 and max(per_token) < 2.0, (np.median(per_token), max(per_token))


def test_cells_words_one_letter_per_token_column():
    """reading_cells*: through the real tiny-view preprocessing, token column j (64 px) holds ink for each letter j of
    the word and nothing lies past the word's last column but a wide capital's overhang; the word and font splits
    hold."""
    from nanoocr.data.images import image_views, open_image, padded_box
    held_used = set()
    for split, rec, info, text in one_word_samples(reading.CELLS, "cells", 30, reading.CELLS_EM):
        assert len(text) <= 7
        if split == "reading_unseen_fonts":
            held_used.add(info["font"])
        img = open_image(rec["image"])
        left, top, right, bottom = padded_box(img.width, img.height, 512)
        assert (left, right) == (0, 512) and bottom - top == img.height  # scale 1: the strip is kept as is
        view = image_views(img, "tiny", normalize=False).global_view[0, top:bottom].numpy()
        ink = np.abs(view.astype(np.int16) - info["bg"]) > abs(info["fg"] - info["bg"]) / 2
        per_column = ink.reshape(-1, 8, 64).sum(axis=(0, 2))
        assert all(per_column[j] >= 30 for j in range(len(text))), (rec["id"], text, per_column)
        assert not ink[:, 64 * len(text) + 32:].any(), (rec["id"], text, per_column)
    assert len(held_used) >= 2


def test_small_print_words_cut_as_real_words_are():
    """reading_small*: one word of the named split's words and fonts at 7-13 pt of a 150 dpi render, cut to its box
    with the margins nanoocr.eval.lines keeps around a real word (2 pt and 0.5 pt), not widened: the crop is the word's
    advance by the font's line height, plus those margins, and the view scales it up to the big words' size."""
    from nanoocr.eval import lines
    assert reading.SMALL_MARGIN_X[0] <= lines.MARGIN_X_PT * lines.DPI / 72 <= reading.SMALL_MARGIN_X[1]
    assert reading.SMALL_MARGIN_Y[0] <= lines.MARGIN_Y_PT * lines.DPI / 72 <= reading.SMALL_MARGIN_Y[1]
    assert reading.SMALL_EM[0] <= 10 * lines.DPI / 72 <= reading.SMALL_EM[1]  # 10 pt body text
    per_token = []
    for split, rec, info, text in one_word_samples(reading.SMALL, "small", 30, reading.SMALL_EM):
        img = Image.open(io.BytesIO(rec["image"]))
        fnt = ImageFont.truetype(str(reading.FONT_ROOT / info["font"]), info["size"])
        ascent, descent = fnt.getmetrics()
        x0, y0, x1, y1 = info["crop"]
        assert img.size == (x1 - x0, y1 - y0)
        assert 0 <= img.width - math.ceil(fnt.getlength(text)) <= 2 * reading.SMALL_MARGIN_X[1]
        assert 0 <= img.height - (ascent + descent) <= 2 * reading.SMALL_MARGIN_Y[1]
        cols = ink_columns(img, info)
        per_token.append(len(text) / ((cols[-1] - cols[0] + 1) * 512 / max(img.size) / 64))
    assert 0.6 < float(np.median(per_token)) < 1.6, np.median(per_token)
