"""GPU versions of the methods' selection steps, as drop-in method objects.

:func:`accelerate` returns an object that behaves like the given method (same attributes, ``phase``,
budgets) but runs the selection-side work with the Triton helpers:

* Quest: ``select(state, q)`` -> :func:`~.quest.quest_select` (page bounds kernel + ``torch.topk``, no host
  sync);
* SnapKV / Ada-SnapKV: ``compress(q, k, key_padding_mask, scale)`` -> :func:`~.snapkv.snapkv_compress`
  (window scoring without materialising the [g, w, n] probabilities);
* Vertical-Slash / FlexPrefill: the estimation's column and diagonal sums come from
  :func:`~.snapkv.vs_window_sums` (no [g, w, n] probabilities; the counts and top-k stay the method's code),
  and the kernel's tile layout is built by the GPU index kernel (:func:`~.vertical_slash.vs_layout`) instead of
  the reference block index (a Python loop over the slash count). It is attached to the selection
  (``tile_layout``): the Triton executor reuses it, and the paper's sparsity (``block_granular_sparsity``) and
  ``density_computed`` are counted from it with a few tensor operations;
* Block-Sparse: unchanged (its selection is already batched torch code).

The selections are the same objects the reference methods return (up to fp32 ties in the scores).
"""

from __future__ import annotations


class _Proxy:
    def __init__(self, method):
        self._method = method

    def __getattr__(self, name):
        return getattr(self._method, name)

    def __repr__(self):
        return f"accelerated({self._method!r})"


class QuestGPU(_Proxy):
    def select(self, state, q):
        from .quest import quest_select

        return quest_select(self._method, state, q)

    def attend(self, q, k, v, state, scale=None):
        from .quest import quest_attention

        sel = self.select(state, q)
        return quest_attention(q, k, v, sel, scale), sel

    __call__ = attend


class SnapKVGPU(_Proxy):
    def compress(self, q, k, key_padding_mask=None, scale=None):
        from .snapkv import snapkv_compress

        return snapkv_compress(self._method, q, k, key_padding_mask, scale)


def _vs_class(base):
    class VSGPU(base):
        """``base`` with the estimation and the block index on the GPU (see module docstring)."""

        def _row_scores(self, qr, kr, scale):
            if self.bf16_probs:     # the fused sums keep fp32 probabilities: the rounded ones in torch (same device)
                return super()._row_scores(qr, kr, scale)
            from .snapkv import vs_window_sums

            vsum, dsum = vs_window_sums(qr, kr, self.last_q, scale)
            return self._from_sums(vsum, dsum, min(self.last_q, qr.shape[1]))

        def _attach_layout(self, sel):
            from .vertical_slash import vs_layout

            sel.tile_layout = vs_layout(sel)

    VSGPU.accelerated = True
    VSGPU.__name__ = base.__name__ + "GPU"
    return VSGPU


def accelerate(method):
    """A method object whose selection runs on the GPU helpers (see the module docstring); methods without a
    GPU path are returned unchanged."""
    from ..methods.ada_snapkv import AdaSnapKV  # noqa: F401  (SnapKV subclass)
    from ..methods.quest import Quest
    from ..methods.snapkv import SnapKV
    from ..methods.vertical_slash import _VSBase

    if isinstance(method, _Proxy) or getattr(method, "accelerated", False):
        return method
    if isinstance(method, Quest):
        return QuestGPU(method)
    if isinstance(method, SnapKV):
        return SnapKVGPU(method)
    if isinstance(method, _VSBase) and hasattr(type(method), "_assemble"):
        cls = _vs_class(type(method))
        obj = cls.__new__(cls)
        obj.__dict__.update(method.__dict__)
        return obj
    return method


__all__ = ["accelerate", "QuestGPU", "SnapKVGPU"]
