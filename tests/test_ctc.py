"""The CTC reading head (nanoocr/model/ctc.py): targets read from a batch, frame order, the loss against the CTC
forward recursion written out here (Graves et al. 2006, eq. 6-8), the model and Composer wiring, the head on SAM's
16 px grid (`ctc_source: sam`), and yamls/reads_ctc.yaml / reads_sam_ctc.yaml shrunk."""
import json
import math

import pytest
import torch

from nanoocr.model.ctc import CTCHead, answer_targets
from nanoocr.model.presets import build_config
from nanoocr.model.vlm import NanoOCR, param_part
from nanoocr.train.composer_model import ComposerNanoOCR

IMG, START, END, NL = 9, 7, 8, 5  # ids of this file's toy vocabulary


def reference_ctc_nll(log_probs: torch.Tensor, target: list[int], blank: int) -> float:
    """-log p(target | frames), log_probs (F, V): the alpha recursion over the target with blanks interleaved."""
    ext = [blank]
    for t in target:
        ext += [t, blank]
    S, F = len(ext), log_probs.shape[0]
    alpha = [[-math.inf] * S for _ in range(F)]
    alpha[0][0] = float(log_probs[0, ext[0]])
    if S > 1:
        alpha[0][1] = float(log_probs[0, ext[1]])
    for f in range(1, F):
        for s in range(S):
            terms = [alpha[f - 1][s]]
            if s >= 1:
                terms.append(alpha[f - 1][s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[f - 1][s - 2])
            m = max(terms)
            alpha[f][s] = -math.inf if m == -math.inf else m + math.log(sum(math.exp(t - m) for t in terms)) + \
                float(log_probs[f, ext[s]])
    last = [alpha[F - 1][S - 1]] + ([alpha[F - 1][S - 2]] if S > 1 else [])
    m = max(last)
    return -(m + math.log(sum(math.exp(t - m) for t in last)))


def test_answer_targets_reads_the_answer_of_each_image_row():
    # row 0: prompt, 3 image tokens, prompt, <start>, answer 1 2 3, <end>, padding
    # row 1: text only (no image): no entry
    # row 2: an answer holding the newline token NL: None
    # row 3: truncated inside the answer: what the row holds
    ids = torch.tensor([[1, IMG, IMG, IMG, 2, START, 1, 2, 3, END, 0],
                        [1, 2, 3, START, 4, 4, END, 0, 0, 0, 0],
                        [1, IMG, IMG, IMG, START, 3, NL, 4, END, 0, 0],
                        [1, IMG, IMG, IMG, 2, 2, START, 4, 3, 2, 1]])
    targets = torch.cat([ids[:, 1:], torch.tensor([[-1], [-1], [-1], [4]])], dim=1)
    targets[targets == IMG] = -1
    targets[ids == 0] = -1  # padding
    targets[0, 9:] = -1
    got = answer_targets(ids, targets, IMG, START, END, frozenset({NL}))
    assert len(got) == 3  # rows 0, 2, 3 hold an image
    assert got[0].tolist() == [1, 2, 3]
    assert got[1] is None
    assert got[2].tolist() == [4, 3, 2, 1, 4]  # the last target past the row's inputs included


def test_answer_targets_refuses_a_row_with_two_images():
    ids = torch.tensor([[IMG, IMG, 1, IMG, IMG, START, 2, END]])
    targets = torch.cat([ids[:, 1:], torch.tensor([[-1]])], dim=1)
    assert answer_targets(ids, targets, IMG, START, END, frozenset()) is None


def test_head_frames_are_row_major_then_per_token():
    torch.manual_seed(0)
    head = CTCHead(n_embd=6, vocab_size=4, upsample=3)
    tokens = torch.randn(2, 5, 6)
    out = head(tokens)  # (2, 15, 5)
    assert out.shape == (2, 15, 5)
    for j in range(5):  # token j alone, through the same linear, is frames 3j .. 3j+2
        ref = (tokens[:, j] @ head.proj.weight.T + head.proj.bias).view(2, 3, 5)
        torch.testing.assert_close(out[:, 3 * j:3 * j + 3], ref)


def test_loss_is_the_ctc_recursion_token_weighted():
    torch.manual_seed(1)
    head = CTCHead(n_embd=8, vocab_size=4, upsample=2)
    tokens = torch.randn(3, 4, 8)  # 8 frames each
    answers = [torch.tensor([1, 1, 2]), None, torch.tensor([3])]
    got = head.loss(tokens, answers)
    logp = head(tokens).float().log_softmax(-1)
    nll = reference_ctc_nll(logp[0], [1, 1, 2], blank=4) + reference_ctc_nll(logp[2], [3], blank=4)
    assert abs(float(got) - nll / 4) < 1e-4, (float(got), nll / 4)  # 3 + 1 answer tokens
    # an answer longer than the frames (8 frames, 5 repeats need 9) scores 0 instead of inf
    assert float(head.loss(tokens[:1], [torch.tensor([1, 1, 1, 1, 1])])) == 0.0
    assert float(head.loss(tokens, [None, None, None])) == 0.0


def toy_batch(img):
    """Two 64 px images (1 x 1 grids: 1 token + newline + separator = 3 image tokens per row) with answers."""
    ids = torch.tensor([[1, img, img, img, 2, START, 10, 11, 12, END],
                        [1, img, img, img, 2, START, 13, 14, END, 0]])
    targets = torch.cat([ids[:, 1:], torch.full((2, 1), -1)], dim=1)
    targets[targets == img] = -1
    targets[1, 8:] = -1
    torch.manual_seed(2)
    return {"ids": ids, "targets": targets, "images": torch.rand(2, 3, 64, 64) * 2 - 1}


def test_composer_model_returns_ce_and_ctc_and_the_gradient_reaches_the_encoder():
    cfg = build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=4, ctc_weight=0.5)
    model = NanoOCR(cfg)
    assert {param_part(n) for n, _ in model.named_parameters()} >= {"ctc_head", "sam", "gpt"}
    cm = ComposerNanoOCR(model, {"start_id": START, "end_id": END, "skip_ids": frozenset()}).train()
    batch = toy_batch(63)
    out = cm.loss(cm(batch), batch)
    assert set(out) == {"total", "ce", "ctc"}
    ce = model(batch["ids"], batch["targets"], batch["images"])
    torch.testing.assert_close(out["ce"], ce.detach())
    torch.testing.assert_close(out["total"], out["ce"] + 0.5 * out["ctc"])
    # the GPT's init (zero c_proj, zero lm_head) passes no gradient to the vision tokens at step 0: whatever
    # reaches SAM comes from the CTC head
    ce.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in model.sam.parameters())
    model.zero_grad()
    out["total"].backward()
    assert float(model.sam.patch_embed.proj.weight.grad.abs().max()) > 0


