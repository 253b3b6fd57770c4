"""NADE's logits through the fused C kernel (``nade.c``), as an autograd function.

The batch is cut into one contiguous slice per thread; each slice runs the kernel on its own
thread (ctypes releases the GIL) with its own gradient accumulators, summed at the end. The
layout changes around the kernel (W transposed, H padded; the per-thread sums) are C functions
too, split over the same threads by rows d: a multithreaded PyTorch op here would cost more than
its work on a busy machine, where OpenMP's spin-waiting threads stall on each other.
"""
from __future__ import annotations

import ctypes

import torch

from genzoo.kernels import kernel_threads, load, pointer, thread_pool

__all__ = ["nade_kernel_available", "NADELogitsKernel", "NADEMeanNLLKernel", "nade_sample_kernel"]

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


def _float32(*shape: int) -> torch.Tensor:
    """An uninitialized float32 buffer whose pointer the C kernel reads and writes as float: never
    the default dtype, which torch.set_default_dtype(torch.float64) would make double."""
    return torch.empty(*shape, dtype=torch.float32)


def _library() -> ctypes.CDLL | None:
    lib = load("nade")
    if lib is not None and not getattr(lib, "_genzoo_typed", False):
        lib.nade_forward.argtypes = [_ptr] * 8 + [_i64] * 3
        lib.nade_backward.argtypes = [_ptr] * 10 + [_i64] * 3
        lib.nade_train.argtypes = [_ptr] * 11 + [ctypes.c_float] + [_i64] * 3
        lib.nade_sample.argtypes = [_ptr] * 7 + [_i64] * 3
        lib.nade_prepare.argtypes = [_ptr] * 4 + [_i64] * 5
        lib.nade_finish.argtypes = [_ptr] * 2 + [_i64, _ptr, _i64] + [_ptr] * 3 + [_i64] * 5
        for f in (lib.nade_forward, lib.nade_backward, lib.nade_train, lib.nade_sample, lib.nade_prepare,
                  lib.nade_finish):
            f.restype = None
        lib.nade_scratch_floats.argtypes, lib.nade_scratch_floats.restype = [_i64], _i64
        lib.nade_lanes.argtypes, lib.nade_lanes.restype = [], _i64
        lib._genzoo_typed = True
    return lib


