"""Benchmark the Triton kernels against torch on a CUDA device: `python -m kernels.bench`.

- attention: `kernels.attention.attention` vs torch SDPA restricted to the flash backend
  (`sdpa_kernel(SDPBackend.FLASH_ATTENTION)`), causal, forward / backward / forward+backward.
  FLOPs: causal forward = 4 * B * H * T^2 * D / 2 (two matmuls, half the matrix);
  backward = 2.5x forward (five matmuls of which one recomputes S); both = 3.5x forward.
- embed_scatter: `kernels.scatter.embed_scatter` vs the eager reference `embed_scatter_torch`
  (F.embedding + index_put). Bytes counted once per tensor touched at its minimum:
  forward = read R rows + write R rows; backward = read R grad rows + write dwte (V x C) + write dvision (N x C).
  The same byte count is used for both columns, so the GB/s ratio is the speed ratio.
Each row also prints the largest difference from the torch result, so a fast wrong kernel shows.
Timings come from triton.testing.do_bench (median of repeated runs after warm-up, CUDA-synchronised).
"""
import argparse
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (B, H, T, D): nanochat d20 has 10 heads of 128; the VLM's sequences run 1-8k tokens.
ATTN_SHAPES = [(8, 10, 1024, 128), (4, 10, 2048, 128), (2, 10, 4096, 128), (1, 10, 8192, 128),
               (4, 16, 2048, 64)]
# (B, T, V, C, image positions): d20's table; one base-mode image (273 tokens) per row and a Gundam row.
SCATTER_SHAPES = [(8, 2048, 65537, 1280, 8 * 273), (4, 8192, 65537, 1280, 4 * 1200)]


def _bench(fn, grad_to_none=None) -> float:
    import triton.testing

    fn()  # first call compiles (and autotunes) outside the timed region
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, grad_to_none=grad_to_none, warmup=50, rep=200)


def bench_attention(dtype, rows):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.attention import attention, attention_torch

    # Flash has no fp32 kernel: for fp32 let SDPA pick its backend (and say so in the impl column).
    backends = ([SDPBackend.FLASH_ATTENTION] if dtype != torch.float32 else
                [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
    torch_name = "torch-flash" if dtype != torch.float32 else "torch-sdpa"

    def sdpa_flash(q, k, v):
        with sdpa_kernel(backends):  # flash only: fails loudly rather than timing another backend
            return attention_torch(q, k, v)

    for B, H, T, D in ATTN_SHAPES:
        q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]
        do = torch.randn_like(q)
        fwd_flops = 4 * B * H * T * T * D / 2
        with torch.no_grad():
            err = (attention(q, k, v) - sdpa_flash(q, k, v)).abs().max().item()
        for impl, fn in (("triton", attention), (torch_name, sdpa_flash)):
            o = fn(q, k, v)
            ms_fwd = _bench(lambda: fn(q, k, v))
            ms_bwd = _bench(lambda: o.backward(do, retain_graph=True), grad_to_none=[q, k, v])
            ms_both = _bench(lambda: fn(q, k, v).backward(do), grad_to_none=[q, k, v])
            shape = f"B{B} H{H} T{T} D{D}"
            for mode, ms, flops in (("fwd", ms_fwd, fwd_flops), ("bwd", ms_bwd, 2.5 * fwd_flops),
                                    ("fwd+bwd", ms_both, 3.5 * fwd_flops)):
                rows.append(("attention", shape, impl, mode, ms, f"{flops / ms / 1e9:.1f} TFLOP/s",
                              f"{err:.1e}" if impl == "triton" and mode == "fwd" else ""))
        del q, k, v, do, o
        torch.cuda.empty_cache()


def bench_scatter(dtype, rows):
    from kernels.scatter import embed_scatter, embed_scatter_torch

    image_id = 65536
    for B, T, V, C, N in SCATTER_SHAPES:
        ids = torch.randint(0, image_id, (B, T), device="cuda")
        flat = ids.view(-1)
        flat[torch.randperm(B * T, device="cuda")[:N]] = image_id  # image positions anywhere, N of them
        wte = torch.randn(V, C, device="cuda", dtype=dtype, requires_grad=True)
        vision = torch.randn(N, C, device="cuda", dtype=dtype, requires_grad=True)
        dout = torch.randn(B, T, C, device="cuda", dtype=dtype)
        elt = wte.element_size()
        fwd_bytes = 2 * B * T * C * elt
        bwd_bytes = (B * T + V + N) * C * elt
        with torch.no_grad():
            err = (embed_scatter(ids, wte, vision, image_id)
                   - embed_scatter_torch(ids, wte, vision, image_id)).abs().max().item()
        for impl, fn in (("triton", embed_scatter), ("torch-eager", embed_scatter_torch)):
            out = fn(ids, wte, vision, image_id)
            ms_fwd = _bench(lambda: fn(ids, wte, vision, image_id))
            ms_bwd = _bench(lambda: out.backward(dout, retain_graph=True), grad_to_none=[wte, vision])
            ms_both = _bench(lambda: fn(ids, wte, vision, image_id).backward(dout), grad_to_none=[wte, vision])
            shape = f"B{B} T{T} V{V} C{C} N{N}"
            for mode, ms, nbytes in (("fwd", ms_fwd, fwd_bytes), ("bwd", ms_bwd, bwd_bytes),
                                     ("fwd+bwd", ms_both, fwd_bytes + bwd_bytes)):
                rows.append(("embed_scatter", shape, impl, mode, ms, f"{nbytes / ms / 1e6:.0f} GB/s",
                              f"{err:.1e}" if impl == "triton" and mode == "fwd" else ""))
        del wte, vision, dout, out
        torch.cuda.empty_cache()


def print_table(rows, dtype_name):
    header = ("op", "shape", "impl", "mode", "ms", "throughput", "max|diff|")
    cells = [header] + [(op, shape, impl, mode, f"{ms:.3f}", tput, err)
                        for op, shape, impl, mode, ms, tput, err in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"# kernels.bench on {torch.cuda.get_device_name()} ({dtype_name}, torch {torch.__version__})")
    for i, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--only", choices=["attention", "embed_scatter"], default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernels.bench measures GPU kernels and needs a CUDA device; none is visible here. "
                 "(The kernels' correctness tests run on CPU: pytest tests/test_kernels_*.py)")
    rows = []
    if args.only in (None, "attention"):
        bench_attention(DTYPES[args.dtype], rows)
    if args.only in (None, "embed_scatter"):
        bench_scatter(DTYPES[args.dtype], rows)
    print_table(rows, args.dtype)


if __name__ == "__main__":
    main()
