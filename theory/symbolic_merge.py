"""SymPy counterparts of the merge identities (MERGE-1, MERGE-3, MERGE-6).

Adapters are matrices of free symbols, so an identity that simplifies to the zero matrix
holds for EVERY value of the factors, scales and weights, not just sampled ones. The same
formulas are then evaluated at numeric factors and compared with ``theory.merge`` (see
``theory/merge_claims.py``), which ties the symbolic statement to the code under test.

- MERGE-1: ``B_cat A_cat = sum_i w_i s_i B_i A_i`` with ``A_cat = [A_1; ...]``,
  ``B_cat = [w_1 s_1 B_1, ...]``.
- MERGE-3 (PEFT ``linear``): ``(sum_i sqrt(w_i s_i) B_i)(sum_j sqrt(w_j s_j) A_j) =
  sum_i w_i s_i B_i A_i + sum_{i != j} sqrt(w_i s_i w_j s_j) B_i A_j``; the cross terms are
  not identically zero.
- MERGE-6: ``rank(sum_i B_i A_i) <= sum_i r_i``: every minor of order ``sum r_i + 1`` of the
  symbolic sum expands to 0, while some minor of order ``sum r_i`` does not (equality
  generically); with a shared column space (``B_2 = B_1 C``) the bound drops to ``r_1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import sympy as sp
import torch

from theory.merge import Factors


@dataclass(frozen=True)
class SymAdapter:
    A: sp.Matrix  # (r, d_in)
    B: sp.Matrix  # (d_out, r)
    scale: sp.Symbol

    @property
    def delta(self) -> sp.Matrix:
        return self.scale * self.B * self.A


def symbolic_adapters(d_out: int, d_in: int, ranks: Sequence[int]) -> tuple[list[SymAdapter], list[sp.Symbol]]:
    """Adapters with symbolic entries ``a{i}_{k}{j}``, ``b{i}_{k}{j}``, positive scales ``s{i}``
    and positive weights ``w{i}`` (positive, as LoRA's ``alpha / r``, so that square roots of
    ``w s`` simplify)."""
    if not ranks or any(not isinstance(r, int) or r < 1 for r in ranks):
        raise ValueError(f"ranks={list(ranks)}: must be a non-empty list of integers >= 1")
    adapters = [
        SymAdapter(A=sp.Matrix(r, d_in, lambda k, j, i=i: sp.Symbol(f"a{i}_{k}{j}")),
                   B=sp.Matrix(d_out, r, lambda k, j, i=i: sp.Symbol(f"b{i}_{k}{j}")),
                   scale=sp.Symbol(f"s{i}", positive=True))
        for i, r in enumerate(ranks)
    ]
    weights = [sp.Symbol(f"w{i}", positive=True) for i in range(len(ranks))]
    return adapters, weights


def weighted_sum(adapters: Sequence[SymAdapter], weights: Sequence[sp.Expr]) -> sp.Matrix:
    return sum((w * a.delta for w, a in zip(weights, adapters)), sp.zeros(*adapters[0].delta.shape))


def cat_delta(adapters: Sequence[SymAdapter], weights: Sequence[sp.Expr]) -> sp.Matrix:
    """``B_cat @ A_cat`` of MERGE-1's concatenation."""
    A = sp.Matrix.vstack(*[a.A for a in adapters])  # (sum r_i, d_in)
    B = sp.Matrix.hstack(*[w * a.scale * a.B for w, a in zip(weights, adapters)])  # (d_out, sum r_i)
    return B * A


def factor_average_delta(adapters: Sequence[SymAdapter], weights: Sequence[sp.Expr]) -> sp.Matrix:
    """Delta of MERGE-3's factor-space average (PEFT "linear"): ``sqrt(w_i s_i)`` on both factors."""
    B = sum((sp.sqrt(w * a.scale) * a.B for w, a in zip(weights, adapters)), sp.zeros(*adapters[0].B.shape))
    A = sum((sp.sqrt(w * a.scale) * a.A for w, a in zip(weights, adapters)), sp.zeros(*adapters[0].A.shape))
    return B * A


def cross_terms(adapters: Sequence[SymAdapter], weights: Sequence[sp.Expr]) -> sp.Matrix:
    """``sum_{i != j} sqrt(w_i s_i) sqrt(w_j s_j) B_i A_j``."""
    out = sp.zeros(*adapters[0].delta.shape)
    for i, ai in enumerate(adapters):
        for j, aj in enumerate(adapters):
            if i != j:
                out += sp.sqrt(weights[i] * ai.scale) * sp.sqrt(weights[j] * aj.scale) * ai.B * aj.A
    return out


def is_zero(M: sp.Matrix) -> bool:
    """True iff every entry expands to the zero polynomial."""
    return all(sp.expand(e) == 0 for e in M)


def generic_rank(M: sp.Matrix) -> int:
    """Largest k with a k x k minor that is not identically zero: the rank for generic
    values of the symbols (an upper bound for every value)."""
    rank = 0
    for k in range(1, min(M.shape) + 1):
        nonzero = any(sp.expand(M.extract(list(rows), list(cols)).det(method="berkowitz")) != 0
                      for rows in combinations(range(M.shape[0]), k) for cols in combinations(range(M.shape[1]), k))
        if not nonzero:
            break
        rank = k
    return rank


def substitution(adapters: Sequence[SymAdapter], weights: Sequence[sp.Symbol], numeric: Sequence[Factors],
                 numeric_weights: Sequence[float]) -> dict[sp.Symbol, float]:
    """Map every symbol to the entries of the numeric adapters (same shapes)."""
    subs: dict[sp.Symbol, float] = {}
    for sym, num, w_sym, w in zip(adapters, numeric, weights, numeric_weights):
        if sym.A.shape != tuple(num.A.shape) or sym.B.shape != tuple(num.B.shape):
            raise ValueError(f"numeric adapter A={tuple(num.A.shape)}, B={tuple(num.B.shape)}: must match the "
                             f"symbolic shapes A={sym.A.shape}, B={sym.B.shape}")
        subs.update(zip(sym.A, num.A.flatten().tolist()))
        subs.update(zip(sym.B, num.B.flatten().tolist()))
        subs[sym.scale] = float(num.scale)
        subs[w_sym] = float(w)
    return subs


def evaluate(M: sp.Matrix, subs: dict[sp.Symbol, float]) -> torch.Tensor:
    """``M`` at ``subs`` as a float64 tensor ``(rows, cols)``."""
    return torch.tensor(sp.matrix2numpy(M.evalf(subs=subs), dtype=float), dtype=torch.float64)
