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
"""
from __future__ import annotations

import base64
import functools
import io
import json
import os
import pickle
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
        return cls(HFTokenizer.from_file(str(path)))


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
