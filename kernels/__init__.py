"""Triton kernels for nanoocr's hot paths; each file has the kernel, its launcher, an autograd.Function
and a torch fallback. This package never imports nanoocr.

The kernel files import triton, which pyproject.toml installs only where it has wheels (Linux x86_64).
Callers ask `triton_available()` before importing them and take their torch path when it says no."""
import functools


@functools.cache
def triton_available() -> bool:
    """True when triton imports here. Cached: asked once per process, at the first Triton-path call."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
