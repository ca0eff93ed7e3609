"""The no-repeat n-gram guard of decoding, with vLLM `NGramPerReqLogitsProcessor` semantics.

OCR decoders fall into repetition loops (`nanoocr.eval.repetition` measures them); DeepSeek-OCR serves with
this guard, so generation here applies the same rule to behave as the deployed model does.

The semantics of vLLM's `NGramPerReqLogitsProcessor` (DeepSeek-OCR's `NoRepeatNGramLogitsProcessor`, the
serving stack users deploy), over the tokens GENERATED so far for one request:
- fewer than `ngram_size` tokens: nothing is banned;
- prefix = the last `ngram_size - 1` tokens; every n-gram starting at i in
  [max(0, len - window_size), len - ngram_size] whose first n-1 tokens equal the prefix bans its last token;
- whitelisted ids are never banned; banned logits are set to -inf.
One quirk kept for parity: with ngram_size 1 vLLM's prefix `ids[-0:]` is the WHOLE history, which never
equals an empty tuple, so nothing is ever banned (Hugging Face's processor would ban every seen token).
Defaults are the released DeepSeek-OCR vLLM image script's: 30 / 90 / {128821, 128822} (`<td>`, `</td>` in
DeepSeek's tokenizer: table cells legitimately repeat). `GUARD_PRESETS` holds the official PDF script's 20 / 50
and the eval-batch script's 40 / 90. The whitelist ids are DeepSeek's; for another tokenizer map the strings
with `single_token_ids`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pure Python at import: the CLIs read the defaults before torch is imported
    import torch

# DeepSeek's <td>, </td> ids in its own tokenizer (vocab 129280): the released scripts whitelist them.
DEEPSEEK_TD_IDS = frozenset({128821, 128822})
# The released image script's and vLLM model card's sizes: the defaults of the guard, the engine and the CLIs.
NGRAM_SIZE, WINDOW_SIZE = 30, 90


@dataclass(frozen=True)
class NGramGuard:
    """No-repeat n-gram guard with vLLM NGramPerReqLogitsProcessor semantics (module docstring).

    guard(history, logits) -> logits: `history` the generated ids of one request (list[int]) with logits of
    shape (V,), or one history per row (list[list[int]]) with logits (B, V). Masks IN PLACE (as vLLM does)
    and returns the same tensor, so a greedy loop can write `logits = guard(out, logits)`."""
    ngram_size: int = NGRAM_SIZE
    window_size: int = WINDOW_SIZE
    whitelist_token_ids: frozenset = DEEPSEEK_TD_IDS

    def __post_init__(self):
        # vLLM's validate_params: strictly positive integers (bool is an int: refuse it as vLLM's isinstance does not)
        for name in ("ngram_size", "window_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"`{name}` has to be a strictly positive integer, got {v!r}")
        object.__setattr__(self, "whitelist_token_ids", frozenset(self.whitelist_token_ids or ()))  # None: vLLM's set()

    def banned(self, history: list[int]) -> set[int]:
        n, length = self.ngram_size, len(history)
        if length < n:
            return set()
        prefix = tuple(history[-(n - 1):])  # n == 1: history[-0:] is the whole history (vLLM's quirk, kept)
        banned = set()
        for i in range(max(0, length - self.window_size), length - n + 1):
            if tuple(history[i:i + n - 1]) == prefix:
                banned.add(history[i + n - 1])
        return banned - self.whitelist_token_ids

    def __call__(self, history, logits: torch.Tensor) -> torch.Tensor:
        if logits.dim() == 1:
            banned = self.banned(history)
            if banned:
                logits[list(banned)] = float("-inf")
            return logits
        assert logits.dim() == 2 and len(history) == logits.size(0), \
            f"(B, V) logits need one history per row: {len(history)} histories for {tuple(logits.shape)}"
        rows, cols = [], []
        for b, h in enumerate(history):
            banned = self.banned(h)
            rows += [b] * len(banned)
            cols += sorted(banned)
        if rows:
            logits[rows, cols] = float("-inf")
        return logits


# The DeepSeek-OCR releases' settings (whitelist {<td>, </td>} in all three): run_dpsk_ocr_image.py and the vLLM
# model card 30/90, run_dpsk_ocr_pdf.py 20/50, run_dpsk_ocr_eval_batch.py (the benchmark runs) 40/90.
GUARD_PRESETS = {
    "image": NGramGuard(30, 90),
    "pdf": NGramGuard(20, 50),
    "eval": NGramGuard(40, 90),
}


def single_token_ids(encode, texts=("<td>", "</td>")) -> frozenset:
    """Ids of the `texts` that `encode` (str -> list[int]) makes ONE token: the whitelist for another tokenizer.
    A string split into several tokens cannot be whitelisted by id and is left out."""
    ids = set()
    for t in texts:
        toks = list(encode(t))
        if len(toks) == 1:
            ids.add(toks[0])
    return frozenset(ids)
