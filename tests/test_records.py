"""records: the one conversation check, and the agreement of the three places that apply it.

`check_conversation` is called by conversion (`validate_record`), training (`process_sample`) and rendering
(`Tokenizer.render_conversation`). Each case below is run through all three: they must accept and refuse the
same conversations, with the same reason; the one difference is by design (a prompt rendered for completion
may end on the user turn, a training sample may not)."""
import io

import pytest
from PIL import Image

from nanoocr.data.processing import SampleError, process_sample
from nanoocr.data.records import (FORMULA_PROMPT, IMAGE_TAG, MAX_TEXT_CHARS, OCR_PROMPT, TABLE_PROMPT, RecordError,
                                  check_conversation, image_present, qa, validate_record)
from nanoocr.data.tokenizer import Tokenizer


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buf, "PNG")
    return buf.getvalue()


def turns(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


OCR = ("user", "<image>\nFree OCR.")
# id -> (messages, has an image, None if valid for training else a substring of the reason)
CASES = {
    "ocr": (turns(OCR, ("assistant", "text")), True, None),
    "text_only": (turns(("user", "2+2?"), ("assistant", "4")), False, None),
    "system_first": (turns(("system", "Be brief."), ("user", "2+2?"), ("assistant", "4")), False, None),
    "multi_turn": (turns(OCR, ("assistant", "a"), ("user", "and?"), ("assistant", "b")), True, None),
    "bytes_content": ([{"role": "user", "content": b"2+2?"}, {"role": "assistant", "content": "4"}], False, None),
    "ends_on_user": (turns(OCR, ("assistant", "a"), ("user", "and?")), True, "no assistant answer"),
    "only_user": (turns(("user", "hi")), False, "no assistant answer"),
    "assistant_first": (turns(("assistant", "hi"), ("user", "yo")), False, "message 0 is 'assistant', expected 'user'"),
    "two_users": (turns(("user", "a"), ("user", "b")), False, "message 1 is 'user', expected 'assistant'"),
    "system_then_assistant": (turns(("system", "s"), ("assistant", "a")), False, "expected 'user'"),
    "system_in_the_middle": (turns(("user", "a"), ("system", "s")), False, "message 1 is 'system'"),
    "unknown_role": (turns(("user", "a"), ("bot", "b")), False, "message 1 is 'bot'"),
    "only_system": (turns(("system", "s")), False, "only a system message"),
    "empty_list": ([], False, "non-empty list"),
    "not_a_list": ("hello", False, "non-empty list"),
    "not_a_dict": (["hello"], False, "must be a dict"),
    "no_content_key": ([{"role": "user"}], False, "must be a dict with 'role' and 'content'"),
    "content_not_str": ([{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}], False,
                        "must be a string"),
    "blank_answer": (turns(("user", "hi"), ("assistant", " \n ")), False, "empty content"),
    "lone_surrogate": (turns(("user", "bad \udcff"), ("assistant", "a")), False, "unpaired surrogate"),
    "bad_utf8_bytes": ([{"role": "user", "content": b"caf\xe9"}, {"role": "assistant", "content": "a"}], False,
                       "byte offset 3"),
    "too_long": (turns(("user", "hi"), ("assistant", "x" * (MAX_TEXT_CHARS + 1))), False, "characters > limit"),
    "tag_without_image": (turns(OCR, ("assistant", "a")), False, "<image> tag but no image"),
    "image_without_tag": (turns(("user", "Read."), ("assistant", "a")), True, "image but no <image> tag"),
    "two_tags": (turns(("user", "<image><image>"), ("assistant", "a")), True, "2 <image> tags"),
    "tag_in_answer": (turns(OCR, ("assistant", "<image>")), True, "outside the first user message"),
    "tag_in_later_user": (turns(OCR, ("assistant", "a"), ("user", "<image>"), ("assistant", "b")), True,
                          "outside the first user message"),
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(["Free OCR. hello world 2+2? 4 Be brief. and? Read."] * 10, vocab_size=300)


@pytest.mark.parametrize("case", CASES)
def test_conversion_training_and_rendering_agree(tok, case):
    messages, has_image, reason = CASES[case]
    record = {"id": "r", "source": "t", "messages": messages, "image": png() if has_image else None}
    verdicts = {}
    for name, run, error in (
            ("check_conversation", lambda: check_conversation(messages, has_image), RecordError),
            ("validate_record", lambda: validate_record(record), RecordError),
            ("process_sample", lambda: process_sample(record, tok, mode="tiny"), SampleError)):
        try:
            run()
            verdicts[name] = None
        except error as e:
            verdicts[name] = str(e)
    for name, got in verdicts.items():
        if reason is None:
            assert got is None, f"{case}: {name} refused a valid conversation: {got}"
        else:
            assert got is not None and reason in got, f"{case}: {name} gave {got!r}, want {reason!r}"
    # Rendering knows no image (the tag's place and count are still checked) and renders prompts too:
    # only the "needs an answer" and "tag vs image" verdicts may differ, by design.
    try:
        tok.render_conversation(messages)
        rendered = None
    except ValueError as e:
        rendered = str(e)
    if reason is None or "no assistant answer" in reason or "tag but no image" in reason or "but no <image>" in reason:
        assert rendered is None, f"{case}: rendering refused it: {rendered}"
    else:
        assert rendered is not None and reason in rendered, f"{case}: rendering gave {rendered!r}, want {reason!r}"


def test_check_conversation_normalizes():
    out = check_conversation([{"role": "user", "content": b"caf\xc3\xa9", "name": "x"},
                              {"role": "assistant", "content": "ok", "weight": 1}])
    assert out == [{"role": "user", "content": "café"}, {"role": "assistant", "content": "ok"}]
    # A prompt for completion may end on the user; has_image=None checks only the tag's place and count.
    assert check_conversation(turns(OCR), need_answer=False) == turns(OCR)
    with pytest.raises(RecordError, match="outside the first user message"):
        check_conversation(turns(("user", "a"), ("assistant", IMAGE_TAG)), need_answer=False)


def test_image_present_and_qa():
    assert [image_present(x) for x in (None, b"", "", bytearray())] == [False] * 4
    assert [image_present(x) for x in (b"\x89PNG", "img/a.png")] == [True, True]
    rec = qa(OCR_PROMPT, None, b"img", "id1", "src")
    assert rec == {"id": "id1", "source": "src", "image": b"img",
                   "messages": [{"role": "user", "content": "<image>\nFree OCR."},
                                {"role": "assistant", "content": ""}]}
    with pytest.raises(RecordError, match="empty content"):  # a None answer is reported as empty
        check_conversation(rec["messages"], True)
    # The training prompts hold the tag once, first, as DeepSeek-OCR writes them.
    for prompt in (OCR_PROMPT, TABLE_PROMPT, FORMULA_PROMPT):
        assert prompt.startswith("<image>\n") and prompt.count(IMAGE_TAG) == 1


def test_mds_empty_image_means_no_image(tok):
    """MDS stores "no image" as b"": a text-only row is valid everywhere, one with a tag is refused everywhere."""
    text = {"id": "r", "messages": turns(("user", "2+2?"), ("assistant", "4")), "image": b""}
    assert validate_record(text)["image"] is None and process_sample(text, tok)["image"] is None
    tagged = {**text, "messages": turns(OCR, ("assistant", "4"))}
    with pytest.raises(RecordError, match="tag but no image"):
        validate_record(tagged)
    with pytest.raises(SampleError, match="tag but no image"):
        process_sample(tagged, tok)
