"""BPE tokenizer and conversation rendering (nanochat style) with one extra special token, `<|image|>`.

Notable features:
- Byte-level BPE from the `tokenizers` library, GPT-4-style split regex with \\p{N}{1,2} (as nanochat),
  trained offline in seconds for small vocabularies; stored as tokenizer.json (never pickle).
- Special tokens are never produced from raw text: a literal "<|image|>" or "<|bos|>" in a document
  is encoded as ordinary bytes, so data cannot forge image positions or turn boundaries.
- `render_conversation(conv) -> (ids, mask)` exactly like nanochat (bos, user/assistant turns, mask 1
  on assistant content and <|assistant_end|>, a leading system message merged into the first user
  message); `<image>` in user text becomes ONE `<|image|>` id (processing expands it). What it renders
  must pass `records.check_conversation` (the one definition of a valid conversation; a prompt for
  completion may end on the user turn), so rendering accepts exactly what conversion and training accept.
- `load_nanochat_tokenizer(dir)` reads nanochat's tokenizer.pkl (a pickled tiktoken Encoding) through
  a restricted unpickler that resolves a single class and rejects everything else, keeps every id,
  and appends `<|image|>` as the next id when missing. It can be saved back as plain text files
  (tokenizer.tiktoken + tiktoken.json) and reloaded without pickle. tiktoken is optional
  (`pip install nanoocr[nanochat]`).
- `DeepseekTokenizer`: the released DeepSeek-OCR tokenizer.json (through `tokenizers`, its ids as released:
  0 bos, 1 eos, 2 pad, 128815 `<image>`, ...) with DeepSeek-OCR's "plain" template: no role tags,
  `[bos] + user text (the <image> id once, expanded later) + answer + [eos]`; a prompt for completion ends
  after the user text. Its grounding and table markup (`<|ref|>`, `<|det|>`, `<|grounding|>`, `<td>`, ...)
  are single ids in text, as the released tokenizer makes them; bos, eos, pad and `<image>` never are.
  `Tokenizer.from_file` recognizes it by its bos token; it saves the original files back unchanged.
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from nanoocr.data.records import IMAGE_TAG, check_conversation

SPECIAL_TOKENS = [
    "<|bos|>",  # every document starts with it
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",  # nanochat's tool-call tokens, kept so ids line up
    "<|output_start|>", "<|output_end|>",
    "<|image|>",  # one position per vision vector
]
# nanochat's GPT-4-style split: \p{N}{1,2} instead of {1,3} to spend fewer tokens on numbers.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")


class Tokenizer:
    """tokenizers-backed BPE with nanochat's special tokens; subclasses swap the backend only."""

    def __init__(self, hf: HFTokenizer | None):
        self.hf = hf
        if hf is not None:
            # Special-token strings inside text stay text (see the module docstring).
            hf.encode_special_tokens = True
            if hf.token_to_id("<|image|>") is None:  # e.g. nanochat's own tokenizer.json: append, ids unchanged
                hf.add_special_tokens(["<|image|>"])
        self._check_specials()

    def _check_specials(self):
        missing = [t for t in SPECIAL_TOKENS if self._special_id(t) is None]
        assert not missing, f"tokenizer lacks special tokens {missing}"

    # -- backend primitives (overridden by TiktokenTokenizer) --------------------------------
    def _special_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids (no bos, specials never matched)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token decodes to: n tokens never cover more than n * this of text."""
        return max(1, max(len(self.decode([i])) for i in range(self.vocab_size)))

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json into `directory`; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = Path(directory) / "tokenizer.json"
        self.hf.save(str(path))
        return path

    # -- shared API ---------------------------------------------------------------------------
    def token_id(self, special: str) -> int:
        tid = self._special_id(special)
        assert tid is not None, f"{special!r} is not a special token of this tokenizer"
        return tid

    @property
    def bos_id(self) -> int:
        return self.token_id("<|bos|>")

    @property
    def image_id(self) -> int:
        return self.token_id("<|image|>")

    @property
    def pad_id(self) -> int:
        # Any id works (padding targets are -1); <|assistant_end|> keeps padded inputs in-distribution.
        return self.token_id("<|assistant_end|>")

    def encode_user(self, text: str) -> list[int]:
        """User text with every `<image>` tag replaced by one <|image|> id."""
        parts = text.split(IMAGE_TAG)
        ids = self.encode(parts[0]) if parts[0] else []
        for part in parts[1:]:
            ids.append(self.image_id)
            if part:
                ids.extend(self.encode(part))
        return ids

    def render_conversation(self, conv: dict | list) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask); mask 1 on what the assistant must produce (nanochat's rule).

        `conv` is {"messages": [...]} or the message list; a RecordError (a ValueError) names what makes it
        invalid (`records.check_conversation`). It may end on the user turn: that is a prompt (training
        checks for the answer itself, in `processing.process_sample`).
        """
        messages = _merge_system(check_conversation(conv["messages"] if isinstance(conv, dict) else conv,
                                                    need_answer=False))
        ids, mask = [self.bos_id], [0]
        user_start, user_end = self.token_id("<|user_start|>"), self.token_id("<|user_end|>")
        asst_start, asst_end = self.token_id("<|assistant_start|>"), self.token_id("<|assistant_end|>")
        for msg in messages:  # user, assistant, user, ... (checked above)
            role, content = msg["role"], msg["content"]
            if role == "user":
                body = self.encode_user(content)
                ids += [user_start, *body, user_end]
                mask += [0] * (len(body) + 2)
            else:
                body = self.encode(content)
                ids += [asst_start, *body, asst_end]
                mask += [0] + [1] * (len(body) + 1)  # the model must learn to stop: <|assistant_end|> is a target
        return ids, mask

    def render_for_completion(self, conv: dict | list) -> list[int]:
        """Prompt ids ending in <|assistant_start|>; a trailing assistant message (the answer) is dropped."""
        messages = list(conv["messages"] if isinstance(conv, dict) else conv)
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        ids, _ = self.render_conversation(messages)
        return ids + [self.token_id("<|assistant_start|>")]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Train a byte-level BPE (nanochat's recipe) on `texts`; specials take ids 0..9."""
        assert vocab_size >= 256 + len(SPECIAL_TOKENS), \
            f"vocab_size {vocab_size} < 256 bytes + {len(SPECIAL_TOKENS)} special tokens"
        hf = HFTokenizer(BPE(unk_token=None, fuse_unk=False))  # byte-level alphabet: nothing is unknown
        hf.normalizer = None
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(pattern=Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        trainer = BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIAL_TOKENS)
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """Load a tokenizer.json (or a directory holding one, or tokenizer.tiktoken, or nanochat's tokenizer.pkl)."""
        path = Path(path)
        if path.is_dir():
            for name in ("tokenizer.json", "tiktoken.json", "tokenizer.pkl"):
                if (path / name).is_file():
                    return cls.from_file(path / name)
            raise FileNotFoundError(f"no tokenizer.json, tiktoken.json or tokenizer.pkl in {path}")
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.name == "tiktoken.json":
            return TiktokenTokenizer.from_text_files(path.parent)
        if path.suffix == ".pkl":
            return load_nanochat_tokenizer(path.parent)
        hf = HFTokenizer.from_file(str(path))
        if hf.token_to_id(DEEPSEEK_BOS) is not None and hf.token_to_id("<|bos|>") is None:
            return DeepseekTokenizer(hf, source=path.parent)
        return cls(hf)


def _merge_system(messages: list[dict]) -> list[dict]:
    """nanochat's surgery: a leading system message is prepended to the first user message (which a checked
    conversation has right after it)."""
    if messages[0]["role"] != "system":
        return messages
    return [{**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}, *messages[2:]]


# ---------------------------------------------------------------------------------------------
# nanochat / tiktoken backend


class TiktokenTokenizer(Tokenizer):
    """Same API over a tiktoken Encoding: nanochat's ids are kept exactly."""

    def __init__(self, enc):
        self.enc = enc
        super().__init__(None)

    def _special_id(self, token):
        return self.enc._special_tokens.get(token)

    def encode(self, text):
        return self.enc.encode_ordinary(text)  # ordinary: specials in text stay text

    def decode(self, ids):
        return self.enc.decode(list(ids))

    @property
    def vocab_size(self):
        return self.enc.n_vocab

    def save(self, directory):
        """Plain text, no pickle: tiktoken's base64 rank file plus a JSON with the rest."""
        os.makedirs(directory, exist_ok=True)
        ranks = sorted(self.enc._mergeable_ranks.items(), key=lambda kv: kv[1])
        with open(Path(directory) / "tokenizer.tiktoken", "w") as f:
            f.writelines(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks)
        meta = {"name": self.enc.name, "pat_str": self.enc._pat_str, "special_tokens": self.enc._special_tokens}
        path = Path(directory) / "tiktoken.json"
        path.write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def from_text_files(cls, directory: str | Path) -> "TiktokenTokenizer":
        tiktoken = _import_tiktoken()
        meta = json.loads((Path(directory) / "tiktoken.json").read_text())
        ranks = {}
        for line in (Path(directory) / "tokenizer.tiktoken").read_text().splitlines():
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
        return cls(tiktoken.Encoding(name=meta["name"], pat_str=meta["pat_str"], mergeable_ranks=ranks,
                                     special_tokens=meta["special_tokens"]))


def _import_tiktoken():
    try:
        import tiktoken
    except ImportError:
        raise ImportError("loading a nanochat tokenizer needs tiktoken: pip install 'nanoocr[nanochat]'") from None
    return tiktoken


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: records the state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    # A pickled Encoding needs exactly one global (protocol >= 2 writes NEWOBJ + BUILD with a dict of
    # str/bytes/int). It resolves to the inert stand-in above; any other global is refused, which
    # is what blocks `os.system`-style payloads.
    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: tokenizer.pkl may only "
                                     "contain a tiktoken Encoding")


