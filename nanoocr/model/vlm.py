"""
NanoOCR: DeepSeek-OCR's DeepEncoder (SAM-ViT-B -> 16x conv compressor -> CLIP-L/14 -> projector) in
front of a decoder: nanochat's GPT (`decoder: gpt`), or DeepSeek-OCR's own MoE decoder (`decoder: deepseek`,
nanoocr/model/deepseek_decoder.py, the released model's language part). Either is `self.gpt`, with the same
embed -> trunk interface. Shapes at full size, base mode (1024 px), one image:

    pixels (N, 3, 1024, 1024) in [-1, 1]
      -> sam (ViT-B, window 14, 4 global blocks; neck; net_2, net_3)   sam_out  (N, 1024, 16, 16)
      -> clip (CLS + sam_out as patch tokens, 24 layers)                clip_out (N, 1 + 256, 1024)
      -> fusion cat([clip_out[:, 1:], sam_out.flatten(2).transpose(1, 2)], -1)   (N, 256, 2048)
      -> projector Linear(2048, 1280)                                   (N, 256, 1280) = a 16 x 16 grid
      -> layout per image: [local grid + newlines, global grid + newlines, view_separator]
             global 16 x (16 + 1 newline) + 1 separator = 273 vectors   (Gundam adds the local part:
             crops (h*w, 10, 10, 1280) stitched into one (10h) x (10w) grid, a newline after every row)
      -> vision (sum_i tokens_i, 1280)
    ids (B, T) -> gpt.embed -> (B, T, 1280) -> merge: positions with ids == image_token_id take the
      vision vectors in row-major (b, t) order -> gpt.trunk -> loss | logits (B, T, 65537; DeepSeek 129280)

Notable features:
- the GPT forward is never copied: embed -> merge -> trunk (nanoocr/model/gpt.py)
- global views and Gundam crops are each encoded in ONE batch, whatever the images' crop grids
- a mismatch between image tokens and vision vectors is a ValueError naming both counts
- optional fused embedding + image scatter (gpt.embed_impl="triton", kernels/scatter.py)
- optional activation checkpointing of every SAM, CLIP and GPT block (Gundam batches need the memory)

Sharding (FSDP) and meta-device init, the hooks Composer 0.32.1 reads from the module it wraps
(composer/distributed/dist_strategy.py, `prepare_fsdp_module`):
- `fsdp_wrap_fn(module)`: the FSDP units are each SAM block, each CLIP layer and each GPT Block or DeepSeek
  DecoderLayer (WRAP_UNITS);
  the rest (patch embed, neck, compressor, CLIP embeddings, projector, wte, lm_head) is the root unit
- `activation_checkpointing_fn(module)`: the same units; used by Composer's FSDP (fsdp_config
  `activation_checkpointing: true`) and by `set_activation_checkpointing` here, both through torch's
  `apply_activation_checkpointing` + `checkpoint_wrapper` (NO_REENTRANT): one mechanism, never applied twice
- `param_init_fn(module)`: initializes one module's own parameters/buffers after `to_empty` (FSDP calls it
  per module on a meta-device build); `materialize(device)` does the same without FSDP
- parameter names never show wrapper segments: `named_parameters` strips them (nanoocr.model.distributed.clean_name);
  state_dict keys are stripped by the wrappers' own hooks
Code that runs the model outside its forward (generation, probes) on a sharded model goes through
`nanoocr.model.distributed.full_params`.
"""

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

from nanoocr.model.precision import autocast
from nanoocr.model.tokens import layout_tokens
from nanoocr.model.clip import CLIPConfig, CLIPEmbeddings, CLIPEncoder, CLIPLayer
from nanoocr.model.ctc import CTCHead
from nanoocr.model.deepseek_decoder import DecoderLayer, DeepseekDecoder, DeepseekDecoderConfig
from nanoocr.model.gpt import GPT, GPTConfig, log_once, use_triton
from nanoocr.model.gpt import Block as GPTBlock
from nanoocr.model.sam import Attention as SAMAttention
from nanoocr.model.sam import Block as SAMBlock
from nanoocr.model.sam import LayerNorm2d, SAMConfig, SAMEncoder

