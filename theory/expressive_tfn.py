"""RANK-2 for transformers: Zeng & Lee, "The Expressive Power of Low-Rank Adaptation" (ICLR
2024), transformer statement: LoRA of rank ``ceil(D/2)`` adapts a frozen transformer to ANY
target transformer of the same size (D = embedding size), exactly, under a non-singularity
assumption. Checked here by building their adapters numerically.

Their transformer (the one the statement is about; rows are tokens, ``y = x @ W.T``):
``L`` blocks, block l maps ``Z (N, D)`` to

    A = sum_h softmax(Z W_Q^h^T (Z W_K^h^T)^T) Z W_V^h^T W_O^h^T      (softmax over keys)
    Z' = ReLU(A W_1^T + b_1) W_2^T + b_2

with ``H`` heads of full ``(D, D)`` matrices, no 1/sqrt(d) scale, no residual, no LayerNorm,
and the output ``Y = Z_L W_o^T``. Attention sees ``W_Q, W_K`` only through the bilinear form
``W_Q^T W_K`` and ``W_V, W_O`` only through ``W_O W_V``: each is a product of two frozen
matrices, so RANK-2's two-layer linear construction (theory/expressive.py) makes it equal to
any target product with rank-R updates of both factors once ``2R >= rank(difference)``; the
difference has rank <= D, hence ``R = ceil(D/2)``. Block by block (their proof):

- a target block sees ``Z~ = Z C^T`` with ``C = W~_2 W_2^{-1}`` of the previous block
  (``C = I`` for block 1): the QK target is ``C^T W~_Q^T W~_K C`` and the OV target
  ``W_1^{-1} W~_1 W~_O W~_V C`` (the frozen ``W_1`` is undone inside the product);
- ``b_1 = b~_1``, so the FFN's hidden layer equals the target's; ``b_2 = W_2 W~_2^{-1} b~_2``
  makes the next block's input ``Z~ = Z C^T`` again;
- the last block adapts ``W_2`` and ``W_o`` (product ``W_o W_2`` -> ``W~_o W~_2``) and sets
  ``b_2 = (W_o + dW_o)^{-1} W~_o b~_2``.

Below the threshold each adapted product misses its target by exactly the two-layer linear
optimum ``sigma_{2R+1}`` of its difference (spectral; Eckart-Young tail in Frobenius), and the
output error is > 0. Zeng & Lee give no error bound for transformers below the threshold,
so none is checked. ASSUMPTION (theirs): the inverted matrices (``W_1``, ``W_2``, ``W~_2``,
``W_o + dW_o`` and those inside the linear construction) are non-singular (true almost surely
for Gaussian weights; the smallest singular value inverted is reported).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from theory.expressive import linear_construction
from theory.rank import DTYPE


@dataclass(frozen=True)
class TFN:
    """Zeng & Lee's transformer (module docstring). Per block ``l``: ``W_Q[l], W_K[l],
    W_V[l], W_O[l]: (H, D, D)``, ``W_1[l], W_2[l]: (D, D)``, ``b_1[l], b_2[l]: (D,)``;
    ``W_o: (D, D)``."""

    W_Q: list[Tensor]
    W_K: list[Tensor]
    W_V: list[Tensor]
    W_O: list[Tensor]
    W_1: list[Tensor]
    b_1: list[Tensor]
    W_2: list[Tensor]
    b_2: list[Tensor]
    W_o: Tensor

    def __call__(self, X: Tensor) -> Tensor:  # X: (n, N, D) -> (n, N, D)
        Z = X
        for l in range(len(self.W_1)):
            Zh = Z.unsqueeze(1)  # (n, 1, N, D): one copy per head
            Q, K = Zh @ self.W_Q[l].mT, Zh @ self.W_K[l].mT  # (n, H, N, D) each
            P = torch.softmax(Q @ K.mT, dim=-1)  # (n, H, N, N): query rows, softmax over keys
            A = (P @ Zh @ (self.W_O[l] @ self.W_V[l]).mT).sum(1)  # (n, H, N, D) -> (n, N, D)
            Z = torch.relu(A @ self.W_1[l].T + self.b_1[l]) @ self.W_2[l].T + self.b_2[l]
        return Z @ self.W_o.T


def random_tfn(n_blocks: int, n_heads: int, width: int, generator: torch.Generator) -> TFN:
    """Gaussian weights with entries ``N(0, 1/D)``, biases ``N(0, 1/4)``."""
    if min(n_blocks, n_heads, width) < 1:
        raise ValueError(f"n_blocks={n_blocks}, n_heads={n_heads}, width={width}: each must be >= 1")

    def w(*shape):
        return torch.randn(*shape, width, width, generator=generator, dtype=DTYPE) / math.sqrt(width)

    def b():
        return 0.5 * torch.randn(width, generator=generator, dtype=DTYPE)

    blocks = range(n_blocks)
    return TFN(W_Q=[w(n_heads) for _ in blocks], W_K=[w(n_heads) for _ in blocks], W_V=[w(n_heads) for _ in blocks],
               W_O=[w(n_heads) for _ in blocks], W_1=[w() for _ in blocks], b_1=[b() for _ in blocks],
               W_2=[w() for _ in blocks], b_2=[b() for _ in blocks], W_o=w())


@dataclass(frozen=True)
class TFNConstruction:
    adapted: TFN
    adapters: list[Tensor]  # every dW added to a frozen matrix, each of rank <= R
    products: list[tuple[Tensor, Tensor, Tensor]]  # (frozen factors' product difference E, adapted product, target)
    min_sigma: float  # smallest singular value among the matrices inverted (the assumption)


def _smallest(*Ms: Tensor) -> float:
    return min(float(torch.linalg.svdvals(M)[-1]) for M in Ms)


def tfn_construction(frozen: TFN, target: TFN, rank: int) -> TFNConstruction:
    """Zeng & Lee's rank-``rank`` adapters for every head's W_Q, W_K, W_V, W_O, the last
    block's W_2 and W_o, plus the FFN biases (module docstring)."""
    L, H = len(frozen.W_1), frozen.W_Q[0].shape[0]
    if len(target.W_1) != L or target.W_Q[0].shape != frozen.W_Q[0].shape:
        raise ValueError(f"target has {len(target.W_1)} blocks of {tuple(target.W_Q[0].shape)} heads: "
                         f"must match the frozen model ({L} blocks of {tuple(frozen.W_Q[0].shape)})")
    D = frozen.W_o.shape[0]
    C, adapters, products, min_sigma = torch.eye(D, dtype=DTYPE), [], [], math.inf
    new = {k: [] for k in ("W_Q", "W_K", "W_V", "W_O", "b_2")}

    def match(first: Tensor, second: Tensor, goal: Tensor) -> tuple[Tensor, Tensor]:
        """Adapt the product ``second @ first`` to ``goal``: ``(first + d1, second + d2)``."""
        nonlocal min_sigma
        built = linear_construction([first, second], goal, rank)
        adapters.extend(built.deltas)
        min_sigma = min(min_sigma, built.min_sigma)
        a1, a2 = first + built.deltas[0], second + built.deltas[1]
        products.append((goal - second @ first, a2 @ a1, goal))
        return a1, a2

    for l in range(L):
        qk = [match(frozen.W_K[l][h], frozen.W_Q[l][h].T, C.T @ target.W_Q[l][h].T @ target.W_K[l][h] @ C)
              for h in range(H)]  # W_Q^T W_K: W_K acts first
        undo = torch.linalg.solve(frozen.W_1[l], target.W_1[l])  # W_1^{-1} W~_1
        ov = [match(frozen.W_V[l][h], frozen.W_O[l][h], undo @ target.W_O[l][h] @ target.W_V[l][h] @ C)
              for h in range(H)]
        new["W_K"].append(torch.stack([k for k, _ in qk]))
        new["W_Q"].append(torch.stack([qt.T for _, qt in qk]))
        new["W_V"].append(torch.stack([v for v, _ in ov]))
        new["W_O"].append(torch.stack([o for _, o in ov]))
        min_sigma = min(min_sigma, _smallest(frozen.W_1[l], frozen.W_2[l], target.W_2[l]))
        if l < L - 1:
            new["b_2"].append(frozen.W_2[l] @ torch.linalg.solve(target.W_2[l], target.b_2[l]))
            C = target.W_2[l] @ torch.linalg.inv(frozen.W_2[l])
    W_2, W_o = match(frozen.W_2[-1], frozen.W_o, target.W_o @ target.W_2[-1])
    min_sigma = min(min_sigma, _smallest(W_o))
    new["b_2"].append(torch.linalg.solve(W_o, target.W_o @ target.b_2[-1]))
    adapted = replace(frozen, **new, b_1=list(target.b_1), W_2=[*frozen.W_2[:-1], W_2], W_o=W_o)
    return TFNConstruction(adapted=adapted, adapters=adapters, products=products, min_sigma=min_sigma)