def test_the_moe_balancing_loss_stays_in_the_total_with_the_ctc_head():
    """DeepSeek-OCR's decoder adds its load-balancing loss to the training loss; with the CTC head the "ce" entry
    (and so the total) still holds it: the same forward without the head's targets gives the same scalar."""
    cfg = build_config("deepseek_ocr_tiny", ctc_upsample=1)
    torch.manual_seed(3)
    model = NanoOCR(cfg)
    cm = ComposerNanoOCR(model, {"start_id": START, "end_id": END, "skip_ids": frozenset()}).train()
    batch = toy_batch(cfg.image_token_id)
    out = cm(batch)
    assert float(model.gpt.aux_loss) > 0
    cm.ctc_ids = None  # the same model and batch without CTC targets: the scalar path, CE + the MoE term
    torch.testing.assert_close(out["ce"], cm(batch).detach())
    torch.testing.assert_close(out["total"], out["ce"] + out["ctc"])


def test_sam_source_reads_the_neck_column_maxima_and_leaves_the_tokens_alone():
    cfg = build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=4, ctc_source="sam")
    torch.manual_seed(4)
    model = NanoOCR(cfg).eval()
    images = torch.rand(2, 3, 128, 128) * 2 - 1  # an 8 x 8 neck grid, a 2 x 2 token grid
    with torch.no_grad():
        vision, columns = model.encode_images(images, with_ctc=True)
        neck = model.sam.forward_neck(images)  # (2, neck_dim, 8, 8)
        plain = model.encode_images(images)
    assert model.ctc_head.proj.in_features == cfg.sam.neck_dim
    assert columns.shape == (2, 8, cfg.sam.neck_dim)
    for n in range(2):  # column j of image n: the largest of its 8 rows, channel by channel
        for j in range(8):
            ref = torch.tensor([max(float(neck[n, c, i, j]) for i in range(8)) for c in range(cfg.sam.neck_dim)])
            torch.testing.assert_close(columns[n, j], ref)
    torch.testing.assert_close(vision, plain, rtol=0, atol=0)


def test_columns_source_reads_the_token_grid_column_maxima():
    """"columns": the projected tokens of the global view (what the GPT reads, without the newline and separator
    vectors), max over each column of the token grid, left to right; the vision sequence itself is unchanged."""
    cfg = build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=4, ctc_source="columns")
    torch.manual_seed(5)
    model = NanoOCR(cfg).eval()
    images = torch.rand(2, 3, 256, 256) * 2 - 1  # a 4 x 4 token grid
    with torch.no_grad():
        vision, columns = model.encode_images(images, with_ctc=True)
        plain = model.encode_images(images)
    C = cfg.gpt.n_embd
    assert model.ctc_head.proj.in_features == C and columns.shape == (2, 4, C)
    per_image = 4 * 5 + 1  # 4 rows of 4 tokens + a newline each, then the separator
    for n in range(2):
        grid = plain[n * per_image:(n + 1) * per_image - 1].view(4, 5, C)[:, :4]  # (rows, columns, C)
        for j in range(4):
            ref = torch.tensor([max(float(grid[i, j, c]) for i in range(4)) for c in range(C)])
            torch.testing.assert_close(columns[n, j], ref)
    torch.testing.assert_close(vision, plain, rtol=0, atol=0)


