"""Shared helpers of the Triton executors (not public API)."""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def interpreting() -> bool:
    """True when Triton runs in its NumPy interpreter (``TRITON_INTERPRET=1``, CPU tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_scale(head_dim: int, scale: float | None) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """dtype the kernels see. The interpreter's ``tl.dot`` is wrong for bf16 (it multiplies the raw uint16
    storage), so bf16 is upcast to fp32 there; on a GPU the input dtype is kept."""
    if t.dtype == torch.bfloat16 and interpreting():
        return torch.float32
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"unsupported dtype {t.dtype}; use fp16, bf16 or fp32")
    return t.dtype


def prep(t: torch.Tensor) -> torch.Tensor:
    """Cast to the kernel dtype; the last dim must be contiguous (other strides are passed through)."""
    t = t.to(compute_dtype(t))
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact fp32 products for fp32 inputs (tf32 would change selections), the
    native tensor-core path for fp16 / bf16."""
    return "ieee" if dtype == torch.float32 else "tf32"


def i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32).contiguous()


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def check_gqa(q: torch.Tensor, k: torch.Tensor) -> int:
    H, G = q.shape[1], k.shape[1]
    if H % G:
        raise ValueError(f"q heads ({H}) must be a multiple of kv heads ({G})")
    return H // G


@triton.jit
def masked_softmax_weights(qk, keep, m_i, l_i):
    """The statistics half of one online-softmax step over a masked score tile (exp2 domain, scores already
    scaled): the new running max, the tile's weights p, the rescale factor alpha of the old accumulator and the
    new running sum. Rows with every key masked so far keep m = -inf and get p = 0, alpha = 1 (no NaN). The
    caller accumulates ``acc * alpha + p @ v`` its own way (prefill and decode kernels)."""
    qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    return m_new, p, alpha, l_i * alpha + tl.sum(p, 1)
