"""Grounding spans -> boxes -> pixels -> rectangles on the page, and `sample --boxes` end to end.

The span format and the 0-999 -> pixel mapping (int(x / 999 * width)) are docs/FACTS.md "Grounding"; every
expected value below is worked out by hand in the test."""
import pytest
import torch
from PIL import Image

from nanoocr.eval.grounding import draw_boxes, parse_grounding, save_boxes, to_pixels

WHITE = (255, 255, 255)


# ---- parsing ----------------------------------------------------------------------------------------

def test_one_box():
    text = "<|ref|>title<|/ref|><|det|>[[100, 200, 300, 400]]<|/det|>\n# Results"
    assert parse_grounding(text) == ([("title", [(100, 200, 300, 400)])], [])


def test_several_boxes_and_whitespace():
    text = "<|ref|> text <|/ref|>\n<|det|> [ [0,0,999,999] ,\n [ 10 , 20,30 ,40 ] ] <|/det|>"
    assert parse_grounding(text) == ([("text", [(0, 0, 999, 999), (10, 20, 30, 40)])], [])


def test_several_refs_in_order_between_markdown():
    text = ("<|ref|>title<|/ref|><|det|>[[50,40,950,90]]<|/det|>\n# A paper\n\n"
            "<|ref|>text<|/ref|><|det|>[[50,100,950,300]]<|/det|>\nSome words.\n\n"
            "<|ref|>image<|/ref|><|det|>[[60,320,500,700],[520,320,940,700]]<|/det|>\n")
    refs, problems = parse_grounding(text)
    assert problems == []
    assert refs == [("title", [(50, 40, 950, 90)]), ("text", [(50, 100, 950, 300)]),
                    ("image", [(60, 320, 500, 700), (520, 320, 940, 700)])]


def test_decimal_coordinates_are_kept():
    assert parse_grounding("<|ref|>x<|/ref|><|det|>[[1.5,2,3,4.25]]<|/det|>") == ([("x", [(1.5, 2, 3, 4.25)])], [])


def test_malformed_spans_are_reported_and_the_rest_kept():
    text = ("<|ref|>a<|/ref|><|det|>[[1,2,3]]<|/det|>"                      # three numbers
            "<|ref|>b<|/ref|><|det|>[[10,10,20,20],[5,5,1000,10]]<|/det|>"  # second box out of range
            "<|ref|>c<|/ref|><|det|>[[50,5,10,10]]<|/det|>"                 # x2 < x1
            "<|ref|>d<|/ref|><|det|>[[w,x,y,z]]<|/det|>"                    # not numbers
            "<|ref|>e<|/ref|><|det|>nothing<|/det|>"                        # no box at all
            "<|ref|>f<|/ref|><|det|>[[1,2,3,4]]<|/det|>"                    # fine
            "<|ref|>table<|/ref|><|det|>[[1,2")                             # cut off: never closed
    refs, problems = parse_grounding(text)
    assert refs == [("b", [(10, 10, 20, 20)]), ("f", [(1, 2, 3, 4)])]
    assert len(problems) == 6, problems
    expected = ["span 1 ('a'): not four numbers", "span 2 ('b'): coordinates outside 0-999",
                "span 3 ('c'): x2 < x1", "span 4 ('d'): not four numbers", "span 5 ('e'): no [x1,y1,x2,y2] box",
                "unclosed <|ref|> at character"]
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), (problem, start)
    assert "'<|ref|>table<|/ref|><|det|>[[1,2'" in problems[-1]


def test_no_grounding():
    assert parse_grounding("Just a transcription, [1, 2, 3, 4] and all.") == ([], [])
    assert parse_grounding("") == ([], [])


def test_garbage_never_raises():
    for text in ("<|ref|>", "<|det|>[[1,2,3,4]]<|/det|>", "<|ref|>a<|ref|>b<|/ref|><|det|>[[1,2,3,4]]<|/det|>",
                 "<|ref|>a<|/ref|><|det|>[[1,2,3,4]] junk<|/det|>", "\x00" * 100):
        refs, problems = parse_grounding(text)
        assert isinstance(refs, list) and isinstance(problems, list)
    assert parse_grounding("<|det|>[[1,2,3,4]]<|/det|>") == ([], ["unclosed <|det|> at character 0: "
                                                                  "'<|det|>[[1,2,3,4]]<|/det|>'"])
    refs, problems = parse_grounding("<|ref|>a<|/ref|><|det|>[[1,2,3,4]] junk<|/det|>")
    assert refs == [("a", [(1, 2, 3, 4)])] and "text outside the boxes" in problems[0]


# ---- pixels -----------------------------------------------------------------------------------------

def test_to_pixels_by_hand():
    # 100/999*640 = 64.06, 200/999*480 = 96.10, 300/999*640 = 192.19, 400/999*480 = 192.19
    assert to_pixels((100, 200, 300, 400), 640, 480) == (64, 96, 192, 192)
    assert to_pixels((0, 0, 999, 999), 640, 480) == (0, 0, 640, 480)  # 999 is the far edge
    # truncation, not rounding: 998/999*1000 = 998.998 -> 998; 500/999*1000 = 500.5 -> 500
    assert to_pixels((500, 500, 998, 998), 1000, 1000) == (500, 500, 998, 998)


# ---- drawing ----------------------------------------------------------------------------------------