def nade_kernel_available(*tensors: torch.Tensor) -> bool:
    """Whether the kernel can run on these tensors (float32 on the CPU) on this machine."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and _library() is not None


def _slices(n: int) -> list[tuple[int, int]]:
    """[0, n) cut into up to one contiguous range per thread."""
    parts = max(1, min(kernel_threads(), n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def _run(calls) -> None:
    """Runs the calls in parallel, the first on this thread (one thread fewer to wake and wait on)."""
    if not calls:
        return
    futures = [thread_pool(len(calls) - 1).submit(call) for call in calls[1:]]
    calls[0]()
    for future in futures:
        future.result()


def _padded_parameters(lib: ctypes.CDLL, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor):
    """The kernels' layout of (W, c, V): Wt = Wᵀ (D × Hp), c and V with H padded to Hp, a multiple
    of the kernel's vector width, by zeros (the padded hidden units change no logit)."""
    H, D = W.shape
    lanes = lib.nade_lanes()
    Hp = -(-H // lanes) * lanes
    Wt, Vp = _float32(D, Hp), _float32(D, Hp) if Hp > H else V
    _run([lambda lo=lo, hi=hi: lib.nade_prepare(
        pointer(W), pointer(V), pointer(Wt), pointer(Vp if Hp > H else None), D, H, Hp, lo, hi)
        for lo, hi in _slices(D)])
    cp = _float32(Hp).zero_()
    cp[:H] = c
    return Wt, cp, Vp


def _kernel_inputs(lib: ctypes.CDLL, x, W, c, V, b):
    """(x, b, Wt, cp, Vp): the data (or uniforms) and b contiguous, W, c and V in the kernels' layout."""
    x, W, c, V, b = (t.detach().contiguous() for t in (x, W, c, V, b))
    return (x, b, *_padded_parameters(lib, W, c, V))


def _accumulators(lib: ctypes.CDLL, threads: int, D: int, Hp: int):
    """Each thread's partial sums of dWt, dV (D × Hp) and dc (Hp), and its scratch."""
    return (_float32(threads, D, Hp), _float32(threads, D, Hp), _float32(threads, Hp),
            _float32(threads, lib.nade_scratch_floats(Hp)))


def nade_sample_kernel(u: torch.Tensor, W: torch.Tensor, c: torch.Tensor, V: torch.Tensor,
                       b: torch.Tensor) -> torch.Tensor:
    """Samples x (B × D) with x_d = 1[u_d < p(x_d = 1 | x_<d)], from uniforms u (B × D): the
    forward kernel's walk over d, drawing each x_d as soon as its logit is known."""
    lib = _library()
    u, b, Wt, cp, Vp = _kernel_inputs(lib, u, W, c, V, b)
    (B, D), Hp = u.shape, cp.shape[0]
    x = _float32(B, D)
    slices = _slices(B)
    scratch = _float32(len(slices), lib.nade_scratch_floats(Hp))
    _run([lambda k=k, lo=lo, hi=hi: lib.nade_sample(
        pointer(u[lo:hi]), pointer(Wt), pointer(cp), pointer(Vp), pointer(b), pointer(x[lo:hi]),
        pointer(scratch[k]), hi - lo, D, Hp) for k, (lo, hi) in enumerate(slices)])
    return x


class NADELogitsKernel(torch.autograd.Function):
    """Same contract as the reference ``_NADELogits``: (x, W, c, V, b) -> logits (B, D).

    The kernel runs on H padded to a multiple of its vector width (``nade_lanes``): the padded
    hidden units have zero weights in W, V and c, so they change no logit, and their gradients
    are dropped.
    """

    @staticmethod
    def forward(ctx, x, W, c, V, b):
        lib = _library()
        x, b, Wt, cp, Vp = _kernel_inputs(lib, x, W, c, V, b)
        (B, D), H, Hp = x.shape, c.shape[0], cp.shape[0]
        logits, a_final = _float32(B, D), _float32(B, Hp)
        slices = _slices(B)
        scratch = _float32(len(slices), lib.nade_scratch_floats(Hp))
        _run([lambda k=k, lo=lo, hi=hi: lib.nade_forward(
            pointer(x[lo:hi]), pointer(Wt), pointer(cp), pointer(Vp), pointer(b),
            pointer(logits[lo:hi]), pointer(a_final[lo:hi]), pointer(scratch[k]), hi - lo, D, Hp)
            for k, (lo, hi) in enumerate(slices)])
        ctx.save_for_backward(x, Wt, Vp, a_final)
        ctx.hidden = H
        return logits

    @staticmethod
    def backward(ctx, grad_logits):
        lib = _library()
        x, Wt, Vp, a_final = ctx.saved_tensors
        g = grad_logits.contiguous()
        (B, D), Hp, H = x.shape, Vp.shape[1], ctx.hidden
        slices = _slices(B)
        dWt, dV_parts, dc, scratch = _accumulators(lib, len(slices), D, Hp)
        dx = _float32(B, D) if ctx.needs_input_grad[0] else None
        _run([lambda k=k, lo=lo, hi=hi: lib.nade_backward(
            pointer(g[lo:hi]), pointer(x[lo:hi]), pointer(Wt), pointer(Vp), pointer(a_final[lo:hi]),
            pointer(dWt[k]), pointer(dV_parts[k]), pointer(dc[k]),
            pointer(dx[lo:hi] if dx is not None else None), pointer(scratch[k]), hi - lo, D, Hp)
            for k, (lo, hi) in enumerate(slices)])
        dW, dV, db = _gradients(lib, dWt, dV_parts, g, H)
        return dx, dW, dc.sum(0)[:H], dV, db


def _gradients(lib: ctypes.CDLL, dWt: torch.Tensor, dV_parts: torch.Tensor, g: torch.Tensor, H: int):
    """(dW, dV, db) from the threads' partial sums dWt, dV_parts (K × D × Hp) and g = dL/dlogits."""
    K, D, Hp = dWt.shape
    dW, dV, db = _float32(H, D), _float32(D, H), _float32(D)
    _run([lambda lo=lo, hi=hi: lib.nade_finish(
        pointer(dWt), pointer(dV_parts), K, pointer(g), len(g), pointer(dW), pointer(dV), pointer(db),
        D, H, Hp, lo, hi) for lo, hi in _slices(D)])
    return dW, dV, db


class NADEMeanNLLKernel(torch.autograd.Function):
    """(x, W, c, V, b) -> the batch's mean of -log p(x), with the gradients of W, c, V and b worked
    out in the same walk (``nade_train``: one walk up d, no backward walk); backward only scales
    them. For training, where a backward always follows; x gets no gradient."""

    @staticmethod
    def forward(ctx, x, W, c, V, b):
        lib = _library()
        x, b, Wt, cp, Vp = _kernel_inputs(lib, x, W, c, V, b)
        (B, D), H, Hp = x.shape, c.shape[0], cp.shape[0]
        logits, g = _float32(B, D), _float32(B, D)
        slices = _slices(B)
        dWt, dV_parts, dc, scratch = _accumulators(lib, len(slices), D, Hp)
        scale = ctypes.c_float(1.0 / B)  # the mean over the batch
        _run([lambda k=k, lo=lo, hi=hi: lib.nade_train(
            pointer(x[lo:hi]), pointer(Wt), pointer(cp), pointer(Vp), pointer(b), pointer(logits[lo:hi]),
            pointer(g[lo:hi]), pointer(dWt[k]), pointer(dV_parts[k]), pointer(dc[k]), pointer(scratch[k]),
            scale, hi - lo, D, Hp) for k, (lo, hi) in enumerate(slices)])
        dW, dV, db = _gradients(lib, dWt, dV_parts, g, H)
        ctx.save_for_backward(dW, dc.sum(0)[:H], dV, db)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / B

    @staticmethod
    def backward(ctx, grad):
        dW, dc, dV, db = ctx.saved_tensors
        return None, grad * dW, grad * dc, grad * dV, grad * db