def load_nanochat_tokenizer(directory: str | Path) -> TiktokenTokenizer:
    """nanochat's tokenizer.pkl -> TiktokenTokenizer with the same ids, plus <|image|> appended if absent."""
    path = Path(directory) / "tokenizer.pkl"
    if not path.is_file():
        raise FileNotFoundError(f"nanochat tokenizer not found: {path}")
    tiktoken = _import_tiktoken()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: {e}") from None
    state = getattr(obj, "state", None)
    keys = {"name", "pat_str", "mergeable_ranks", "special_tokens"}
    if not isinstance(obj, _EncodingState) or not isinstance(state, dict) or set(state) != keys:
        raise ValueError(f"{path}: expected a pickled tiktoken Encoding with state keys {sorted(keys)}, "
                         f"got {type(obj).__name__} with {type(state).__name__} state")
    ranks, special = state["mergeable_ranks"], dict(state["special_tokens"])
    assert all(isinstance(k, bytes) and isinstance(v, int) for k, v in ranks.items()), f"{path}: bad mergeable_ranks"
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in special.items()), f"{path}: bad special_tokens"
    if "<|image|>" not in special:
        special["<|image|>"] = max([*ranks.values(), *special.values()]) + 1  # next id: old ids unchanged
    enc = tiktoken.Encoding(name=state["name"], pat_str=state["pat_str"], mergeable_ranks=ranks,
                            special_tokens=special)
    return TiktokenTokenizer(enc)