COMPRESSION = 4  # net_2 and net_3 (stride 2 each) shrink SAM's patch grid 4x per side: 16x fewer tokens
# The language model choices: config dataclass and module of `VLMConfig.gpt` / `NanoOCR.gpt` per `decoder`.
DECODERS = {"gpt": (GPTConfig, GPT), "deepseek": (DeepseekDecoderConfig, DeepseekDecoder)}
CTC_SOURCES = ("tokens", "sam", "columns")  # what the CTC head reads (VLMConfig.ctc_source)


@dataclass
class VLMConfig:
    sam: SAMConfig = field(default_factory=SAMConfig)
    clip: CLIPConfig = field(default_factory=CLIPConfig)
    gpt: GPTConfig | DeepseekDecoderConfig = field(default_factory=GPTConfig)  # the decoder's config (`decoder`)
    image_token_id: int = 65536  # <|image|>, appended after nanochat's 65536 tokens (DeepSeek-OCR: 128815)
    activation_checkpointing: bool = False  # recompute SAM/CLIP/decoder blocks in backward
    decoder: str = "gpt"  # "gpt": nanochat's GPT; "deepseek": DeepSeek-OCR's MoE decoder (DECODERS)
    # LoRA adapters, apply_lora's arguments ({r, alpha, dropout, targets, modules, also_train, freeze_base};
    # nanoocr/model/lora.py). A training choice: NanoOCR(config) builds the plain model, the recipe adds the
    # adapters after the pretrained weights are in (nanoocr.train.build), and an export merges them (None there).
    lora: dict | None = None
    # A CTC reading head on the global view (nanoocr/model/ctc.py), trained beside the GPT's loss: `ctc_upsample`
    # frames per position (0 = no head), its loss weighted by `ctc_weight` in the training total. `ctc_source`:
    # "tokens" reads the projected vision tokens row-major (64 px each); "sam" reads SAM's 16 px grid (the neck,
    # before the compressor), max over each column: one left-to-right sequence, as a CRNN reads a line; "columns"
    # reads the projected tokens so, max over each column of the token grid (a line straddling two token rows
    # is still one left-to-right pass).
    ctc_upsample: int = 0
    ctc_weight: float = 1.0
    ctc_source: str = "tokens"

    def __post_init__(self):
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {self.decoder!r}")
        if self.lora is not None:
            import inspect

            from nanoocr.model.lora import apply_lora
            known = set(inspect.signature(apply_lora).parameters) - {"model"}
            if not isinstance(self.lora, dict) or "r" not in self.lora or set(self.lora) - known:
                raise ValueError(f"lora must be a mapping with 'r' and keys among {sorted(known)}, got {self.lora!r}")
        # YAML gives plain dicts: build the sub-configs (an unknown key fails in the dataclass, naming it)
        for name, cls in (("sam", SAMConfig), ("clip", CLIPConfig), ("gpt", DECODERS[self.decoder][0])):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
            assert isinstance(getattr(self, name), cls), f"{name} must be a {cls.__name__} or dict"
        assert self.clip.dim == self.sam.out_chans, \
            f"CLIP reads SAM features as patch tokens: clip.dim {self.clip.dim} != sam.out_chans {self.sam.out_chans}"
        if not (isinstance(self.ctc_upsample, int) and 0 <= self.ctc_upsample <= 64):
            raise ValueError(f"ctc_upsample must be an int in [0, 64] (frames per position), got {self.ctc_upsample!r}")
        if self.ctc_source not in CTC_SOURCES:
            raise ValueError(f"ctc_source must be one of {CTC_SOURCES}, got {self.ctc_source!r}")
        assert 0 <= self.image_token_id < self.gpt.vocab_size, \
            f"image_token_id {self.image_token_id} outside the vocabulary (vocab_size {self.gpt.vocab_size})"


def view_grid(config, size):
    """Side of the vision grid of one size x size view: patch 16, then the 4x compressor."""
    assert size % (config.sam.patch_size * COMPRESSION) == 0, \
        f"view size {size} must be a multiple of {config.sam.patch_size * COMPRESSION}"
    return size // config.sam.patch_size // COMPRESSION


