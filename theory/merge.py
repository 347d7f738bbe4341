"""Merge algebra on one adapted matrix: the operations every reuse method is built from.

Two spaces (STYLE.md "name the space"):
- DELTA space acts on ``delta_i = scale_i * B_i @ A_i`` (exact weighted sums, ``cat``,
  ``svd`` truncation, TIES, DARE).
- FACTOR space acts on ``A_i`` and ``B_i`` separately (PEFT's ``linear``, LoraHub:
  :func:`factor_combine`); the product of merged factors carries cross terms ``B_i A_j`` (i != j).

An adapter on one matrix is a :class:`Factors`: ``A: (r, d_in)``, ``B: (d_out, r)``,
``scale``. All functions are pure and differentiable where that makes sense.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Factors:
    """LoRA factors of one matrix: ``delta = scale * B @ A``."""

    A: Tensor  # (r, d_in)
    B: Tensor  # (d_out, r)
    scale: float = 1.0

    def __post_init__(self):
        if self.A.ndim != 2 or self.B.ndim != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(
                f"factor shapes A={tuple(self.A.shape)}, B={tuple(self.B.shape)}: "
                "need A (r, d_in) and B (d_out, r) with the same r"
            )

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def delta(self) -> Tensor:
        return self.scale * self.B @ self.A  # (d_out, d_in)


def _check_weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if n == 0:
        raise ValueError("adapters is empty: give at least one adapter to merge")
    if weights is None:
        return [1.0 / n] * n  # uniform average
    if len(weights) != n:
        raise ValueError(f"weights has {len(weights)} entries for {n} adapters: give one per adapter")
    return [float(w) for w in weights]


def weighted_delta_sum(adapters: Sequence[Factors], weights: Sequence[float] | None = None) -> Tensor:
    """MERGE (delta space): ``sum_i w_i delta_i``. ``weights=None`` is the uniform average;
    all ones is task arithmetic / plain sum."""
    w = _check_weights(len(adapters), weights)
    return sum(wi * a.delta for wi, a in zip(w, adapters))


def cat(adapters: Sequence[Factors], weights: Sequence[float] | None = None) -> Factors:
    """MERGE-1: concatenate factors so that ``cat(...).delta == weighted_delta_sum(...)``
    exactly, with rank ``sum r_i``. ``A_cat = [A_1; A_2; ...]``, ``B_cat = [w_1 s_1 B_1, ...]``."""
    w = _check_weights(len(adapters), weights)
    A = torch.cat([a.A for a in adapters], dim=0)  # (sum r_i, d_in)
    B = torch.cat([wi * a.scale * a.B for wi, a in zip(w, adapters)], dim=1)  # (d_out, sum r_i)
    return Factors(A=A, B=B, scale=1.0)


def svd_truncate(delta: Tensor, rank: int) -> Factors:
    """MERGE-2: best rank-``rank`` factors of ``delta`` in Frobenius norm (Eckart-Young).
    The singular values are split evenly: ``B = U sqrt(S)``, ``A = sqrt(S) V^T``."""
    if not 1 <= rank <= min(delta.shape):
        raise ValueError(f"rank={rank}: must be in [1, {min(delta.shape)}] for a {tuple(delta.shape)} delta")
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:rank].sqrt()
    return Factors(A=root[:, None] * Vh[:rank], B=U[:, :rank] * root[None, :], scale=1.0)


def factored_svd(adapters: Sequence[Factors], weights: Sequence[float] | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """MERGE-2 without the dense matrix: the thin SVD ``U diag(S) Vh`` of
    ``weighted_delta_sum(adapters, weights)`` from the factors of its :func:`cat`,
    ``delta = B A`` with ``R = sum r_i`` columns/rows. Thin QRs ``B = Q_B R_B`` and
    ``A^T = Q_A R_A`` give ``delta = Q_B (R_B R_A^T) Q_A^T``; the SVD of the small
    ``R_B R_A^T = u s v^T`` then gives ``U = Q_B u``, ``S = s``, ``Vh = v^T Q_A^T``:
    O((d_out + d_in) R^2 + R^3) work instead of a dense O(d_out d_in min(d_out, d_in)) SVD.
    Returns ``U (d_out, k)``, ``S (k,)`` descending, ``Vh (k, d_in)`` with
    ``k = min(R, d_out, d_in)``; values beyond the delta's true rank are ~0."""
    merged = cat(adapters, weights)
    Q_B, R_B = torch.linalg.qr(merged.B)  # (d_out, k), (k, R)
    Q_A, R_A = torch.linalg.qr(merged.A.T)  # (d_in, k'), (k', R)
    u, s, vh = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)  # of (k, k'): delta in the two bases
    return Q_B @ u, s, vh @ Q_A.T


def eckart_young_error(delta: Tensor, rank: int) -> float:
    """Predicted ``min_{rank <= r} ||delta - X||_F = sqrt(sum_{i>r} sigma_i^2)``."""
    if not isinstance(rank, int) or rank < 0:
        # a negative rank would silently slice S[-k:] and return the wrong tail
        raise ValueError(f"rank={rank!r}: must be an integer >= 0")
    S = torch.linalg.svdvals(delta)
    return float(S[rank:].square().sum().sqrt())


