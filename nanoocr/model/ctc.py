"""A CTC reading head on the global view: a training signal for the encoder that does not pass through the GPT.

Why (BENCHMARKS.md "It reads?"): trained from scratch, the GPT first learns the text's statistics and ignores the
image; the only gradient reaching the encoder is then "be the image that helps an image-blind language model",
the same for every image, and at any encoder lr that moves the encoder the features collapse to one vector. Speech
recognition met the same failure of attention decoders early in training and added a CTC loss on the encoder
(joint CTC/attention, Kim, Hori & Watanabe 2017): the encoder must then carry, at each position, the labels of
its part of the input, whatever the decoder does. Here each projected vision token of the global view (what the
GPT reads, before the newline vectors) is expanded to `upsample` frames by one linear layer, and the frames in
row-major order are scored by CTC against the answer's tokens. A token of the tiny view covers 64 x 64 pixels
(3-5 characters of 24 px text), so one frame per token is too few; 8 frames x 64 tokens = 512 >= any one-line
answer of the curriculum.

What the head reads is `VLMConfig.ctc_source` (NanoOCR.encode_images(..., with_ctc=True) hands it over): "tokens" is
the above; "sam" is SAM's 16 px grid (the neck, before the compressor), max over each column, so one left-to-right
sequence of S/16 positions as a CRNN reads a line, `upsample` frames each; "columns" is the token grid read the same
way (max over each column of tokens), so a line crossing two token rows is still one left-to-right pass, which
row-major frames are not. Encoder-only (recipes/bench/glyph_probe.py, BENCHMARKS.md "Can the encoder learn glyphs at
all?"): a fresh nano encoder learns nonce-word glyphs from "sam" (CER 0.85 after 1000 steps, falling) and stays on
the CTC plateau from "tokens" (CER 0.99); from a glyph-trained SAM, "tokens" still stays there (1.00) while
"columns" reaches 0.67. From "sam" the head's gradient stops at the neck (the compressor, CLIP and projector learn
from the GPT only); from "tokens" and "columns" it reaches the whole encoder.

Only single-line answers are targets: the frames run row-major over the token grid, and the lines of a block share
token rows, so a block's reading order is not a monotonic path through the frames. Rows holding more than one
image, or none, give no target either. The head is a training aid: generation never runs it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def answer_targets(ids: torch.Tensor, targets: torch.Tensor, image_id: int, start_id: int, end_id: int,
                   skip_ids: frozenset) -> list[torch.Tensor | None] | None:
    """Per image of the batch (rows with image tokens, in row order) the CTC target: the answer's token ids, from
    the first target after `start_id` (<|assistant_start|>) up to `end_id` or the row's end (a truncated row keeps
    what it has). None for an image whose answer is empty or holds a token of `skip_ids` (the tokens containing a
    newline). Returns None when a row holds more than one image (the grid -> row map is ambiguous) or none does."""
    rows = []
    for b in range(ids.shape[0]):
        image_pos = (ids[b] == image_id).nonzero().flatten()
        if len(image_pos) == 0:
            continue
        # one image = one contiguous run of image tokens
        if int(image_pos[-1] - image_pos[0]) + 1 != len(image_pos):
            return None
        starts = (ids[b] == start_id).nonzero().flatten()
        answer = []
        if len(starts):
            for tok in targets[b, int(starts[0]):].tolist():
                if tok == -1 or tok == end_id:
                    break
                answer.append(tok)
        keep = answer and not any(t in skip_ids for t in answer)
        rows.append(torch.tensor(answer, dtype=torch.long) if keep else None)
    return rows or None


class CTCHead(nn.Module):
    """(N, L, C) vision tokens -> (N, L * upsample, vocab + 1) logits, the last class the CTC blank. Frame
    j * upsample + k is token j's k-th frame: row-major over the grid, then the frames of one token in order."""

    def __init__(self, n_embd: int, vocab_size: int, upsample: int):
        super().__init__()
        self.upsample, self.blank = upsample, vocab_size
        self.proj = nn.Linear(n_embd, upsample * (vocab_size + 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        N, L, _ = tokens.shape
        return self.proj(tokens).view(N, L * self.upsample, self.blank + 1)

    def loss(self, tokens: torch.Tensor, answers: list[torch.Tensor | None]) -> torch.Tensor:
        """CTC negative log-likelihood summed over the images with a target, divided by their answer tokens in all
        (token-weighted, as the GPT's cross-entropy; torch's reduction='mean' averages per image, so a one-token
        answer would weigh as much as a 30-token line). An answer longer than the frames allow scores 0
        (zero_infinity). No image with a target: a zero tied to the graph."""
        keep = [i for i, a in enumerate(answers) if a is not None]
        if not keep:
            return tokens.sum() * 0.0
        logits = self(tokens[keep]).float()  # (n, F, V + 1); CTC in fp32 whatever the autocast
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (F, n, V + 1)
        tgt = [answers[i] for i in keep]
        frames = torch.full((len(keep),), logits.shape[1], dtype=torch.long)
        lengths = torch.tensor([len(t) for t in tgt], dtype=torch.long)
        nll = F.ctc_loss(log_probs, torch.cat(tgt).to(logits.device), frames, lengths, blank=self.blank,
                         reduction="sum", zero_infinity=True)
        return nll / lengths.sum()
