"""Building a run from a validated config: data, tokenizer, model, loaders, then the Trainer.

build_data (convert missing data sets to MDS) → build_tokenizer (given, or a small BPE trained on the
training texts) → build_model (preset + overrides + pretrained weights) → build_loader → build_trainer
(optimizer, scheduler, algorithms, callbacks and loggers from nanoocr/train/builders.py; every top-level
Trainer key of the config passed straight through). Rank 0 builds what is shared on disk; the others wait.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import OmegaConf as om

from nanoocr.data.stream import read_records
from nanoocr.train.config import OWN_KEYS, ConfigError, stream_items, trainer_params

log = logging.getLogger("nanoocr")


def barrier():
    from composer.utils import dist
    if dist.get_world_size() > 1:
        dist.barrier()


def is_rank0() -> bool:
    from composer.utils import dist
    return dist.get_global_rank() == 0


def build_data(items: list[dict]) -> None:
    """Builds each data set whose output is missing (rank 0; the others wait).

    `{input: SPEC, out: DIR}` runs convert_to_mds on a source spec; `{pages: PDF_DIR, out: DIR}` runs the
    real-page builder (nanoocr.eval.pages: text-dominant pages, split by document into DIR/train and DIR/val)."""
    for i, item in enumerate(items or []):
        if ("input" in item) == ("pages" in item):
            raise ConfigError(f"build_data[{i}] needs exactly one of 'input' (a source spec) or 'pages' (a PDF folder)")
        out = Path(item["out"])
        done = (out / "train" / "index.json") if "pages" in item else (out / "index.json")
        if not done.exists() and is_rank0():
            if "pages" in item:
                from nanoocr.eval.pages import main as build
                args = ["--pdf-dir", item["pages"], "--out", str(out)]
                args += ["--max-pages", str(item["max_pages"])] if item.get("max_pages") else []
                args += ["--val-fraction", str(item["val_fraction"])] if item.get("val_fraction") else []
            else:
                from nanoocr.data.convert import main as build
                args = ["--input", item["input"], "--out", str(out)]
                args += ["--max-side", str(item["max_side"])] if item.get("max_side") else []
            args += ["--workers", str(item["workers"])] if item.get("workers") else []
            print(f"[nanoocr] building {out} from {item.get('input') or 'pages:' + item['pages']}", flush=True)
            if build(args) not in (0, None):
                raise RuntimeError(f"build_data[{i}]: building {out} failed (see the messages above)")
        barrier()


def _stream_source(stream: dict) -> dict:
    """A stream config's `remote`/`local`/`split`: `read_records` reads what the training stream reads."""
    return {"remote": stream.get("remote"), "local": stream.get("local"), "split": stream.get("split")}


def build_tokenizer(tcfg: dict, run_folder: str, train_streams: list[dict]):
    """A given tokenizer (`kind`: nanoocr's tokenizer.json, nanochat's tokenizer.pkl, or the released DeepSeek-OCR
    tokenizer.json folder), or a small BPE trained on the texts of `train_streams` (stream configs)."""
    from nanoocr.data.tokenizer import Tokenizer, load_deepseek_tokenizer, load_nanochat_tokenizer
    kind = tcfg.get("kind", "nanoocr")
    loaders = {"nanoocr": Tokenizer.from_file, "nanochat": load_nanochat_tokenizer, "deepseek": load_deepseek_tokenizer}
    if kind not in loaders:
        raise ConfigError(f"tokenizer.kind must be one of {sorted(loaders)}, got {kind!r}")
    if tcfg.get("path"):
        return loaders[kind](tcfg["path"])
    if kind != "nanoocr":
        raise ConfigError(f"tokenizer.kind {kind!r} needs tokenizer.path (only nanoocr's BPE is trained here)")
    # No tokenizer given: train a small BPE on the training texts (Tier-1 trains everything from scratch).
    out = Path(run_folder) / "tokenizer"
    if not (out / "tokenizer.json").exists() and is_rank0():
        texts = [m["content"] for s in train_streams for r in read_records(**_stream_source(s))
                 for m in r["messages"]]
        tok = Tokenizer.train_from_iterator(texts, vocab_size=tcfg.get("train_vocab_size", 512))
        tok.save(out)
        print(f"[nanoocr] trained a {tok.vocab_size}-token BPE on {len(texts)} texts → {out}", flush=True)
    barrier()
    return Tokenizer.from_file(out)