def factor_combine(adapters: Sequence[Factors], a_coeffs: Sequence[float], b_coeffs: Sequence[float]) -> Factors:
    """FACTOR space, general form: ``A = sum_j a_j A_j``, ``B = sum_i b_i B_i``, scale 1 (equal
    ranks required), so ``delta = sum_{i,j} b_i a_j B_i A_j``: the terms ``i = j`` carry
    ``b_i a_i``, the cross terms ``i != j`` appear whatever the coefficients."""
    a_coeffs, b_coeffs = _check_weights(len(adapters), a_coeffs), _check_weights(len(adapters), b_coeffs)
    ranks = {a.rank for a in adapters}
    if len(ranks) != 1:
        raise ValueError(f"factor-space merging needs equal ranks, got {sorted(ranks)}: use cat or svd")
    B = sum(b * a.B for b, a in zip(b_coeffs, adapters))  # (d_out, r)
    A = sum(c * a.A for c, a in zip(a_coeffs, adapters))  # (r, d_in)
    return Factors(A=A, B=B, scale=1.0)


def balanced_coefficients(adapters: Sequence[Factors], weights: Sequence[float] | None = None
                          ) -> tuple[list[float], list[float]]:
    """PEFT ``linear``'s split of ``w_i s_i`` over both factors: ``b_i = sqrt(|w_i s_i|)``,
    ``a_i = sign(w_i s_i) b_i`` (the sign on ``A`` only, so ``b_i a_i = w_i s_i`` for any sign
    of ``w_i``). Returns ``(a, b)``."""
    w = _check_weights(len(adapters), weights)
    b = [math.sqrt(abs(wi * a.scale)) for wi, a in zip(w, adapters)]
    return [bi if wi * a.scale >= 0 else -bi for bi, wi, a in zip(b, w, adapters)], b


def factor_average(adapters: Sequence[Factors], weights: Sequence[float] | None = None) -> Factors:
    """MERGE-3 (factor space), the math of PEFT ``add_weighted_adapter(combination_type="linear")``:
    :func:`factor_combine` with :func:`balanced_coefficients`, i.e.
    ``B = sum_i sqrt(|w_i s_i|) B_i``, ``A = sum_j sign(w_j s_j) sqrt(|w_j s_j|) A_j``, scale 1
    (``weights=None``: uniform ``1/n``; any sign; equal ranks required). Its delta is the
    weighted delta sum plus :func:`cross_terms`. PEFT's own result is this times its merged
    adapter's scaling, which is 1 except when the first adapter uses rsLoRA (then
    ``sqrt(r)``: a PEFT bug, reproduced only by ``toymodels.peft_merges``)."""
    return factor_combine(adapters, *balanced_coefficients(adapters, weights))


def cross_terms(adapters: Sequence[Factors], weights: Sequence[float] | None = None) -> Tensor:
    """The predicted gap ``factor_average(...).delta - weighted_delta_sum(...)``:
    ``sum_{i != j} b_i a_j B_i A_j`` with the :func:`balanced_coefficients` ``a, b``
    (``= sum_{i != j} sqrt(w_i s_i w_j s_j) B_i A_j`` for positive ``w s``)."""
    a, b = balanced_coefficients(adapters, weights)
    out = torch.zeros_like(adapters[0].delta)
    for i, ai in enumerate(adapters):
        for j, aj in enumerate(adapters):
            if i != j:
                out = out + b[i] * a[j] * ai.B @ aj.A
    return out


def dare(delta: Tensor, drop_rate: float, generator: torch.Generator) -> Tensor:
    """MERGE-4 (Yu et al. 2023): drop each entry with probability ``drop_rate`` and rescale
    the rest by ``1 / (1 - drop_rate)``, so ``E[dare(delta)] = delta`` (unbiased)."""
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate={drop_rate}: must be in [0, 1)")
    # draws in at least float32: bfloat16's coarse uniforms keep 0.1016, not 0.1, at drop_rate 0.9
    draw_dtype = torch.promote_types(delta.dtype, torch.float32)
    keep = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=draw_dtype) >= drop_rate
    return delta * keep / (1.0 - drop_rate)


def trim_top_k(delta: Tensor, density: float) -> Tensor:
    """TIES step 1: keep the ``density`` fraction of entries with the largest magnitude."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density={density}: must be in (0, 1]")
    k = max(1, int(round(density * delta.numel())))
    if k == delta.numel():
        return delta.clone()
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def disjoint_mean(values: Tensor, keep: Tensor) -> Tensor:
    """TIES step 3 (disjoint merge): per entry, the mean of ``values`` (n, ...) over the ``n``
    where ``keep`` is True, 0 where none is kept."""
    return (values * keep).sum(dim=0) / keep.sum(dim=0).clamp(min=1)


def ties(deltas: Sequence[Tensor], weights: Sequence[float] | None = None, density: float = 0.2) -> Tensor:
    """MERGE-5 (Yadav et al. 2023) on deltas: trim each ``w_i delta_i`` to its top-``density``
    entries, elect per entry the sign of the summed trimmed values (the majority by mass, of the
    WEIGHTED values), and average only the nonzero entries that agree with the elected sign
    (an entry whose sum is exactly 0 elects no sign and merges to 0)."""
    w = _check_weights(len(deltas), weights if weights is not None else [1.0] * len(deltas))
    trimmed = torch.stack([trim_top_k(wi * d, density) for wi, d in zip(w, deltas)])  # (n, d_out, d_in)
    elected = torch.sign(trimmed.sum(dim=0))  # (d_out, d_in)
    return disjoint_mean(trimmed, (torch.sign(trimmed) == elected) & (trimmed != 0))


def numerical_rank(M: Tensor, rtol: float = 1e-6) -> int:
    """Number of singular values above ``rtol * sigma_max``."""
    S = torch.linalg.svdvals(M)
    if S.numel() == 0 or S[0] == 0:
        return 0
    return int((S > rtol * S[0]).sum())
