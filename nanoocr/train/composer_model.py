"""The thin Composer layer over NanoOCR: loss, metrics and FLOPs for MFU.

The model itself (nanoocr.model.vlm) runs without Composer; this file only adapts it to `composer.Trainer`:
- `forward(batch)` in training returns the loss itself (next-token cross-entropy, ignore index -1, through
  the model's chunked loss: no (B, T, V) logits); `loss(outputs, batch)` passes it on. In eval,
  `eval_forward` returns the logits (B, T, V) the metrics read.
- DeepSeek-OCR's MoE decoder adds its load-balancing loss (`decoder.aux_loss`, the sum over MoE layers of
  aux_loss_alpha * sum_e f_e P_e, nanoocr/model/deepseek_decoder.py) to the training loss, as the released
  model was trained: `loss/train/total` is then cross-entropy + that term (about aux_loss_alpha per MoE layer
  when the experts are balanced: 0.011 for the released 11 layers at alpha 0.001; `model.gpt.aux_loss_alpha: 0`
  turns it off).
- with the model's CTC reading head (`model.vlm.ctc_upsample`, nanoocr/model/ctc.py) training's forward returns
  {"total": ce + ctc_weight * ctc, "ce": the decoder's loss (cross-entropy, + the MoE term where there is one),
  "ctc"}: Composer steps on `total` and logs each as
  `loss/train/<key>`. The CTC targets are read from the batch's ids/targets with the tokenizer's ids (`ctc_ids`:
  assistant start/end and the tokens holding a newline), given by the recipe.
- metrics: LanguageCrossEntropy and token accuracy (MaskedAccuracy), both ignoring -1, in eval only. No train
  metrics: Composer computes them from `eval_forward(batch, outputs)` after every microbatch's backward, and
  since training's forward returns only the loss (no logits to reuse), that is a second, full forward of the
  whole model per microbatch (a third of a step's compute). The train cross-entropy is `loss/train/total`.
- `flops_per_batch(batch)` (SpeedMonitor → MFU): nanoocr.train.flops.batch_flops, the model FLOPs of the step
  with a backward only through what trains (frozen SAM/CLIP: forward only) and the attention that runs
  (SAM windows, causal and sliding-window GPT attention).
Batch splitting for microbatches and sample/token counting live with the batch format, in nanoocr.data.stream.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import ComposerModel

from nanoocr.model.ctc import answer_targets
from nanoocr.model.vlm import NanoOCR
from nanoocr.train.flops import batch_flops


class ComposerNanoOCR(ComposerModel):
    def __init__(self, model: NanoOCR, ctc_ids: dict | None = None):
        """ctc_ids: {"start_id", "end_id", "skip_ids"} for answer_targets; needed when the model has a CTC head."""
        super().__init__()
        self.model = model
        if model.config.ctc_upsample and not ctc_ids:
            raise ValueError("the model has a CTC head (ctc_upsample > 0): ComposerNanoOCR needs ctc_ids")
        self.ctc_ids = ctc_ids
        self.val_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(ignore_index=-1),
                            "TokenAccuracy": MaskedAccuracy(ignore_index=-1)}

    def _run(self, batch: dict, targets):
        return self.model(batch["ids"], targets, batch.get("images"), batch.get("crops"), batch.get("tiles"))

    def forward(self, batch: dict) -> torch.Tensor | dict:
        """Training: the loss (a scalar, with the MoE balancing loss when the decoder has one; a dict with the CTC
        head). Not training (or no targets): logits (B, T, V)."""
        training = self.training and "targets" in batch
        answers = None
        if training and self.ctc_ids and batch.get("images") is not None:
            answers = answer_targets(batch["ids"], batch["targets"], self.model.config.image_token_id, **self.ctc_ids)
        if answers is not None:
            out, ctc = self.model(batch["ids"], batch["targets"], batch["images"], batch.get("crops"),
                                  batch.get("tiles"), ctc_answers=answers)
        else:
            out, ctc = self._run(batch, batch["targets"] if training else None), None
        aux = getattr(self.model.gpt, "aux_loss", None)  # set by this forward (DeepseekDecoder, training) or None
        if out.ndim == 0 and aux is not None:
            out = out + aux.to(out.dtype)
        if ctc is None:
            return out
        return {"total": out + self.model.config.ctc_weight * ctc, "ce": out.detach(), "ctc": ctc.detach()}

    def loss(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor | dict:
        if isinstance(outputs, dict) or outputs.ndim == 0:  # forward computed it (training)
            return outputs
        # (B, T, V) logits vs (B, T) targets; -1 marks image positions, padding and non-loss tokens.
        targets = batch["targets"].flatten()
        if not (targets != -1).any():  # a batch of only rejected-sample placeholders: nothing to learn
            return outputs.sum() * 0.0
        return F.cross_entropy(outputs.float().flatten(0, 1), targets, ignore_index=-1)

    def eval_forward(self, batch: dict, outputs: torch.Tensor | None = None) -> torch.Tensor:
        return outputs if isinstance(outputs, torch.Tensor) and outputs.ndim == 3 else self._run(batch, None)

    def get_metrics(self, is_train: bool = False):
        return {} if is_train else self.val_metrics

    def update_metric(self, batch: dict, outputs: torch.Tensor, metric) -> None:
        metric.update(outputs, batch["targets"])

    def flops_per_batch(self, batch: dict) -> float:
        return batch_flops(self.model, batch)
