"""Adapters as plain data: a :class:`LoRAConfig` plus ``module path -> Factors``.

An adapter is independent of the model object, so reuse methods (``toymodels/reuse.py``)
are pure functions on adapters; models are built from ``base + adapter`` on demand:
- :func:`extract_adapter`: the factors of a trained (LoRA-injected) model;
- :func:`apply_adapter`: unmerged (``LoRALinear`` around each frozen map);
- :func:`merge_into_new_model`: ``W + weight * delta`` folded into a copy of ``base``;
- :func:`unmerge`: ``W - weight * delta``, the inverse.

Each module's :class:`~theory.merge.Factors` carries its own rank and scale, so a merged
adapter (``cat``: rank ``sum r_i``, scale 1) is an adapter like any other. On disk it is a
PEFT LoRA checkpoint: :mod:`toymodels.peft_checkpoint` saves and loads it. An adapter may
also carry trained embedding / unembedding row deltas of new-entity tokens (``rows``,
:mod:`toymodels.entity_rows`); every function here applies them with the factors.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from theory.merge import Factors
from toymodels.entity_rows import RowDeltas, extract_rows, fold_rows
from toymodels.lora import LoRAConfig, LoRALinear, RoleMap, inject_lora, is_linear_map, linear_weight, lora_modules
from toymodels.validate import check_finite as require_finite


@dataclass(frozen=True)
class Adapter:
    """``config`` describes how the adapter was trained; ``factors`` are its weights; ``rows``
    the new-entity row deltas trained beside them, if any (:mod:`toymodels.entity_rows`)."""

    config: LoRAConfig
    factors: dict[str, Factors] = field(default_factory=dict)
    rows: RowDeltas | None = None

    @property
    def paths(self) -> list[str]:
        return list(self.factors)

    def deltas(self) -> dict[str, torch.Tensor]:
        return {path: f.delta for path, f in self.factors.items()}


def extract_adapter(model: nn.Module, config: LoRAConfig) -> Adapter:
    """The (detached, cloned) factors of every ``LoRALinear`` in ``model`` and its entity row
    deltas, where :func:`toymodels.entity_rows.inject_rows` added them."""
    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has no LoRALinear modules: inject_lora or apply_adapter first")
    return Adapter(config, {path: m.factors for path, m in modules.items()}, extract_rows(model))


def random_adapter(base: nn.Module, config: LoRAConfig, role_map: RoleMap,
                   generator: torch.Generator, B_std: float = 0.1) -> Adapter:
    """A NONZERO adapter: ``A`` from the config's init, ``B ~ N(0, B_std^2)`` (not 0), both from
    ``generator``. For equivalence tests and synthetic merge studies, where ``B = 0`` would
    make every merge trivially exact."""
    adapter = extract_adapter(inject_lora(base, config, role_map, generator), config)
    factors = {path: Factors(f.A, B_std * torch.randn(f.B.shape, generator=generator).to(f.B), f.scale)
               for path, f in adapter.factors.items()}
    return Adapter(config, factors)


def base_linear(model: nn.Module, path: str) -> nn.Module:
    """The plain linear map (``nn.Linear`` or ``Conv1D``) an adapter would act on at ``path``."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{path}: no such module in the base model") from None
    if isinstance(module, LoRALinear):
        raise ValueError(f"{path}: already has a LoRA; pass the base model")
    if not is_linear_map(module):
        raise ValueError(f"{path}: is a {type(module).__name__}, adapters act on nn.Linear or Conv1D only")
    return module


def check_shapes(base: nn.Module, adapter: Adapter) -> None:
    """Raise ValueError naming the module, expected and found shapes on any mismatch."""
    for path, f in adapter.factors.items():
        d_out, d_in = linear_weight(base_linear(base, path)).shape
        if f.A.shape[1] != d_in or f.B.shape[0] != d_out:
            raise ValueError(f"{path}: base weight is (d_out, d_in)=({d_out}, {d_in}), so expected "
                             f"A (r, {d_in}) and B ({d_out}, r); found A {tuple(f.A.shape)}, "
                             f"B {tuple(f.B.shape)}")


def apply_adapter(base: nn.Module, adapter: Adapter, check_finite: bool = True) -> nn.Module:
    """A NEW frozen-base model with ``LoRALinear`` (this adapter's factors, trainable) on its paths.
    ``check_finite``: refuse factors holding NaN/Inf (ValueError naming the module)."""
    check_shapes(base, adapter)
    if check_finite:
        _check_factors_finite(adapter)
    new = copy.deepcopy(base).requires_grad_(False)
    for path, f in adapter.factors.items():
        lora = LoRALinear(new.get_submodule(path), f.rank, f.scale, adapter.config.dropout)
        with torch.no_grad():
            lora.A.copy_(f.A)
            lora.B.copy_(f.B)
        new.set_submodule(path, lora)
    if adapter.rows is not None:
        fold_rows(new, adapter.rows)
    return new


def merge_into_new_model(base: nn.Module, adapter: Adapter, weight: float = 1.0,
                         check_finite: bool = True) -> nn.Module:
    """A NEW model whose adapted maps are plain linear maps with ``W + weight * delta`` (added
    to a ``Conv1D``'s stored ``W.T`` through :func:`~toymodels.lora.linear_weight`).
    ``check_finite`` (PEFT's ``safe_merge`` idea): refuse a merged delta holding NaN/Inf,
    before it reaches a weight (ValueError naming the module); ``False`` merges it anyway."""
    check_shapes(base, adapter)
    new = copy.deepcopy(base)
    with torch.no_grad():
        for path, f in adapter.factors.items():
            W = linear_weight(new.get_submodule(path))  # (d_out, d_in), a view for Conv1D
            delta = weight * f.delta.to(W)
            if check_finite:
                require_finite(f"module {path}: merged delta (weight {weight})", delta,
                               "an input adapter is not finite or the merge overflowed")
            W.add_(delta)
    if adapter.rows is not None:
        fold_rows(new, adapter.rows, weight)
    return new


def unmerge(merged: nn.Module, adapter: Adapter, weight: float = 1.0, check_finite: bool = True) -> nn.Module:
    """Inverse of :func:`merge_into_new_model` (up to float rounding)."""
    return merge_into_new_model(merged, adapter, -weight, check_finite)


def _check_factors_finite(adapter: Adapter) -> None:
    for path, f in adapter.factors.items():
        require_finite(f"module {path}: lora_A", f.A)
        require_finite(f"module {path}: lora_B", f.B)
