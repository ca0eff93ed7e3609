"""The thin Composer layer over NanoOCR: loss, metrics and FLOPs for MFU.

The model itself (nanoocr.model.vlm) runs without Composer; this file only adapts it to `composer.Trainer`:
- `forward(batch)` in training returns the loss itself (next-token cross-entropy, ignore index -1, through
  the model's chunked loss: no (B, T, V) logits); `loss(outputs, batch)` passes it on. In eval,
  `eval_forward` returns the logits (B, T, V) the metrics read.
- metrics: LanguageCrossEntropy and token accuracy (MaskedAccuracy), both ignoring -1.
- `flops_per_batch(batch)` (SpeedMonitor → MFU): 3x the forward FLOPs of the vision encoder per view
  size (counted once with torch's FlopCounterMode on the meta device), plus nanochat's GPT estimate
  6*N + 12*L*H*Dh*T per token (N from a meta-device twin: correct when the model is FSDP-sharded).
Batch splitting for microbatches and sample/token counting live with the batch format, in nanoocr.data.stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import ComposerModel
from torch.utils.flop_counter import FlopCounterMode

from nanoocr.model.gpt import GPT
from nanoocr.model.vlm import NanoOCR

def vision_forward_flops(model: NanoOCR, size: int) -> int:
    """Forward FLOPs of SAM→CLIP→projector for one square view, counted on the meta device (no memory)."""
    cfg = model.config
    with torch.device("meta"):
        meta = NanoOCR(cfg)
        x = torch.empty(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta.encode_images(x)
    return int(counter.get_total_flops())


class ComposerNanoOCR(ComposerModel):
    def __init__(self, model: NanoOCR):
        super().__init__()
        self.model = model
        self.image_id = model.config.image_token_id
        vocab = model.config.gpt.vocab_size
        self.train_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(ignore_index=-1),
                              "TokenAccuracy": MaskedAccuracy(ignore_index=-1)}
        self.val_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(ignore_index=-1),
                            "TokenAccuracy": MaskedAccuracy(ignore_index=-1)}
        self._vocab = vocab
        self._vision_flops: dict[int, int] = {}
        self._meta_gpt: dict = {}  # in a dict, so it is not registered as a submodule (see flops_per_batch)

    def _run(self, batch: dict, targets):
        return self.model(batch["ids"], targets, batch.get("images"), batch.get("crops"), batch.get("tiles"))

    def forward(self, batch: dict) -> torch.Tensor:
        """Training: the loss (a scalar). Not training (or no targets): logits (B, T, V)."""
        if self.training and "targets" in batch:
            return self._run(batch, batch["targets"])
        return self._run(batch, None)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        if outputs.ndim == 0:  # forward computed it (training)
            return outputs
        # (B, T, V) logits vs (B, T) targets; -1 marks image positions, padding and non-loss tokens.
        targets = batch["targets"].flatten()
        if not (targets != -1).any():  # a batch of only rejected-sample placeholders: nothing to learn
            return outputs.sum() * 0.0
        return F.cross_entropy(outputs.float().flatten(0, 1), targets, ignore_index=-1)

    def eval_forward(self, batch: dict, outputs: torch.Tensor | None = None) -> torch.Tensor:
        return outputs if outputs is not None and outputs.ndim == 3 else self._run(batch, None)

    def get_metrics(self, is_train: bool = False):
        return self.train_metrics if is_train else self.val_metrics

    def update_metric(self, batch: dict, outputs: torch.Tensor, metric) -> None:
        metric.update(outputs, batch["targets"])

    def flops_per_batch(self, batch: dict) -> float:
        B, T = batch["ids"].shape
        # Counted on a meta-device twin: under FSDP `self.model`'s parameters are this rank's shards.
        if "gpt" not in self._meta_gpt:
            with torch.device("meta"):
                self._meta_gpt["gpt"] = GPT(self.model.config.gpt)
        gpt = self._meta_gpt["gpt"].estimate_flops(seq_len=T) * B * T
        vision = 0
        views = []
        if batch.get("images") is not None:
            views += [batch["images"].shape[-1]] * batch["images"].shape[0]
        if batch.get("crops") is not None:
            views += [batch["crops"].shape[-1]] * batch["crops"].shape[0]
        for size in views:
            if size not in self._vision_flops:
                self._vision_flops[size] = vision_forward_flops(self.model, size)
            vision += 3 * self._vision_flops[size]  # forward + backward (≈ 2x forward)
        return float(gpt + vision)
