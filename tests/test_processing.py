"""process_sample: image-token expansion, loss policies, overflow handling and validation reasons."""
import io

import pytest
import torch
from PIL import Image

from nanoocr.data.processing import SampleError, process_sample
from nanoocr.data.tokenizer import Tokenizer

ANSWER = "Total: 42.00 EUR\nThank you!"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(["Free OCR. " + ANSWER, "hello world, describe the page"] * 20, 320)


def png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (240, 240, 240)).save(buf, "PNG")
    return buf.getvalue()


def record(image=None, prompt="<image>\nFree OCR.", answer=ANSWER, rid="rec-1"):
    return {"id": rid, "source": "test", "image": image,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def image_positions(sample, tok):
    return (sample["input_ids"] == tok.image_id).nonzero().flatten()


@pytest.mark.parametrize("mode,size,tokens,tiles", [
    ("base", (300, 200), 273, (1, 1)),  # docs/FACTS.md "Image modes" token counts
    ("tiny", (300, 200), 73, (1, 1)),
    ("gundam", (1000, 800), 693, (2, 2)),
])
def test_image_span_expanded_and_never_a_target(tok, mode, size, tokens, tiles):
    s = process_sample(record(png(*size)), tok, mode=mode)
    ids, targets = s["input_ids"], s["targets"]
    assert ids.dtype == torch.long and targets.shape == ids.shape
    pos = image_positions(s, tok)
    assert len(pos) == tokens, f"{mode} {size}: {len(pos)} image ids, expected {tokens}"
    assert (pos.diff() == 1).all(), "the image span must be contiguous"
    assert not (targets == tok.image_id).any(), "an image id is a target"
    # Positions whose NEXT token is an image position predict nothing...
    assert (targets[pos[1:] - 1] == -1).all() and targets[pos[0] - 1] == -1
    # ...but the last image position predicts the first text token after the image.
    assert targets[pos[-1]].item() == ids[pos[-1] + 1].item() != -1
    assert s["tiles"] == tiles
    assert s["image"].shape[-1] == {"base": 1024, "tiny": 512, "gundam": 1024}[mode]
    assert (s["crops"] is None) == (tiles == (1, 1))
    if s["crops"] is not None:
        assert s["crops"].shape == (tiles[0] * tiles[1], 3, 640, 640)


def test_inputs_and_targets_are_shifted_ids(tok):
    s = process_sample(record(png(300, 200)), tok, mode="tiny")
    full_ids, _ = tok.render_conversation(record()["messages"])
    p = full_ids.index(tok.image_id)
    expected = full_ids[:p] + [tok.image_id] * 73 + full_ids[p + 1:]
    assert s["input_ids"].tolist() == expected[:-1]
    want = [-1 if t == tok.image_id else t for t in expected[1:]]
    assert s["targets"].tolist() == want, "all_text: every text token is a target"


def test_loss_policies(tok):
    all_text = process_sample(record(png(300, 200)), tok, mode="tiny", loss="all_text")
    assistant = process_sample(record(png(300, 200)), tok, mode="tiny", loss="assistant")
    assert torch.equal(all_text["input_ids"], assistant["input_ids"])
    supervised = assistant["targets"][assistant["targets"] != -1].tolist()
    assert supervised == tok.encode(ANSWER) + [tok.token_id("<|assistant_end|>")]
    n_text_targets = (all_text["targets"] != -1).sum().item()
    assert n_text_targets == len(all_text["input_ids"]) - 73, "all_text: all but the image targets"
    assert n_text_targets > len(supervised)


def test_text_only_sample(tok):
    s = process_sample(record(None, prompt="hello world"), tok)
    assert s["image"] is None and s["crops"] is None and s["tiles"] is None
    assert not (s["input_ids"] == tok.image_id).any()
    assert s["id"] == "rec-1"


def test_overflow_truncate_keeps_image_span(tok):
    full = process_sample(record(png(300, 200)), tok, mode="tiny", max_seq_len=10_000)
    image_end = image_positions(full, tok)[-1].item() + 1
    limit = image_end + 3
    assert len(full["input_ids"]) > limit, "fixture must overflow"
    s = process_sample(record(png(300, 200)), tok, mode="tiny", max_seq_len=limit, overflow="truncate")
    assert len(s["input_ids"]) == limit
    assert len(image_positions(s, tok)) == 73, "the image span must be kept whole"
    assert torch.equal(s["input_ids"], full["input_ids"][:limit])
    assert torch.equal(s["targets"], full["targets"][:limit])
    # No room for the image plus one following text token: rejected, not cut inside the span.
    with pytest.raises(SampleError, match="image span"):
        process_sample(record(png(300, 200)), tok, mode="tiny", max_seq_len=60, overflow="truncate")


def test_overflow_drop_reports_lengths(tok):
    full = process_sample(record(png(300, 200)), tok, mode="tiny")
    n = len(full["input_ids"])
    with pytest.raises(SampleError) as err:
        process_sample(record(png(300, 200)), tok, mode="tiny", max_seq_len=n - 1, overflow="drop")
    assert f"{n} tokens" in str(err.value) and f"max_seq_len {n - 1}" in str(err.value), str(err.value)
    assert "rec-1" in str(err.value)


BAD_RECORDS = {
    "tag_without_image": (record(None), "no image"),
    "image_without_tag": (record(png(20, 20), prompt="Free OCR."), "no <image> tag"),
    "two_tags": (record(png(20, 20), prompt="<image><image> OCR"), "2 <image> tags"),
    "empty_message": (record(None, prompt="hi", answer="  "), "empty"),
    "assistant_first": ({"id": "rec-1", "image": None, "messages": [{"role": "assistant", "content": "a"}]},
                        "expected 'user'"),
    "two_users": ({"id": "rec-1", "image": None,
                   "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
                  "expected 'assistant'"),
    "no_messages": ({"id": "rec-1", "image": None, "messages": []}, "non-empty list"),
    "ends_on_user": ({"id": "rec-1", "image": None, "messages": [{"role": "user", "content": "hello"}]},
                     "no assistant answer"),
    "tag_in_answer": (record(png(20, 20), prompt="OCR", answer="<image>"), "first user message"),
    "corrupt_image": (record(b"\x89PNG\r\n\x1a\n garbage"), "image"),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_bad_records_raise_with_reason(tok, case):
    rec, reason = BAD_RECORDS[case]
    with pytest.raises(SampleError) as err:
        process_sample(rec, tok)
    assert reason in str(err.value) and "rec-1" in str(err.value), f"{case}: {err.value}"


def test_no_targets_under_assistant_loss(tok):
    """A truncation that cuts the answer off leaves no assistant target: the row is rejected under
    loss=assistant (CE over zero targets is NaN), and kept under all_text (the prompt text is a target)."""
    rec = record(None, prompt="hello world, describe the page " * 20)
    assert process_sample(rec, tok, loss="all_text", max_seq_len=16)["targets"].ne(-1).any()
    assert process_sample(rec, tok, loss="assistant")["targets"].ne(-1).any()  # untruncated: the answer is there
    with pytest.raises(SampleError, match="no target tokens"):
        process_sample(rec, tok, loss="assistant", max_seq_len=16)


def test_a_huge_answer_is_never_tokenized_whole(tok, monkeypatch):
    """An answer at the length limit (1 M characters): only what can reach the first max_seq_len + 1 tokens is
    tokenized, and the row equals the one tokenizing everything would give (checked on a 200 kB answer, where
    tokenizing it all is cheap). Beyond the limit (a 50 MB answer) the record is rejected by the conversation
    check, as convert_to_mds rejects it, before any tokenization."""
    import random
    import time

    import nanoocr.data.processing as processing
    from nanoocr.data.records import MAX_TEXT_CHARS
    rng = random.Random(0)
    words = ["Total", "EUR", "Thank", "you", "42.00", "page", "hello", "world,", "describe", "Free", "OCR."]
    text = " ".join(rng.choice(words) for _ in range(40_000))  # ~200 kB
    for overflow in ("truncate", "drop"):
        kwargs = dict(mode="tiny", max_seq_len=96, overflow=overflow)
        with monkeypatch.context() as m:
            m.setattr(processing, "_cap_text", lambda messages, *a: messages)  # the reference: no cap
            try:
                want = process_sample(record(answer=text, prompt="Free OCR."), tok, **kwargs)
            except SampleError as e:
                want = e
        try:
            got = process_sample(record(answer=text, prompt="Free OCR."), tok, **kwargs)
        except SampleError as e:
            got = e
        if overflow == "truncate":
            assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["targets"], want["targets"])
            assert len(got["input_ids"]) == 96
        else:
            assert isinstance(got, SampleError) and isinstance(want, SampleError) and "overflow=drop" in str(got)

    seen = []
    encode = tok.encode
    monkeypatch.setattr(tok, "encode", lambda s: seen.append(len(s)) or encode(s))
    t0 = time.perf_counter()
    s = process_sample(record(answer="x" * MAX_TEXT_CHARS, prompt="Free OCR."), tok, mode="tiny", max_seq_len=96)
    assert len(s["input_ids"]) == 96
    assert max(seen) <= 97 * tok.max_token_chars + 1024, max(seen)
    seen.clear()
    with pytest.raises(SampleError, match=f"{50_000_000} characters > limit {MAX_TEXT_CHARS}"):
        process_sample(record(answer="x" * 50_000_000, prompt="Free OCR."), tok, mode="tiny", max_seq_len=96)
    assert seen == [], "a rejected record was tokenized"
    assert time.perf_counter() - t0 < 5