def test_sam_source_gradient_stops_at_the_neck():
    """The head on SAM's grid trains SAM's blocks and neck; the compressor, CLIP and projector get nothing from it."""
    cfg = build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=4, ctc_source="sam")
    model = NanoOCR(cfg)
    batch = toy_batch(63)
    answers = answer_targets(batch["ids"], batch["targets"], 63, START, END, frozenset())
    _, ctc = model.train()(batch["ids"], batch["targets"], batch["images"], ctc_answers=answers)
    assert float(ctc) > 0
    grads = torch.autograd.grad(ctc, list(model.parameters()), allow_unused=True)
    by_part = {}
    for (name, _), g in zip(model.named_parameters(), grads):
        by_part.setdefault(param_part(name), []).append(0.0 if g is None else float(g.abs().max()))
    assert max(by_part["sam"]) > 0 and max(by_part["ctc_head"]) > 0
    for part in ("compressor", "clip", "projector", "gpt"):
        assert max(by_part[part]) == 0, part


def test_a_model_with_a_ctc_head_needs_the_token_ids():
    model = NanoOCR(build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=2))
    with pytest.raises(ValueError, match="ctc_ids"):
        ComposerNanoOCR(model)
    with pytest.raises(ValueError, match="ctc_upsample"):
        build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=1000)
    with pytest.raises(ValueError, match="ctc_source"):
        build_config("nano", gpt={"vocab_size": 64}, image_token_id=63, ctc_upsample=2, ctc_source="clip")


CURRICULUM_SETS = {"train": "reading:16:0", "nonce": "reading_nonce:16:0", "nonce_words": "reading_nonce_words:16:0",
                   "unseen_words": "reading_unseen_words:2:1", "unseen_fonts": "reading_unseen_fonts:2:2"}
CELLS_SETS = {"nonce": "reading_cells_nonce:16:0", "unseen_words": "reading_cells_unseen_words:2:1",
              "unseen_fonts": "reading_cells_unseen_fonts:2:2"}


@pytest.mark.parametrize("yaml, sets", [("reads_ctc.yaml", CURRICULUM_SETS), ("reads_sam_ctc.yaml", CURRICULUM_SETS),
                                        ("reads_columns_ctc.yaml", CURRICULUM_SETS), ("reads_cells.yaml", CELLS_SETS)])
def test_reads_ctc_yaml_shrunk_logs_both_losses(tmp_path, shrunk_reads, yaml, sets):
    """The CTC YAMLs as written, shrunk: their data sets pre-built small, a few batches; both losses logged every
    batch, the CTC loss finite and positive; the final greedy eval ran on the unseen-words set."""
    from nanoocr.train.recipe import train
    data, run = tmp_path / "reads", tmp_path / "run"
    cfg = shrunk_reads(yaml, data, run, sets)
    train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ctc = [r["loss/train/ctc"] for r in rows if "loss/train/ctc" in r]
    ce = [r["loss/train/ce"] for r in rows if "loss/train/ce" in r]
    assert len(ctc) == 3 and len(ce) == 3 and all(math.isfinite(v) and v > 0 for v in ctc)
    assert json.loads((run / "eval.json").read_text())["summary"]["n"] == 2


def cells_checkpoint(tmp_path, shrunk_reads):
    """(run folder, trainer) of a shrunk reads_cells.yaml run that saved a checkpoint: what the later reading stages
    load (the same architecture as reads_big's and reads_small's)."""
    from nanoocr.train.recipe import train
    cells_run = tmp_path / "cells_run"
    return cells_run, train(shrunk_reads("reads_cells.yaml", tmp_path / "cells", cells_run, CELLS_SETS,
                                         (f"save_folder={cells_run}/checkpoints", "save_interval=3ba")))


