"""Which precision the model computes in on a CPU, and the autocast context that applies it.

Composer's Trainer offers only `precision: fp32` on CPU, yet a CPU with bf16 matmul instructions (Intel AMX,
or AVX-512 BF16 on Intel Cooper Lake+ and AMD Zen 4+) runs bf16 matmuls 2-3x faster than fp32, while one
without them emulates bf16 far slower than fp32. So the model owns its CPU precision: `resolve` turns a
setting (`auto` | `bf16` | `fp32`) into a dtype and the reason for it, and `autocast(dtype)` runs a forward
under `torch.autocast("cpu", bfloat16)`:
- weights, gradients and optimizer state stay fp32 (autocast casts per op: "fp32 master weights");
- matmuls, convolutions and SDPA run in bf16 (torch's CPU autocast list); the residual stream stays fp32
  (fp32 embeddings + bf16 branch outputs promote to fp32);
- rms_norm / layer_norm compute their statistics in fp32 internally (torch's CPU kernels, checked in
  tests/test_precision.py); the logit softcap and the cross-entropy run in fp32 (gpt.py, loss.py).
`auto` asks the CPU, through torch's cpuinfo probes (CPUID, not the model name): bf16 where AMX tiles or
AVX-512 BF16 exist, fp32 elsewhere. On a GPU the Trainer's own `precision` (amp_bf16) applies and this is off.

The resolved dtype lives on the model (`NanoOCR.autocast_dtype`, set by the recipe and by load_export):
NanoOCR.forward (training, eval) and Engine.generate (sampling, evaluation, in-training generation) apply it.
"""
from __future__ import annotations

import contextlib

SETTINGS = ("auto", "bf16", "fp32")


def cpu_bf16_hardware() -> tuple[bool, str]:
    """(has bf16 matmul instructions, which ones) for this process's CPU."""
    import torch
    amx = torch.cpu._is_amx_tile_supported()
    avx512_bf16 = torch.cpu._is_avx512_bf16_supported()
    if amx or avx512_bf16:
        return True, " + ".join(n for n, ok in (("AMX", amx), ("AVX-512 BF16", avx512_bf16)) if ok)
    return False, "no AMX and no AVX-512 BF16 (bf16 would be emulated, slower than fp32)"


def resolve(setting: str | None, device: str = "cpu") -> tuple[torch.dtype | None, str]:  # noqa: F821
    """A `cpu_autocast` setting -> (torch.bfloat16 or None for fp32, why), for a model on `device`."""
    import torch
    setting = "auto" if setting is None else str(setting)
    if setting not in SETTINGS:
        raise ValueError(f"cpu_autocast must be one of {SETTINGS}, got {setting!r}")
    if device != "cpu":
        return None, f"CPU autocast off on device {device}"
    if setting == "fp32":
        return None, "fp32 (asked for)"
    if setting == "bf16":
        return torch.bfloat16, "bf16 autocast, fp32 weights (asked for)"
    has, which = cpu_bf16_hardware()
    if has:
        return torch.bfloat16, f"bf16 autocast, fp32 weights (auto: the CPU has bf16 matmul instructions: {which})"
    return None, f"fp32 (auto: {which})"


def autocast(dtype: torch.dtype | None, device_type: str = "cpu"):  # noqa: F821
    """CPU bf16 autocast when `dtype` is bf16 and the tensors are on the CPU, else a no-op context."""
    import torch
    if dtype is None or dtype == torch.float32 or device_type != "cpu":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


# ---- the CLIs' options (sample, evaluate); torch is imported only when the options are checked ----

def add_device_args(ap) -> None:
    """`--device` and `--dtype` of the CLIs that run an export (sample, evaluate)."""
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ap.add_argument("--dtype", default="auto", choices=SETTINGS,
                    help="CPU compute precision: bf16 autocast or fp32 (default auto: bf16 where the CPU has "
                         "bf16 matmul instructions, AMX or AVX-512 BF16); on a GPU the model runs in its weights' dtype")


def device_from_args(args) -> str:
    """The --device to run on (default cuda when available), or ValueError saying why not."""
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: no such CUDA device ({torch.cuda.device_count()} available)")
    return device