def image_token_count(config, size, tiles=(1, 1), crop_size=640):
    """Vision vectors of one image with a size x size global view and crop_size crops: the layout formula of
    `nanoocr.model.tokens.layout_tokens` on this config's grids (what `encode_images` builds)."""
    tiles = tuple(tiles)
    return layout_tokens(view_grid(config, size), tiles, view_grid(config, crop_size) if tiles != (1, 1) else 0)


# The model's parts, for per-part optimizer settings (optimizer.param_groups) and freezing: parameter-name
# prefixes, the first match wins (compressor before sam: net_2 / net_3 live inside the SAM module).
PARTS = {"compressor": ("sam.net_2.", "sam.net_3."), "sam": ("sam.",), "clip": ("clip.",),
         "projector": ("projector.",), "newline": ("image_newline", "view_separator"), "gpt": ("gpt.",),
         "ctc_head": ("ctc_head.",)}


def param_part(name: str) -> str:
    """The part (a PARTS key) a parameter belongs to, from its clean name."""
    for part, prefixes in PARTS.items():
        if name.startswith(prefixes):
            return part
    raise KeyError(f"parameter {name!r} belongs to none of the parts {list(PARTS)}")


# The FSDP units and the activation-checkpointing units: one SAM block, one CLIP layer, one decoder block.
WRAP_UNITS = (SAMBlock, CLIPLayer, GPTBlock, DecoderLayer)