def deepseek_decoder_fields(path) -> dict:
    """The decoder fields (DeepseekDecoderConfig's) of a released-layout DeepSeek-OCR checkpoint: its config.json
    (next to the weights: `path` is the folder or a file in it), decoder section checked as the loader does."""
    import dataclasses
    import json

    from nanoocr.model.deepseek_decoder import config_from_hf
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"model.pretrained.deepseek: no config.json in {folder} (the released layout has one)")
    try:
        config = config_from_hf(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError, AssertionError) as e:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{cfg_file}: {e}") from None
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in ("attn_impl", "embed_impl")}


def build_model(mcfg: dict, tokenizer):
    """Preset + per-part overrides; vocabulary and image id from the tokenizer; pretrained weights; LoRA adapters."""
    from nanoocr.model import presets
    from nanoocr.model.vlm import NanoOCR
    gpt = dict(mcfg.get("gpt") or {})
    pre = mcfg.get("pretrained") or {}
    preset = mcfg.get("preset", "nano")
    decoder = (mcfg.get("vlm") or {}).get("decoder") or presets.PRESETS.get(preset, {}).get("decoder", "gpt")
    if decoder == "deepseek":
        # DeepSeek-OCR: the decoder's architecture (vocabulary included: the released embedding has 129280 rows,
        # more than the tokenizer's ids) comes from the checkpoint's config.json under any field the YAML sets,
        # and is written back into the config so the saved config.yaml rebuilds it (export) without the checkpoint.
        if pre.get("deepseek"):
            derived = deepseek_decoder_fields(pre["deepseek"])
            for key, value in derived.items():
                gpt.setdefault(key, value)
            mcfg["gpt"] = {**(mcfg.get("gpt") or {}), **{k: gpt[k] for k in derived}}
    else:
        gpt.setdefault("vocab_size", tokenizer.vocab_size)  # a nanochat checkpoint is extended to this size
    # The GPT's architecture comes from the nanochat checkpoint (its meta and tensor names: d20-era or today's
    # layout), under any field the YAML sets: `pretrained.nanochat` (stage 1, weights too) or `gpt_config_from`
    # (stage 2: the same architecture, weights from stage 1's checkpoint). The fields are written back into
    # the config, so the saved config.yaml rebuilds the same GPT (export, sample) without the checkpoint.
    arch_from = pre.get("nanochat") or mcfg.get("gpt_config_from")
    if arch_from:
        from nanoocr.model.nanochat import nanochat_gpt_fields
        derived = nanochat_gpt_fields(arch_from, pre.get("nanochat_step"))
        for key, value in derived.items():
            gpt.setdefault(key, value)
        mcfg["gpt"] = {**(mcfg.get("gpt") or {}), **{k: gpt[k] for k in derived}}
        mcfg["gpt_config_from"] = None
    cfg = presets.build_config(preset, sam=mcfg.get("sam") or {}, clip=mcfg.get("clip") or {},
                               gpt=gpt, image_token_id=tokenizer.image_id, **(mcfg.get("vlm") or {}))
    if mcfg.get("activation_checkpointing"):
        cfg.activation_checkpointing = True
    top = max(tokenizer.bos_id, tokenizer.pad_id, tokenizer.image_id, tokenizer.token_id("<|assistant_end|>"))
    if top >= cfg.gpt.vocab_size:
        raise ConfigError(f"the tokenizer's special id {top} is outside the model's vocabulary "
                          f"(model.gpt.vocab_size {cfg.gpt.vocab_size}): a tokenizer of another model?")
    model = NanoOCR(cfg)
    if pre.get("nanochat"):
        from nanoocr.model.nanochat import load_nanochat_into
        load_nanochat_into(model, pre["nanochat"], step=pre.get("nanochat_step"))
    from nanoocr.model import pretrained
    if pre.get("hf_sam"):
        pretrained.load_hf_sam(model.sam, pre["hf_sam"])
    if pre.get("hf_clip"):
        pretrained.load_hf_clip(model.clip, pre["hf_clip"])
    if pre.get("deepseek"):
        # the whole released model into a DeepSeek decoder; into nanochat's GPT, its vision parts only
        load = pretrained.load_deepseek_ocr if decoder == "deepseek" else pretrained.load_deepseek_vision
        load(model, pre["deepseek"])
    if cfg.lora:
        # after the weights: the adapters start at B = 0 (the loaded model exactly), and the base is frozen
        from nanoocr.model.lora import apply_lora
        try:
            print(f"[nanoocr] {apply_lora(model, **cfg.lora)}", flush=True)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model.vlm.lora: {e}") from None
    return model


def build_loader(lcfg: dict, tokenizer, batch_size: int):
    from nanoocr.data.stream import build_dataloader, data_spec
    loader = build_dataloader(lcfg, tokenizer, batch_size)
    return loader, data_spec(loader)


