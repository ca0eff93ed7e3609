"""Synthetic generators: real decodable images, deterministic per seed, the Tier-1 sets shaped as promised."""
import io

import numpy as np
import pytest
from PIL import Image

from nanoocr.data.records import validate_record
from nanoocr.data.synthetic import GENERATORS


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_deterministic_valid_records(name):
    n = 10 if name == "overfit10" else 2
    a, b = list(GENERATORS[name](n, 5)), list(GENERATORS[name](n, 5))
    assert len(a) == n
    assert [(r["id"], r["image"], r["messages"]) for r in a] == [(r["id"], r["image"], r["messages"]) for r in b]
    other = list(GENERATORS[name](n, 6))
    assert [r["image"] for r in a] != [r["image"] for r in other], "a different seed must change the data"
    for r in a:
        assert validate_record(r)["image"] == r["image"]  # a valid record whose PNG is kept as is
        assert Image.open(io.BytesIO(r["image"])).format == "PNG"
        assert r["source"] == f"synthetic:{name}"


def test_overfit10_short_distinct_large():
    recs = list(GENERATORS["overfit10"](10, 0))
    texts = [r["messages"][1]["content"] for r in recs]
    assert len(set(texts)) == 10
    assert len({t.split()[0] for t in texts}) == 10, "answers should differ from their first word"
    for r, t in zip(recs, texts):
        assert 3 <= len(t.split()) <= 8, t
        assert r["messages"][0]["content"] == "<image>\nFree OCR."
        w, h = Image.open(io.BytesIO(r["image"])).size
        assert 640 <= w <= 1000 and 480 <= h <= 800
    with pytest.raises(ValueError, match="exactly 10"):
        list(GENERATORS["overfit10"](5, 0))


def test_gundam10_large_pages_small_text():
    recs = list(GENERATORS["gundam10"](10, 0))
    for r in recs:
        img = Image.open(io.BytesIO(r["image"])).convert("L")
        assert max(img.size) >= 2000
        # Glyph height from the ink rows of the first text line: ~10 px, unreadable after the 1024 global view.
        rows = np.flatnonzero((np.asarray(img) < 128).any(axis=1))
        first_line = rows[rows < rows[0] + 14]
        assert 5 <= first_line[-1] - first_line[0] + 1 <= 13, first_line
        assert len(r["messages"][1]["content"].split()) >= 40


def test_chart_answer_is_its_data_table():
    rec = next(GENERATORS["chart"](1, 3))
    lines = rec["messages"][1]["content"].splitlines()
    assert lines[0] == "label | value" and 3 <= len(lines) - 1 <= 6
    assert all(int(line.split(" | ")[1]) in range(1, 101) for line in lines[1:])
