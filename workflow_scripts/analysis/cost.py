"""Cost model of "The Sparse Frontier" (v3 App. B.1).

All quantities are analytic; nothing here needs a GPU.  Conventions (see docs/analysis.md):

* Prefill cost is counted in FLOPs:  FLOPs_prefill = B * (E + A + M + G) with density ``rho``
  applied to the L^2 attention terms only (the full square, not halved for causality, as in
  the paper).
* Decode cost is counted in **memory transfers per generated token**:
  Memory_decode = W + B * KV.  The paper counts *elements*; so do we by default
  (``bytes_per_element=1``).  Pass ``bytes_per_element=2`` for bf16 bytes.  Shares and ratios
  are unaffected by this choice.
* Indexing overheads: Vertical-Slash (Eq. 9, prefill FLOPs) and Quest (Eq. 10, decode memory).
  The paper writes the hidden size ``d`` where the head dimension ``d_h`` looks intended;
  ``index_dim="hidden"`` (default) implements the equations as written, ``index_dim="head"``
  uses ``d_h``.
* ``decode_flops_per_token`` is our reconstruction of the v1 ("isoFLOPS") decode cost; the v1
  formula itself was not found.

This module imports only the standard library and the (import-light) method registry at import time
(pandas is imported lazily by :func:`cost_table`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

from sparse_kernels import registry

from . import DENSE_METHOD, method_phase

__all__ = [
    "ModelDims",
    "PAPER_MODELS",
    "PrefillFlops",
    "DecodeMemory",
    "prefill_flops",
    "decode_memory",
    "decode_flops_per_token",
    "vs_index_flops",
    "quest_index_memory",
    "quest_index_flops",
    "block_sparse_index_flops",
    "snapkv_scoring_flops",
    "vs_budget",
    "VS_BUDGETS",
    "vertical_slash_index_cost",
    "flexprefill_index_cost",
    "quest_index_cost",
    "block_sparse_index_cost",
    "snapkv_index_cost",
    "method_cost",
    "cost_table",
]


# --------------------------------------------------------------------------------------------
# Model dimensions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """Architecture numbers used by the cost model.

    Symbols (paper App. B.1): N = ``n_layers``, h = ``n_heads``, n_kv = ``n_kv_heads``,
    d = ``hidden_size``, d_mlp = ``intermediate_size``, |V| = ``vocab_size``, d_h = ``head_dim``.
    ``n_params`` is the parameter count (used by the scaling law); ``None`` means "estimate it
    from the dimensions" (see :meth:`estimated_n_params`).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    head_dim: int
    name: str = ""
    n_params: float | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for key in ("n_layers", "n_heads", "n_kv_heads", "hidden_size",
                    "intermediate_size", "vocab_size", "head_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelDims.{key} must be a positive int, got {value!r}")

    @classmethod
    def from_hf_config(
        cls,
        config: Mapping[str, Any] | str | os.PathLike,
        *,
        name: str | None = None,
        n_params: float | None = None,
    ) -> "ModelDims":
        """Build from a Hugging Face ``config.json`` (a dict, a file path, or a directory
        containing ``config.json``).

        Keys read (HF Qwen2/Llama naming): ``num_hidden_layers``, ``num_attention_heads``,
        ``num_key_value_heads`` (default = ``num_attention_heads``), ``hidden_size``,
        ``intermediate_size``, ``vocab_size``, ``head_dim`` (default
        ``hidden_size // num_attention_heads``), ``tie_word_embeddings`` (default False).
        Multimodal configs with a nested ``text_config`` (e.g. Gemma-3) use that sub-dict.
        The name defaults to ``_name_or_path`` when present.
        """
        if not isinstance(config, Mapping):
            path = os.fspath(config)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            with open(path, encoding="utf-8") as fh:
                config = json.load(fh)
        cfg: Mapping[str, Any] = config
        if "text_config" in cfg and isinstance(cfg["text_config"], Mapping):
            outer = cfg
            cfg = dict(cfg["text_config"])
            cfg.setdefault("_name_or_path", outer.get("_name_or_path"))
            cfg.setdefault("model_type", outer.get("model_type"))
        missing = [k for k in ("num_hidden_layers", "num_attention_heads", "hidden_size",
                               "intermediate_size", "vocab_size") if k not in cfg]
        if missing:
            raise ValueError(f"HF config is missing required keys: {missing}")
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise ValueError(
                    f"head_dim absent and hidden_size {hidden} not divisible by heads {heads}"
                )
            head_dim = hidden // heads
        model_type = str(cfg.get("model_type") or "")
        qkv_bias = bool(cfg.get("attention_bias", model_type.startswith("qwen2")))
        return cls(
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            head_dim=int(head_dim),
            name=name if name is not None else str(cfg.get("_name_or_path") or ""),
            n_params=None if n_params is None else float(n_params),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
        )

    def estimated_n_params(self) -> float:
        """Parameter count from the dimensions (decoder-only, SwiGLU MLP, RMSNorm).

        embeddings V*d (+ untied LM head V*d) + N*(q, k, v, o projections [+ q/k/v biases]
        + 3*d*d_mlp + 2 norms) + final norm.  Qwen2.5-7B gives 7.62e9 (HF: 7.61e9).
        """
        d, dh, h, kv = self.hidden_size, self.head_dim, self.n_heads, self.n_kv_heads
        attn = d * h * dh + 2 * d * kv * dh + h * dh * d
        if self.qkv_bias:
            attn += h * dh + 2 * kv * dh
        layer = attn + 3 * d * self.intermediate_size + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return float(emb + self.n_layers * layer + d)

    @property
    def params(self) -> float:
        """``n_params`` if given, else :meth:`estimated_n_params`."""
        return float(self.n_params) if self.n_params is not None else self.estimated_n_params()

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra", None)
        return out