def run_folder_of(cfg: dict) -> str:
    """Where a run writes its config, metrics, tokenizer, plots, eval and export: `run_folder`, else runs/RUN_NAME."""
    return cfg.get("run_folder") or os.path.join("runs", cfg.get("run_name") or "nanoocr")


def trainer_kwargs(cfg: dict, device: str) -> dict:
    """The Trainer's arguments from a config, but for what the recipe builds (model, loaders, optimizer, ...):
    every top-level key that names a Trainer argument passes straight through, over the recipe's defaults
    where they differ from Trainer's."""
    defaults = {
        "run_name": "nanoocr", "seed": 17, "device": device,
        "precision": "fp32" if device == "cpu" else "amp_bf16",  # fp32: the only precision Composer has on CPU
        "device_train_microbatch_size": cfg["device_train_batch_size"],
        # Microbatch losses weighted by their loss-generating tokens (data.get_num_tokens_in_batch), so the
        # step's loss and gradient are the per-token mean over the whole batch, however it is split.
        "accumulate_train_batch_on_tokens": True,
        "step_schedulers_every_batch": True,  # warmups in batches, not epochs
        # A crash between writing a checkpoint and moving `latest` to it leaves a file newer than the one
        # autoresume loads; resuming must be allowed to overwrite it, so autoresume implies overwrite.
        "save_overwrite": cfg.get("autoresume", False),
        # A checkpoint whose weights are not exactly this model's must fail, not "load" and leave the model
        # at its random init.
        "load_strict_model_weights": True,
    }
    params = trainer_params()
    given = {k: v for k, v in cfg.items() if k in params and k not in OWN_KEYS}
    return {**defaults, **given, "device": device}


