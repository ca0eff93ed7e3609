"""Helpers shared by the benchmark scripts beside this file (they import it as `common`)."""
import platform
import statistics
import time


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def training_step_seconds(model, batch: dict, steps: int) -> float:
    """Median wall seconds of `steps` full training steps (forward, loss, backward, AdamW step) of a
    ComposerNanoOCR on `batch`, after one warm-up step (allocators, kernels)."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        model.loss(model(batch), batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
