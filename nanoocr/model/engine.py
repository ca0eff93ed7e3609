"""
Generation for a NanoOCR model or a bare GPT: token ids in, token ids out (no tokenizer here).

Notable features:
- a preallocated KV cache per layer; vision embeddings are computed once, at prefill
- several prompts (and images, including Gundam images with different crop grids) in one batch:
  LEFT padding, per-row rotary positions (each row's first real token is position 0) and a key
  mask that hides the pads, so every row generates what it would generate alone
- greedy (temperature 0) or temperature / top-k sampling with a seeded torch.Generator
- stop tokens (e.g. <|assistant_end|>, <|bos|>), max_new_tokens
- a prompt + max_new_tokens beyond the model's positions is `PromptTooLong` (a ValueError), before any compute
- the no-repeat n-gram guard of the serving stack (`ngram_guard.NGramGuard`, vLLM NGramPerReqLogitsProcessor
  semantics): a token that would complete an n-gram already seen within the last `window` generated tokens
  is banned, whitelisted ids excepted (OCR models fall into repetition loops)
- `return_stopped=True`: also says per row whether it stopped on its own (a stop token) or ran to
  max_new_tokens (the no-stop rate: DeepSeek's PDF script counts an output without end as a repeat)
- the image token is never generated (it would need vision vectors)
- `use_cache=False` recomputes the full forward every step (reference for tests and benchmarks)
"""

import torch

from nanoocr.model.gpt import KVCache
from nanoocr.model.ngram_guard import NGRAM_SIZE, WINDOW_SIZE, NGramGuard
from nanoocr.model.precision import autocast

# DeepSeek-OCR's image script and vLLM model card decode with ngram_size=30, window_size=90 (ngram_guard's
# GUARD_PRESETS has the others). 30 tokens is long enough that legitimate repetition (table rows, repeated
# words, numbers) is practically never blocked, and a window of 90 bounds the per-step cost. The whitelist
# defaults to none here: DeepSeek's {<td>, </td>} ids mean nothing in another vocabulary (the CLIs map the
# strings to this tokenizer's ids, `ngram_guard.single_token_ids`). no_repeat_ngram=0 turns the guard off.
NO_REPEAT_NGRAM = NGRAM_SIZE
NO_REPEAT_WINDOW = WINDOW_SIZE


class PromptTooLong(ValueError):
    """The prompt plus max_new_tokens do not fit the model's positions: an input problem (a long prompt, a
    Gundam image with many crops, too large a --max-new-tokens), reported and skipped, not a crash."""


def sample_next(logits, temperature, top_k, generator):
    # logits: (B, V) fp32 -> (B,) long
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        vals, idx = torch.topk(logits, k, dim=-1)
        choice = torch.multinomial(torch.softmax(vals, dim=-1), 1, generator=generator)  # (B, 1)
        return idx.gather(1, choice).squeeze(1)
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)


