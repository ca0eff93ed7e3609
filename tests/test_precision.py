"""CPU bf16 autocast owned by the model (nanoocr/model/precision.py): the automatic choice follows the CPU's
instructions as /proc/cpuinfo lists them, training and generation run their matmuls in bf16 with fp32
weights and gradients, and the norms compute in fp32 inside."""
import argparse
import platform

import pytest
import torch
import torch.nn.functional as F

from nanoocr.model import precision
from nanoocr.model.clip import CLIPConfig
from nanoocr.model.engine import Engine
from nanoocr.model.gpt import GPTConfig
from nanoocr.model.sam import SAMConfig
from nanoocr.model.vlm import NanoOCR, VLMConfig

IMG = 63


def tiny_model():
    torch.manual_seed(0)
    return NanoOCR(VLMConfig(
        sam=SAMConfig(embed_dim=32, depth=1, num_heads=1, global_attn_indexes=(), neck_dim=32, net2_dim=32,
                      out_chans=32),
        clip=CLIPConfig(dim=32, layers=1, heads=1, mlp_dim=64),
        gpt=GPTConfig(sequence_len=128, vocab_size=64, n_layer=1, n_head=2, n_kv_head=2, n_embd=32),
        image_token_id=IMG))


@pytest.mark.skipif(platform.system() != "Linux", reason="the reference reads /proc/cpuinfo")
def test_auto_follows_the_cpu_flags_of_proc_cpuinfo():
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    has = bool({"amx_bf16", "avx512_bf16"} & flags)
    dtype, why = precision.resolve("auto", "cpu")
    assert (dtype is torch.bfloat16) == has, (why, sorted(f for f in flags if "bf16" in f or "amx" in f))
    # the reason names what was found, or says that neither is there (on an AVX2-only CPU: "no AMX and no AVX-512 BF16")
    assert "auto" in why and ("no AMX and no AVX-512 BF16" in why) != has, why
    assert not has or "AMX" in why.split("instructions: ")[-1] or "AVX-512 BF16" in why.split("instructions: ")[-1], why


def test_explicit_settings_and_other_devices():
    assert precision.resolve("fp32", "cpu")[0] is None
    assert precision.resolve("bf16", "cpu")[0] is torch.bfloat16
    assert precision.resolve("bf16", "gpu")[0] is None  # the Trainer's amp_bf16 applies on a GPU
    with pytest.raises(ValueError, match="'fast'"):
        precision.resolve("fast", "cpu")


def test_config_rejects_an_unknown_cpu_autocast():
    from nanoocr.train.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="model.cpu_autocast"):
        load_config("yamls/tier1_overfit.yaml", ["model.cpu_autocast=fast"])


def test_norm_statistics_are_fp32_inside_under_bf16():
    # the claim of precision.py: torch's CPU rms_norm / layer_norm reduce in fp32, only the output is bf16
    x = (torch.randn(8, 1280) * 30).bfloat16()
    ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + torch.finfo(torch.float32).eps)
    assert torch.equal(F.rms_norm(x, (1280,)), ref.bfloat16())
    mu, var = x.float().mean(-1, keepdim=True), x.float().var(-1, unbiased=False, keepdim=True)
    ref = (x.float() - mu) * torch.rsqrt(var + 1e-5)
    # within bf16 rounding of the fp32 result (one ulp: 2^-8 relative), which bf16 statistics would not be
    assert torch.allclose(F.layer_norm(x, (1280,)).float(), ref, rtol=2 ** -8, atol=1e-6)


def test_training_step_under_bf16_autocast_keeps_fp32_weights_and_gradients():
    model = tiny_model().train()
    images = torch.rand(1, 3, 128, 128) * 2 - 1
    n_img = model.encode_images(images).shape[0]
    ids = torch.tensor([[1, 2] + [IMG] * n_img + [3, 4, 5, 6]])
    targets = torch.cat([torch.full((1, 2 + n_img), -1), torch.tensor([[4, 5, 6, 7]])], 1)
    loss32 = model(ids, targets, images)
    seen = []
    hook = model.projector.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model.autocast_dtype = torch.bfloat16
    loss16 = model(ids, targets, images)
    hook.remove()
    loss16.backward()
    assert seen == [torch.bfloat16]  # the matmuls ran in bf16
    assert loss16.dtype == torch.float32 and abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert model.gpt.lm_head.weight.grad.abs().sum() > 0


def test_generation_runs_in_bf16_with_a_bf16_cache_when_the_model_asks():
    model = tiny_model().eval()
    images = torch.rand(1, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        n_img = model.encode_images(images).shape[0]
    prompt = [[1] + [IMG] * n_img + [2]]
    seen = []
    hook = model.gpt.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out32 = Engine(model).generate(prompt, images=images, max_new_tokens=4)
    assert set(seen) == {torch.float32}
    seen.clear()
    model.autocast_dtype = torch.bfloat16
    out16 = Engine(model).generate(prompt, images=images, max_new_tokens=4)
    hook.remove()
    assert set(seen) == {torch.bfloat16} and len(out16[0]) == len(out32[0]) == 4


def test_cli_device_and_dtype_options():
    ap = argparse.ArgumentParser()
    precision.add_device_args(ap)
    args = ap.parse_args(["--device", "cpu", "--dtype", "bf16"])
    assert precision.device_from_args(args) == "cpu" and args.dtype == "bf16"
    with pytest.raises(ValueError, match="expected cpu, cuda or cuda:N"):
        precision.device_from_args(ap.parse_args(["--device", "tpu"]))
    with pytest.raises(SystemExit):
        ap.parse_args(["--dtype", "fp16"])
