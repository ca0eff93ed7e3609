"""Generation: KV cache == recompute with an image prefill, batching == alone, no-repeat guard (and that it
stops a looping model), stopped flags, sampling."""
import math

import pytest
import torch

from nanoocr.model.clip import CLIPConfig
from nanoocr.eval.repetition import ends_in_loop
from nanoocr.model.engine import Engine
from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.ngram_guard import NGramGuard
from nanoocr.model.presets import build_config
from nanoocr.model.sam import SAMConfig
from nanoocr.model.vlm import NanoOCR, VLMConfig


def liven(model, scale=3.0):
    """nanochat zero-inits lm_head and the residual projections: greedy would emit one token forever.
    Random weights instead, large enough that the argmax moves from step to step."""
    gpt = model.gpt if hasattr(model, "gpt") else model
    with torch.no_grad():
        gpt.lm_head.weight.normal_(0, scale / math.sqrt(gpt.config.n_embd))
        for block in gpt.transformer.h:
            block.attn.c_proj.weight.normal_(0, 1 / math.sqrt(gpt.config.n_embd))
            block.mlp.c_proj.weight.normal_(0, 1 / math.sqrt(4 * gpt.config.n_embd))
    return model.eval()


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return liven(NanoOCR(build_config("nano", gpt={"vocab_size": 300})))


def test_kv_cache_equals_recompute_with_image_prefill(nano):
    img_id = nano.config.image_token_id
    torch.manual_seed(1)
    prompt = [1, 2] + [img_id] * 73 + [3, 4, 5]  # tiny mode: 512 px -> 73 vision vectors
    images = torch.randn(1, 3, 512, 512)
    engine = Engine(nano)
    cached = engine.generate([prompt], images=images, max_new_tokens=24, no_repeat_ngram=0)
    recomputed = engine.generate([prompt], images=images, max_new_tokens=24, no_repeat_ngram=0, use_cache=False)
    assert cached == recomputed
    assert len(cached[0]) == 24 and len(set(cached[0])) >= 6  # a model whose greedy output varies
    # the image matters: another image gives another continuation
    other = engine.generate([prompt], images=torch.randn(1, 3, 512, 512), max_new_tokens=24, no_repeat_ngram=0)
    assert other != cached


def test_batch_of_different_lengths_and_gundam_grids_equals_alone():
    torch.manual_seed(0)
    cfg = VLMConfig(
        sam=SAMConfig(embed_dim=32, depth=1, num_heads=1, global_attn_indexes=(), neck_dim=32, net2_dim=32,
                      out_chans=32),
        clip=CLIPConfig(dim=32, layers=1, heads=1, mlp_dim=64),
        gpt=GPTConfig(sequence_len=128, vocab_size=128, n_layer=2, n_head=2, n_kv_head=2, n_embd=64),
        image_token_id=127)
    model = liven(NanoOCR(cfg))
    img = 127
    prompts = [[7, 8] + [img] * 483 + [9],  # gundam (2,1): 2 crops
               [5, 6, 7, 8, 9, 10, 11],  # text only
               [3] + [img] * 493 + [4, 5, 6, 7]]  # gundam (1,2): 2 crops
    images, crops = torch.randn(2, 3, 1024, 1024), torch.randn(4, 3, 640, 640)
    tiles = torch.tensor([[2, 1], [1, 2]])
    engine = Engine(model)
    batched = engine.generate(prompts, images=images, crops=crops, tiles=tiles, max_new_tokens=16, no_repeat_ngram=0)
    alone = [engine.generate([prompts[0]], images=images[:1], crops=crops[:2], tiles=tiles[:1], max_new_tokens=16,
                             no_repeat_ngram=0)[0],
             engine.generate([prompts[1]], max_new_tokens=16, no_repeat_ngram=0)[0],
             engine.generate([prompts[2]], images=images[1:], crops=crops[2:], tiles=tiles[1:], max_new_tokens=16,
                             no_repeat_ngram=0)[0]]
    assert batched == alone
    assert all(len(set(row)) >= 4 for row in alone)
    recomputed = engine.generate(prompts, images=images, crops=crops, tiles=tiles, max_new_tokens=16,
                                 no_repeat_ngram=0, use_cache=False)
    assert recomputed == batched


