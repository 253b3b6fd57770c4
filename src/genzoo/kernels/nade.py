"""NADE's logits through the fused C kernel (``nade.c``), as an autograd function.

The batch is cut into one contiguous slice per thread; each slice runs the kernel on its own
thread (ctypes releases the GIL) with its own gradient accumulators, summed at the end.
"""
from __future__ import annotations

import ctypes

import torch

from genzoo.kernels import load, pointer, thread_pool

__all__ = ["nade_kernel_available", "NADELogitsKernel"]

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


def _library() -> ctypes.CDLL | None:
    lib = load("nade")
    if lib is not None and not getattr(lib, "_genzoo_typed", False):
        lib.nade_forward.argtypes = [_ptr] * 7 + [_i64] * 3
        lib.nade_backward.argtypes = [_ptr] * 10 + [_i64] * 3
        lib.nade_forward.restype = lib.nade_backward.restype = None
        lib._genzoo_typed = True
    return lib


def nade_kernel_available(*tensors: torch.Tensor) -> bool:
    """Whether the kernel can run on these tensors (float32 on the CPU) on this machine."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and _library() is not None


def _slices(batch: int) -> list[tuple[int, int]]:
    parts = max(1, min(torch.get_num_threads(), batch))
    bounds = [round(i * batch / parts) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _run(calls) -> None:
    if len(calls) == 1:
        calls[0]()
        return
    for future in [thread_pool(len(calls)).submit(call) for call in calls]:
        future.result()


class NADELogitsKernel(torch.autograd.Function):
    """Same contract as the reference ``_NADELogits``: (x, W, c, V, b) -> logits (B, D)."""

    @staticmethod
    def forward(ctx, x, W, c, V, b):
        lib = _library()
        x, c, V, b = (t.detach().contiguous() for t in (x, c, V, b))
        Wt = W.detach().t().contiguous()
        (B, D), H = x.shape, c.shape[0]
        logits = torch.empty(B, D)
        a_final = torch.empty(B, H)
        _run([lambda lo=lo, hi=hi: lib.nade_forward(
            pointer(x[lo:hi]), pointer(Wt), pointer(c), pointer(V), pointer(b),
            pointer(logits[lo:hi]), pointer(a_final[lo:hi]), hi - lo, D, H) for lo, hi in _slices(B)])
        ctx.save_for_backward(x, Wt, V, a_final)
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        lib = _library()
        x, Wt, V, a_final = ctx.saved_tensors
        a_walk = a_final.clone()  # the kernel walks it back down; keep the saved one intact
        g = grad_logits.contiguous()
        (B, D), H = x.shape, V.shape[1]
        slices = _slices(B)
        dWt, dV = torch.zeros(len(slices), D, H), torch.zeros(len(slices), D, H)
        dc, scratch = torch.zeros(len(slices), H), torch.empty(len(slices), H)
        dx = torch.empty(B, D) if ctx.needs_input_grad[0] else None
        _run([lambda k=k, lo=lo, hi=hi: lib.nade_backward(
            pointer(g[lo:hi]), pointer(x[lo:hi]), pointer(Wt), pointer(V), pointer(a_walk[lo:hi]),
            pointer(dWt[k]), pointer(dV[k]), pointer(dc[k]), pointer(dx[lo:hi] if dx is not None else None),
            pointer(scratch[k]), hi - lo, D, H) for k, (lo, hi) in enumerate(slices)])
        return dx, dWt.sum(0).t().contiguous(), dc.sum(0), dV.sum(0), g.sum(0)
