"""Token-weighted microbatching (Trainer(accumulate_train_batch_on_tokens=True), as the recipe sets it):
one batch of very unequal lengths gives the same gradients and step as 1 microbatch or 4, and the logged
loss is the per-token mean over the whole batch. Through a real composer Trainer on CPU, fp32."""
import pytest
import torch

from nanoocr.model.clip import CLIPConfig
from nanoocr.model.gpt import GPTConfig
from nanoocr.model.sam import SAMConfig
from nanoocr.model.vlm import NanoOCR, VLMConfig, image_token_count

IMG = 63
LENGTHS = [40, 6, 25, 3]  # real tokens per row: loss tokens 32, 5, 17, 2 (rows 0 and 2 hold an image)
HAS_IMAGE = [True, False, True, False]
SIZE = 128


def tiny_config():
    return VLMConfig(
        sam=SAMConfig(embed_dim=32, depth=1, num_heads=1, global_attn_indexes=(), neck_dim=32, net2_dim=32,
                      out_chans=32),
        clip=CLIPConfig(dim=32, layers=1, heads=1, mlp_dim=64),
        gpt=GPTConfig(sequence_len=64, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32),
        image_token_id=IMG)


def make_batch(cfg, lengths=LENGTHS, has_image=HAS_IMAGE):
    """Rows of `lengths` real tokens; a 0 is a rejected sample's placeholder row (all padding, no target)."""
    g = torch.Generator().manual_seed(0)
    B, T, n_img = len(lengths), max(1, *lengths), image_token_count(cfg, SIZE)
    ids = torch.zeros(B, T, dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    for b, L in enumerate(lengths):
        if L == 0:
            continue
        ids[b, :L] = torch.randint(0, 60, (L,), generator=g)
        if has_image[b]:
            ids[b, 1:1 + n_img] = IMG
        targets[b, :L - 1] = ids[b, 1:L]
        targets[b][(targets[b] == IMG) | (ids[b] == IMG)] = -1  # no loss on or into image positions
    n = sum(has_image)
    skipped = [(f"s{i}", "rejected") for i, L in enumerate(lengths) if L == 0]
    return {"ids": ids, "targets": targets, "images": torch.randn(n, 3, SIZE, SIZE, generator=g) if n else None,
            "crops": None, "tiles": torch.ones(n, 2, dtype=torch.long) if n else None,
            "sample_ids": [f"s{i}" for i in range(B)], "has_image": torch.tensor(has_image),
            "lengths": torch.tensor(lengths), "skipped": skipped}


def run_step(microbatch_size, on_tokens=True, batch=None):
    from composer import Trainer
    from composer.core import Callback
    from composer.loggers import InMemoryLogger

    class Grads(Callback):  # the step's gradients: after all microbatches, before the optimizer
        def after_train_batch(self, state, logger):
            self.grads = {n: p.grad.clone() for n, p in state.model.named_parameters() if p.grad is not None}

    from nanoocr.train.composer_model import ComposerNanoOCR
    from nanoocr.data.stream import data_spec

    cfg = tiny_config()
    torch.manual_seed(0)
    model = NanoOCR(cfg)
    with torch.no_grad():
        model.gpt.lm_head.weight.normal_(std=0.1)  # zero-init lm_head: no gradient below it at step 0
    cm = ComposerNanoOCR(model)
    grads, mem = Grads(), InMemoryLogger()
    trainer = Trainer(model=cm, train_dataloader=data_spec([batch or make_batch(cfg)]), max_duration="1ba",
                      optimizers=torch.optim.SGD(cm.parameters(), lr=0.5), device="cpu", precision="fp32",
                      device_train_microbatch_size=microbatch_size, accumulate_train_batch_on_tokens=on_tokens,
                      callbacks=[grads], loggers=[mem], progress_bar=False, log_to_console=False, seed=0,
                      train_subset_num_batches=1)
    trainer.fit()
    loss = float(mem.most_recent_values["loss/train/total"])
    weights = {n: p.detach().clone() for n, p in cm.named_parameters()}
    trainer.close()
    return grads.grads, weights, loss


@pytest.fixture(scope="module")
def steps():
    return {mb: run_step(mb) for mb in (4, 1)}


def test_one_or_four_microbatches_same_gradients_and_step(steps):
    (g4, w4, _), (g1, w1, _) = steps[4], steps[1]
    assert g4.keys() == g1.keys() and "model.sam.blocks.0.attn.qkv.weight" in g4
    for n in g4:
        assert torch.allclose(g4[n], g1[n], atol=1e-5, rtol=0), (n, (g4[n] - g1[n]).abs().max())
    for n in w4:
        assert torch.allclose(w4[n], w1[n], atol=1e-5, rtol=0), n


def test_loss_is_the_per_token_mean_over_the_batch(steps):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = NanoOCR(cfg)
    with torch.no_grad():
        model.gpt.lm_head.weight.normal_(std=0.1)
        b = make_batch(cfg)
        want = float(model(b["ids"], b["targets"], images=b["images"], tiles=b["tiles"]))  # mean over loss tokens
    for mb in (4, 1):
        assert abs(steps[mb][2] - want) < 1e-5, (mb, steps[mb][2], want)


def test_sample_weighting_would_differ(steps):
    # the check above has teeth: per-sample weighting of the same 4 microbatches gives other gradients
    g, _, loss = run_step(1, on_tokens=False)
    g4 = steps[4][0]
    assert max((g[n] - g4[n]).abs().max() for n in g4) > 1e-3
    assert abs(loss - steps[4][2]) > 1e-3


def test_loss_generating_tokens_are_counted():
    from nanoocr.data.stream import get_num_tokens_in_batch
    b = make_batch(tiny_config())
    counts = get_num_tokens_in_batch(b)
    assert counts == {"total": sum(LENGTHS), "loss_generating": int((b["targets"] != -1).sum())}
    assert counts["loss_generating"] < counts["total"]


def test_a_microbatch_of_only_placeholder_rows_does_not_scale_the_step():
    """Rows 2, 3 rejected: split in 2, the second microbatch has no target. The step must equal the unsplit one
    (sample weighting scaled the loss and gradient by the kept share)."""
    batch = make_batch(tiny_config(), lengths=[40, 25, 0, 0], has_image=[True, True, False, False])
    (g4, w4, loss4), (g2, w2, loss2) = run_step(4, batch=batch), run_step(2, batch=batch)
    for n in g4:
        assert torch.allclose(g4[n], g2[n], atol=1e-5, rtol=0), (n, (g4[n] - g2[n]).abs().max())
    assert abs(loss4 - loss2) < 1e-5 and loss4 > 1.0, (loss4, loss2)


def test_a_batch_of_only_placeholder_rows_is_a_step_with_nothing_to_learn():
    """Every row rejected: Composer divides by the batch's loss tokens (0); the step must run, touch nothing
    through the gradients (all zero) and log a zero loss instead of raising ZeroDivisionError."""
    batch = make_batch(tiny_config(), lengths=[0, 0, 0, 0], has_image=[False] * 4)
    grads, _, loss = run_step(2, batch=batch)
    assert loss == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads.values())