def build_trainer(cfg: dict):
    """Build everything from a validated config → (Trainer, NanoOCR, tokenizer), before fit."""
    import torch
    from composer import Trainer
    from composer.utils import dist, get_device, reproducibility

    from nanoocr.train import builders
    from nanoocr.train.callbacks import measure_matmul_peak
    from nanoocr.train.composer_model import ComposerNanoOCR
    from nanoocr.train.memory import keep_freed_memory

    logging.basicConfig(level=(cfg.get("python_log_level") or "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    device = cfg.get("device") or ("gpu" if torch.cuda.is_available() else "cpu")
    kwargs = trainer_kwargs(cfg, device)
    if device == "cpu" and cfg.get("cpu_keep_freed_memory", True):
        log.info("glibc keeps freed memory for reuse: %s", keep_freed_memory())
    # Data building and tokenizer training below synchronize ranks before the Trainer exists.
    dist.initialize_dist(get_device(device), timeout=kwargs.get("dist_timeout", 300.0))
    run_folder = run_folder_of(cfg)
    reproducibility.seed_all(kwargs["seed"])
    if is_rank0():
        Path(run_folder).mkdir(parents=True, exist_ok=True)
        om.save(om.create(cfg), Path(run_folder) / "config.yaml")

    build_data(cfg.get("build_data"))
    from nanoocr.data.stream import build_streams
    for name in ("train_loader", "eval_loader"):  # each stream's data exists, before anything reads it
        if cfg.get(name):
            build_streams(cfg[name]["dataset"]["streams"])
    train_streams = [s for _, s in stream_items(cfg["train_loader"]["dataset"])]
    tokenizer = build_tokenizer(cfg.get("tokenizer") or {}, run_folder, train_streams)
    model = build_model(cfg["model"], tokenizer)
    if is_rank0():  # again, with the GPT fields build_model took from a nanochat checkpoint
        om.save(om.create(cfg), Path(run_folder) / "config.yaml")
    from nanoocr.model.precision import resolve
    # Composer's precision is fp32 on CPU; the model's own autocast makes it bf16 where the CPU pays for it.
    model.autocast_dtype, why = resolve(cfg["model"].get("cpu_autocast"), device)
    print(f"[nanoocr] precision: {why}" if device == "cpu" else
          f"[nanoocr] precision: the Trainer's {kwargs['precision']} ({why})", flush=True)
    ctc_ids = None
    if model.config.ctc_upsample:  # the CTC head's targets: the answer's tokens, single-line answers only
        ctc_ids = {"start_id": tokenizer.token_id("<|assistant_start|>"),
                   "end_id": tokenizer.token_id("<|assistant_end|>"),
                   "skip_ids": frozenset(i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i]))}
    composer_model = ComposerNanoOCR(model, ctc_ids)
    mode = cfg["train_loader"]["dataset"].get("mode", "base")
    batch_size = cfg["device_train_batch_size"]
    _, train_spec = build_loader(cfg["train_loader"], tokenizer, batch_size)
    eval_spec = None
    if cfg.get("eval_loader"):
        _, eval_spec = build_loader(cfg["eval_loader"], tokenizer, cfg.get("device_eval_batch_size") or batch_size)

    optimizer = builders.build_optimizer(cfg["optimizer"], [(n, p) for n, p in model.named_parameters()
                                                             if p.requires_grad])
    schedulers = []
    if cfg.get("scheduler"):
        scfg = dict(cfg["scheduler"])
        schedulers = [builders.SCHEDULERS[scfg.pop("name")](**scfg)]

    def probe_images(n):
        from nanoocr.data.images import image_views, open_image
        # Read through each stream's remote + local, like the training stream (the cache may be empty).
        recs = [r for s in train_streams for r in read_records(**_stream_source(s), limit=4 * n) if r["image"]][:n]
        if len(recs) < 2:
            raise ConfigError(f"callbacks.vision_collapse needs >= 2 records with an image among the first {4 * n} "
                              f"of each training stream, found {len(recs)} (a text-only set? drop the callback)")
        return torch.stack([image_views(open_image(r["image"]), mode).global_view for r in recs])

    def heldout(n):
        name, src = stream_items((cfg.get("eval_loader") or cfg["train_loader"])["dataset"])[0]
        recs = [r for r in read_records(**_stream_source(src), limit=4 * n) if r["image"]][:n]
        if not recs:
            raise ConfigError(f"callbacks.generation_eval needs records with an image; the first {4 * n} of stream "
                              f"'{name}' have none (a text-only set? drop the callback)")
        return recs

    ctx = {"tokenizer": tokenizer, "run_folder": run_folder, "mode": mode, "measure_peak": measure_matmul_peak,
           "autocast_dtype": model.autocast_dtype, "probe_images": probe_images, "heldout": heldout}
    algorithms = [builders.build(builders.ALGORITHMS[n], ctx, kw) for n, kw in (cfg.get("algorithms") or {}).items()]
    callbacks = [builders.build(builders.CALLBACKS[n], ctx, kw)
                 for n, kw in {**builders.DEFAULT_CALLBACKS, **(cfg.get("callbacks") or {})}.items()]
    loggers = [builders.build(builders.LOGGERS[n], ctx, kw) for n, kw in (cfg.get("loggers") or {}).items()]

    parallelism = None
    if cfg.get("fsdp_config") and device == "gpu":
        # Composer wraps NanoOCR's own units (model.fsdp_wrap_fn) and, with `activation_checkpointing`, wraps
        # the same units in checkpoint_wrapper (model.activation_checkpointing_fn): the model must not have
        # done it already, so the model's checkpointing moves into the FSDP config.
        fsdp = dict(cfg["fsdp_config"])
        if model.activation_checkpointing:
            model.set_activation_checkpointing(False)
            fsdp["activation_checkpointing"] = True
        parallelism = {"fsdp": fsdp}
    # load_path, autoresume and stage chaining open pickles: Composer must not run code from them.
    from nanoocr.model.checkpoint import CheckpointError, repair_latest
    from nanoocr.train.composer_loading import guard_composer_loading
    guard_composer_loading()
    if cfg.get("autoresume") and cfg.get("save_folder") and "://" not in cfg["save_folder"] and is_rank0():
        if message := repair_latest(cfg["save_folder"]):
            log.warning(message)
    barrier()
    try:
        trainer = Trainer(model=composer_model, train_dataloader=train_spec, eval_dataloader=eval_spec,
                          optimizers=optimizer, schedulers=schedulers, algorithms=algorithms, callbacks=callbacks,
                          loggers=loggers, parallelism_config=parallelism, **kwargs)
    except CheckpointError as e:  # Composer copies the file to a temporary name first: say which one it was
        raise CheckpointError(f"{_checkpoint_source(cfg)}: {e}") from None
    trainer.logger.log_hyperparameters({"nanoocr/precision": why})  # for the loggers that keep hyperparameters
    return trainer, model, tokenizer


def _checkpoint_source(cfg: dict) -> str:
    """The checkpoint Composer opens at start-up: autoresume's latest when there is one, else load_path."""
    latest = Path(cfg.get("save_folder") or "") / "latest-rank0.pt"
    if cfg.get("autoresume") and cfg.get("save_folder") and (latest.exists() or latest.is_symlink()):
        return f"autoresume checkpoint {latest}"
    return f"load_path {cfg.get('load_path')}"