def box_pixels_check(img):
    """The box (100, 200, 600, 800) on a 200 x 100 page: x1 = int(20.02) = 20, y1 = int(20.02) = 20,
    x2 = int(120.12) = 120, y2 = int(80.08) = 80; the outline is 2 px wide, inside the box."""
    px = img.load()
    colour = px[20, 50]
    assert colour != WHITE
    for xy in [(21, 50), (120, 50), (119, 50), (70, 80), (70, 79), (110, 20), (110, 21)]:  # left, right, bottom, top
        assert px[xy] == colour, xy
    for xy in [(19, 50), (22, 50), (121, 50), (118, 50), (70, 81), (70, 78), (70, 50), (110, 19), (110, 22)]:
        assert px[xy] == WHITE, xy  # just outside / inside the outline, and the middle
    return colour


def test_draw_boxes_colours_the_hand_computed_rectangle():
    page = Image.new("RGB", (200, 100), "white")
    out = draw_boxes(page, [("title", [(100, 200, 600, 800)])])
    box_pixels_check(out)
    assert page.getpixel((20, 50)) == WHITE, "draw_boxes must draw on a copy"
    assert out.size == page.size and out.mode == "RGB"


def test_each_ref_has_its_own_colour():
    page = Image.new("RGB", (200, 100), "white")
    out = draw_boxes(page, [("a", [(0, 500, 400, 900)]), ("b", [(600, 500, 998, 900)])])
    # a: x1 = 0, b: x1 = int(600/999*200) = int(120.12) = 120; both left edges at y = int(700/999*100) = 70
    left_a, left_b = out.getpixel((0, 70)), out.getpixel((120, 70))
    assert WHITE not in (left_a, left_b) and left_a != left_b


def test_save_boxes_writes_and_reports(tmp_path):
    page = Image.new("RGB", (200, 100), "white")
    text = "<|ref|>title<|/ref|><|det|>[[100,200,600,800]]<|/det|># Title\n<|ref|>x<|/ref|><|det|>[[1,2]]<|/det|>"
    lines = save_boxes(page, text, tmp_path / "out.png")
    assert lines[0] == f"boxes: 1 box from 1 ref drawn on {tmp_path / 'out.png'}"
    assert lines[1].startswith("boxes: not parsed: span 2 ('x'): not four numbers")
    box_pixels_check(Image.open(tmp_path / "out.png").convert("RGB"))


# ---- sample --boxes ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny exported model (random weights: it has learned no grounding)."""
    from nanoocr.data.tokenizer import Tokenizer
    from nanoocr.model import presets
    from nanoocr.model.vlm import NanoOCR
    from nanoocr.train.export import export_model
    tok = Tokenizer.train_from_iterator(["Free OCR. hello world"] * 4, vocab_size=300)
    torch.manual_seed(0)
    cfg = presets.build_config("nano", sam={"depth": 2}, image_token_id=tok.image_id,
                               gpt={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_kv_head": 2, "sequence_len": 512,
                                    "vocab_size": tok.vocab_size})
    return export_model(NanoOCR(cfg), tok, tmp_path_factory.mktemp("grounding") / "export", mode="tiny")


def run_sample(export_dir, page_path, out, capsys):
    from nanoocr.eval.sample import main
    rc = main(["--model", str(export_dir), "--image", str(page_path), "--max-new-tokens", "4", "--boxes", str(out)])
    return rc, capsys.readouterr()


def test_sample_boxes_with_no_grounding_says_0_boxes_and_writes_the_page(export_dir, tmp_path, capsys):
    Image.new("RGB", (200, 100), "white").save(tmp_path / "page.png")
    rc, cap = run_sample(export_dir, tmp_path / "page.png", tmp_path / "out.png", capsys)
    assert rc == 0, cap.err
    assert f"boxes: 0 boxes from 0 refs drawn on {tmp_path / 'out.png'}" in cap.err
    drawn = Image.open(tmp_path / "out.png").convert("RGB")
    assert drawn.size == (200, 100) and drawn.getcolors() == [(200 * 100, WHITE)]  # the page, untouched


def test_sample_boxes_draws_the_model_output(export_dir, tmp_path, capsys, monkeypatch):
    """The CLI's whole path with a fixed grounding output in place of the untrained model's."""
    import nanoocr.eval.transcribe as transcribe_module
    text = "<|ref|>title<|/ref|><|det|>[[100,200,600,800]]<|/det|>\n# Title\n<|ref|>t<|/ref|><|det|>[[9,9"
    monkeypatch.setattr(transcribe_module, "transcribe", lambda *a, **k: ([text], [True]))
    Image.new("RGB", (200, 100), "white").save(tmp_path / "page.png")
    rc, cap = run_sample(export_dir, tmp_path / "page.png", tmp_path / "out.png", capsys)
    assert rc == 0, cap.err
    assert text in cap.out
    assert f"boxes: 1 box from 1 ref drawn on {tmp_path / 'out.png'}" in cap.err
    assert "boxes: not parsed: unclosed <|ref|> at character" in cap.err
    box_pixels_check(Image.open(tmp_path / "out.png").convert("RGB"))


@pytest.mark.parametrize("out, message", [("nowhere/out.png", "no such folder"),
                                          ("out.xyz", "unknown image extension '.xyz'")])
def test_sample_refuses_a_bad_boxes_path_before_running(export_dir, tmp_path, capsys, out, message):
    Image.new("RGB", (64, 64), "white").save(tmp_path / "page.png")
    with pytest.raises(SystemExit) as exit_info:
        run_sample(export_dir, tmp_path / "page.png", tmp_path / out, capsys)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--boxes {tmp_path / out}: {message}" in err, err