def test_text_only_gpt_batch_equals_alone():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(sequence_len=64, vocab_size=50, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    gpt.init_weights()
    liven(gpt)
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [4], [10, 11, 12, 13]]
    engine = Engine(gpt)
    batched = engine.generate(prompts, max_new_tokens=20, no_repeat_ngram=0)
    assert batched == [engine.generate([p], max_new_tokens=20, no_repeat_ngram=0)[0] for p in prompts]
    assert batched == engine.generate(prompts, max_new_tokens=20, no_repeat_ngram=0, use_cache=False)


def constant_model():
    """A GPT whose logits are the same at every step: token 5 > 6 > 7 > the rest (all 0)."""
    gpt = GPT(GPTConfig(sequence_len=64, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=8))
    gpt.init_weights()  # c_proj and lm_head are zero: the residual stream is the (normalized) embedding
    with torch.no_grad():
        gpt.transformer.wte.weight.fill_(1.0)  # every token embeds to the same vector
        scores = torch.zeros(16)
        scores[5], scores[6], scores[7] = 3.0, 2.0, 1.0
        gpt.lm_head.weight.copy_(scores[:, None].expand(16, 8) / 8)  # logit = score (x is all ones)
    return gpt.eval()


def has_repeated_ngram(tokens, n, window):
    for end in range(n, len(tokens) + 1):
        last = tuple(tokens[end - n:end])
        start = max(0, end - 1 - window)
        recent = tokens[start:end - 1]
        if any(tuple(recent[i:i + n]) == last for i in range(len(recent) - n + 1)):
            return True
    return False


def test_no_repeat_ngram_guard_blocks_repeats():
    engine = Engine(constant_model())
    plain = engine.generate([[1, 2]], max_new_tokens=30, no_repeat_ngram=0)[0]
    assert plain == [5] * 30  # greedy loops: the failure the guard exists for
    guarded = engine.generate([[1, 2]], max_new_tokens=30, no_repeat_ngram=3, no_repeat_window=10)[0]
    assert len(guarded) == 30 and guarded[:4] == [5, 5, 5, 6]
    assert not has_repeated_ngram(guarded[:10], 3, 10)  # nothing repeats while all of it is in the window
    assert has_repeated_ngram(plain[:10], 3, 10)
    whitelisted = engine.generate([[1, 2]], max_new_tokens=10, no_repeat_ngram=3, no_repeat_whitelist=(5,))[0]
    assert whitelisted == [5] * 10
    # the rule the engine applies (NGramGuard): the (n-1)-suffix (1, 2) was followed by 3 and by 4 in the window
    assert NGramGuard(3, 90, ()).banned([1, 2, 3, 9, 1, 2, 4, 1, 2]) == {3, 4}
    assert NGramGuard(3, 5, ()).banned([1, 2, 3, 9, 1, 2, 4, 1, 2]) == {4}  # (1, 2, 3) left the window
    # vLLM's quirk, kept: ngram 1 bans nothing (Hugging Face's processor would ban every token seen)
    assert engine.generate([[1, 2]], max_new_tokens=6, no_repeat_ngram=1)[0] == [5] * 6
    with pytest.raises(ValueError, match="window_size"):  # refused up front, as vLLM's validate_params
        engine.generate([[1, 2]], max_new_tokens=6, no_repeat_ngram=3, no_repeat_window=0)


def test_stop_tokens_and_max_new_tokens():
    engine = Engine(constant_model())
    assert engine.generate([[1], [2, 3]], max_new_tokens=5, stop_ids=(5,)) == [[], []]
    assert engine.generate([[1], [2, 3]], max_new_tokens=5, stop_ids=(5,), return_stopped=True) == ([[], []], [True, True])
    assert engine.generate([[1]], max_new_tokens=5, no_repeat_ngram=0, return_stopped=True) == ([[5] * 5], [False])
    out = engine.generate([[1]], max_new_tokens=7, stop_ids=(6,), no_repeat_ngram=3)[0]
    assert out == [5, 5, 5]  # the guard bans 5 at step 4, 6 comes next and stops (not returned)


