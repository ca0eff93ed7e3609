"""
LoRA (Hu et al. 2021) on a model's nn.Linear modules, chosen by name, with merge-on-export.

    y = x W^T + b + scale * dropout(x) A^T B^T      A (r, in) kaiming-uniform(a=sqrt(5)), B (out, r) zeros,
                                                    scale = alpha / r   (PEFT's LoRA Linear, same init)
    merge: W <- W + scale * B @ A, then the module is a plain nn.Linear again

Usage (at build time, before the optimizer and before DDP/FSDP wrap the model: no parameter may appear later):

    report = apply_lora(model, r=16, alpha=16, targets=GPT_TARGETS, modules=("gpt",))
    ...train: only the adapters (and `also_train`) have requires_grad...
    merge_lora(model)            # state_dict keys exactly as before apply_lora: export writes the usual names

Targets are the LAST component of a module's name, as PEFT's `target_modules` list: nanochat's GPT
`c_q c_k c_v c_proj c_fc` (GPT_TARGETS), DeepSeek-OCR's decoder `q_proj k_proj v_proj o_proj gate_proj up_proj
down_proj` (DEEPSEEK_TARGETS; in the MoE layers these also match every routed and shared expert), `projector`,
CLIP's `qkv_proj out_proj fc1 fc2`. `modules` restricts the search to submodules (name prefixes: `gpt`,
`projector`, `clip`, ...). A target that names no nn.Linear there is an error listing the names that do.
`lm_head` is refused: the chunked loss reads `lm_head.weight` directly (nanoocr/model/loss.py), so an adapter
there would be skipped in training.

Why not PEFT (peft 0.21.0 installs and runs here with torch 2.7 and a plain nn.Module via
`inject_adapter_in_model`): its layer is a wrapper, so every wrapped key is renamed
(`attn.c_q.weight` -> `attn.c_q.base_layer.weight`, adapters `attn.c_q.lora_A.default.weight`) for the whole
run, in checkpoints and in the names `optimizer.param_groups` and the freeze algorithms match; the wrapper
is not an nn.Linear, so the FSDP meta-device init (`NanoOCR.param_init_fn`) and the FLOP count
(nanoocr/train/flops.py), which recognize Linears by type, would not see it; and `inject_adapter_in_model`
has no merge (that is PeftModel's `merge_and_unload`), while it brings peft + accelerate as dependencies.
Here `LoRALinear` IS an nn.Linear that keeps its own `weight` / `bias` Parameters (the same objects) and adds
two: a wrapped layer's keys are the old ones plus `<name>.lora_A` / `<name>.lora_B`, and every parameter
name keeps the prefix that `nanoocr.model.vlm.param_part` reads, so adapters land in their module's part.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.model.distributed import clean_name

GPT_TARGETS = ("c_q", "c_k", "c_v", "c_proj", "c_fc")  # nanoocr/model/gpt.py (nanochat names)
DEEPSEEK_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # released names
REFUSED = {"lm_head": "the chunked loss reads lm_head.weight directly (nanoocr/model/loss.py): the adapter would "
                      "be skipped in training"}
MAX_RANK = 4096  # bounds what a config allocates: r x (in + out) per wrapped layer


class LoRALinear(nn.Linear):
    """An nn.Linear (the base layer's own `weight` / `bias`, not copies) plus `lora_A` (r, in), `lora_B` (out, r)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # not nn.Linear.__init__: that would allocate and init a second weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=w.device, dtype=w.dtype))
        self.r, self.alpha, self.scale, self.dropout = r, alpha, alpha / r, dropout
        if not w.is_meta:  # on meta, NanoOCR.param_init_fn calls reset_lora_parameters after to_empty
            self.reset_lora_parameters()

    def reset_parameters(self):
        """nn.Linear's init of weight / bias, then the adapters' (what a meta-device init calls per module)."""
        super().reset_parameters()
        self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self):
        """PEFT's init: A kaiming-uniform (a=sqrt(5), nn.Linear's own), B zeros, so B @ A = 0 and the wrapped
        layer starts exactly as the base."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x):
        base = F.linear(x, self.weight, self.bias)
        h = F.dropout(x, self.dropout, self.training) if self.dropout else x
        return base + self.scale * F.linear(F.linear(h, self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + scale * B @ A (computed in fp32, stored in W's dtype), the same bias.
        The weight is updated in place (no second copy of a large layer): this LoRALinear is spent after it."""
        lin = torch.nn.utils.skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                                       device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = self.scale * (self.lora_B.float() @ self.lora_A.float())
            self.weight.add_(delta.to(self.weight.dtype))
        lin.weight = self.weight
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}, dropout={self.dropout}"


