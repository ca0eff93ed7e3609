"""convert_to_mds on a corpus of bad (and oddly-shaped good) records, run as a user runs it: a subprocess.

Every bad record must be rejected with a reason naming its problem, every good one written with its
original bytes, the conversion must exit 0, and read == written + rejected."""
import io
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from nanoocr.data.records import RecordError, validate_record

PROMPT = "<image>\nFree OCR."


def png(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def huge_declared_png() -> bytes:
    """A tiny valid PNG whose IHDR claims 100000x100000 pixels (CRC fixed so the header looks sane)."""
    data = bytearray(png(Image.new("L", (8, 8))))
    ihdr = 8 + 8  # signature + (length, type) of the first chunk
    data[ihdr:ihdr + 8] = (100_000).to_bytes(4, "big") * 2
    data[ihdr + 13:ihdr + 17] = zlib.crc32(bytes(data[12:ihdr + 13])).to_bytes(4, "big")
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return png(img, "JPEG", exif=exif.tobytes())


def conv(content, image=None, rid="", user=PROMPT):
    rec = {"id": rid, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]}
    if image is not None:
        rec["image"] = image
    return rec


# id -> substring its rejection reason must contain
EXPECTED = {
    "corrupt": "not an image",
    "trunc_jpg": "truncated",
    "trunc_png": "truncated",
    "zero_byte": "empty file",
    "missing": "image file not found",
    "dotdot": "path escapes data root",
    "absolute": "path escapes data root",
    "symlink": "path escapes data root",
    "bomb_declared": "too many pixels",
    "bomb_pixels": "too many pixels",
    "tag_no_image": "<image> tag but no image",
    "image_no_tag": "image but no <image> tag",
    "two_tags": "2 <image> tags",
    "empty_messages": "messages must be a non-empty list",
    "role_order": "wrong role order",
    "empty_answer": "empty content",
}


