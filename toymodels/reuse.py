"""Reuse methods: from a base model and a list of adapters to one merged or routed model.

Merges are pure functions ``adapters -> Adapter`` (:data:`MERGES`); every ``METHODS[name]``
is ``(base, adapters, **options) -> model``: a merged model (:func:`merge_into_new_model`)
or a routed one (``toymodels/routing.py``). The space each merge acts in (STYLE.md):
- DELTA space, exact: ``average`` (uniform weights), ``sum``/``task_arithmetic`` (weights,
  default all 1), ``cat`` (weights, default uniform): all ``theory.merge.cat``, so the merged
  delta equals the weighted delta sum exactly, with rank ``sum r_i`` (MERGE-1).
- DELTA space, then factored: ``svd`` (Eckart-Young truncation to ``rank``, MERGE-2), ``ties``
  (MERGE-5) and ``dare`` (MERGE-4, then the weighted sum), factored by SVD to ``rank`` or,
  with ``rank=None``, exactly at full rank.
- FACTOR space: ``factor_average`` (PEFT ``linear``, MERGE-3, cross terms ``B_i A_j``) and
  ``lorahub`` (LoraHub: ``A = sum w_i A_i``, ``B = sum w_i B_i``, weights found by a seeded
  gradient-free search on a few examples).
Routed: ``arrow`` and ``oracle``.
Adapters missing a module count as zero there.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from theory import merge
from theory.merge import Factors
from toymodels.adapters import Adapter, merge_into_new_model
from toymodels.routing import arrow_model, oracle_model

Weights = Sequence[float] | None


def _per_module(adapters: Sequence[Adapter]) -> dict[str, list[Factors]]:
    """``path -> [factors of each adapter]``; an adapter without the path gives zero factors
    of the same rank as the first adapter that has it."""
    if not adapters:
        raise ValueError("adapters is empty: reuse needs at least one adapter")
    out = {}
    for path in dict.fromkeys(p for a in adapters for p in a.paths):
        present = next(a.factors[path] for a in adapters if path in a.factors)
        zero = Factors(A=torch.zeros_like(present.A), B=torch.zeros_like(present.B))
        out[path] = [a.factors.get(path, zero) for a in adapters]
    return out


def _merged(adapters: Sequence[Adapter], factors: dict[str, Factors]) -> Adapter:
    """An adapter holding ``factors`` (scale 1 each): config = union of the inputs' targets
    and layers, nominal rank the largest module rank, ``alpha = rank`` so the scale is 1."""
    rank = max(f.rank for f in factors.values())
    cfgs = [a.config for a in adapters]
    layers = None if any(c.layers is None for c in cfgs) else tuple(sorted({l for c in cfgs for l in c.layers}))
    config = dataclasses.replace(cfgs[0], rank=rank, alpha=float(rank), rslora=False, layers=layers,
                                 targets=tuple(dict.fromkeys(t for c in cfgs for t in c.targets)))
    return Adapter(config, factors)


def _exact_factors(delta: Tensor) -> Factors:
    """Factors with ``B @ A == delta`` bit for bit: an identity on the smaller side."""
    d_out, d_in = delta.shape
    if d_out <= d_in:
        return Factors(A=delta.clone(), B=torch.eye(d_out, dtype=delta.dtype, device=delta.device))
    return Factors(A=torch.eye(d_in, dtype=delta.dtype, device=delta.device), B=delta.clone())


def _from_deltas(adapters: Sequence[Adapter], deltas: dict[str, Tensor], rank: int | None) -> Adapter:
    factor = _exact_factors if rank is None else (lambda d: merge.svd_truncate(d, rank))
    return _merged(adapters, {path: factor(d) for path, d in deltas.items()})


def cat(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """Exact ``sum_i w_i delta_i`` (uniform average when ``weights`` is None), MERGE-1."""
    return _merged(adapters, {p: merge.cat(fs, weights) for p, fs in _per_module(adapters).items()})


def task_arithmetic(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """Exact ``sum_i lambda_i delta_i``; ``weights=None`` is the plain sum (all lambda = 1)."""
    return cat(adapters, [1.0] * len(adapters) if weights is None else weights)


def average(adapters: Sequence[Adapter]) -> Adapter:
    """Exact uniform delta average ``(1/n) sum_i delta_i``."""
    return cat(adapters, None)


def svd(adapters: Sequence[Adapter], rank: int, weights: Weights = None) -> Adapter:
    """Best rank-``rank`` approximation of the weighted delta sum per module, MERGE-2."""
    deltas = {p: merge.weighted_delta_sum(fs, weights) for p, fs in _per_module(adapters).items()}
    return _from_deltas(adapters, deltas, rank)


def ties(adapters: Sequence[Adapter], weights: Weights = None, density: float = 0.2,
         rank: int | None = None) -> Adapter:
    """TIES on each module's deltas (MERGE-5), factored to ``rank`` (None: exact)."""
    deltas = {p: merge.ties([f.delta for f in fs], weights, density) for p, fs in _per_module(adapters).items()}
    return _from_deltas(adapters, deltas, rank)


