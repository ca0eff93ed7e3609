"""Shared test setup.

TRITON_INTERPRET must be set before any @triton.jit decorator runs (the variable is read at
decoration time), so it is set here, before any test module imports kernels/."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_streaming_shm():
    """Streaming leaves shared memory behind when a test fails mid-iteration; clear it around each test."""
    try:
        from streaming.base.util import clean_stale_shared_memory
    except Exception:  # streaming not importable: nothing to clean
        yield
        return
    # Streaming's cleanup unlinks every Streaming segment on the machine; a concurrent test run may have
    # removed one first, which is harmless.
    try:
        clean_stale_shared_memory()
    except FileNotFoundError:
        pass
    yield
    try:
        clean_stale_shared_memory()
    except FileNotFoundError:
        pass
