"""Arrow routing (Ostapenko et al. 2024) among a bank of adapters on one matrix.

Each adapter's prototype is the top right singular vector of its delta (a direction in
input space, sign arbitrary). A hidden state ``h`` scores adapter i by ``|<h, p_i>|``;
the top-k scores go through a softmax with temperature, the rest get weight 0. The routed
output adds ``sum_i w_i(h) h @ delta_i.T``: per token, again a weighted sum of deltas (T2).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def arrow_prototype(delta: Tensor) -> Tensor:
    """Top right singular vector of ``delta: (..., d_out, d_in)`` -> ``(..., d_in)``, unit norm
    (a stack of deltas gives one prototype each, in one batched SVD)."""
    _, _, Vh = torch.linalg.svd(delta, full_matrices=False)
    return Vh[..., 0, :]


def arrow_prototype_lowrank(B: Tensor, A: Tensor) -> Tensor:
    """:func:`arrow_prototype` of ``delta = B @ A`` from the factors ``B (..., d_out, r)``,
    ``A (..., r, d_in)`` (up to sign): with thin QRs ``B = Q_B R_B``, ``A^T = Q_A R_A``,
    ``delta = Q_B (R_B R_A^T) Q_A^T``, so the top right singular vector is ``Q_A`` times the
    r x r core's (an r x r SVD instead of a d_out x d_in one)."""
    Q_B, R_B = torch.linalg.qr(B)
    Q_A, R_A = torch.linalg.qr(A.mT)
    _, _, Vh = torch.linalg.svd(R_B @ R_A.mT)  # (..., r, r)
    return (Q_A @ Vh[..., 0, :, None])[..., 0]


def arrow_weights(h: Tensor, prototypes: Tensor, top_k: int = 1, temperature: float = 1.0) -> Tensor:
    """Routing weights ``(..., n)`` for hidden states ``h: (..., d_in)`` and
    ``prototypes: (n, d_in)``: softmax of ``|<h, p_i>| / temperature`` over the top-k."""
    n = prototypes.shape[0]
    if not 1 <= top_k <= n:
        raise ValueError(f"top_k={top_k}: must be in [1, {n}] (the bank has {n} adapters)")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    scores = (h @ prototypes.T).abs()  # (..., n)
    top = scores.topk(top_k, dim=-1)
    weights = torch.zeros_like(scores)
    return weights.scatter(-1, top.indices, torch.softmax(top.values / temperature, dim=-1))


def routed_output(h: Tensor, deltas: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``sum_i weights[..., i] * (h @ delta_i.T)``: the routed adapters' contribution."""
    outs = torch.stack([h @ d.T for d in deltas], dim=-2)  # (..., n, d_out)
    return (weights.unsqueeze(-1) * outs).sum(dim=-2)