class NanoOCR(nn.Module):
    # CPU bf16 autocast of forward and generation (nanoocr.model.precision), None = fp32. A runtime choice
    # of the machine, not part of the config: the recipe and load_export set it.
    autocast_dtype: torch.dtype | None = None

    def __init__(self, config):
        super().__init__()
        self.config = config
        n_embd = config.gpt.n_embd
        self.sam = SAMEncoder(config.sam)
        self.clip = CLIPEncoder(config.clip)
        self.projector = nn.Linear(config.clip.dim + config.sam.out_chans, n_embd, bias=True)
        self.image_newline = nn.Parameter(torch.empty(n_embd))
        self.view_separator = nn.Parameter(torch.empty(n_embd))  # official weights: "view_seperator"
        self.gpt = DECODERS[config.decoder][1](config.gpt)  # the language model, whichever decoder
        if config.ctc_upsample:  # torch's Linear init (param_init_fn's generic branch does the same)
            width = config.sam.neck_dim if config.ctc_source == "sam" else n_embd
            self.ctc_head = CTCHead(width, config.gpt.vocab_size, config.ctc_upsample)
        self.init_weights()
        if config.activation_checkpointing:
            self.set_activation_checkpointing(True)

    @torch.no_grad()
    def init_weights(self):
        """From scratch: SAM/CLIP init themselves; projector keeps torch's Linear init; GPT: nanochat's;
        DeepSeek decoder: DeepSeek-V2's (DeepseekDecoder.init_module)."""
        n_embd = self.config.gpt.n_embd
        self.image_newline.copy_(torch.randn(n_embd) / math.sqrt(n_embd))
        self.view_separator.copy_(torch.randn(n_embd) / math.sqrt(n_embd))
        self.gpt.init_weights()

    # ---- wrap units, activation checkpointing, meta-device init (Composer/FSDP hooks) -----------------

    def _checkpointed(self) -> set:
        """ids of the modules already inside a CheckpointWrapper."""
        return {id(m._checkpoint_wrapped_module) for m in self.modules() if isinstance(m, CheckpointWrapper)}

    def fsdp_wrap_fn(self, module) -> bool:
        """Composer's FSDP auto-wrap policy: each SAM block, CLIP layer and GPT block is one FSDP unit.
        A checkpoint-wrapped block is wrapped as a whole (FSDP(CheckpointWrapper(block)), the order
        Composer's own checkpointing gives), never the block inside it as well."""
        if isinstance(module, CheckpointWrapper):
            return isinstance(module._checkpoint_wrapped_module, WRAP_UNITS)
        return isinstance(module, WRAP_UNITS) and id(module) not in self._checkpointed()

    def activation_checkpointing_fn(self, module) -> bool:
        """The units to recompute in backward (same as the FSDP units); False for a block already wrapped."""
        return isinstance(module, WRAP_UNITS) and id(module) not in self._checkpointed()

    @property
    def activation_checkpointing(self) -> bool:
        """True when this model checkpoints its blocks itself (see set_activation_checkpointing)."""
        return any(isinstance(m, CheckpointWrapper) for m in self.modules())

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Wrap (or unwrap) every unit in torch's checkpoint_wrapper (NO_REENTRANT); idempotent.

        Under Composer's FSDP, leave this off and set fsdp_config `activation_checkpointing: true`: Composer
        applies the same wrapper to `activation_checkpointing_fn`'s units (the recipe does this)."""
        if enabled:
            wrapper = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
            apply_activation_checkpointing(self, checkpoint_wrapper_fn=wrapper, check_fn=self.activation_checkpointing_fn)
            return
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, CheckpointWrapper):
                    setattr(parent, name, child._checkpoint_wrapped_module)

    def named_parameters(self, *args, **kwargs):
        """As nn.Module's, without wrapper segments (`_checkpoint_wrapped_module.`, `_fsdp_wrapped_module.`):
        the names of the state_dict, whatever wraps the blocks."""
        from nanoocr.model.distributed import clean_name
        for name, p in super().named_parameters(*args, **kwargs):
            yield clean_name(name), p

    def _gpt_init_roles(self) -> dict:
        # id(module) -> how GPT.init_weights initializes it (nanochat's d20 table in nanoocr/model/gpt.py)
        if isinstance(self.gpt, DeepseekDecoder):  # its own per-module rules (DeepseekDecoder.init_module)
            return {id(m): "deepseek" for m in self.gpt.modules()}
        layout = getattr(self.config.gpt, "layout", "d20")
        if layout != "d20":
            raise NotImplementedError(f"param_init_fn (meta-device init) knows GPT layout 'd20' only, not {layout!r}: "
                                      "add its per-module rules (GPT.init_weights' table) to NanoOCR.param_init_fn")
        roles = {id(self.gpt): "rotary", id(self.gpt.transformer.wte): "embedding", id(self.gpt.lm_head): "zeros"}
        for name, m in self.gpt.named_modules():
            if isinstance(m, nn.Linear) and id(m) not in roles:
                roles[id(m)] = "zeros" if name.endswith(("attn.c_proj", "mlp.c_proj")) else "linear"
        return roles

    @torch.no_grad()
    def param_init_fn(self, module) -> None:
        """Initialize `module`'s OWN parameters and buffers (not its children's), already materialized
        (`to_empty`), with the distributions of a normal build. FSDP (through Composer) calls it for every
        module of a meta-device model; `materialize` calls it without FSDP."""
        role = self._gpt_init_roles().get(id(module))
        if hasattr(module, "reset_lora_parameters"):  # a LoRA adapter (nanoocr/model/lora.py): B = 0, A kaiming
            module.reset_lora_parameters()
        if role == "deepseek":
            self.gpt.init_module(module)
        elif role == "rotary":
            module.init_rotary(device=module.cos.device)  # non-persistent buffers: recomputed, never loaded
        elif role == "embedding":
            nn.init.normal_(module.weight, mean=0.0, std=1.0)
        elif role == "zeros":
            nn.init.zeros_(module.weight)
        elif role == "linear":
            fan_out, fan_in = module.weight.shape
            nn.init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(fan_in) * min(1.0, math.sqrt(fan_out / fan_in)))
        elif module is self:
            n_embd = self.config.gpt.n_embd
            for p in (self.image_newline, self.view_separator):
                p.copy_(torch.randn(n_embd, device=p.device) / math.sqrt(n_embd))
        elif isinstance(module, SAMEncoder):
            nn.init.trunc_normal_(module.pos_embed, std=0.02)
        elif isinstance(module, SAMAttention):
            module.rel_pos_h.zero_()
            module.rel_pos_w.zero_()
        elif isinstance(module, LayerNorm2d):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, CLIPEmbeddings):
            dim = module.class_embedding.shape[0]
            module.class_embedding.copy_(torch.randn(dim, device=module.class_embedding.device) * dim ** -0.5)
        elif isinstance(module, nn.Embedding) and module is self.clip.embeddings.position_embedding:
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
            module.reset_parameters()  # torch defaults: what SAM, CLIP and the projector keep
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"param_init_fn: no init rule for the parameters of {type(module).__name__}")

    def materialize(self, device="cpu"):
        """A model built under `torch.device("meta")` -> real tensors on `device`, initialized like a normal
        build (what FSDP does per unit through param_init_fn, for a model that is not sharded)."""
        for module in list(self.modules()):
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if any(t.is_meta for t in own):
                module.to_empty(device=device, recurse=False)
                self.param_init_fn(module)
        return self

    # ---- the model ----------------------------------------------------------------------------------

    def encode_views(self, pixels, with_neck=False):
        """(B, 3, S, S) -> (B, nq*nq, n_embd) projected vision vectors of square views, row-major; with_neck:
        also SAM's neck (B, neck_dim, S/16, S/16).

        Pixels are floats in [-1, 1], or uint8 0..255 (what the data loader ships), normalized here with
        the ops of images.to_tensor (ToTensor + Normalize(0.5, 0.5)), so both give the same result."""
        if pixels.dtype == torch.uint8:
            pixels = pixels.float().div_(255).sub_(0.5).div_(0.5)
        pixels = pixels.to(self.projector.weight.dtype)
        sam_out, neck = self.sam(pixels, with_neck=True) if with_neck else (self.sam(pixels), None)  # (B, Cs, nq, nq)
        clip_out = self.clip(sam_out)  # (B, 1 + nq*nq, Cc)
        fused = torch.cat([clip_out[:, 1:], sam_out.flatten(2).transpose(1, 2)], dim=-1)  # (B, nq*nq, Cc + Cs)
        out = self.projector(fused)
        return (out, neck) if with_neck else out

    def _with_newlines(self, grid):
        # grid (R, W, C) -> (R * (W + 1), C): a learned newline vector after every row
        R, _, C = grid.shape
        newline = self.image_newline.to(grid.dtype).expand(R, 1, C)
        return torch.cat([grid, newline], dim=1).flatten(0, 1)

    def encode_images(self, images, crops=None, tiles=None, with_ctc=False):
        """images (N, 3, S, S); crops (M, 3, s, s) | None; tiles (N, 2) (w_tiles, h_tiles) | None
        -> (sum_i tokens_i, n_embd): per image [local + newlines, global + newlines, separator]; with_ctc: also
        what the CTC head reads of the global views (`ctc_source`): their token grids (N, nq*nq, n_embd), row-major,
        SAM's 16 px grid, max over each column (N, S/16, neck_dim), or the token grid so (N, nq, n_embd), both
        left to right."""
        assert images.ndim == 4, f"images must be (N, 3, S, S), got {tuple(images.shape)}"
        N = images.shape[0]
        tiles = [(1, 1)] * N if tiles is None else [tuple(t) for t in torch.as_tensor(tiles).tolist()]
        if len(tiles) != N or any(len(t) != 2 or min(t) < 1 for t in tiles):
            raise ValueError(f"tiles must be {N} (w_tiles, h_tiles) pairs of positive ints, got {tiles}")
        n_crops = [w * h if (w, h) != (1, 1) else 0 for w, h in tiles]
        given = 0 if crops is None else crops.shape[0]
        if sum(n_crops) != given:
            raise ValueError(f"tiles {tiles} need {sum(n_crops)} crops, but {given} crops were given")

        if with_ctc and self.config.ctc_source == "sam":
            flat, neck = self.encode_views(images, with_neck=True)  # (N, nq*nq, C), (N, Cn, h, w)
            ctc_in = neck.amax(dim=2).transpose(1, 2)  # max over the rows: (N, w, Cn), left to right
        else:
            flat = self.encode_views(images)  # (N, nq*nq, C)
            ctc_in = flat
        nq = math.isqrt(flat.shape[1])
        g = flat.view(N, nq, nq, -1)
        if with_ctc and self.config.ctc_source == "columns":
            ctc_in = g.amax(dim=1)  # max over the token rows: (N, nq, C), left to right
        if given:
            loc = self.encode_views(crops)  # (M, nc*nc, C), all images' crops in one batch
            nc = math.isqrt(loc.shape[1])
            loc = loc.view(given, nc, nc, -1)
        out, k = [], 0
        for i, (w, h) in enumerate(tiles):
            if n_crops[i]:
                # crops are row-major over the tile grid: (h, w, nc, nc, C) -> rows of tiles interleaved
                # with rows inside a tile -> one (h*nc) x (w*nc) image of vision vectors
                c = loc[k:k + n_crops[i]].view(h, w, nc, nc, -1).permute(0, 2, 1, 3, 4).reshape(h * nc, w * nc, -1)
                out.append(self._with_newlines(c))
                k += n_crops[i]
            out.append(self._with_newlines(g[i]))
            out.append(self.view_separator.to(g.dtype)[None])
        return (torch.cat(out), ctc_in) if with_ctc else torch.cat(out)  # (sum_i tokens_i, C)

    def _check_counts(self, ids, vision):
        n_pos = int((ids == self.config.image_token_id).sum())
        n_vec = 0 if vision is None else vision.shape[0]
        if n_pos != n_vec:
            raise ValueError(f"the batch has {n_pos} image tokens (id {self.config.image_token_id}) "
                             f"but the images produced {n_vec} vision vectors")

    def merge(self, x, ids, vision):
        """x (B, T, C) token embeddings; image positions take `vision` (N, C) rows in row-major order."""
        self._check_counts(ids, vision)
        if vision is None:
            return x
        return x.masked_scatter((ids == self.config.image_token_id)[..., None], vision.to(x.dtype))

    def embed(self, ids, vision=None):
        """ids (B, T) + vision (N, C) | None -> (B, T, C) embeddings with the vision vectors merged."""
        if use_triton(self.config.gpt.embed_impl, ids):
            self._check_counts(ids, vision)  # the kernel trusts the count
            from kernels.scatter import embed_scatter  # lazy: the model must import without the kernels
            log_once("embed+merge: Triton kernel (kernels.scatter)")
            wte = self.gpt.transformer.wte.weight
            return embed_scatter(ids, wte, None if vision is None else vision.to(wte.dtype), self.config.image_token_id)
        log_once("embed+merge: torch (embedding + masked_scatter)")
        return self.merge(self.gpt.embed(ids), ids, vision)

    def forward(self, ids, targets=None, images=None, crops=None, tiles=None, loss_reduction="mean",
                ctc_answers=None):
        """ids/targets (B, T); images/crops/tiles as encode_images -> loss, or logits (B, T, V) without targets.
        ctc_answers (one target or None per image, nanoocr.model.ctc.answer_targets; needs the CTC head and
        images) -> (loss, ctc_loss)."""
        if images is None and (crops is not None or tiles is not None):
            raise ValueError("crops/tiles given without images")
        if ctc_answers is not None and (images is None or not self.config.ctc_upsample):
            raise ValueError("ctc_answers needs images and a CTC head (ctc_upsample > 0)")
        with autocast(self.autocast_dtype, ids.device.type):
            vision, grids = None, None
            if images is not None:
                vision = self.encode_images(images, crops, tiles, with_ctc=ctc_answers is not None)
                if ctc_answers is not None:
                    vision, grids = vision
            x = self.embed(ids, vision)
            if vision is None and self.training and torch.is_grad_enabled():
                x = x + 0.0 * self._vision_touch()
            out = self.gpt.trunk(x, targets, loss_reduction=loss_reduction, ids=ids)
            return out if grids is None else (out, self.ctc_head.loss(grids, ctc_answers))

    def _vision_touch(self):
        """A zero that depends on every vision parameter, for a text-only (micro)batch in training.

        DDP all-reduces the gradient of every trainable parameter and FSDP reduce-scatters each unit it ran:
        a rank whose microbatch has no image would otherwise skip the vision parameters while another
        rank's did not, and the ranks' collectives no longer match (a hang or a gloo/NCCL size error).
        One 64 px view (a 1 x 1 vision grid) runs every SAM/CLIP unit through its own forward for nearly
        nothing; times zero, it changes no gradient."""
        p = self.projector.weight
        view = torch.zeros(1, 3, 64, 64, dtype=p.dtype, device=p.device)
        return self.encode_views(view).sum() + self.image_newline.sum() + self.view_separator.sum()
