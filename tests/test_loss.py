"""The chunked linear + softcap + cross-entropy (nanoocr/model/loss.py) vs the plain path written out here:
logits = cap * tanh(h @ W.T / cap) materialized, then F.cross_entropy (ignore_index -1)."""
import math

import pytest
import torch
import torch.nn.functional as F

from nanoocr.model.gpt import GPT, GPTConfig
from nanoocr.model.loss import chunked_softcap_cross_entropy


def plain(h, w, t, cap, reduction="mean"):
    z = (h @ w.t()).float()
    logits = z if cap is None else cap * torch.tanh(z / cap)
    return F.cross_entropy(logits.flatten(0, -2), t.flatten(), ignore_index=-1, reduction=reduction)


def grads(fn, h, w):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = fn(h, w)
    (3.0 * loss).backward()  # a grad_output that is not 1
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("cap", [15.0, None])
def test_loss_and_gradients_match_the_plain_path_fp32(chunk_rows, reduction, cap):
    torch.manual_seed(0)
    h, w = torch.randn(2, 50, 32), torch.randn(301, 32) * 0.5
    t = torch.randint(0, 301, (2, 50))
    t[:, ::3] = -1  # ignored positions (image tokens, padding, prompts)
    ref = grads(lambda h, w: plain(h, w, t, cap, reduction), h, w)
    got = grads(lambda h, w: chunked_softcap_cross_entropy(h, w, t, cap, reduction, chunk_rows), h, w)
    for a, b, name in zip(got, ref, ("loss", "dL/dh", "dL/dW")):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (name, (a - b).abs().max().item())


def test_all_targets_ignored_gives_zero_loss_and_zero_gradients():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    loss = chunked_softcap_cross_entropy(h, w, torch.full((4,), -1), 15.0)
    loss.backward()
    assert loss.item() == 0.0 and not h.grad.any() and not w.grad.any()


def test_keeps_no_logits_for_the_backward():
    # What autograd saves for the backward: the plain path keeps (N, V) fp32 logits (and tanh's output);
    # the chunked one keeps dL/dh (N, C) and dL/dW (V, C) only.
    N, C, V = 512, 16, 4096
    h, w = torch.randn(N, C, requires_grad=True), torch.randn(V, C, requires_grad=True)
    t = torch.randint(0, V, (N,))

    def saved_bytes(fn):
        seen = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: seen.append(x.numel() * x.element_size()) or x,
                                                      lambda x: x):
            fn()
        return sum(seen)

    logits_bytes = N * V * 4
    assert saved_bytes(lambda: plain(h, w, t, 15.0)) >= logits_bytes
    assert saved_bytes(lambda: chunked_softcap_cross_entropy(h, w, t, 15.0, chunk_rows=64)) <= (N * C + V * C) * 4


def test_under_cpu_bf16_autocast_close_to_the_plain_autocast_path():
    torch.manual_seed(1)
    h, w = torch.randn(64, 32), torch.randn(200, 32) * 0.5
    t = torch.randint(0, 200, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = grads(lambda h, w: plain(h, w, t, 15.0), h, w)
        got = grads(lambda h, w: chunked_softcap_cross_entropy(h, w, t, 15.0, chunk_rows=16), h, w)
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32  # fp32 master gradients
    for a, b in zip(got, ref):
        assert torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-3), (a.float() - b.float()).abs().max()


def test_rejects_an_unknown_reduction():
    with pytest.raises(ValueError, match="'none'"):
        chunked_softcap_cross_entropy(torch.randn(2, 4), torch.randn(5, 4), torch.zeros(2, dtype=torch.long), 15.0, "none")


@pytest.mark.parametrize("layout", ["d20", "2026"])
def test_gpt_loss_impl_chunked_equals_plain_with_every_gradient(layout):
    cfg = dict(sequence_len=64, vocab_size=97, n_layer=2, n_head=4, n_kv_head=4, n_embd=64, layout=layout)
    if layout == "2026":
        cfg.update(window_pattern="SL", pad_vocab_size_to=64)  # 97 -> 128 rows, logits cropped
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 40))
    targets = torch.randint(0, 97, (2, 40))
    targets[0, :5] = -1
    results = []
    for impl in ("plain", "chunked"):
        torch.manual_seed(3)
        model = GPT(GPTConfig(**cfg, loss_impl=impl))
        model.init_weights()
        with torch.no_grad():  # nanochat zero-inits lm_head and the projections: no gradient would differ
            model.lm_head.weight.normal_(0, 2.0 / math.sqrt(64))
            for block in model.transformer.h:
                block.attn.c_proj.weight.normal_(0, 0.1)
                block.mlp.c_proj.weight.normal_(0, 0.05)
        loss = model(ids, targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (lp, gp), (lc, gc) = results
    assert torch.allclose(lp, lc, atol=1e-6), (lp, lc)
    assert gp.keys() == gc.keys()
    for n in gp:
        assert torch.allclose(gp[n], gc[n], atol=1e-5, rtol=1e-5), (n, (gp[n] - gc[n]).abs().max().item())
    if layout == "2026":  # the padding rows of lm_head never see a gradient
        assert not gc["lm_head.weight"][97:].any()


def test_a_second_backward_through_the_same_loss_is_refused():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    loss = chunked_softcap_cross_entropy(h, w, torch.zeros(4, dtype=torch.long), 15.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()
