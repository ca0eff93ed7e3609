"""The real path, shrunk: README's real-run commands, run as written, on tiny pretrained parts.

Set-up, as a user's machine would have it (at the paths yamls/stage1.yaml's `variables:` name):
- checkpoints/sam-vit-base: a tiny `transformers` SamVisionModel, `save_pretrained`
- checkpoints/clip-vit-large-patch14: a tiny `transformers` CLIPVisionModel, `save_pretrained`
- checkpoints/nanochat-d20: a tiny GPT in nanochat's checkpoint layout (model_<step>.pt + meta_<step>.json)
  and its tokenizer/tokenizer.pkl (a pickled tiktoken Encoding, as nanochat saves it)
- a bucket on an S3 server on 127.0.0.1 (moto) with one MDS folder per stream, uploaded by `convert_to_mds`
  (synthetic pages, a text-only JSONL)

Then every command between README's `<!-- real-run -->` markers runs with only these changes: the
bucket URL → the test server's bucket, `-n 8` → `-n 2` (two CPU ranks over gloo; on GPUs: NANOOCR_CHAIN_NPROC), and overrides of sizes,
durations and device appended to the `composer` lines (SHRINK below). Anything else a user would have
to override is a defect of the YAMLs."""
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# The tiny geometry: the `nano` preset's SAM and CLIP widths (so the HF configs below are those of nano),
# a 2-layer GPT for the nanochat checkpoint.
GPT = dict(sequence_len=2048, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
# scripts/gpu_check.sh runs this same test on GPUs: NANOOCR_CHAIN_DEVICE=gpu keeps the YAMLs' amp_bf16 and
# FSDP (sharded checkpoints), turns the Triton kernels on, and NANOOCR_CHAIN_NPROC sets the rank count.
ON_GPU = os.environ.get("NANOOCR_CHAIN_DEVICE", "cpu") == "gpu"
NPROC = os.environ.get("NANOOCR_CHAIN_NPROC", "2")
DEVICE = (["device=gpu", "model.gpt.attn_impl=triton", "model.gpt.embed_impl=triton"] if ON_GPU
          else ["device=cpu", "precision=fp32"])  # Composer allows only fp32 on CPU
SHRINK = [
    *DEVICE,
    # sizes
    "model.preset=nano",  # SAM/CLIP widths of the tiny HF models; the GPT's come from the nanochat checkpoint
    # the YAMLs' global_train_batch_size, shrunk: 2 samples per rank whatever the rank count
    f"global_train_batch_size={2 * int(NPROC)}", "device_train_microbatch_size=1", "device_eval_batch_size=2",
    "train_loader.num_workers=0", "eval_loader.num_workers=0",
    "train_loader.dataset.num_canonical_nodes=2",
    "callbacks.vision_collapse.probes=4", "callbacks.generation_eval.samples=2",
    "callbacks.generation_eval.max_new_tokens=8", "callbacks.speed_monitor.window_size=1",
    # durations
    "max_duration=4ba", "save_interval=2ba", "eval_interval=2ba", "eval_subset_num_batches=1",
    "callbacks.vision_collapse.interval=2", "callbacks.generation_eval.interval=2",
]
STAGE1_ONLY = ["scheduler.t_warmup=1ba"]
STAGE2_ONLY = ["scheduler.step_size=2ba"]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- real-run.*?-->\s*```bash\n(.*?)```\s*<!-- /real-run -->", text, re.S)
    assert block, "README.md lost its real-run block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def make_checkpoints(root: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SamVisionConfig
    from transformers.models.sam.modeling_sam import SamVisionModel

    from nanoocr.model import presets
    nano = presets.build_config("nano")
    s, c = nano.sam, nano.clip
    torch.manual_seed(0)
    SamVisionModel(SamVisionConfig(
        hidden_size=s.embed_dim, output_channels=s.neck_dim, num_hidden_layers=s.depth, num_attention_heads=s.num_heads,
        image_size=s.img_size, patch_size=s.patch_size, window_size=s.window_size,
        global_attn_indexes=list(s.global_attn_indexes), mlp_dim=int(s.embed_dim * s.mlp_ratio),
    )).save_pretrained(root / "checkpoints/sam-vit-base")
    CLIPVisionModel(CLIPVisionConfig(
        hidden_size=c.dim, intermediate_size=c.mlp_dim, num_hidden_layers=c.layers, num_attention_heads=c.heads,
        image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )).save_pretrained(root / "checkpoints/clip-vit-large-patch14")

    # nanochat: tokenizer.pkl (tiktoken Encoding, nanochat's specials, no <|image|>) + a d20-layout GPT
    import pickle

    import tiktoken

    from nanoocr.model.gpt import GPT as NanochatGPT, GPTConfig
    from nanoocr.data.tokenizer import SPECIAL_TOKENS
    ranks = {bytes([i]): i for i in range(256)}
    specials = {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS[:-1])}
    enc = tiktoken.Encoding(name="rustbpe", pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}"""
                            r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
                            mergeable_ranks=ranks, special_tokens=specials)
    ck = root / "checkpoints/nanochat-d20"
    (ck / "tokenizer").mkdir(parents=True)
    (ck / "tokenizer/tokenizer.pkl").write_bytes(pickle.dumps(enc))
    config = {**GPT, "vocab_size": enc.n_vocab}
    gpt = NanochatGPT(GPTConfig(**config))
    gpt.init_weights()
    with torch.no_grad():  # "trained": nothing at zero
        gpt.lm_head.weight.normal_(0, 1 / math.sqrt(GPT["n_embd"]))
    torch.save({"_orig_mod." + k: v for k, v in gpt.state_dict().items()}, ck / "model_000100.pt")
    (ck / "meta_000100.json").write_text(json.dumps({"step": 100, "model_config": config, "user_config": {}}))


def make_data(root: Path, data_root: str) -> None:
    text = root / "text.jsonl"
    with open(text, "w") as f:
        for i in range(8):
            f.write(json.dumps({"id": f"t{i}", "messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                                          {"role": "assistant", "content": f"{2 * i}"}]}) + "\n")
    sources = {"olmocr": "synthetic:text_page:6:1", "docbank": "synthetic:receipt:6:2", "charts": "synthetic:chart:4:3",
               "tables": "synthetic:table:4:4", "formulas": "synthetic:formula:4:5", "val": "synthetic:text_page:4:6",
               "llava": "synthetic:chart:4:7", "text": str(text)}
    from nanoocr.data.convert import main as convert  # in-process: the CLI's main, without 8 start-ups
    for name, spec in sources.items():
        assert convert(["--input", spec, "--out", f"{data_root}/{name}"]) in (0, None), name


def shrink(command: str, data_root: str) -> list[str]:
    command = command.replace("s3://my-bucket/mds", data_root).replace("composer -n 8", f"composer -n {NPROC}")
    argv = shlex.split(command)
    if argv[0] == "composer":
        argv[0] = str(BIN / "composer")
        argv = [str(ROOT / a) if a.startswith(("recipes/", "yamls/")) else a for a in argv]
        stage = next(a for a in argv if a.endswith(".yaml"))
        argv += SHRINK + (STAGE1_ONLY if "stage1" in stage else STAGE2_ONLY)
    elif argv[0] == "python":
        argv[0] = sys.executable
    return argv


def test_readme_real_run_chain(tmp_path, s3):
    from PIL import Image

    from conftest import BUCKET
    # the s3 fixture's environment (S3_ENDPOINT_URL -> a moto server on 127.0.0.1) reaches every command
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NANOOCR_CACHE": str(tmp_path / "cache")}  # node-local cache
    data_root = f"s3://{BUCKET}/chain/mds"
    make_checkpoints(tmp_path)
    make_data(tmp_path, data_root)
    Image.new("RGB", (400, 200), "white").save(tmp_path / "page.png")

    commands = readme_commands()
    assert [shlex.split(c)[0:3] for c in commands][:2] == [["composer", "-n", "8"]] * 2
    logs = {}
    for command in commands:
        argv = shrink(command, data_root)
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        logs[command] = r.stdout + r.stderr
        assert r.returncode == 0, f"{command}\n{' '.join(argv)}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}"

    runs = tmp_path / "runs"
    # stage 1 loaded every pretrained part; stage 2 started from stage 1 and kept SAM frozen
    s1 = logs[commands[0]]
    for what in ("sam-vit-base", "clip-vit-large-patch14", "nanochat-d20"):
        assert what in s1 or (runs / "stage1" / "config.yaml").read_text().count(what), what
    for stage in ("stage1", "stage2"):
        metrics = [json.loads(line) for line in open(runs / stage / "metrics.jsonl")]
        losses = [m["loss/train/total"] for m in metrics if "loss/train/total" in m]
        assert len(losses) == 4 and all(math.isfinite(x) for x in losses), (stage, losses)
        keys = set().union(*metrics)
        assert {"vision/mean_cosine", "eval_gen/exact_match", "eval_gen/cer"} <= keys, f"{stage}: {sorted(keys)}"
        assert (runs / stage / "checkpoints" / "latest-rank0.pt").exists()

    from nanoocr.model.checkpoint import load_composer_state
    s1_state = load_composer_state(runs / "stage1/checkpoints/latest-rank0.pt")
    s2_state = load_composer_state(runs / "stage2/checkpoints/latest-rank0.pt")
    sam_keys = [k for k in s1_state if k.startswith("sam.")]
    assert sam_keys and all(torch.equal(s1_state[k], s2_state[k]) for k in sam_keys), "stage 2 must keep SAM frozen"
    assert not torch.equal(s1_state["projector.weight"], s2_state["projector.weight"]), "stage 2 must train the rest"

    export = runs / "stage2/export"
    meta = json.loads((export / "config.json").read_text())
    assert meta["mode"] == "gundam"
    assert (export / "tiktoken.json").is_file(), "the nanochat tokenizer travels with the export, as text"
    summary = json.loads((runs / "stage2/evaluate/summary.json").read_text())
    assert summary["n"] == 4, summary
