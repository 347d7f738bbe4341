"""Routed layers: a bank of adapters on one frozen linear map, mixed per token.

``RoutedLinear`` computes ``base(x) + sum_i w_i(x) * scale_i * x @ A_i.T @ B_i.T``, i.e.
per token a weighted sum of deltas (T2, ``theory.routing.routed_output``), without ever
forming a dense delta: the bank's factors are stacked and zero-padded to the largest rank
(``A: (n, r_max, d_in)``, ``B: (n, d_out, r_max)``; the padding contributes exactly 0).
The weights come from a router:
- :class:`ArrowRouter` (Ostapenko et al. 2024): ``theory.routing.arrow_weights`` of the
  layer input against each adapter's ``theory.routing.arrow_prototype``;
- :class:`OracleRouter`: weights set from outside, ``(n,)`` for all examples or ``(B, n)``
  per example (e.g. one-hot on the adapter that holds the example's facts).
Each ``RoutedLinear`` keeps ``last_weights: (B, T, n)`` for plots (:func:`routing_weights`).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from theory.merge import Factors
from theory.routing import arrow_prototype, arrow_weights
from toymodels.adapters import Adapter, check_shapes
from toymodels.entity_rows import combine_rows, fold_rows


class ArrowRouter(nn.Module):
    """Per-token weights from the prototypes ``(n, d_in)`` of a bank's deltas."""

    def __init__(self, bank: Sequence[Factors], top_k: int = 1, temperature: float = 1.0):
        super().__init__()
        if not 1 <= top_k <= len(bank):
            raise ValueError(f"top_k={top_k}: must be in [1, {len(bank)}] (the bank has {len(bank)} adapters)")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature}: must be > 0")
        prototypes = torch.stack([arrow_prototype(f.delta) for f in bank])  # (n, d_in)
        self.register_buffer("prototypes", prototypes)
        self.top_k, self.temperature = top_k, temperature

    def forward(self, x: Tensor) -> Tensor:
        return arrow_weights(x, self.prototypes.to(x), self.top_k, self.temperature)  # (B, T, n)


class OracleRouter(nn.Module):
    """Weights fixed from outside by :func:`set_oracle_weights`; uniform until then."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.weights = torch.full((n,), 1.0 / n)  # (n,) or (B, n)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        w = self.weights.to(x)
        w = w.expand(B, -1) if w.ndim == 1 else w  # (B, n)
        if w.shape != (B, self.n):
            raise ValueError(f"oracle weights have shape {tuple(self.weights.shape)}: need ({self.n},) or ({B}, {self.n})")
        return w[:, None, :].expand(B, T, self.n)  # (B, T, n)


class RoutedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a routed bank of LoRA factors (see the module docstring)."""

    def __init__(self, base: nn.Linear, bank: Sequence[Factors], router: nn.Module):
        super().__init__()
        self.base = base.requires_grad_(False)
        r_max = max(f.rank for f in bank)
        A = torch.stack([_pad_rows(f.A, r_max) for f in bank])  # (n, r_max, d_in)
        B = torch.stack([_pad_rows(f.scale * f.B.T, r_max).T for f in bank])  # (n, d_out, r_max)
        self.register_buffer("A", A.to(base.weight))
        self.register_buffer("B", B.to(base.weight))
        self.router = router
        self.last_weights: Tensor | None = None

    @property
    def weight(self) -> Tensor:  # the frozen W, as on LoRALinear
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        weights = self.router(x)  # (..., n)
        self.last_weights = weights.detach()
        u = torch.einsum("...d,nrd->...nr", x, self.A)  # (..., n, r_max)
        outs = torch.einsum("...nr,nor->...no", u, self.B)  # (..., n, d_out)
        return self.base(x) + (weights.unsqueeze(-1) * outs).sum(dim=-2)  # (..., d_out)


def _pad_rows(M: Tensor, rows: int) -> Tensor:
    return torch.cat([M, M.new_zeros(rows - M.shape[0], M.shape[1])])  # (rows, M.shape[1])


def _bank(adapters: Sequence[Adapter], path: str) -> list[Factors]:
    """Every adapter's factors on ``path``; an adapter without it contributes zero factors."""
    present = next(a.factors[path] for a in adapters if path in a.factors)
    zero = Factors(A=torch.zeros_like(present.A[:1]), B=torch.zeros_like(present.B[:, :1]))
    return [a.factors.get(path, zero) for a in adapters]


def build_routed_model(base: nn.Module, adapters: Sequence[Adapter],
                       make_router: Callable[[list[Factors]], nn.Module]) -> nn.Module:
    """A NEW model where every path of any adapter is a :class:`RoutedLinear` over the bank
    ``adapters`` (index i = ``adapters[i]``), with the router ``make_router(bank)``."""
    if not adapters:
        raise ValueError("adapters is empty: routing needs at least one adapter")
    for adapter in adapters:
        check_shapes(base, adapter)
    new = copy.deepcopy(base).requires_grad_(False)
    rows = combine_rows([a.rows for a in adapters])  # token rows cannot be routed: averaged
    if rows is not None:
        fold_rows(new, rows)
    for path in dict.fromkeys(p for a in adapters for p in a.paths):
        bank = _bank(adapters, path)
        new.set_submodule(path, RoutedLinear(new.get_submodule(path), bank, make_router(bank)))
    return new


def arrow_model(base: nn.Module, adapters: Sequence[Adapter], top_k: int = 1,
                temperature: float = 1.0) -> nn.Module:
    """Arrow routing on every adapted map. All adapters must cover the same paths (a zero
    delta has no prototype)."""
    paths = [set(a.paths) for a in adapters]
    if any(p != paths[0] for p in paths):
        raise ValueError("Arrow routing needs adapters on the same module paths; "
                         "use oracle routing or merge the adapters instead")
    return build_routed_model(base, adapters, lambda bank: ArrowRouter(bank, top_k, temperature))


def oracle_model(base: nn.Module, adapters: Sequence[Adapter]) -> nn.Module:
    """Oracle routing; set the weights with :func:`set_oracle_weights` before each forward."""
    return build_routed_model(base, adapters, lambda bank: OracleRouter(len(bank)))


def oracle_weights(adapter_index: Tensor, n: int) -> Tensor:
    """One-hot ``(B, n)`` weights from the index ``(B,)`` of each example's adapter."""
    return nn.functional.one_hot(adapter_index.long(), n).float()  # (B, n)


def set_oracle_weights(model: nn.Module, weights: Tensor) -> None:
    """Set ``weights`` (``(n,)`` or ``(B, n)``) on every :class:`OracleRouter` of ``model``."""
    routers = [m for m in model.modules() if isinstance(m, OracleRouter)]
    if not routers:
        raise ValueError("model has no OracleRouter: build it with oracle_model")
    for router in routers:
        if weights.shape[-1] != router.n:
            raise ValueError(f"weights have {weights.shape[-1]} columns: the bank has {router.n} adapters")
        router.weights = weights


def routing_weights(model: nn.Module) -> dict[str, Tensor]:
    """``module path -> (B, T, n)`` weights of the last forward pass, for plots."""
    return {path: m.last_weights for path, m in model.named_modules()
            if isinstance(m, RoutedLinear) and m.last_weights is not None}
