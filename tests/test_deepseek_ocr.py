"""The released DeepSeek-OCR as a preset: checkpoint, tokenizer, prompts, generation, LoRA fine-tune, export back.

The tiny released-layout checkpoint the tests write (`released_checkpoint`), in the layout of
docs/FACTS.md "DeepSeek-OCR checkpoint layout":
- the decoder: transformers' DeepseekV2ForCausalLM with plain multi-head attention (test_deepseek_decoder.py's
  independent reference), its state dict as is (its names are the released `model.layers.N.*` keys);
- the vision parts: the `deepseek_ocr_tiny` preset's random SAM / CLIP / projector / newline / separator,
  written under the official names (docs/FACTS.md "Official weight names"), CLIP's unused patch conv included;
- config.json in the released structure (decoder fields at the top level and in language_config);
- a byte-level BPE tokenizer.json whose special tokens sit at the released ids (0 bos, 1 eos, 2 pad,
  128815 <image>, ... 128826 <|Assistant|>: docs/FACTS.md "DeepSeek-OCR decoder"), with its two config files.
Tokenization is compared with the `tokenizers` library's own added-token matching on that file (what the
released LlamaTokenizerFast runs), logits with the transformers decoder, the export with the source layout.
"""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from test_deepseek_decoder import TINY_LANG, hf_reference, released_config_json

from nanoocr.data.processing import process_sample
from nanoocr.data.records import DEEPSEEK_PROMPTS, OCR_PROMPT
from nanoocr.data.stream import collate
from nanoocr.data.tokenizer import DeepseekTokenizer, Tokenizer, load_deepseek_tokenizer
from nanoocr.model import presets
from nanoocr.model.engine import Engine
from nanoocr.model.pretrained import load_deepseek_ocr
from nanoocr.model.vlm import NanoOCR

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
# docs/FACTS.md "DeepSeek-OCR decoder": the released special ids
RELEASED_IDS = {BOS: 0, EOS: 1, PAD: 2, "<image>": 128815, "<|ref|>": 128816, "<|/ref|>": 128817, "<|det|>": 128818,
                "<|/det|>": 128819, "<|grounding|>": 128820, "<td>": 128821, "</td>": 128822, "<tr>": 128823,
                "</tr>": 128824, "<|User|>": 128825, "<|Assistant|>": 128826}
LANG = dict(TINY_LANG, vocab_size=128832, max_position_embeddings=2048)  # the deepseek_ocr_tiny decoder
TEXTS = ["Free OCR. Convert the document to markdown. OCR this image. Parse the figure.",
         "Invoice 2024: total 17.50 EUR, paid. The quick brown fox jumps over the lazy dog.",
         "| a | b |\n| 1 | 2 |  Locate the title in the image. Describe this image in detail."]