def test_reads_big_starts_from_the_cells_checkpoint(tmp_path, shrunk_reads):
    """yamls/reads_big.yaml as written, shrunk: it loads the cells stage's checkpoint and tokenizer (from a shrunk
    reads_cells.yaml run that saved one), trains on its big-word + cells mix and evaluates. Run at lr 0, its weights
    are exactly the cells run's: the checkpoint was loaded, not a fresh model trained."""
    from nanoocr.train.recipe import train
    cells_run, cells = cells_checkpoint(tmp_path, shrunk_reads)
    saved = {n: p.detach().clone() for n, p in cells.state.model.named_parameters()}
    run = tmp_path / "big_run"
    cfg = shrunk_reads("reads_big.yaml", tmp_path / "big", run, {
        "nonce": "reading_big_nonce:16:0", "cells": "reading_cells_nonce:16:1",
        "unseen_words": "reading_big_unseen_words:2:1", "unseen_fonts": "reading_big_unseen_fonts:2:2"},
        (f"variables.cells_run={cells_run}", "optimizer.lr=0.0", "optimizer.param_groups={}"))
    assert cfg["load_path"] == f"{cells_run}/checkpoints/latest-rank0.pt" and cfg["load_weights_only"]
    big = train(cfg)
    loaded = dict(big.state.model.named_parameters())
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[n], loaded[n]) for n in saved)
    assert not (run / "tokenizer").exists()  # the cells run's tokenizer: none trained here
    assert json.loads((run / "eval.json").read_text())["summary"]["n"] == 2


def test_reads_small_starts_from_the_big_words_checkpoint(tmp_path, shrunk_reads):
    """yamls/reads_small.yaml as written, shrunk: it loads the big words model's checkpoint (a shrunk reads_cells.yaml
    run that saved one stands in: the same architecture) and the cells tokenizer, builds reads_big.yaml's sets where
    they are missing, trains on its small print + spot pages + big words + cells mix and evaluates; at lr 0 its weights
    are the loaded ones."""
    from nanoocr.train.recipe import train
    cells_run, cells = cells_checkpoint(tmp_path, shrunk_reads)
    saved = {n: p.detach().clone() for n, p in cells.state.model.named_parameters()}
    run, data = tmp_path / "small_run", tmp_path / "small"
    cfg = shrunk_reads("reads_small.yaml", data, run, {
        "nonce": "reading_small_nonce:16:0", "unseen_words": "reading_small_unseen_words:2:1",
        "unseen_fonts": "reading_small_unseen_fonts:2:2", "spot": "reading_spot_nonce:8:0",
        "spot_unseen_words": "reading_spot_unseen_words:2:1", "big/cells": "reading_cells_nonce:8:1"},
        (f"variables.big_run={cells_run}", f"variables.cells_run={cells_run}", f"variables.big_data_dir={data}/big",
         "build_data.5.input=synthetic:reading_big_nonce:8:0", "optimizer.lr=0.0", "optimizer.param_groups={}"))
    assert cfg["load_path"] == f"{cells_run}/checkpoints/latest-rank0.pt" and cfg["load_weights_only"]
    small = train(cfg)
    assert (data / "big" / "nonce" / "index.json").exists()  # built by the recipe's build_data: it was missing
    loaded = dict(small.state.model.named_parameters())
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)
    assert json.loads((run / "eval.json").read_text())["summary"]["n"] == 2


@pytest.mark.parametrize("mode", ["gundam", "base"])
def test_reads_gundam_starts_from_the_reading_model_in_either_mode(tmp_path, shrunk_reads, mode):
    """yamls/reads_gundam.yaml as written, shrunk, in each of its two modes: it loads the reading model's checkpoint
    and tokenizer (a shrunk reads_cells.yaml run that saved one stands in for reads_big's: the same architecture),
    trains on fine-text pages and transcribes held-out ones; Gundam's pages take the global view plus its tiles,
    Base's the 1024 px view alone (273 tokens)."""
    from nanoocr.data.images import count_tokens, gundam_tiles
    from nanoocr.data.reading import page_sample
    from nanoocr.train.recipe import train
    cells_run, _ = cells_checkpoint(tmp_path, shrunk_reads)
    run = tmp_path / "fine_run"
    cfg = shrunk_reads("reads_gundam.yaml", tmp_path / "fine", run, {
        "train": "reading_fine:12:0", "unseen_words": "reading_fine_unseen_words:2:1"},
        (f"variables.reads_run={cells_run}", f"variables.cells_run={cells_run}", f"variables.mode={mode}",
         "device_train_microbatch_size=2"))
    assert cfg["load_path"] == f"{cells_run}/checkpoints/latest-rank0.pt" and cfg["load_weights_only"]
    train(cfg)
    summary = json.loads((run / "eval.json").read_text())["summary"]
    pages = [page_sample("reading_fine_unseen_words", 1, i)[1]["page"] for i in range(2)]
    expected = [count_tokens(mode, size=p) for p in pages]
    assert summary["n"] == 2 and summary["vision_tokens"] == sum(expected)
    if mode == "gundam":
        assert all(gundam_tiles(*p) != (1, 1) for p in pages) and min(expected) > 273
    else:
        assert expected == [273, 273]
    assert not (run / "tokenizer").exists()  # the reading model's tokenizer: none trained here