def _dims(n_layers, n_heads, n_kv, d, d_mlp, vocab, d_h, name, n_params):
    return ModelDims(n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, hidden_size=d,
                     intermediate_size=d_mlp, vocab_size=vocab, head_dim=d_h, name=name,
                     n_params=n_params, qkv_bias=True)


#: The four Qwen2.5-Instruct models of the paper (spec section 1.1).  Parameter counts are the
#: values published on the HF model cards (7.61B / 14.7B / 32.5B / 72.7B).
PAPER_MODELS: dict[str, ModelDims] = {
    "Qwen2.5-7B-Instruct": _dims(28, 28, 4, 3584, 18944, 152064, 128, "Qwen2.5-7B-Instruct", 7.61e9),
    "Qwen2.5-14B-Instruct": _dims(48, 40, 8, 5120, 13824, 152064, 128, "Qwen2.5-14B-Instruct", 14.7e9),
    "Qwen2.5-32B-Instruct": _dims(64, 40, 8, 5120, 27648, 152064, 128, "Qwen2.5-32B-Instruct", 32.5e9),
    "Qwen2.5-72B-Instruct": _dims(80, 64, 8, 8192, 29568, 152064, 128, "Qwen2.5-72B-Instruct", 72.7e9),
}


# --------------------------------------------------------------------------------------------
# Core formulas
# --------------------------------------------------------------------------------------------


