"""Choosing between a Triton kernel and its PyTorch reference."""
import os

import torch

IMPLS = ("auto", "torch", "triton")


def triton_available() -> bool:
    # not lru_cache'd: torch.compile traces through the cache with a warning; after the first
    # import this is a look-up in sys.modules
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install is the same as none for dispatch
        return False
    return True


def interpreter_enabled() -> bool:
    """TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (how CI checks them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, device: torch.device) -> str:
    """Return "torch" or "triton" for ``impl`` on ``device``.

    "auto" picks Triton on CUDA only. An explicit "triton" that cannot run raises
    instead of quietly falling back, so a test that asks for the kernel gets the kernel.
    """
    if impl not in IMPLS:
        raise ValueError(f"kernel impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' requested but triton is not importable")
        if device.type != "cuda" and not interpreter_enabled():
            raise RuntimeError("impl='triton' on a CPU tensor needs TRITON_INTERPRET=1 "
                               "(set before triton is imported)")
    return impl
