"""From one-matrix merges (``theory/merge.py``) to whole adapters: the per-module plumbing
that our reuse methods (``toymodels/reuse.py``) and the PEFT-named ones
(``toymodels/peft_merges.py``) share.

- :func:`per_module` lines the adapters up module by module (a missing module is zero);
- :func:`merged_adapter` wraps merged per-module factors in an adapter with a config;
- :func:`from_deltas` factors merged deltas, exactly or by SVD truncation.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from theory import merge
from theory.merge import Factors
from toymodels.adapters import Adapter
from toymodels.entity_rows import combine_rows


def per_module(adapters: Sequence[Adapter]) -> dict[str, list[Factors]]:
    """``path -> [factors of each adapter]`` in order of first appearance; an adapter without
    the path gives zero factors of the same rank as the first adapter that has it."""
    if not adapters:
        raise ValueError("adapters is empty: reuse needs at least one adapter")
    out = {}
    for path in dict.fromkeys(p for a in adapters for p in a.paths):
        present = next(a.factors[path] for a in adapters if path in a.factors)
        zero = Factors(A=torch.zeros_like(present.A), B=torch.zeros_like(present.B))
        out[path] = [a.factors.get(path, zero) for a in adapters]
    return out


def merged_adapter(adapters: Sequence[Adapter], factors: dict[str, Factors],
                   row_weights: Sequence[float] | None = None) -> Adapter:
    """An adapter holding ``factors`` (scale 1 each): config = union of the inputs' targets
    and layers, nominal rank the largest module rank, ``alpha = rank`` so the scale is 1;
    entity rows (if any input has them): their ``row_weights``-weighted sum (None: uniform
    average), :func:`toymodels.entity_rows.combine_rows`."""
    rank = max(f.rank for f in factors.values())
    cfgs = [a.config for a in adapters]
    layers = None if any(c.layers is None for c in cfgs) else tuple(sorted({l for c in cfgs for l in c.layers}))
    config = dataclasses.replace(cfgs[0], rank=rank, alpha=float(rank), rslora=False, layers=layers,
                                 targets=tuple(dict.fromkeys(t for c in cfgs for t in c.targets)))
    return Adapter(config, factors, combine_rows([a.rows for a in adapters], row_weights))


def exact_factors(delta: Tensor) -> Factors:
    """Factors with ``B @ A == delta`` bit for bit: an identity on the smaller side."""
    d_out, d_in = delta.shape
    if d_out <= d_in:
        return Factors(A=delta.clone(), B=torch.eye(d_out, dtype=delta.dtype, device=delta.device))
    return Factors(A=torch.eye(d_in, dtype=delta.dtype, device=delta.device), B=delta.clone())


def from_deltas(adapters: Sequence[Adapter], deltas: dict[str, Tensor], rank: int | None,
                row_weights: Sequence[float] | None = None) -> Adapter:
    """:func:`merged_adapter` of ``deltas`` factored exactly (``rank=None``) or by
    Eckart-Young truncation to ``rank`` (MERGE-2)."""
    factor = exact_factors if rank is None else (lambda d: merge.svd_truncate(d, rank))
    return merged_adapter(adapters, {path: factor(d) for path, d in deltas.items()}, row_weights)
