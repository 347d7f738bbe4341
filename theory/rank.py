"""RANK-1: how many facts a rank-r update of one matrix can store (PAPER.md section 1).

Setting (notation of ``theory/__init__.py``): N facts with keys stacked as columns
``K: (m, N)`` and required logit changes ``D: (d_vocab, N)``. An update ``DW: (d_vocab, m)``
makes every fact exact iff ``DW @ K == D``; hence ``rank(DW) >= rank(DW @ K) = rank(D)``.
With linearly independent keys (``rank(K) = N``), ``X = DW @ K`` ranges over ALL
``(d_vocab, N)`` matrices of rank <= r (take ``DW = X @ pinv(K)``), so

    min_{rank(DW) <= r} ||DW @ K - D||_F = sqrt(sum_{i > r} sigma_i(D)^2)   (Eckart-Young),

attained by ``DW = LR_r(D) @ pinv(K)``, the best rank-r approximation of D mapped back
through the keys. The LoRA factors are ``B = U_r sqrt(S_r)``, ``A = sqrt(S_r) V_r^T pinv(K)``.

Facts with a SHARED change (many subjects whose answer moves from entity a to entity b)
add columns but not rank: :func:`shared_change_facts` builds D from ``counts[j]`` facts per
change, so ``sigma_j(D) = sqrt(2 counts_j)`` in closed form (disjoint one-hot differences
are orthogonal with norm sqrt(2)); the checks compare that closed form with the SVD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from theory.claims import Check, ClaimSettings, claim, within
from theory.merge import Factors, eckart_young_error, numerical_rank, svd_truncate

DTYPE = torch.float64  # exactness checks need float64: errors are compared at 1e-9


@dataclass(frozen=True)
class FactSystem:
    """N facts in one matrix: keys ``K: (m, N)``, required changes ``D: (d_vocab, N)``."""

    K: Tensor
    D: Tensor

    def __post_init__(self):
        if self.K.ndim != 2 or self.D.ndim != 2 or self.K.shape[1] != self.D.shape[1]:
            raise ValueError(f"K={tuple(self.K.shape)}, D={tuple(self.D.shape)}: need K (m, N) and D (d_vocab, N)")

    def error(self, delta: Tensor) -> float:
        """``||delta @ K - D||_F``: how far the update is from making every fact exact."""
        return float(torch.linalg.matrix_norm(delta @ self.K - self.D))


def shared_change_facts(counts: Sequence[int], d_key: int, d_vocab: int, generator: torch.Generator) -> FactSystem:
    """``sum(counts)`` facts: ``counts[j]`` of them need the change ``i_new_j - i_old_j``
    (all 2*len(counts) entities distinct); keys are Gaussian, columns in random order."""
    if not counts or any(not isinstance(c, int) or c < 1 for c in counts):
        raise ValueError(f"counts={list(counts)}: must be a non-empty list of integers >= 1")
    n_facts = sum(counts)
    if d_key < n_facts:
        raise ValueError(f"d_key={d_key}: must be >= the number of facts {n_facts} (independent keys)")
    if d_vocab < 2 * len(counts):
        raise ValueError(f"d_vocab={d_vocab}: must be >= {2 * len(counts)} (two distinct entities per change)")
    entities = torch.randperm(d_vocab, generator=generator)[: 2 * len(counts)]
    changes = torch.zeros(d_vocab, len(counts), dtype=DTYPE)  # (d_vocab, n_changes)
    changes[entities[len(counts):], torch.arange(len(counts))] = 1.0  # new answers
    changes[entities[: len(counts)], torch.arange(len(counts))] = -1.0  # old answers
    which = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    which = which[torch.randperm(n_facts, generator=generator)]  # (N,) change index per fact
    K = torch.randn(d_key, n_facts, generator=generator, dtype=DTYPE)
    return FactSystem(K=K, D=changes[:, which])


def closed_form_tail(counts: Sequence[int], rank: int) -> float:
    """EY tail for :func:`shared_change_facts`: ``sigma_j = sqrt(2 counts_j)``, so dropping
    all but the ``rank`` largest changes costs ``sqrt(2 * sum of the smallest counts)``."""
    kept = sorted(counts, reverse=True)[rank:]
    return math.sqrt(2.0 * sum(kept))


def optimal_update(facts: FactSystem, rank: int) -> Factors:
    """The best rank-``rank`` LoRA ``B @ A`` for ``facts`` (module docstring); exact once
    ``rank >= rank(D)``. Needs linearly independent keys."""
    m, n = facts.K.shape
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank={rank!r}: must be an integer >= 0")
    if numerical_rank(facts.K) < n:
        raise ValueError(f"K has rank {numerical_rank(facts.K)} < N={n}: keys must be linearly independent")
    r = min(rank, min(facts.D.shape))
    if r == 0:
        return Factors(A=facts.K.new_zeros(0, m), B=facts.D.new_zeros(facts.D.shape[0], 0))
    best = svd_truncate(facts.D, r)  # MERGE-2's Eckart-Young factors of D: B (d_vocab, r), A (r, N)
    return Factors(A=best.A @ torch.linalg.pinv(facts.K), B=best.B)  # A: (r, N) @ (N, m) -> (r, m)


def fit_adam(params: Sequence[Tensor], loss_fn: Callable[[], Tensor], steps: int, lr: float) -> float:
    """Minimise ``loss_fn()`` over ``params`` (leaf tensors, requires_grad) with Adam;
    returns the final loss. Shared by RANK-1 and RANK-2's trained baselines."""
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(loss_fn())