class Engine:
    """`Engine(model).generate(prompts, ...)`; model is a NanoOCR (has `.gpt` and `encode_images`) or a GPT."""

    def __init__(self, model):
        self.model = model
        self.gpt = model.gpt if hasattr(model, "encode_images") else model

    def _embed(self, ids, vision):
        # ids: (B, T) -> (B, T, C), image positions filled with `vision` when the model is a VLM
        if hasattr(self.model, "encode_images"):
            return self.model.embed(ids, vision)
        return self.gpt.embed(ids)

    @torch.inference_mode()
    def generate(self, prompts, images=None, crops=None, tiles=None, max_new_tokens=256, temperature=0.0,
                 top_k=None, stop_ids=(), no_repeat_ngram=NO_REPEAT_NGRAM, no_repeat_window=NO_REPEAT_WINDOW,
                 no_repeat_whitelist=(), seed=None, use_cache=True, return_stopped=False):
        """prompts: list of token-id lists (image prompts already expanded to their image-token count);
        images/crops/tiles: as NanoOCR.forward, in prompt order. Returns the new tokens of each prompt,
        without the stop token; with return_stopped, (tokens, stopped): stopped[b] is True when row b
        ended on a stop token, False when it ran to max_new_tokens."""
        # CPU bf16 autocast when the model asks for it (nanoocr.model.precision); the KV cache then holds bf16
        device = self.gpt.lm_head.weight.device
        amp = getattr(self.model, "autocast_dtype", None) if device.type == "cpu" else None
        with autocast(amp, device.type):
            return self._generate(prompts, images, crops, tiles, max_new_tokens, temperature, top_k, stop_ids,
                                  no_repeat_ngram, no_repeat_window, no_repeat_whitelist, seed, use_cache,
                                  return_stopped, cache_dtype=amp or self.gpt.lm_head.weight.dtype)

    def _generate(self, prompts, images, crops, tiles, max_new_tokens, temperature, top_k, stop_ids,
                  no_repeat_ngram, no_repeat_window, no_repeat_whitelist, seed, use_cache, return_stopped,
                  cache_dtype):
        assert len(prompts) > 0 and all(len(p) > 0 for p in prompts), "every prompt needs at least one token"
        assert temperature >= 0.0, f"temperature must be >= 0, got {temperature}"
        assert top_k is None or top_k > 0, f"top_k must be positive, got {top_k}"
        gpt = self.gpt
        device = gpt.lm_head.weight.device
        B, lengths = len(prompts), [len(p) for p in prompts]
        L = max(lengths)
        max_len = L + max_new_tokens
        if max_len > gpt.rotary_seq_len:  # checked before any compute: the rotary table has no positions beyond
            raise PromptTooLong(f"prompt of {L} tokens + {max_new_tokens} new tokens > the model's "
                                f"{gpt.rotary_seq_len} positions")

        # Left padding: the pad id only has to differ from the image id (its keys are masked out).
        image_id = getattr(getattr(self.model, "config", None), "image_token_id", None)
        pad_id = 0 if image_id != 0 else 1
        ids = torch.full((B, L), pad_id, dtype=torch.long, device=device)
        valid = torch.zeros((B, max_len), dtype=torch.bool, device=device)  # True on real tokens
        for b, p in enumerate(prompts):
            ids[b, L - len(p):] = torch.tensor(p, dtype=torch.long, device=device)
            valid[b, L - len(p):L] = True
        positions = (valid[:, :L].long().cumsum(1) - 1).clamp(min=0)  # (B, L): 0 at each row's first token
        lengths_t = torch.tensor(lengths, dtype=torch.long, device=device)  # next position of each row
        padded = any(n != L for n in lengths)

        vision = None
        if hasattr(self.model, "encode_images") and images is not None:
            crops = None if crops is None else crops.to(device)
            vision = self.model.encode_images(images.to(device), crops, tiles)  # (N_tokens, C), once for all steps

        # vLLM validates the guard's parameters up front (a window of 0 is refused, not silently no guard)
        guard = NGramGuard(no_repeat_ngram, no_repeat_window, no_repeat_whitelist) if no_repeat_ngram > 0 else None

        generator = None
        if temperature > 0.0:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed if seed is not None else torch.seed())

        kv_cache = None
        if use_cache:
            cfg = gpt.config
            kv_cache = KVCache(cfg.n_layer, B, cfg.n_head, cfg.n_embd // cfg.n_head, max_len,
                               dtype=cache_dtype, device=device)
            x = self._embed(ids, vision)  # (B, L, C)
            logits = gpt.trunk(x, kv_cache=kv_cache, positions=positions if padded else None,
                               attn_mask=valid[:, :L] if padded else None, last_only=True, ids=ids)[:, -1]

        out = [[] for _ in range(B)]
        done = [False] * B
        seq = ids
        for step in range(max_new_tokens):
            if not use_cache:
                # recompute everything: the whole sequence so far, vision re-merged each step
                T = seq.size(1)
                pos = torch.cat([positions, lengths_t[:, None] + torch.arange(T - L, device=device)[None]], 1)
                logits = gpt.trunk(self._embed(seq, vision), positions=pos if padded else None,
                                   attn_mask=valid[:, :T] if padded else None, last_only=True, ids=seq)[:, -1]
            logits = logits.float()
            if image_id is not None:
                logits[:, image_id] = float("-inf")  # an image position without vision vectors is meaningless
            if guard is not None:  # over each row's GENERATED tokens, as vLLM's per-request processor
                logits = guard(out, logits)
            next_ids = sample_next(logits, temperature, top_k, generator)  # (B,)
            for b, t in enumerate(next_ids.tolist()):
                if done[b]:
                    continue
                if t in stop_ids:
                    done[b] = True
                else:
                    out[b].append(t)
            if all(done) or step == max_new_tokens - 1:
                break
            valid[:, L + step] = True
            seq = torch.cat([seq, next_ids[:, None]], 1)
            if use_cache:
                x = gpt.embed(next_ids[:, None])  # (B, 1, C): generated tokens are text
                logits = gpt.trunk(x, kv_cache=kv_cache, positions=(lengths_t + step)[:, None] if padded else None,
                                   attn_mask=valid[:, :L + step + 1] if padded else None, last_only=True,
                                   ids=next_ids[:, None])[:, -1]
        return (out, done) if return_stopped else out