def cycle_model(cycle=(1, 2, 3), stop=15, V=16):
    """A GPT whose greedy next token depends on the last token only: a -> b -> c -> a ... (logit 8), with the
    stop token second everywhere (logit 4). It loops forever unless something bans the cycle's next token.
    How: one-hot embeddings (wte = I, n_embd = V), zero c_proj (init_weights), so the final hidden state is
    norm(e_t) = sqrt(V) e_t and the logits are sqrt(V) * lm_head[:, t]."""
    gpt = GPT(GPTConfig(sequence_len=64, vocab_size=V, n_layer=1, n_head=2, n_kv_head=2, n_embd=V))
    gpt.init_weights()
    with torch.no_grad():
        gpt.transformer.wte.weight.copy_(torch.eye(V))
        head = torch.zeros(V, V)
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            head[b, a] = 2.0
        head[stop, :] = 1.0
        gpt.lm_head.weight.copy_(head * 4 / V ** 0.5)  # logits 8 (the cycle) and 4 (stop), before the softcap
    return gpt.eval()


def test_guard_stops_a_looping_model_through_the_engine():
    """The failure the guard exists for, end to end: greedy loops to max_new_tokens without it (the repetition
    metric flags the text, the row did not stop); with vLLM's 30/90 guard the 30-gram that would repeat the
    cycle is banned, the model's next choice (its stop token) is taken, and it stops on its own."""
    engine = Engine(cycle_model())
    text = lambda ids: "".join(f"w{t} " for t in ids)  # noqa: E731  (a word per token, as a tokenizer decodes)
    plain, stopped = engine.generate([[1]], max_new_tokens=200, stop_ids=(15,), no_repeat_ngram=0, return_stopped=True)
    assert plain[0][:6] == [2, 3, 1, 2, 3, 1] and len(plain[0]) == 200 and stopped == [False]
    assert ends_in_loop(text(plain[0]))
    guarded, stopped = engine.generate([[1]], max_new_tokens=200, stop_ids=(15,), return_stopped=True)  # 30 / 90
    # generated 2 3 1 ...: after 32 tokens the 29-token suffix already occurred followed by the next cycle token
    # (its copy 3 tokens back), which is banned; the stop token (15) is the best left
    assert guarded[0] == plain[0][:32] and stopped == [True]
    assert not ends_in_loop(text(guarded[0]))
    # without a stop token to fall back on, the guard still keeps every 30-gram unique within 90 tokens; what it
    # cannot do (vLLM's neither): once the first cycle has left the window, the cycle may start again
    free = engine.generate([[1]], max_new_tokens=200, stop_ids=())[0]
    assert len(free) == 200 and not has_repeated_ngram(free, 30, 90) and has_repeated_ngram(plain[0], 30, 90)
    assert free[32] == 15 and set(free[92:122]) == {1, 2, 3}  # the cycle again, 92 tokens on
    # the cache-less reference takes the same path, and batching with another row changes nothing
    assert engine.generate([[1]], max_new_tokens=200, stop_ids=(15,), use_cache=False) == guarded
    both, stopped = engine.generate([[1], [7, 7, 2]], max_new_tokens=200, stop_ids=(15,), return_stopped=True)
    assert both[0] == guarded[0] and stopped[0] is True


def test_top_k_sampling_seeded_and_restricted():
    engine = Engine(constant_model())
    kw = dict(max_new_tokens=40, temperature=1.0, top_k=3, no_repeat_ngram=0)
    a = engine.generate([[1], [2]], seed=123, **kw)
    b = engine.generate([[1], [2]], seed=123, **kw)
    c = engine.generate([[1], [2]], seed=7, **kw)
    assert a == b and a != c
    tokens = [t for row in a + c for t in row]
    assert set(tokens) == {5, 6, 7}  # only the top 3, and all of them show up
    # without top-k, a high temperature reaches the other tokens too
    wide = engine.generate([[1]], max_new_tokens=60, temperature=5.0, seed=0, no_repeat_ngram=0)[0]
    assert set(wide) - {5, 6, 7}


def test_prompt_plus_new_tokens_beyond_the_rotary_table_is_a_clear_error():
    """A prompt (or --max-new-tokens) the model cannot hold is an input problem: PromptTooLong (a ValueError the
    CLIs report and evaluate skips), raised before any compute, not an AssertionError."""
    from nanoocr.model.engine import PromptTooLong
    engine = Engine(constant_model())  # sequence_len 64: a rotary table of 640 positions
    assert engine.generate([[1] * 600], max_new_tokens=40, no_repeat_ngram=0)[0] == [5] * 40  # 640 fit exactly
    with pytest.raises(PromptTooLong, match="prompt of 600 tokens \\+ 41 new tokens > the model's 640 positions"):
        engine.generate([[1] * 600, [2]], max_new_tokens=41)
    assert issubclass(PromptTooLong, ValueError)