@dataclass
class LoRAReport:
    wrapped: list[str]  # module names
    trainable: int  # parameters with requires_grad after apply_lora
    adapter: int  # adapter parameters (lora_A + lora_B)
    total: int  # every parameter, adapters included

    def __str__(self):
        return (f"LoRA: {len(self.wrapped)} linears wrapped, {self.adapter:,} adapter parameters; "
                f"trainable {self.trainable:,} of {self.total:,} ({100 * self.trainable / max(self.total, 1):.2f}%)")


def _under(name: str, prefixes) -> bool:
    return prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)


def _set_child(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def decoder_targets(model: nn.Module) -> tuple[str, ...]:
    """The decoder's attention + MLP linears: GPT_TARGETS for nanochat's GPT, DEEPSEEK_TARGETS for
    DeepSeek-OCR's decoder (whichever set the model's Linear names hold in full)."""
    names = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for targets in (GPT_TARGETS, DEEPSEEK_TARGETS):
        if names.issuperset(targets):
            return targets
    raise ValueError(f"lora: {type(model).__name__} has neither nanochat's GPT linears {list(GPT_TARGETS)} nor "
                     f"DeepSeek-OCR's {list(DEEPSEEK_TARGETS)}: name the targets (its Linear names: {sorted(names)})")


def apply_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets=None,
               modules=None, freeze_base: bool = True, also_train=()) -> LoRAReport:
    """Wrap every nn.Linear under `modules` (module-name prefixes such as "gpt", "projector", "clip";
    None = the whole model) whose name's last component is in `targets` (None = `decoder_targets(model)`)
    in a LoRALinear, in place. With `freeze_base` every other parameter gets requires_grad False, except those
    under a prefix in `also_train` (e.g. "projector": a projector trained in full beside a LoRA decoder); without
    it requires_grad is left as it is. Call it before building the optimizer and before any DDP/FSDP wrapping
    (Composer's DDP and FSDP see the adapters as ordinary parameters of their blocks). Names are matched
    without wrapper segments (activation checkpointing). Returns what it did (LoRAReport)."""
    if isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= MAX_RANK:
        raise ValueError(f"lora: r must be an integer in 1..{MAX_RANK}, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"lora: alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora: dropout must be in [0, 1), got {dropout!r}")
    if targets is None:
        targets = decoder_targets(model)
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets:
        raise ValueError("lora: targets is empty: name the Linear modules to adapt (e.g. q_proj, c_q)")
    for t in targets:
        if t in REFUSED:
            raise ValueError(f"lora: target {t!r} is refused: {REFUSED[t]}")
    if isinstance(modules, str):
        modules = (modules,)
    if isinstance(also_train, str):
        also_train = (also_train,)
    if modules is not None:
        names = {clean_name(n) for n, _ in model.named_modules()}
        missing = [p for p in modules if p not in names]
        if missing:
            tops = sorted(n for n, _ in model.named_children())
            raise ValueError(f"lora: modules {missing} name no submodule of {type(model).__name__} "
                             f"(its top-level modules: {tops})")
    if also_train:
        pnames = [clean_name(n) for n, _ in model.named_parameters()]
        stray = [p for p in also_train if not any(_under(n, (p,)) for n in pnames)]
        if stray:
            raise ValueError(f"lora: also_train {stray} names no parameter of {type(model).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("lora: the model already has LoRA adapters (apply_lora was called twice)")

    linears = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and _under(clean_name(n), modules)]
    available = sorted({n.rpartition(".")[2] for n, _ in linears})
    unknown = [t for t in targets if t not in available]
    if unknown:
        where = "the model" if modules is None else f"modules {list(modules)}"
        raise ValueError(f"lora: targets {unknown} match no nn.Linear in {where}; its Linear names: {available}")
    chosen = [(n, m) for n, m in linears if n.rpartition(".")[2] in targets]  # not empty: every target matched

    if freeze_base:
        for name, p in model.named_parameters():
            if not (also_train and _under(clean_name(name), also_train)):
                p.requires_grad_(False)
    for name, m in chosen:
        _set_child(model, name, LoRALinear(m, r, alpha, dropout))
    adapters = [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]
    return LoRAReport(wrapped=[clean_name(n) for n, _ in chosen],
                      trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      adapter=sum(p.numel() for p in adapters),
                      total=sum(p.numel() for p in model.parameters()))


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight (W += alpha/r * B @ A) and put a plain nn.Linear back, in place:
    the state_dict keys are then exactly those before apply_lora. Returns how many layers were merged."""
    merged = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, m in merged:
        _set_child(model, name, m.merged())
    return len(merged)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters (`<module>.lora_A` / `.lora_B`), a few MB to save beside a base checkpoint; load them
    back with `model.load_state_dict(sd, strict=False)` after apply_lora with the same r and targets."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}