def write_tokenizer(folder: Path) -> Path:
    """A byte-level BPE trained here, its vocabulary filled up to the released ids, the released special tokens
    at those ids (added tokens, as in the released tokenizer.json), and LlamaTokenizerFast's config files."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = HFTokenizer(models.BPE(unk_token=None, fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=[BOS, EOS, PAD], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = json.loads(hf.to_str())
    vocab = d["model"]["vocab"]
    for i in range(len(vocab), min(i for i in RELEASED_IDS.values() if i > 2)):
        vocab[f"<|place▁holder▁no▁{i}|>"] = i
    for tok, i in RELEASED_IDS.items():
        if i > 2:
            vocab[tok] = i
            d["added_tokens"].append({"id": i, "content": tok, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(d, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
         "add_bos_token": True, "add_eos_token": False}, ensure_ascii=False))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS,
                                                                "pad_token": PAD}, ensure_ascii=False))
    return folder


def vision_tensors(model: NanoOCR) -> dict:
    """The vision parts under the official names, written out here (docs/FACTS.md "Official weight names")."""
    out = {f"model.sam_model.{k}": v for k, v in model.sam.state_dict().items()}
    out |= {f"model.vision_model.{k}": v for k, v in model.clip.state_dict().items()}
    out["model.vision_model.embeddings.patch_embedding.weight"] = torch.randn(model.config.clip.dim, 3, 14, 14)
    out["model.projector.layers.weight"] = model.projector.weight
    out["model.projector.layers.bias"] = model.projector.bias
    out["model.image_newline"] = model.image_newline
    out["model.view_seperator"] = model.view_separator  # [sic]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def write_weights(folder, tensors):
    """The released file names: one safetensors file and its index."""
    save_file(tensors, folder / "model-00001-of-000001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": {k: "model-00001-of-000001.safetensors" for k in tensors}}))


@pytest.fixture
def released(monkeypatch, tmp_path):
    """(folder, transformers reference decoder, the vision tensors) of a tiny released-layout checkpoint."""
    folder = tmp_path / "DeepSeek-OCR"
    write_tokenizer(folder)
    ref = hf_reference(monkeypatch, LANG)
    torch.manual_seed(0)
    vision_src = NanoOCR(presets.build_config("deepseek_ocr_tiny"))
    with torch.no_grad():  # a visible newline / separator (their init is small)
        vision_src.image_newline.normal_()
        vision_src.view_separator.normal_()
    vision = vision_tensors(vision_src)
    tensors = {**{k: v.detach().clone().contiguous() for k, v in ref.state_dict().items()}, **vision}
    write_weights(folder, tensors)
    (folder / "config.json").write_text(json.dumps(released_config_json(LANG)))
    (folder / "modeling_deepseekocr.py").write_text("# the released remote code stands here\n")
    return folder, ref, tensors


def tiny_model(folder, **extra):
    from nanoocr.train.build import build_model
    tok = load_deepseek_tokenizer(folder)
    mcfg = {"preset": "deepseek_ocr_tiny", "pretrained": {"deepseek": str(folder)}, **extra}
    return build_model(mcfg, tok), tok


def page(w, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())


def test_tokenizer_ids_and_plain_template(tmp_path):
    folder = write_tokenizer(tmp_path / "tok")
    tok = Tokenizer.from_file(folder)  # recognized by its bos token
    assert isinstance(tok, DeepseekTokenizer)
    assert (tok.bos_id, tok.token_id("<|assistant_end|>"), tok.pad_id, tok.image_id) == (0, 1, 2, 128815)
    # the released tokenizer's own tokenization: the tokenizers library matching the added tokens in text
    from tokenizers import Tokenizer as HFTokenizer
    ref = HFTokenizer.from_file(str(folder / "tokenizer.json"))

    def enc(text):
        return ref.encode(text, add_special_tokens=False).ids

    prompt = DEEPSEEK_PROMPTS["document"]
    answer = "<|ref|>title<|/ref|><|det|>[[12, 40, 980, 95]]<|/det|>\n<table><tr><td>1</td></tr></table>"
    ids, mask = tok.render_conversation({"messages": [{"role": "user", "content": prompt},
                                                      {"role": "assistant", "content": answer}]})
    assert ids == [0, *enc(prompt), *enc(answer), 1]  # plain: bos, prompt, answer, eos; no role tags
    assert mask == [0] * (1 + len(enc(prompt))) + [1] * (len(enc(answer)) + 1)
    assert ids[:2] == [0, 128815] and 128820 in ids  # <image> then "\n", <|grounding|>
    assert {128816, 128817, 128818, 128819, 128821, 128822, 128823, 128824} <= set(ids)
    # a prompt for completion: bos + user text, the answer follows (no eos, no role tag)
    assert tok.render_for_completion({"messages": [{"role": "user", "content": OCR_PROMPT}]}) == [0, *enc(OCR_PROMPT)]
    # data cannot forge the sequence end, bos or image positions: those strings stay text
    for text in (EOS, BOS, PAD, "<image>"):
        assert not set(tok.encode(f"a {text} b")) & {0, 1, 2, 128815}, text
    assert DEEPSEEK_PROMPTS["locate"].format("the title") == "<image>\nLocate <|ref|>the title<|/ref|> in the image."
    # saved back byte for byte, and loaded again as the same tokenizer
    tok.save(tmp_path / "saved")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / "saved" / name).read_bytes() == (folder / name).read_bytes()
    assert Tokenizer.from_file(tmp_path / "saved").encode(answer) == tok.encode(answer)


def test_image_expansion_gundam_and_base(tmp_path):
    """<image> becomes the image's token count (docs/FACTS.md "Gundam crop grids": 1000x800 -> 2x2 tiles, 693;
    "Image modes": base 273); targets: the answer and eos only (loss assistant)."""
    tok = load_deepseek_tokenizer(write_tokenizer(tmp_path / "tok"))
    for (w, h), mode, n in (((1000, 800), "gundam", 693), ((300, 200), "gundam", 273), ((1000, 800), "base", 273)):
        rec = {"id": "r", "image": page(w, h), "messages": [{"role": "user", "content": OCR_PROMPT},
                                                             {"role": "assistant", "content": "Invoice 2024"}]}
        s = process_sample(rec, tok, mode=mode, loss="assistant", max_seq_len=2048)
        ids = torch.cat([s["input_ids"], s["targets"][-1:]]).tolist()
        answer = tok.encode("Invoice 2024")
        assert ids == [0, *[128815] * n, *tok.encode("\nFree OCR."), *answer, 1]
        want = [-1] * (n + len(tok.encode("\nFree OCR.")) - 0) + answer + [1]
        assert s["targets"].tolist() == want[-len(s["targets"]):]


def test_released_checkpoint_loads_whole_and_matches_transformers(released):
    folder, ref, tensors = released
    cfg = presets.build_config("deepseek_ocr_tiny")
    report = load_deepseek_ocr(NanoOCR(cfg), folder)
    assert report.loaded == len(tensors) - 1 and not report.missing and not report.unexpected
    assert any("patch_embedding" in n for n in report.notes)  # CLIP's unused patch conv, named
    model, tok = tiny_model(folder)
    model.eval()
    ids = torch.randint(3, 400, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(input_ids=ids).logits, model(ids)
    assert (got - want).abs().max().item() <= 1e-5 and want.abs().max() > 1.0
    # with an image: the transformers decoder on the same merged embeddings (vision vectors at <image> positions)
    from nanoocr.data.images import image_views
    views = image_views(page(640, 640), "tiny")
    prompt = [0, *[128815] * views.tokens, *tok.encode("\nFree OCR.")]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        vision = model.encode_images(views.global_view[None])
        embeds = ref.model.embed_tokens(ids).masked_scatter((ids == 128815)[..., None], vision)
        want = ref(inputs_embeds=embeds).logits
        got = model(ids, images=views.global_view[None])
    assert (got - want).abs().max().item() <= 1e-5
    # every loader report as for the other loaders: a stray key and a missing one are named
    extra = dict(tensors, **{"model.rogue.weight": torch.zeros(3)})
    write_weights(folder, extra)
    with pytest.raises(ValueError, match="model.rogue.weight"):
        load_deepseek_ocr(NanoOCR(cfg), folder)
    del extra["model.rogue.weight"], extra["model.view_seperator"]
    write_weights(folder, extra)
    with pytest.raises(ValueError, match="view_separator"):
        load_deepseek_ocr(NanoOCR(cfg), folder)


def test_kv_cache_generation_equals_no_cache_with_image_prefill(released):
    """A batch of a Gundam page (2x2 crops) and a small page (global view only), left-padded: greedy decoding
    with the KV cache equals recomputing everything each step, and each row equals its own run."""
    from nanoocr.eval.transcribe import build_prompt
    folder, _, _ = released
    model, tok = tiny_model(folder)
    model.eval()
    rows = [build_prompt(tok, page(1000, 800, seed=s), OCR_PROMPT, "gundam") for s in (1, 2)]
    rows[1] = build_prompt(tok, page(300, 200, seed=3), OCR_PROMPT, "gundam")
    assert [len(r[0]) for r in rows] == [1 + 693 + len(tok.encode("\nFree OCR.")), 1 + 273 + len(tok.encode("\nFree OCR."))]

    def run(items, use_cache):
        crops = [v.crops for _, v in items if v.crops is not None]
        return Engine(model).generate([p for p, _ in items], images=torch.stack([v.global_view for _, v in items]),
                                      crops=torch.cat(crops) if crops else None,
                                      tiles=torch.tensor([v.tiles for _, v in items]), max_new_tokens=6,
                                      use_cache=use_cache, no_repeat_ngram=0)
    cached = run(rows, True)
    assert cached == run(rows, False) and all(len(o) == 6 for o in cached)
    assert [run([r], True)[0] for r in rows] == cached


def test_lora_finetune_export_released_reload(released, tmp_path):
    """Load -> LoRA fine-tune a few steps (loss falls, only adapters train) -> export in the released layout
    -> reload: logits equal the merged model's; the export has the source's keys, config structure and
    tokenizer files, and its decoder loads into transformers' DeepseekV2 with the same logits."""
    from nanoocr.train.composer_model import ComposerNanoOCR
    from nanoocr.train.export import export_model, export_released, load_model
    folder, ref, tensors = released
    lora = {"r": 4, "alpha": 8, "modules": ["gpt"],
            "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    model, tok = tiny_model(folder, vlm={"lora": lora})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("gpt.") and n.endswith((".lora_A", ".lora_B")) for n in trainable)
    assert any(".mlp.experts.7.down_proj.lora_A" in n for n in trainable)  # the routed experts are adapted too
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    recs = [{"id": "a", "image": page(640, 640, seed=4), "messages": [
        {"role": "user", "content": OCR_PROMPT}, {"role": "assistant", "content": "Invoice 2024: total 17.50 EUR"}]},
            {"id": "b", "image": None, "messages": [
        {"role": "user", "content": "What is OCR?"}, {"role": "assistant", "content": "Reading text in images."}]}]
    batch = collate([process_sample(r, tok, mode="tiny", loss="assistant", max_seq_len=512) for r in recs], tok.pad_id)
    wrapper = ComposerNanoOCR(model).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = wrapper(batch)
        assert model.gpt.aux_loss is not None  # the MoE balancing loss is part of it
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    model.eval()
    ids, images = batch["ids"], batch["images"]
    with torch.no_grad():
        adapted = model(ids[:1], images=images)

    out = export_released(model, tok, tmp_path / "released", source=folder, dtype="float32", mode="tiny")
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged in place
    with torch.no_grad():
        merged = model(ids[:1], images=images)
    assert (merged - adapted).abs().max().item() <= 1e-4
    # the released layout: the source's file names, keys and config structure
    written = load_file(out / "model-00001-of-000001.safetensors")
    assert set(written) == set(tensors)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors) and set(index["weight_map"].values()) == {
        "model-00001-of-000001.safetensors"}
    cfg = json.loads((out / "config.json").read_text())
    src = released_config_json(LANG)
    assert (cfg["model_type"], cfg["architectures"]) == ("deepseek_vl_v2", ["DeepseekOCRForCausalLM"])
    assert cfg["language_config"]["architectures"] == ["DeepseekV2ForCausalLM"]
    for key, value in src["language_config"].items():
        if key not in ("architectures", "torch_dtype"):
            assert cfg[key] == value and cfg["language_config"][key] == value, key
    assert cfg["projector_config"] == {"input_dim": 256, "model_type": "mlp_projector", "n_embed": 64,
                                       "projector_type": "linear"}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "modeling_deepseekocr.py"):
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    # unchanged where nothing trained; changed where the adapters were merged
    assert torch.equal(written["model.view_seperator"], tensors["model.view_seperator"])
    assert torch.equal(written["model.layers.0.input_layernorm.weight"], tensors["model.layers.0.input_layernorm.weight"])
    assert not torch.equal(written["model.layers.1.self_attn.q_proj.weight"],
                           tensors["model.layers.1.self_attn.q_proj.weight"])

    reloaded, tok2, meta = load_model(out)
    assert isinstance(tok2, DeepseekTokenizer) and meta["mode"] == "tiny"
    with torch.no_grad():
        again = reloaded(ids[:1], images=images)
    assert (again - merged).abs().max().item() <= 1e-5
    # the decoder as transformers' DeepseekV2 loads it (what the HF remote code / vLLM read under these names)
    ref.load_state_dict({k: v for k, v in written.items() if k.startswith(("model.layers.", "model.embed_tokens.",
                                                                             "model.norm.", "lm_head."))})
    text = torch.randint(3, 400, (1, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (ref(input_ids=text).logits - reloaded(text)).abs().max().item() <= 1e-5
    # and nanoocr's own export of the same model
    export_model(model, tok, tmp_path / "own", mode="tiny")
    own, tok3, _ = load_model(tmp_path / "own")
    assert isinstance(tok3, DeepseekTokenizer)
    with torch.no_grad():
        assert (own(ids[:1], images=images) - merged).abs().max().item() <= 1e-5


def test_flops_count_the_active_experts():
    """MoE training FLOPs: each routed expert's linears on k / E of the tokens (released: top-6 of 64,
    docs/FACTS.md "DeepSeek-OCR decoder"), written out here for the tiny decoder, everything trainable."""
    from nanoocr.train.flops import gpt_flops
    model = NanoOCR(presets.build_config("deepseek_ocr_tiny"))
    c = model.config.gpt  # 64 wide, 3 layers (layer 0 dense 96), 8 experts of 32, top-2, 1 shared of 32
    C, V, T = 64, 128832, 10
    attn = 4 * C * C
    dense = 3 * C * 96
    moe = 3 * C * 32 * 2 / 8 * 8 + 3 * C * 32 + 8 * C  # routed (2 of 8), shared, router
    per_token = attn * 3 + dense + 2 * moe + V * C
    pairs = T * (T + 1) // 2
    want = T * 6 * per_token + 4 * C * pairs * 3 * c.n_layer
    assert gpt_flops(model.gpt, 1, T, through=True) == int(want)


@pytest.mark.slow
def test_finetune_yaml_shrunk_mixed_batch(released, tmp_path):
    """yamls/finetune_deepseek_ocr.yaml through the recipe on the tiny released checkpoint: one batch holds a
    text-only sample, a Gundam page with crops and a page with the global view only; LoRA trains, the vision
    tower and every base weight stay as loaded; then `export --layout released` and reload."""
    from nanoocr.data.convert import main as convert
    from nanoocr.train.build import build_loader
    from nanoocr.train.config import load_config
    from nanoocr.train.export import load_model
    from nanoocr.train.export import main as export_cli
    from nanoocr.train.recipe import train
    folder, _, tensors = released
    data = tmp_path / "docs"
    data.mkdir()
    page(1000, 800, seed=5).save(data / "big.png")
    page(300, 200, seed=6).save(data / "small.png")
    with open(data / "docs.jsonl", "w") as f:
        for rid, image, prompt, answer in (("big", "big.png", OCR_PROMPT, "Invoice 2024: total 17.50 EUR"),
                                           ("small", "small.png", DEEPSEEK_PROMPTS["document"], "# Title"),
                                           ("text", None, "What is OCR?", "Reading text in images.")):
            rec = {"id": rid, "messages": [{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": answer}]}
            f.write(json.dumps(rec | ({"image": image} if image else {})) + "\n")
    assert convert(["--input", str(data / "docs.jsonl"), "--out", str(tmp_path / "mds")]) in (0, None)
    run = tmp_path / "run"
    cfg = load_config(str(ROOT / "yamls/finetune_deepseek_ocr.yaml"), [
        f"variables.deepseek_ocr={folder}", f"variables.data={tmp_path / 'mds'}", "model.preset=deepseek_ocr_tiny",
        "device=cpu", "precision=fp32", "global_train_batch_size=3", "device_train_microbatch_size=3",
        "max_duration=5ba", "train_loader.num_workers=0", f"save_folder={run / 'checkpoints'}", "save_interval=5ba",
        f"run_folder={run}", "autoresume=false", "optimizer.lr=1e-2", "scheduler.t_warmup=1ba",
        "callbacks.speed_monitor.window_size=1", "final_eval.max_new_tokens=4", "final_eval.limit=2"], world_size=1)
    # the batch the recipe trains on: all three kinds together
    tok = load_deepseek_tokenizer(folder)
    loader, _ = build_loader(cfg["train_loader"], tok, 3)
    batch = next(iter(loader))
    per_row = (batch["ids"] == 128815).sum(1).tolist()
    assert sorted(per_row) == [0, 273, 693] and batch["crops"].shape[0] == 4
    assert sorted(map(tuple, batch["tiles"].tolist())) == [(1, 1), (2, 2)]

    train(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss/train/total"] for r in rows if "loss/train/total" in r]
    # the first two batches run at lr 0 (warmup from 0, stepped after the batch): the loss moves from batch 3 on
    assert len(loss) == 5 and all(math.isfinite(v) for v in loss) and loss[-1] < loss[0], loss
    assert (run / "eval.json").is_file()  # the final greedy transcription ran
    assert export_cli(["--checkpoint", str(run / "checkpoints" / "latest-rank0.pt"), "--config",
                       str(run / "config.yaml"), "--out", str(tmp_path / "released"), "--layout", "released",
                       "--dtype", "float32"]) == 0
    written = load_file(tmp_path / "released" / "model-00001-of-000001.safetensors")
    assert set(written) == set(tensors)
    for key in ("model.sam_model.blocks.0.attn.qkv.weight", "model.projector.layers.weight", "model.norm.weight"):
        assert torch.equal(written[key], tensors[key]), key  # frozen: as loaded
    assert not torch.equal(written["model.layers.2.mlp.shared_experts.up_proj.weight"],
                           tensors["model.layers.2.mlp.shared_experts.up_proj.weight"])  # LoRA merged in
    model, _, meta = load_model(tmp_path / "released")
    assert meta["mode"] == "gundam" and (tmp_path / "released" / "modeling_deepseekocr.py").is_file()
    own, _, _ = load_model(run / "export")  # the recipe's own end-of-run export
    text = batch["ids"][per_row.index(0)][None]  # the text-only row
    with torch.no_grad():
        assert (own(text) - model(text)).abs().max().item() <= 1e-5


def test_meta_device_init_and_untrusted_released_config(released, tmp_path):
    """FSDP's meta-device path initializes the MoE decoder (and LoRA adapters) like a normal build; a
    released-layout config.json that asks for more layers or experts than its weights hold is refused before
    anything is built."""
    from nanoocr.model.lora import apply_lora
    from nanoocr.train.export import export_released, load_model
    with torch.device("meta"):
        model = NanoOCR(presets.build_config("deepseek_ocr_tiny"))
        apply_lora(model, r=2, alpha=2, modules=["gpt"])
    model.materialize()
    gpt = model.gpt
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.equal(gpt.model.norm.weight, torch.ones(64))  # RMSNorm 1
    assert abs(gpt.model.embed_tokens.weight.std().item() - 0.02) < 0.002  # DeepSeek-V2's initializer_range
    q = gpt.model.layers[1].self_attn.q_proj
    assert not q.lora_B.any() and q.lora_A.abs().max() <= 1 / math.sqrt(64) + 1e-6  # B = 0, A kaiming(a=sqrt 5)
    router = gpt.model.layers[1].mlp.gate.weight
    assert router.abs().max() <= 1 / math.sqrt(64) + 1e-6 and router.std() > 0.01  # kaiming-uniform
    folder, _, _ = released
    out = export_released(*tiny_model(folder), tmp_path / "x", dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    for key, value in (("num_hidden_layers", 100000), ("n_routed_experts", 4096)):
        bad = dict(cfg, **{key: value}, language_config=dict(cfg["language_config"], **{key: value}))
        (out / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="holds"):
            load_model(out)