def _check_density(density: float) -> float:
    density = float(density)
    if not (0.0 <= density <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be in [0, 1], got {density}")
    return density


def _check_length(length: float) -> float:
    length = float(length)
    if not length > 0:
        raise ValueError(f"length must be positive, got {length}")
    return length


@dataclass(frozen=True)
class PrefillFlops:
    """Prefill FLOPs broken into the paper's terms (already multiplied by the batch size).

    ``attention`` = A (projections + density-scaled L^2 terms) = ``attention_linear`` +
    ``attention_quadratic``.  ``total`` = E + A + M + G.  The paper's "attention share of
    prefill" is ``attention / total``.
    """

    embedding: float
    attention_linear: float
    attention_quadratic: float
    mlp: float
    lm_head: float

    @property
    def attention(self) -> float:
        return self.attention_linear + self.attention_quadratic

    @property
    def total(self) -> float:
        return self.embedding + self.attention + self.mlp + self.lm_head

    @property
    def attention_share(self) -> float:
        return self.attention / self.total


def prefill_flops(dims: ModelDims, length: float, density: float = 1.0,
                  batch: int = 1) -> PrefillFlops:
    """FLOPs_prefill = B (E + A + M + G) (paper v3 App. B.1).

    E = 2 L d;  A = N [2 L d (d + 2 d_h n_kv + d) + rho (2 h L^2 d_h + 3 h L^2 + 2 h L^2 d_h)];
    M = N (6 L d d_mlp + 2 L d_mlp);  G = 2 L d |V|.
    """
    L = _check_length(length)
    rho = _check_density(density)
    N, h, kv = dims.n_layers, dims.n_heads, dims.n_kv_heads
    d, dh, dm, V = dims.hidden_size, dims.head_dim, dims.intermediate_size, dims.vocab_size
    B = float(batch)
    E = 2.0 * L * d
    A_lin = N * (2.0 * L * d * (d + 2.0 * dh * kv + d))
    A_quad = N * rho * (2.0 * h * L * L * dh + 3.0 * h * L * L + 2.0 * h * L * L * dh)
    M = N * (6.0 * L * d * dm + 2.0 * L * dm)
    G = 2.0 * L * d * V
    return PrefillFlops(B * E, B * A_lin, B * A_quad, B * M, B * G)


@dataclass(frozen=True)
class DecodeMemory:
    """Decode memory transfers per generated token: ``weights`` (W) + ``kv`` (B * KV)."""

    weights: float
    kv: float

    @property
    def total(self) -> float:
        return self.weights + self.kv

    @property
    def kv_share(self) -> float:
        return self.kv / self.total


def decode_memory(dims: ModelDims, length: float, density: float = 1.0, batch: int = 1,
                  bytes_per_element: float = 1.0) -> DecodeMemory:
    """Memory_decode = W + B KV per decode step at context length L (paper v3 App. B.1).

    W = N (4 d^2 + 3 d d_mlp) + d |V| + d;  KV = N * 2 L d_h n_kv rho.
    Units: elements when ``bytes_per_element == 1`` (the paper's convention).
    """
    L = _check_length(length)
    rho = _check_density(density)
    N, kv = dims.n_layers, dims.n_kv_heads
    d, dh, dm, V = dims.hidden_size, dims.head_dim, dims.intermediate_size, dims.vocab_size
    W = N * (4.0 * d * d + 3.0 * d * dm) + d * V + d
    KV = N * 2.0 * L * dh * kv * rho
    s = float(bytes_per_element)
    return DecodeMemory(weights=s * W, kv=s * float(batch) * KV)


def decode_flops_per_token(dims: ModelDims, length: float, density: float = 1.0,
                           batch: int = 1) -> float:
    """v1-style decode FLOPs for one generated token at context length L (our reconstruction).

    The prefill formula applied to a single new query row: every linear term's L becomes 1
    and every L^2 term becomes L (one query against L cached keys), density on the latter:

    B [2d + N (2 d (2d + 2 d_h n_kv) + rho (2 h L d_h + 3 h L + 2 h L d_h))
       + N (6 d d_mlp + 2 d_mlp) + 2 d |V|].
    """
    L = _check_length(length)
    rho = _check_density(density)
    N, h, kv = dims.n_layers, dims.n_heads, dims.n_kv_heads
    d, dh, dm, V = dims.hidden_size, dims.head_dim, dims.intermediate_size, dims.vocab_size
    E = 2.0 * d
    A = N * (2.0 * d * (d + 2.0 * dh * kv + d) + rho * (2.0 * h * L * dh + 3.0 * h * L + 2.0 * h * L * dh))
    M = N * (6.0 * d * dm + 2.0 * dm)
    G = 2.0 * d * V
    return float(batch) * (E + A + M + G)


def _index_width(dims: ModelDims, index_dim: str) -> int:
    if index_dim == "hidden":
        return dims.hidden_size
    if index_dim == "head":
        return dims.head_dim
    raise ValueError(f"index_dim must be 'hidden' (paper as written) or 'head', got {index_dim!r}")


def vs_index_flops(dims: ModelDims, length: float, q: int = 256, k_v: float = 164,
                   k_s: float | None = None, batch: int = 1, index_dim: str = "hidden") -> float:
    """Vertical-Slash pattern-estimation FLOPs, paper Eq. 9.

    B N h [2 d L q + 3 L q + 2 L q + 2 L log2 L + (L/64)(k_v + k_s)], with ``d`` the hidden
    size as written (``index_dim="hidden"``) or the head dim (``index_dim="head"``).
    ``q`` is clipped to L (the estimator uses min(last_q, L) queries).
    """
    L = _check_length(length)
    k_s = k_v if k_s is None else k_s
    qq = min(float(q), L)
    w = _index_width(dims, index_dim)
    per_head = (2.0 * w * L * qq + 3.0 * L * qq + 2.0 * L * qq + 2.0 * L * math.log2(L)
                + (L / 64.0) * (float(k_v) + float(k_s)))
    return float(batch) * dims.n_layers * dims.n_heads * per_head


def quest_index_memory(dims: ModelDims, length: float, page_size: int = 16, batch: int = 1,
                       index_dim: str = "hidden", bytes_per_element: float = 1.0) -> float:
    """Quest page-summary reads per decode step, paper Eq. 10: B N n_kv 2 d L / p.

    (min and max vectors of every page of every kv head).  ``index_dim`` as in
    :func:`vs_index_flops`.
    """
    L = _check_length(length)
    w = _index_width(dims, index_dim)
    return float(bytes_per_element) * float(batch) * dims.n_layers * dims.n_kv_heads * 2.0 * w * L / page_size


def quest_index_flops(dims: ModelDims, length: float, page_size: int = 16, batch: int = 1,
                      index_dim: str = "hidden") -> float:
    """Quest page scoring FLOPs per decode step (our reconstruction, v1-style accounting).

    Per query head and page: sum_d max(q_d min_d, q_d max_d) = 2 multiplies + 1 max + 1 add per
    dimension -> B N h 4 w L / p, with ``w`` chosen by ``index_dim`` exactly as in Eq. 10.
    """
    L = _check_length(length)
    w = _index_width(dims, index_dim)
    return float(batch) * dims.n_layers * dims.n_heads * 4.0 * w * L / page_size


def block_sparse_index_flops(dims: ModelDims, length: float, block: int = 16, batch: int = 1) -> float:
    """Block-Sparse block-scoring FLOPs (our reconstruction; the paper gives none).

    Per layer and q head: mean-pool Q and K (2 L d_h), score all n^2 block pairs with pooled
    dot products (2 n^2 d_h, full square like the paper's attention term) and sort each row
    (n^2 log2 n), n = ceil(L / block).
    """
    L = _check_length(length)
    n = math.ceil(L / block)
    dh = dims.head_dim
    per_head = 2.0 * L * dh + 2.0 * n * n * dh + n * n * math.log2(max(n, 2))
    return float(batch) * dims.n_layers * dims.n_heads * per_head


def snapkv_scoring_flops(dims: ModelDims, length: float, window: int = 256, kernel: int = 21,
                         batch: int = 1) -> float:
    """SnapKV / Ada-SnapKV one-off scoring FLOPs after prefill (our reconstruction).

    Per layer and q head: w x L scores (2 w L d_h), softmax (3 w L), reduction over window
    (w L); per kv head: pooling (kernel L) and a sort (L log2 L).
    """
    L = _check_length(length)
    w = min(float(window), L)
    dh = dims.head_dim
    per_q = 2.0 * w * L * dh + 3.0 * w * L + w * L
    per_kv = kernel * L + L * math.log2(L)
    return float(batch) * dims.n_layers * (dims.n_heads * per_q + dims.n_kv_heads * per_kv)


# --------------------------------------------------------------------------------------------
# Vertical-Slash budgets (paper Table 6 / v3 Table 3; spec section 2.7)
# --------------------------------------------------------------------------------------------

_VS_RATIOS = (20.0, 15.0, 10.0, 7.5, 5.0, 10.0 / 3.0, 2.5, 2.0, 5.0 / 3.0, 1.0 / 0.7)
#: ``{length: {ratio: k}}`` with k = number of verticals = number of slashes.
VS_BUDGETS: dict[int, dict[float, int]] = {
    L: dict(zip(_VS_RATIOS, ks))
    for L, ks in {
        16384: (164, 240, 315, 400, 448, 576, 768, 1024, 1536, 2304),
        32768: (290, 384, 448, 576, 704, 1024, 1536, 2304, 3584, 4608),
        65536: (400, 448, 544, 640, 960, 1280, 2304, 4096, 6144, 8192),
        128000: (480, 768, 1024, 1536, 2048, 3584, 5632, 10240, 13312, 18432),
    }.items()
}


def vs_budget(length: int, ratio: float) -> int:
    """Number of verticals (= slashes) Vertical-Slash uses at (length, ratio).

    Looks the paper's table up (ratio matched within 2 %, so 3.33 and 1.43 match).  Outside the
    table it falls back to ``round(0.2 * L / ratio)`` (the table's k is 0.075-0.2 x the kept
    token count); this only feeds the (L/64)(k_v+k_s) term of Eq. 9, which is < 0.01 % of the
    index cost at every length in the paper.
    """
    ratio = float(ratio)
    if ratio < 1:
        raise ValueError(f"compression ratio must be >= 1, got {ratio}")
    table = VS_BUDGETS.get(int(length))
    if table:
        for r, k in table.items():
            if abs(r - ratio) <= 0.02 * r:
                return k
    return max(1, int(round(0.2 * float(length) / ratio)))


# --------------------------------------------------------------------------------------------
# Index-cost terms of the registered methods (sparse_kernels/registry.py: Method.index_cost)
# --------------------------------------------------------------------------------------------
# Each is f(dims, length, ratio, o) -> {term: value}, ``o`` being method_cost's options (o.batch, o.index_dim, ...).


def vertical_slash_index_cost(dims: ModelDims, length: int, ratio: float, o) -> dict[str, float]:
    """Eq. 9 with q = ``vs_q`` and k_v = k_s = ``vs_k`` or :func:`vs_budget`."""
    k = vs_budget(length, ratio) if o.vs_k is None else o.vs_k
    return {"prefill_index_flops": vs_index_flops(dims, length, o.vs_q, k, k, o.batch, o.index_dim)}


def flexprefill_index_cost(dims: ModelDims, length: int, ratio: float, o) -> dict[str, float]:
    """Eq. 9 with q = ``flex_q`` (512) and k = max(``flex_min_budget``, vs_budget): an inference, the paper has
    no FlexPrefill formula."""
    k = max(o.flex_min_budget, vs_budget(length, ratio))
    return {"prefill_index_flops": vs_index_flops(dims, length, o.flex_q, k, k, o.batch, o.index_dim)}


def quest_index_cost(dims: ModelDims, length: int, ratio: float, o) -> dict[str, float]:
    """Eq. 10 added to decode memory; :func:`quest_index_flops` added to decode FLOPs."""
    qdim = o.index_dim if o.quest_index_dim is None else o.quest_index_dim
    return {"decode_index_memory": quest_index_memory(dims, length, o.quest_page_size, o.batch, qdim,
                                                      o.bytes_per_element),
            "decode_index_flops": quest_index_flops(dims, length, o.quest_page_size, o.batch, qdim)}


def block_sparse_index_cost(dims: ModelDims, length: int, ratio: float, o) -> dict[str, float]:
    """No published formula: 0 unless ``include_unpublished_index`` (our reconstruction)."""
    if not o.include_unpublished_index:
        return {}
    return {"prefill_index_flops": block_sparse_index_flops(dims, length, o.block_size, o.batch)}


def snapkv_index_cost(dims: ModelDims, length: int, ratio: float, o) -> dict[str, float]:
    """No published formula: 0 unless ``include_unpublished_index``; the one-off scoring counts as prefill FLOPs."""
    if not o.include_unpublished_index:
        return {}
    return {"prefill_index_flops": snapkv_scoring_flops(dims, length, o.snapkv_window, batch=o.batch)}


# --------------------------------------------------------------------------------------------
# Per (model, method, length, ratio) cost
# --------------------------------------------------------------------------------------------


def method_cost(
    dims: ModelDims,
    method: str,
    length: int,
    ratio: float,
    *,
    batch: int = 1,
    density: float | None = None,
    index_dim: str = "hidden",
    quest_index_dim: str | None = None,
    include_index: bool = True,
    include_unpublished_index: bool = False,
    bytes_per_element: float = 1.0,
    vs_q: int = 256,
    vs_k: float | None = None,
    flex_q: int = 512,
    flex_min_budget: int = 512,
    quest_page_size: int = 16,
    block_size: int = 16,
    snapkv_window: int = 256,
) -> dict[str, float | str]:
    """Cost of one configuration in both phases.

    The method's own phase runs at ``density`` (default ``1/ratio``); the other phase is dense.
    Prefill methods (vertical_slash, flexprefill, block_sparse, ...) scale the L^2 prefill terms;
    decode methods (snapkv, ada_snapkv, quest, ...) scale the KV reads (and the v1 decode-FLOP
    attention term); the phase is the method's registered one (sparse_kernels/registry.py).
    Index overheads (``include_index``) are the method's registered ``index_cost`` term:

    * vertical_slash: Eq. 9 with q = ``vs_q`` and k_v = k_s = ``vs_k`` or :func:`vs_budget`.
    * flexprefill: Eq. 9 with q = ``flex_q`` (512) and k = max(``flex_min_budget``, vs_budget)
      -- an inference, the paper has no FlexPrefill formula.
    * quest: Eq. 10 added to decode memory; :func:`quest_index_flops` added to decode FLOPs.
      ``quest_index_dim`` (default: ``index_dim``) overrides the d / d_h choice for Quest
      only.  NB: with d as written, Quest's page summaries cost d/(p d_h) = 1.75-4x the full
      dense KV read for the Qwen models, so Quest at 20x costs *more* than dense decoding
      (docs/analysis.md); ``quest_index_dim="head"`` gives KV/16.
    * block_sparse, snapkv, ada_snapkv: no published formula -> 0, unless
      ``include_unpublished_index`` (our reconstructions; SnapKV's one-off scoring is counted as
      prefill FLOPs).

    Returns a dict with keys: model, method, phase, length, ratio, density, prefill_flops,
    prefill_attention_flops, prefill_index_flops, prefill_attention_share, decode_memory,
    decode_kv_memory, decode_index_memory, decode_kv_share, decode_flops,
    decode_index_flops, phase_cost (prefill_flops for prefill methods and dense,
    decode_memory for decode methods), phase_cost_unit.
    """
    phase = method_phase(method)
    ratio = float(ratio)
    if ratio < 1:
        raise ValueError(f"compression ratio must be >= 1, got {ratio}")
    if method == DENSE_METHOD and ratio != 1:
        raise ValueError(f"dense must have ratio 1, got {ratio}")
    rho = 1.0 / ratio if density is None else _check_density(density)
    rho_pre = rho if phase == "prefill" else 1.0
    rho_dec = rho if phase == "decode" else 1.0

    pre = prefill_flops(dims, length, rho_pre, batch)
    dec = decode_memory(dims, length, rho_dec, batch, bytes_per_element)
    dec_flops = decode_flops_per_token(dims, length, rho_dec, batch)

    terms = {}
    term_fn = registry.get(method).index_cost_fn()
    if include_index and term_fn is not None:
        options = SimpleNamespace(
            batch=batch, index_dim=index_dim, quest_index_dim=quest_index_dim,
            include_unpublished_index=include_unpublished_index, bytes_per_element=bytes_per_element, vs_q=vs_q,
            vs_k=vs_k, flex_q=flex_q, flex_min_budget=flex_min_budget, quest_page_size=quest_page_size,
            block_size=block_size, snapkv_window=snapkv_window)
        terms = term_fn(dims, length, ratio, options)
        unknown = set(terms) - {"prefill_index_flops", "decode_index_memory", "decode_index_flops"}
        if unknown:
            raise ValueError(f"index cost of {method} returned unknown terms {sorted(unknown)}")
    pre_idx = float(terms.get("prefill_index_flops", 0.0))
    dec_idx_mem = float(terms.get("decode_index_memory", 0.0))
    dec_idx_flops = float(terms.get("decode_index_flops", 0.0))

    prefill_total = pre.total + pre_idx
    decode_total = dec.total + dec_idx_mem
    if phase == "decode":
        phase_cost, unit = decode_total, ("elements" if bytes_per_element == 1 else "bytes")
    else:
        phase_cost, unit = prefill_total, "flops"
    return {
        "model": dims.name,
        "method": method,
        "phase": phase,
        "length": int(length),
        "ratio": ratio,
        "density": rho,
        "prefill_flops": prefill_total,
        "prefill_attention_flops": pre.attention,
        "prefill_index_flops": pre_idx,
        "prefill_attention_share": pre.attention / pre.total,
        "decode_memory": decode_total,
        "decode_kv_memory": dec.kv,
        "decode_index_memory": dec_idx_mem,
        "decode_kv_share": dec.kv / dec.total,
        "decode_flops": dec_flops + dec_idx_flops,
        "decode_index_flops": dec_idx_flops,
        "phase_cost": phase_cost,
        "phase_cost_unit": unit,
    }


def cost_table(grid, models: Mapping[str, ModelDims], **kwargs):
    """Vectorise :func:`method_cost` over a DataFrame with columns model, method, length, ratio.

    ``models`` maps the ``model`` column's values to :class:`ModelDims`.  Extra keyword
    arguments go to :func:`method_cost`.  Returns a new DataFrame: the distinct grid rows plus
    every key of :func:`method_cost` (``model`` keeps the grid's value).
    """
    import pandas as pd

    need = {"model", "method", "length", "ratio"}
    missing = need - set(grid.columns)
    if missing:
        raise ValueError(f"cost_table: grid lacks columns {sorted(missing)}")
    unknown = sorted(set(grid["model"]) - set(models))
    if unknown:
        raise ValueError(f"cost_table: no ModelDims for models {unknown}")
    rows = []
    for rec in grid[["model", "method", "length", "ratio"]].drop_duplicates().itertuples(index=False):
        out = method_cost(models[rec.model], rec.method, int(rec.length), float(rec.ratio), **kwargs)
        out["model"] = rec.model
        rows.append(out)
    return pd.DataFrame(rows)