# ---------------------------------------------------------------------------------------------
# DeepSeek-OCR's released tokenizer (docs/FACTS.md "DeepSeek-OCR decoder")

DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# Markup the released tokenizer turns into single ids wherever it appears in text (its added tokens): grounding
# and HTML table cells. Left out: bos/eos/pad and <image> (data must not forge sequence ends or image
# positions) and the <|User|>/<|Assistant|> role tags of other templates (the plain template has none).
DEEPSEEK_MARKUP = ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<td>", "</td>", "<tr>", "</tr>")
# nanochat's names for the roles the plain template gives these tokens (what the recipe, the engine and the
# evaluation ask a tokenizer for): a sequence starts with bos, an answer ends with eos.
DEEPSEEK_ROLES = {"<|bos|>": DEEPSEEK_BOS, "<|assistant_end|>": DEEPSEEK_EOS, "<|image|>": IMAGE_TAG}
# The released tokenizer's files, saved back byte for byte (an export loads where the original does).
DEEPSEEK_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class DeepseekTokenizer(Tokenizer):
    """The released DeepSeek-OCR tokenizer.json with the "plain" template (module docstring)."""

    def __init__(self, hf: HFTokenizer, source: str | Path | None = None):
        # the released files, kept to be written back unchanged (`save`); without a source, tokenizer.json only
        self.files = {}
        if source is not None:
            self.files = {n: (Path(source) / n).read_bytes() for n in DEEPSEEK_FILES if (Path(source) / n).is_file()}
        self.files.setdefault("tokenizer.json", hf.to_str().encode())
        super().__init__(None)
        self.hf = hf
        hf.encode_special_tokens = True  # nothing matched inside `encode`'s pieces: markup is split out first
        self.markup = {t: hf.token_to_id(t) for t in DEEPSEEK_MARKUP if hf.token_to_id(t) is not None}
        self._markup_re = re.compile("(" + "|".join(re.escape(t) for t in self.markup) + ")") if self.markup else None
        self._check_specials()

    def _check_specials(self):
        if self.hf is None:  # Tokenizer.__init__'s call, before the backend is set
            return
        missing = [t for t in (DEEPSEEK_BOS, DEEPSEEK_EOS, DEEPSEEK_PAD, IMAGE_TAG) if self.hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"not a DeepSeek-OCR tokenizer.json: it lacks {missing}")

    def _special_id(self, token: str) -> int | None:
        return self.hf.token_to_id(DEEPSEEK_ROLES.get(token, token))

    def encode(self, text: str) -> list[int]:
        """Ordinary text -> ids (no bos); the markup strings become their single ids, as the released tokenizer
        makes them (it splits text at its added tokens first, then encodes each piece)."""
        pieces = self._markup_re.split(text) if self._markup_re else [text]
        ids = []
        for piece in pieces:
            if piece in self.markup:
                ids.append(self.markup[piece])
            elif piece:
                ids += self.hf.encode(piece, add_special_tokens=False).ids
        return ids

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self.hf.token_to_id(DEEPSEEK_PAD)

    def render_conversation(self, conv: dict | list) -> tuple[list[int], list[int]]:
        """The plain template: [bos] + user text + answer + [eos] per turn pair, no role tags (DeepSeek-OCR's
        fine-tuning format); mask 1 on the answers and their eos (the model must learn to stop)."""
        messages = _merge_system(check_conversation(conv["messages"] if isinstance(conv, dict) else conv,
                                                    need_answer=False))
        ids, mask = [self.bos_id], [0]
        for msg in messages:  # user, assistant, user, ... (checked above)
            if msg["role"] == "user":
                body = self.encode_user(msg["content"])
                ids, mask = ids + body, mask + [0] * len(body)
            else:
                body = self.encode(msg["content"]) + [self.token_id("<|assistant_end|>")]
                ids, mask = ids + body, mask + [1] * len(body)
        return ids, mask

    def render_for_completion(self, conv: dict | list) -> list[int]:
        """[bos] + the user text: the answer follows directly (the released inference prompt, no eos)."""
        messages = list(conv["messages"] if isinstance(conv, dict) else conv)
        if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]
        return self.render_conversation(messages)[0]

    def save(self, directory: str | Path) -> Path:
        """The released files, unchanged (tokenizer.json, and tokenizer_config.json / special_tokens_map.json
        when it was loaded with them); returns the tokenizer.json path."""
        os.makedirs(directory, exist_ok=True)
        for name, data in self.files.items():
            (Path(directory) / name).write_bytes(data)
        return Path(directory) / "tokenizer.json"


def load_deepseek_tokenizer(path: str | Path) -> DeepseekTokenizer:
    """The released tokenizer: a folder holding tokenizer.json (and its config files), or the file itself."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"DeepSeek-OCR tokenizer not found: {file}")
    return DeepseekTokenizer(HFTokenizer.from_file(str(file)), source=file.parent)