def build_corpus(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp / "corpus"
    (root / "img").mkdir(parents=True)
    outside = tmp / "outside.png"
    outside.write_bytes(png(Image.new("RGB", (16, 16))))
    (root / "img" / "link.png").symlink_to(outside)
    jpeg = png(Image.new("RGB", (64, 48), "blue"), "JPEG")
    good_png = png(Image.new("RGB", (64, 48), "green"))
    good = {  # id -> bytes on disk (each odd mode must be accepted)
        "rgb": good_png,
        "mode_P": png(Image.new("P", (32, 32), 3)),
        "mode_LA": png(Image.new("LA", (32, 32), (100, 50))),
        "mode_RGBA": png(Image.new("RGBA", (32, 32), (1, 2, 3, 0))),
        "mode_CMYK": png(Image.new("CMYK", (32, 32), (0, 50, 100, 0)), "JPEG"),
        "mode_I16": png(Image.new("I;16", (32, 32), 40000)),
        "mode_1": png(Image.new("1", (32, 32), 1)),
        "exif_rotated": exif_rotated_jpeg(),
    }
    bad_files = {
        "corrupt": b"this is not an image at all",
        "trunc_jpg": jpeg[: len(jpeg) // 2],
        "trunc_png": good_png[: len(good_png) // 2],
        "zero_byte": b"",
        "bomb_declared": huge_declared_png(),
        "bomb_pixels": png(Image.new("1", (2500, 2000))),  # 5 Mpx > --max-pixels 4_000_000
    }
    for name, data in {**good, **bad_files}.items():
        (root / "img" / f"{name}.bin").write_bytes(data)
    rows = [conv(f"text of {k}", f"img/{k}.bin", k) for k in [*good, *bad_files]]
    rows += [
        conv("plain text answer", None, "text_only", user="What is two plus two?"),
        conv("x", "img/nope.png", "missing"),
        conv("x", "../outside.png", "dotdot"),
        conv("x", str(outside), "absolute"),
        conv("x", "img/link.png", "symlink"),
        conv("x", None, "tag_no_image"),
        conv("x", "img/rgb.bin", "image_no_tag", user="Read this."),
        conv("x", "img/rgb.bin", "two_tags", user="<image>\n<image>\nFree OCR."),
        {"id": "empty_messages", "messages": []},
        {"id": "role_order", "messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]},
        conv("   ", None, "empty_answer", user="Say nothing."),
    ]
    lines = [json.dumps(r).encode() for r in rows]
    lines.append(b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}')  # not UTF-8
    lines.append(b'{"id": "broken json", "messages": [')
    (root / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root, good


def test_bad_input_corpus_subprocess(tmp_path):
    from streaming.base.format import reader_from_json

    root, good = build_corpus(tmp_path)
    out = tmp_path / "mds"
    proc = subprocess.run([sys.executable, "-m", "nanoocr.convert_to_mds", "--input", str(root / "data.jsonl"),
                           "--out", str(out), "--max-pixels", "4000000", "--compression", "none", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr

    summary = json.loads((out / "summary.json").read_text())
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    n_lines = len((root / "data.jsonl").read_bytes().splitlines())
    assert summary["read"] == n_lines == summary["written"] + summary["rejected"], summary
    assert summary["written"] == len(good) + 1, summary  # + the text-only record
    assert summary["rejected"] == len(rejected) == len(EXPECTED) + 2, rejected

    reasons = {r["id"]: r["reason"] for r in rejected}
    for rid, want in EXPECTED.items():
        assert want.lower() in reasons[rid].lower(), f"{rid}: {reasons.get(rid)!r} does not mention {want!r}"
    utf8 = [r for r in rejected if "not valid UTF-8" in r["reason"]]
    bad_json = [r for r in rejected if "not valid JSON" in r["reason"]]
    assert len(utf8) == 1 and f"line {n_lines - 1}" in utf8[0]["reason"] and "byte offset" in utf8[0]["reason"]
    assert len(bad_json) == 1 and f"line {n_lines}" in bad_json[0]["reason"]

    # Good records read back through Streaming's own MDS reader, image bytes untouched.
    index = json.loads((out / "index.json").read_text())
    samples = {}
    for info in index["shards"]:
        shard = reader_from_json(str(out), None, info)
        for i in range(shard.samples):
            samples[shard[i]["id"]] = shard[i]
    assert set(samples) == set(good) | {"text_only"}
    for rid, data in good.items():
        assert samples[rid]["image"] == data, rid
        assert samples[rid]["messages"][1]["content"] == f"text of {rid}"
    assert samples["text_only"]["image"] == b""


def test_validate_record_keeps_bytes_and_downscales_only_when_asked():
    data = png(Image.new("RGB", (300, 100), "white"))
    rec = conv("hello", data, "r")
    assert validate_record(rec)["image"] == data  # original encoding, not a re-encode
    small = validate_record(rec, max_side=150)["image"]
    assert Image.open(io.BytesIO(small)).size == (150, 50)
    with pytest.raises(RecordError, match="no data root"):
        validate_record(conv("x", "a.png"))
    with pytest.raises(RecordError, match="unpaired surrogate"):
        validate_record(conv("bad \udcff text", None, user="hi"))
    with pytest.raises(RecordError, match="byte offset 3"):
        validate_record(conv(b"abc\xff", None, user="hi"))
    with pytest.raises(RecordError, match="no assistant answer"):
        validate_record({"messages": [{"role": "user", "content": "hi"}]})
    ok = validate_record({"messages": [{"role": "system", "content": "be brief"}, *conv("4", user="2+2?")["messages"]]})
    assert ok["messages"][0]["role"] == "system" and ok["image"] is None


def test_jsonl_lines_too_deep_or_too_long_are_rejected_and_the_rest_converts(tmp_path, monkeypatch):
    """A line nested ~1000 levels used to raise RecursionError out of json.loads (~500 out of the pickling
    to --workers processes) and kill the conversion; a line longer than MAX_LINE_BYTES used to be read whole."""
    from nanoocr.data import convert as convert_to_mds
    monkeypatch.setattr(convert_to_mds, "MAX_LINE_BYTES", 20_000)  # stands in for 64 MiB
    good = [json.dumps(conv(f"answer {i}", None, f"g{i}", user="Question?")).encode() for i in range(3)]
    lines = [good[0],
             b'{"id": "deep", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # json.loads' own limit
             good[1],
             b'{"id": "deep600", "messages": ' + b"[" * 600 + b"]" * 600 + b"}",  # parses; does not pickle
             b'{"id": "long", "messages": [{"role": "user", "content": "' + b"x" * 30_000 + b'"}]}',
             good[2],
             b'{"id": "long_last", "messages": "' + b"y" * 25_000 + b'"}']  # over-long, no final newline
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    assert convert_to_mds.main(["--input", str(tmp_path / "data.jsonl"), "--out", str(out), "--workers", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["read"], summary["written"], summary["rejected"]) == (7, 3, 4), summary
    reasons = [json.loads(x)["reason"] for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert "nested too deeply" in reasons[0] and "line 2" in reasons[0], reasons
    assert "nested too deeply" in reasons[1] and "line 4" in reasons[1], reasons
    assert "line 5" in reasons[2] and "20000 bytes" in reasons[2], reasons
    assert "line 7" in reasons[3] and "20000 bytes" in reasons[3], reasons


def test_text_length_is_bounded():
    from nanoocr.data.records import MAX_RECORD_CHARS, MAX_TEXT_CHARS
    with pytest.raises(RecordError, match=rf"message 1 .*{MAX_TEXT_CHARS + 1} characters > limit {MAX_TEXT_CHARS}"):
        validate_record(conv("x" * (MAX_TEXT_CHARS + 1), None, user="hi"))
    assert validate_record(conv("x" * MAX_TEXT_CHARS, None, user="hi"))  # the limit itself is fine
    n_turns = MAX_RECORD_CHARS // MAX_TEXT_CHARS + 1  # every message within its limit, the sum over it
    turns = [{"role": r, "content": "y" * MAX_TEXT_CHARS} for _ in range(n_turns) for r in ("user", "assistant")]
    with pytest.raises(RecordError, match=rf"{2 * n_turns * MAX_TEXT_CHARS} characters .* > limit {MAX_RECORD_CHARS}"):
        validate_record({"messages": turns})


def test_huge_image_file_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A sparse file just over MAX_IMAGE_BYTES: rejected by its size (stat), never read into memory (it was
    read whole first: a 1 GiB file cost 1.7 GB of memory per worker)."""
    from nanoocr.data.images import MAX_IMAGE_BYTES
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)

    def no_reading(self):
        raise AssertionError(f"{self} was read")
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    with pytest.raises(RecordError, match=f"{MAX_IMAGE_BYTES + 1} bytes > limit {MAX_IMAGE_BYTES}"):
        validate_record(conv("x", "huge.png"), tmp_path)
    import nanoocr.data.records
    monkeypatch.setattr(nanoocr.data.records, "MAX_IMAGE_BYTES", 100)  # bytes handed over in memory: bounded alike
    with pytest.raises(RecordError, match="101 bytes > limit 100"):
        validate_record(conv("x", b"\x89PNG" + bytes(97)))
