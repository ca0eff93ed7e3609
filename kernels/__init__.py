"""Triton kernels for nanoocr's hot paths; each file has the kernel, its launcher, an autograd.Function
and a torch fallback. This package never imports nanoocr."""
