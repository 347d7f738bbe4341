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
- FACTOR space: ``factor_average`` (PEFT ``linear``'s math, MERGE-3, cross terms ``B_i A_j``)
  and ``lorahub`` (LoraHub: ``A = sum w_i s_i A_i``, ``B = sum w_i B_i``, weights found by a
  seeded gradient-free search on a few examples).
- PEFT's own ``add_weighted_adapter``, number for number, quirks included:
  ``peft_<combination_type>`` (``toymodels/peft_merges.py``). Each of our methods says below
  how it differs from PEFT's; README "PEFT correspondence" has the table.
Routed: ``arrow`` and ``oracle``.
Adapters missing a module count as zero there. Every weight may be negative. Entity row
deltas (``Adapter.rows``, :mod:`toymodels.entity_rows`) combine as the weighted sum with the
method's weights (uniform for ``average``/``ties``, all 1 for ``sum``/``dare`` by default):
exactly in delta space for the exact merges; TIES trimming, DARE drops and SVD truncation act
on the factors' deltas only. Routed models get the uniform average of the rows.
Merging ONE adapter at weight 1 gives it back, for every method here at its lossless
setting (``ties`` density 1, ``dare`` drop 0, ``svd`` rank >= r) and any scaling (rsLoRA
too); PEFT's, and so ``peft_*``, do not for rsLoRA (tests/test_peft_merges.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from theory import merge
from theory.merge import Factors
from toymodels import peft_merges
from toymodels.adapter_merge import from_deltas, merged_adapter, per_module
from toymodels.adapters import Adapter, merge_into_new_model
from toymodels.routing import arrow_model, oracle_model

Weights = Sequence[float] | None


def cat(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """Exact ``sum_i w_i delta_i`` (uniform average when ``weights`` is None), MERGE-1:
    ``A = [A_1; ...]``, ``B = [w_1 s_1 B_1, ...]``. PEFT ``cat`` has the same delta (tested) with
    ``w_i s_i`` on ``A_i`` instead, zero-padded to the nominal ranks, and scaled by
    ``sqrt(sum r_i)`` when the first adapter uses rsLoRA (``peft_cat`` keeps that)."""
    return merged_adapter(adapters, {p: merge.cat(fs, weights) for p, fs in per_module(adapters).items()}, weights)


def task_arithmetic(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """Exact ``sum_i lambda_i delta_i``; ``weights=None`` is the plain sum (all lambda = 1).
    PEFT: ``cat`` with weights all 1 (same delta, see :func:`cat`)."""
    return cat(adapters, [1.0] * len(adapters) if weights is None else weights)


def average(adapters: Sequence[Adapter]) -> Adapter:
    """Exact uniform delta average ``(1/n) sum_i delta_i``. PEFT: ``cat`` with weights ``1/n``."""
    return cat(adapters, None)


def svd(adapters: Sequence[Adapter], rank: int, weights: Weights = None) -> Adapter:
    """Best rank-``rank`` approximation of the weighted delta sum per module, MERGE-2
    (``weights=None``: uniform), ``sqrt(S)`` on each factor. PEFT ``svd``: same delta at the same
    rank (tested), but all of ``S`` on ``B``, ``svd_rank`` defaulting to the largest input rank,
    an optional ``svd_clamp`` and the rsLoRA scaling quirk (``peft_svd`` keeps them)."""
    deltas = {p: merge.weighted_delta_sum(fs, weights) for p, fs in per_module(adapters).items()}
    return from_deltas(adapters, deltas, rank, weights)


def ties(adapters: Sequence[Adapter], weights: Weights = None, density: float = 0.2,
         rank: int | None = None) -> Adapter:
    """TIES on each module's deltas (MERGE-5; ``weights=None``: all 1), factored to ``rank``
    (None: exact). PEFT's counterpart is ``ties_svd`` (also on deltas; PEFT's ``ties`` acts on
    ``A`` and ``B`` separately: ``peft_ties``). Differences from ``ties_svd``: PEFT elects each
    sign from the UNWEIGHTED trimmed deltas, ours from the weighted ones (the same when all
    weights are equal and positive; a negative weight flips an adapter's vote here, not in
    PEFT); PEFT keeps ``floor(density * numel)`` entries by ``torch.topk``, ours
    ``round(density * numel)`` by threshold (all ties kept); where the trimmed values sum to
    exactly 0 PEFT elects + and ours merges to 0; PEFT always truncates by SVD (default rank:
    the largest input rank) with its rsLoRA quirk. Equal to PEFT's ``ties_svd`` at equal positive
    weights, ``density * numel`` an integer and full ``svd_rank`` (tested)."""
    deltas = {p: merge.ties([f.delta for f in fs], weights, density) for p, fs in per_module(adapters).items()}
    return from_deltas(adapters, deltas, rank)


def dare(adapters: Sequence[Adapter], drop_rate: float, generator: torch.Generator,
         weights: Weights = None, rank: int | None = None) -> Adapter:
    """DARE each delta (MERGE-4; draws in path order, then adapter order), then the weighted
    sum (default all 1, as in task arithmetic), factored to ``rank`` (None: exact). PEFT's
    counterpart is ``dare_linear_svd`` with ``density = 1 - drop_rate``: the same distribution,
    other draws (ours keep ``rand >= drop_rate``, PEFT's ``bernoulli(density)``), then PEFT's
    SVD truncation and rsLoRA quirk. PEFT's ``dare_linear`` acts on the factors (``peft_dare_linear``)."""
    w = merge._check_weights(len(adapters), [1.0] * len(adapters) if weights is None else weights)
    deltas = {p: sum(wi * merge.dare(f.delta, drop_rate, generator) for wi, f in zip(w, fs))
              for p, fs in per_module(adapters).items()}
    return from_deltas(adapters, deltas, rank, w)


def factor_average(adapters: Sequence[Adapter], weights: Weights = None) -> Adapter:
    """PEFT ``linear``'s math per module (MERGE-3, :func:`theory.merge.factor_average`):
    ``B = sum sqrt(|w_i s_i|) B_i``, ``A = sum sign(w_i s_i) sqrt(|w_i s_i|) A_i``, scale 1,
    equal ranks, any sign of ``w`` (``None``: uniform). Equal to PEFT's numbers (tested) except
    when the first adapter uses rsLoRA, where PEFT multiplies by ``sqrt(r)`` (``peft_linear``)."""
    return merged_adapter(adapters, {p: merge.factor_average(fs, weights) for p, fs in per_module(adapters).items()},
                          weights)


def lorahub_combine(adapters: Sequence[Adapter], weights: Sequence[float]) -> Adapter:
    """LoraHub's composition ``A = sum w_i s_i A_i``, ``B = sum w_i B_i`` (any sign of ``w``),
    per module: :func:`theory.merge.factor_combine`. No PEFT counterpart."""
    return merged_adapter(adapters, {p: merge.factor_combine(fs, [w * f.scale for w, f in zip(weights, fs)], weights)
                                     for p, fs in per_module(adapters).items()}, weights)


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
    "ties": ties, "dare": dare, "svd": svd, "factor_average": factor_average, **peft_merges.MERGES,
}
METHODS: dict[str, Callable[..., nn.Module]] = {
    **{name: _merge_method(fn) for name, fn in MERGES.items()},
    "lorahub": _lorahub, "arrow": arrow_model, "oracle": oracle_model,
}
# What an experiment runs unless told otherwise: ours; the PEFT-named merges are opt-in.
DEFAULT_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m not in peft_merges.MERGES)
# Methods that see data of the target task: LoraHub tunes its weights on a few composed
# examples, the oracle picks the best adapter per eval set. Every other method is data-free
# (it sees only the adapters): the reuse claims are about those, so a new method is data-free
# unless it is listed here.
USES_TASK_DATA: tuple[str, ...] = ("lorahub", "oracle")
DATA_FREE: tuple[str, ...] = tuple(m for m in DEFAULT_METHODS if m not in USES_TASK_DATA)


def reuse(method: str, base: nn.Module, adapters: Sequence[Adapter], **options) -> nn.Module:
    """``METHODS[method](base, adapters, **options)``: a new merged or routed model."""
    if method not in METHODS:
        raise ValueError(f"reuse method {method!r}: must be one of {', '.join(METHODS)}")
    return METHODS[method](base, adapters, **options)
