"""Hand-written LoRA (Hu et al. 2021) in the notation of ``theory/__init__.py``.

``LoRALinear`` wraps a FROZEN linear map: ``y = base(x) + scale * dropout(x) @ A.T @ B.T``
with ``A: (r, d_in)``, ``B: (d_out, r)``. Injection is generic: it only sees a role map
``(role, layer) -> module path``, which our GPT (``toymodels.model.role_modules``) and the
Hugging Face families (``toymodels.hf_roles.role_map``) each supply.

A linear map is an ``nn.Linear`` or transformers' ``Conv1D`` (GPT-2), which computes the same
``x @ W.T + b`` but stores ``W.T``, ``(d_in, d_out)``: PEFT's ``fan_in_fan_out`` layout. The
factors keep the notation of ``theory/__init__.py`` on both (so saved adapters are PEFT's
``lora_A``/``lora_B`` either way); only code that touches the base weight reads it through
:func:`linear_weight`, the ``(d_out, d_in)`` view, so a merge transposes once, there.

Item 6 (many adapters at once): the factors are plain tensors, so ``n`` adapters on one
module stack to ``A: (n, r, d_in)``, ``B: (n, d_out, r)`` and one batched matmul trains them
all; :class:`toymodels.routing.RoutedLinear` already runs a stacked bank in its forward
pass, and a trainable ``StackedLoRALinear`` would sit next to ``LoRALinear`` here.
"""
from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from typing import Literal, Mapping

import torch
from torch import Tensor, nn

from theory.merge import Factors
from toymodels.config import Config, check_fields, counts

RoleMap = Mapping[tuple[str, int], str]  # (role, layer) -> module path
INITS = ("kaiming_uniform", "gaussian")  # PEFT's init_lora_weights=True / "gaussian"


@dataclass(frozen=True)
class LoRAConfig(Config):
    """A LoRA on the ``targets`` roles of ``layers`` (None = every layer of the role map)."""

    rank: int = 4
    alpha: float = 8.0
    rslora: bool = False
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "mlp_in", "mlp_out")
    layers: tuple[int, ...] | None = None
    init: Literal["kaiming_uniform", "gaussian"] = "kaiming_uniform"

    def __post_init__(self):
        check_fields("lora", self, counts(self, {"rank": 1}) | {
            "alpha": (self.alpha > 0, "> 0"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"),
            "targets": (bool(self.targets) and len(set(self.targets)) == len(self.targets),
                        "a non-empty tuple of distinct roles"),
            "layers": (self.layers is None or (bool(self.layers) and min(self.layers) >= 0),
                       "None (all) or layer indices >= 0"),
            "init": (self.init in INITS, f"one of {', '.join(INITS)}"),
        })

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)


def is_fan_in_fan_out(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (weight stored ``(d_in, d_out)``). Its class can only
    exist once ``transformers.pytorch_utils`` is imported, so this never imports transformers."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    return pytorch_utils is not None and isinstance(module, pytorch_utils.Conv1D)


def is_linear_map(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a ``Conv1D``: the maps LoRA wraps."""
    return isinstance(module, nn.Linear) or is_fan_in_fan_out(module)


def linear_weight(module: nn.Module) -> Tensor:
    """``W: (d_out, d_in)`` of a linear map: ``nn.Linear.weight``, or the transposed VIEW of a
    ``Conv1D``'s, so in-place edits (merging) reach the module's own weight."""
    return module.weight.T if is_fan_in_fan_out(module) else module.weight


class LoRALinear(nn.Module):
    """``base(x) + scale * dropout(x) @ A.T @ B.T``; ``base`` (``nn.Linear`` or ``Conv1D``)
    is frozen, ``A``/``B`` train.
    ``A`` and ``B`` are created on the base weight's device and dtype and start at zero;
    :meth:`reset_parameters` gives the standard init (``A`` random, ``B = 0``, so delta = 0)."""

    def __init__(self, base: nn.Module, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        d_out, d_in = linear_weight(base).shape
        self.A = nn.Parameter(base.weight.new_zeros(rank, d_in))  # (r, d_in)
        self.B = nn.Parameter(base.weight.new_zeros(d_out, rank))  # (d_out, r)
        self.scale = float(scale)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self, init: str, generator: torch.Generator) -> None:
        """``kaiming_uniform``: like ``nn.Linear``'s default (loralib, PEFT ``True``);
        ``gaussian``: ``N(0, 1/r^2)`` (PEFT ``"gaussian"``). Drawn on CPU from ``generator``,
        so the init is the same on every device."""
        A = torch.empty(self.A.shape)
        if init == "kaiming_uniform":
            nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        else:
            nn.init.normal_(A, std=1.0 / self.A.shape[0], generator=generator)
        with torch.no_grad():
            self.A.copy_(A)
            self.B.zero_()

    @property
    def weight(self) -> Tensor:  # the frozen weight as stored (as on PEFT's layers), for code reading module.weight
        return self.base.weight

    @property
    def factors(self) -> Factors:
        return Factors(A=self.A.detach().clone(), B=self.B.detach().clone(), scale=self.scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (self.dropout(x) @ self.A.T) @ self.B.T


def target_paths(cfg: LoRAConfig, role_map: RoleMap) -> list[str]:
    """Module paths that ``cfg`` adapts, in role-map order; unknown roles/layers raise."""
    roles = list(dict.fromkeys(role for role, _ in role_map))
    layers = sorted({layer for _, layer in role_map})
    if unknown := [r for r in cfg.targets if r not in roles]:
        raise ValueError(f"lora.targets contains {unknown}: roles of this model are {', '.join(roles)}")
    if cfg.layers is not None and (unknown := [l for l in cfg.layers if l not in layers]):
        raise ValueError(f"lora.layers contains {unknown}: layers of this model are {layers}")
    return [path for (role, layer), path in role_map.items()
            if role in cfg.targets and (cfg.layers is None or layer in cfg.layers)]


def inject_lora(model: nn.Module, cfg: LoRAConfig, role_map: RoleMap,
                generator: torch.Generator) -> nn.Module:
    """A NEW model (deep copy, every base parameter frozen) whose targeted linear maps
    (``nn.Linear`` or ``Conv1D``) are :class:`LoRALinear` with freshly initialised factors;
    ``model`` is left untouched."""
    paths = target_paths(cfg, role_map)
    new = copy.deepcopy(model).requires_grad_(False)
    for path in paths:
        base = new.get_submodule(path)
        if not is_linear_map(base):
            raise ValueError(f"{path}: is a {type(base).__name__}, LoRA wraps nn.Linear or Conv1D only")
        limit = min(base.weight.shape)
        if cfg.rank > limit:
            raise ValueError(f"lora.rank={cfg.rank}: must be in [1, {limit}] = [1, min(d_out, d_in)] "
                             f"for {path} with (d_out, d_in) {tuple(linear_weight(base).shape)}")
        lora = LoRALinear(base, cfg.rank, cfg.scale, cfg.dropout)
        lora.reset_parameters(cfg.init, generator)
        new.set_submodule(path, lora)
    return new


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` in ``model`` by module path (the path of the wrapped map)."""
    return {path: m for path, m in model.named_modules() if isinstance(m, LoRALinear)}