def trained_update(facts: FactSystem, rank: int, generator: torch.Generator, steps: int = 300,
                   lr: float = 0.03) -> Factors:
    """A rank-``rank`` LoRA trained by Adam on ``||B A K - D||_F^2`` from the LoRA init
    (``B = 0``, ``A`` small random): the gradient-trained counterpart of :func:`optimal_update`."""
    m = facts.K.shape[0]
    A = (0.1 * torch.randn(rank, m, generator=generator, dtype=DTYPE)).requires_grad_()
    B = torch.zeros(facts.D.shape[0], rank, dtype=DTYPE, requires_grad=True)
    fit_adam([A, B], lambda: (B @ A @ facts.K - facts.D).square().sum(), steps, lr)
    return Factors(A=A.detach(), B=B.detach())


COUNTS = (4, 3, 2, 1, 1)  # 11 facts, 5 independent changes: sigma(D)^2 = 8, 6, 4, 2, 2
D_KEY, D_VOCAB = 16, 12
TOL = 1e-9


@claim("RANK-1")
def rank1(settings: ClaimSettings) -> list[Check]:
    """RANK-1 (PAPER.md section 1, "Rank and expressiveness limits"): making N facts exact
    needs ``DW K = D``, so ``rank(DW) >= rank(D)``; with linearly independent keys the best
    rank-r error ``min ||DW K - D||_F`` is the Eckart-Young tail ``sqrt(sum_{i>r} sigma_i(D)^2)``."""
    gen = torch.Generator().manual_seed(settings.seed)
    facts = shared_change_facts(list(COUNTS), D_KEY, D_VOCAB, gen)
    rank_d = numerical_rank(facts.D)
    ranks = list(range(0, rank_d + 3))
    predicted = [eckart_young_error(facts.D, r) for r in ranks]
    closed = [closed_form_tail(COUNTS, r) for r in ranks]
    built = [facts.error(optimal_update(facts, r).delta) for r in ranks]
    trained = [None] + [facts.error(trained_update(facts, r, gen).delta) for r in ranks[1:]]  # no rank-0 training
    exact_err = max(built[rank_d:])
    below = range(rank_d)
    tail_gap = max(abs(built[r] - predicted[r]) for r in below)
    min_tail = min(built[r] for r in below)
    # the minimum-norm exact update D pinv(K) and the rank-rank_d construction have rank rank(D)
    exact_rank = numerical_rank(facts.D @ torch.linalg.pinv(facts.K))
    closed_gap = max(abs(p - c) for p, c in zip(predicted, closed))
    trained_below = min(trained[r] - predicted[r] for r in ranks[1:])
    trained_rel = max((trained[r] - predicted[r]) / max(predicted[r], 1.0) for r in ranks[1:])
    data = {"ranks": ranks, "predicted": predicted, "closed_form": closed, "construction": built,
            "trained": trained, "rank_D": rank_d, "n_facts": sum(COUNTS), "counts": list(COUNTS)}
    n = sum(COUNTS)
    return [
        Check("RANK-1.exact", f"{n} facts, rank(D)={rank_d}: rank-r construction exact for r >= rank(D)",
              0.0, exact_err, TOL, exact_err <= TOL, data),
        Check("RANK-1.necessary", "exact update D pinv(K) has rank rank(D); r = rank(D)-1 leaves error > 0",
              f"rank {len(COUNTS)}, err>0", f"rank {exact_rank}, err {built[rank_d - 1]:.3g}", "exact",
              exact_rank == rank_d == len(COUNTS) and built[rank_d - 1] > 1e-3),
        Check("RANK-1.tail", "below rank(D): construction error equals the Eckart-Young tail of D (max gap)",
              0.0, tail_gap, TOL, tail_gap <= TOL and min_tail > 1e-3),
        Check("RANK-1.closed_form", "EY tail equals sqrt(2 * facts on the dropped changes) (max gap over r)",
              0.0, closed_gap, TOL, within(closed_gap, 0.0, TOL)),
        Check("RANK-1.trained", "Adam-trained rank-r B@A never beats the tail and ends within 2% of it",
              "0 <= gap <= 2%", f"min {trained_below:.2g}, max {trained_rel:.2%}", "2%",
              trained_below >= -TOL and trained_rel <= 0.02),
    ]
