"""Tokenizer: round trips, special tokens, nanochat-style rendering, the nanochat tokenizer.pkl loader."""
import json
import os
import pickle
import subprocess
import sys

import pytest

from nanoocr.data.tokenizer import SPECIAL_TOKENS, Tokenizer, load_nanochat_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Invoice 2024-07, total 1,234.56 EUR.",
    "Free OCR. Convert the document to markdown. | a | b |\n|---|---|\n| 1 | 2 |",
    "東京は日本の首都です。我爱自然语言处理。한국어 텍스트.",
    "Emoji 😀🚀 and accents: café, naïve, Zürich. Math: ∑ x_i² ≤ ∞",
] * 20
MIXED = "Héllo wörld 你好，世界！ 😀👍🏽 — 1234567 tabs\tand\nnew lines\r\n  <|image|> <|bos|> <image> e\u0301"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(CORPUS, vocab_size=400)


def conv(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_round_trip_mixed_unicode(tok):
    ids = tok.encode(MIXED)
    assert tok.decode(ids) == MIXED
    # Literal special-token strings in data stay text: they must not become special ids.
    specials = {tok.token_id(s) for s in SPECIAL_TOKENS}
    assert not specials & set(ids), f"raw text produced special ids {specials & set(ids)}"


def test_each_special_token_is_one_id(tok):
    ids = [tok.token_id(s) for s in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS), f"special ids not distinct: {ids}"
    assert all(0 <= i < tok.vocab_size for i in ids)
    for s, i in zip(SPECIAL_TOKENS, ids):
        assert tok.decode([i]) == s
    assert tok.bos_id == tok.token_id("<|bos|>") and tok.image_id == tok.token_id("<|image|>")
    assert tok.pad_id in ids


def test_render_conversation_mask_only_on_assistant(tok):
    c = conv(("user", "What is this?"), ("assistant", "A cat."), ("user", "Sure?"), ("assistant", "Yes 😀"))
    ids, mask = tok.render_conversation(c)
    t = tok.token_id
    # Expected layout built independently from encode() of each piece.
    expected = ([t("<|bos|>"), t("<|user_start|>")] + tok.encode("What is this?") + [t("<|user_end|>")]
                + [t("<|assistant_start|>")] + tok.encode("A cat.") + [t("<|assistant_end|>")]
                + [t("<|user_start|>")] + tok.encode("Sure?") + [t("<|user_end|>")]
                + [t("<|assistant_start|>")] + tok.encode("Yes 😀") + [t("<|assistant_end|>")])
    assert ids == expected
    assert len(mask) == len(ids)
    supervised = [i for i, m in zip(ids, mask) if m == 1]
    end = t("<|assistant_end|>")
    assert supervised == tok.encode("A cat.") + [end] + tok.encode("Yes 😀") + [end]


def test_system_message_merged_into_first_user(tok):
    ids, mask = tok.render_conversation(conv(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")))
    ids2, mask2 = tok.render_conversation(conv(("user", "Be brief.\n\nHi"), ("assistant", "Hello")))
    assert (ids, mask) == (ids2, mask2)


def test_image_tag_becomes_one_image_id(tok):
    ids, mask = tok.render_conversation(conv(("user", "<image>\nFree OCR."), ("assistant", "text")))
    assert ids.count(tok.image_id) == 1
    p = ids.index(tok.image_id)
    assert ids[p - 1] == tok.token_id("<|user_start|>")
    assert ids[p + 1: p + 1 + len(tok.encode("\nFree OCR."))] == tok.encode("\nFree OCR.")
    assert mask[p] == 0
    # A tag anywhere but the first user turn is not an image: the conversation check refuses it (as conversion
    # and training do); a literal <|image|> in any text stays text.
    with pytest.raises(ValueError, match="outside the first user message"):
        tok.render_conversation(conv(("user", "hi"), ("assistant", "<image>")))
    ids, _ = tok.render_conversation(conv(("user", "hi"), ("assistant", "<|image|> is a token")))
    assert tok.image_id not in ids and tok.decode(ids).endswith("<|image|> is a token<|assistant_end|>")


def test_render_for_completion(tok):
    c = conv(("user", "<image>\nFree OCR."), ("assistant", "answer"))
    prompt = tok.render_for_completion(c)
    ids, _ = tok.render_conversation(c)
    assert prompt[-1] == tok.token_id("<|assistant_start|>")
    assert prompt == ids[: len(prompt)], "the prompt must be a prefix of the full rendering"


@pytest.mark.parametrize("messages,reason", [
    ([("assistant", "hi")], "expected 'user'"),
    ([("user", "a"), ("user", "b")], "expected 'assistant'"),
    ([("system", "s"), ("assistant", "a")], "expected 'user'"),
    ([], "non-empty list"),
])
def test_render_rejects_bad_role_order(tok, messages, reason):
    with pytest.raises(ValueError, match=reason):
        tok.render_conversation(conv(*messages))


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    for src in (tmp_path, path):
        tok2 = Tokenizer.from_file(src)
        assert tok2.encode(MIXED) == tok.encode(MIXED)
        assert tok2.image_id == tok.image_id and tok2.vocab_size == tok.vocab_size


def test_tokenizer_json_without_image_token_gets_it_appended(tok, tmp_path):
    # A nanochat tokenizer.json: the nine nanochat specials at ids 0..8, then the BPE vocabulary, no <|image|>.
    # Made from ours by deleting <|image|> (id 9) and shifting the later ids down by one.
    image = tok.image_id
    shift = lambda i: i - 1 if i > image else i  # noqa: E731
    data = json.loads(tok.hf.to_str())
    data["added_tokens"] = [{**t, "id": shift(t["id"])} for t in data["added_tokens"] if t["content"] != "<|image|>"]
    data["model"]["vocab"] = {k: shift(v) for k, v in data["model"]["vocab"].items() if k != "<|image|>"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    nano = Tokenizer.from_file(tmp_path)
    assert nano.image_id == tok.vocab_size - 1, "<|image|> must take the next free id"
    assert nano.vocab_size == tok.vocab_size
    for s in SPECIAL_TOKENS[:-1]:
        assert nano.token_id(s) == tok.token_id(s)
    assert nano.encode(MIXED) == [shift(i) for i in tok.encode(MIXED)], "existing ids must not move"


def test_train_tokenizer_cli(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "nanoocr.train_tokenizer", "--input", str(corpus),
                          "--vocab-size", "300", "--out", str(tmp_path / "tk")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "vocab size 300" in out.stdout and "round trip ok" in out.stdout, out.stdout
    assert Tokenizer.from_file(tmp_path / "tk").vocab_size == 300


# ----------------------------------------------------------------------------------------------
# nanochat tokenizer.pkl

tiktoken = pytest.importorskip("tiktoken")
NANOCHAT_SPECIALS = SPECIAL_TOKENS[:-1]  # nanochat has no <|image|>
PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
           r"""|\s*[\r\n]|\s+(?!\S)|\s+""")  # nanochat's split pattern


def write_nanochat_pkl(directory, specials=NANOCHAT_SPECIALS):
    # What nanochat's RustBPETokenizer.save does: pickle.dump of a tiktoken Encoding, specials after the ranks.
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"he"], ranks[b"ll"] = 256, 257
    enc = tiktoken.Encoding(name="rustbpe", pat_str=PATTERN, mergeable_ranks=ranks,
                            special_tokens={s: 258 + i for i, s in enumerate(specials)})
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.pkl"), "wb") as f:
        pickle.dump(enc, f)
    return enc


def test_nanochat_loader_keeps_ids_and_appends_image(tmp_path):
    enc = write_nanochat_pkl(tmp_path)
    tok = load_nanochat_tokenizer(tmp_path)
    for s in NANOCHAT_SPECIALS:
        assert tok.token_id(s) == enc.encode_single_token(s), s
    assert tok.image_id == enc.n_vocab, "<|image|> must be the next id after nanochat's vocabulary"
    assert tok.vocab_size == enc.n_vocab + 1
    assert tok.encode("hello 你好") == enc.encode_ordinary("hello 你好")
    assert tok.decode(tok.encode(MIXED)) == MIXED
    ids, mask = tok.render_conversation(conv(("user", "<image>\nFree OCR."), ("assistant", "hello")))
    assert ids[0] == enc.encode_single_token("<|bos|>") and ids.count(tok.image_id) == 1
    # Saved as plain text (no pickle) and reloaded with identical ids.
    tok.save(tmp_path / "txt")
    assert not (tmp_path / "txt" / "tokenizer.pkl").exists()
    tok2 = Tokenizer.from_file(tmp_path / "txt")
    assert tok2.encode(MIXED) == tok.encode(MIXED) and tok2.image_id == tok.image_id
    assert Tokenizer.from_file(tmp_path).image_id == tok.image_id  # a directory with tokenizer.pkl


def test_nanochat_loader_keeps_existing_image_id(tmp_path):
    enc = write_nanochat_pkl(tmp_path, specials=SPECIAL_TOKENS)
    tok = load_nanochat_tokenizer(tmp_path)
    assert tok.image_id == enc.encode_single_token("<|image|>") and tok.vocab_size == enc.n_vocab


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os_system", "eval", "wrong_object"])
def test_nanochat_loader_refuses_malicious_pickle(tmp_path, payload):
    marker = tmp_path / "pwned"
    obj = {"os_system": _Evil(marker), "eval": None, "wrong_object": {"name": "x"}}[payload]
    data = pickle.dumps(obj)
    if payload == "eval":  # builtins.eval("...") through GLOBAL + REDUCE
        data = b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR."
    (tmp_path / "tokenizer.pkl").write_bytes(data)
    with pytest.raises(ValueError) as err:
        load_nanochat_tokenizer(tmp_path)
    assert not marker.exists(), "the payload ran"
    msg = str(err.value)
    assert "tokenizer.pkl" in msg and ("refusing" in msg or "expected a pickled tiktoken Encoding" in msg), msg