def dare(adapters: Sequence[Adapter], drop_rate: float, generator: torch.Generator,
         weights: Weights = None, rank: int | None = None) -> Adapter:
    """DARE each delta (MERGE-4; draws in path order, then adapter order), then the weighted
    sum (default all 1, as in task arithmetic), factored to ``rank`` (None: exact)."""
    w = merge._check_weights(len(adapters), [1.0] * len(adapters) if weights is None else weights)
    deltas = {p: sum(wi * merge.dare(f.delta, drop_rate, generator) for wi, f in zip(w, fs))
              for p, fs in _per_module(adapters).items()}
    return _from_deltas(adapters, deltas, rank)


def factor_average(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """PEFT ``linear``: ``B = sum sqrt(w_i) B_i``, ``A = sum sqrt(w_i) s_i A_i`` (MERGE-3)."""
    return _merged(adapters, {p: merge.factor_average(fs, weights) for p, fs in _per_module(adapters).items()})


def lorahub_combine(adapters: Sequence[Adapter], weights: Sequence[float]) -> Adapter:
    """LoraHub's composition ``A = sum w_i s_i A_i``, ``B = sum w_i B_i``, any sign of ``w``.
    It is :func:`factor_average` with weights ``w_i^2`` after flipping the signs of BOTH
    factors of each negative-weight adapter (which leaves that adapter's delta unchanged)."""
    signs = [1.0 if w >= 0 else -1.0 for w in weights]
    flipped = [Adapter(a.config, {p: Factors(s * f.A, s * f.B, f.scale) for p, f in a.factors.items()})
               for s, a in zip(signs, adapters)]
    return factor_average(flipped, [float(w) ** 2 for w in weights])


def lorahub_search(base: nn.Module, adapters: Sequence[Adapter], loss_fn: Callable[[nn.Module], float],
                   rng: np.random.Generator, budget: int = 40, l1: float = 0.05,
                   bound: float = 1.5) -> np.ndarray:
    """LoraHub's weight search: minimise ``loss_fn(merged model) + l1 * sum |w_i|`` over
    ``w`` in ``[-bound, bound]^n`` with Nelder-Mead from ``w = 1/n`` and a simplex drawn from
    ``rng``, at most ``budget`` loss evaluations. Returns the best weights seen."""
    n = len(adapters)
    start = np.full(n, 1.0 / n)
    simplex = np.vstack([start, start + rng.uniform(-0.5, 0.5, size=(n, n))]).clip(-bound, bound)

    def objective(w: np.ndarray) -> float:
        w = np.clip(w, -bound, bound)
        with torch.no_grad():
            model = merge_into_new_model(base, lorahub_combine(adapters, w.tolist()))
            return float(loss_fn(model)) + l1 * float(np.abs(w).sum())

    result = minimize(objective, start, method="Nelder-Mead",
                      options={"initial_simplex": simplex, "maxfev": budget})
    return np.clip(result.x, -bound, bound)


def _merge_method(fn: Callable[..., Adapter]) -> Callable[..., nn.Module]:
    return lambda base, adapters, **options: merge_into_new_model(base, fn(adapters, **options))


def _lorahub(base, adapters, loss_fn, rng, **options) -> nn.Module:
    weights = lorahub_search(base, adapters, loss_fn, rng, **options)
    return merge_into_new_model(base, lorahub_combine(adapters, weights.tolist()))


MERGES: dict[str, Callable[..., Adapter]] = {
    "average": average, "sum": task_arithmetic, "task_arithmetic": task_arithmetic, "cat": cat,
    "ties": ties, "dare": dare, "svd": svd, "factor_average": factor_average,
}
METHODS: dict[str, Callable[..., nn.Module]] = {
    **{name: _merge_method(fn) for name, fn in MERGES.items()},
    "lorahub": _lorahub, "arrow": arrow_model, "oracle": oracle_model,
}


def reuse(method: str, base: nn.Module, adapters: Sequence[Adapter], **options) -> nn.Module:
    """``METHODS[method](base, adapters, **options)``: a new merged or routed model."""
    if method not in METHODS:
        raise ValueError(f"reuse method {method!r}: must be one of {', '.join(METHODS)}")
    return METHODS[method](base, adapters, **options)
