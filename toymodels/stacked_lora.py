"""K LoRAs on one frozen base, trained in one forward/backward (issue 11, item 1).

:class:`StackedLoRALinear` holds K adapters of one linear map, ``A: (K, r, d_in)``,
``B: (K, d_out, r)``, ``scale: (K,)``, and applies adapter k to the k-th block of rows of
its input: the frozen base runs once on all ``K * B`` rows and each adapter costs one
batched matmul. Unequal ranks are zero-padded to the largest: a padded row of ``A`` and
column of ``B`` start at zero, get exactly zero gradient (each is multiplied by the other)
and so exactly zero AdamW update, so they stay zero (pinned by a test) and the adapter is
its unpadded self. :func:`train_stacked_loras` is K runs of ``pipeline.train_lora``'s
recipe (``inject_lora`` with the run's generator, then ``train`` with ``{"facts": data}``
as eval set and the same generator for batch order) in one :func:`toymodels.stacked.train_stacked`.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from theory.merge import Factors
from toymodels.adapters import Adapter, apply_adapter
from toymodels.lora import LoRAConfig, LoRALinear, RoleMap, inject_lora, lora_modules
from toymodels.model import role_modules
from toymodels.stacked import decay_flags, train_stacked
from toymodels.tasks import Examples
from toymodels.train import TrainConfig, TrainResult, resolve_device


class StackedLoRALinear(nn.Module):
    """``base(x) + scale_k * x @ A_k.T @ B_k.T`` for the k-th of K equal blocks of rows of x."""

    def __init__(self, base: nn.Linear, A: Tensor, B: Tensor, scale: Tensor):
        super().__init__()
        if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
            raise ValueError(f"stacked factors A {tuple(A.shape)}, B {tuple(B.shape)}: need A (K, r, d_in), "
                             "B (K, d_out, r)")
        self.base = base.requires_grad_(False)
        self.A, self.B = nn.Parameter(A), nn.Parameter(B)
        self.register_buffer("scale", scale)  # (K,)

    def forward(self, x: Tensor) -> Tensor:
        K, _, d_in = self.A.shape
        u = x.reshape(K, -1, d_in) @ self.A.mT  # (K, rows, r): rows = B * T of adapter k
        delta = (self.scale[:, None, None] * u) @ self.B.mT  # (K, rows, d_out)
        return self.base(x) + delta.reshape(*x.shape[:-1], -1)  # (K * B, T, d_out)


def _pad(M: Tensor, r: int, dim: int) -> Tensor:
    shape = list(M.shape)
    shape[dim] = r - M.shape[dim]
    return torch.cat([M, M.new_zeros(shape)], dim=dim)


def stack_loras(models: Sequence[nn.Module]) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
    """K copies of one base with ``LoRALinear`` on the same paths -> ``(template, params,
    frozen)``: the template is models[0] with a :class:`StackedLoRALinear` on each path,
    ``params`` its stacked ``<path>.A`` / ``<path>.B``, ``frozen`` its ``<path>.scale``."""
    banks = [lora_modules(m) for m in models]
    if not banks or not banks[0] or any(list(b) != list(banks[0]) for b in banks):
        raise ValueError("stack_loras: need >= 1 model, each with LoRALinear on the same module paths")
    template = copy.deepcopy(models[0])
    params, frozen = {}, {}
    for path in banks[0]:
        mods: list[LoRALinear] = [b[path] for b in banks]
        r = max(m.A.shape[0] for m in mods)
        A = torch.stack([_pad(m.A.detach(), r, 0) for m in mods])  # (K, r, d_in)
        B = torch.stack([_pad(m.B.detach(), r, 1) for m in mods])  # (K, d_out, r)
        scale = torch.tensor([m.scale for m in mods], dtype=A.dtype, device=A.device)  # (K,)
        template.set_submodule(path, StackedLoRALinear(template.get_submodule(path).base, A, B, scale))
        params[f"{path}.A"], params[f"{path}.B"], frozen[f"{path}.scale"] = A, B, scale
    return template, params, frozen


def train_stacked_loras(base: nn.Module, runs: Sequence[tuple[Examples, torch.Generator]],
                        lora: LoRAConfig | Sequence[LoRAConfig], cfg: TrainConfig,
                        role_map: RoleMap | None = None, device: str = "auto"
                        ) -> tuple[list[Adapter], list[TrainResult]]:
    """One LoRA per ``(data, generator)`` run on the frozen ``base``, trained stacked.
    ``lora``: one config for all or one per run (ranks and alphas may differ; targets, layers
    must agree; dropout must be 0, since dropout masks come from the global RNG). Runs are
    stacked by batch size (``min(batch_size, len(data))``), one stacked run per size, so no
    step computes padding rows (measured: padding 8-row batches to 32 cost more than stacking
    saved). Returns the adapters and per run a ``TrainResult`` whose ``model`` is
    ``apply_adapter(base, adapter)`` and whose ``seconds`` is the wall time of its stacked run."""
    loras = [lora] * len(runs) if isinstance(lora, LoRAConfig) else list(lora)
    if not runs or len(loras) != len(runs):
        raise ValueError(f"train_stacked_loras: {len(runs)} runs and {len(loras)} LoRA configs; "
                         "need >= 1 run and one config (or one per run)")
    if any((l.targets, l.layers) != (loras[0].targets, loras[0].layers) for l in loras):
        raise ValueError("lora configs: targets and layers must be the same for every run (ranks may differ)")
    if any(l.dropout for l in loras):
        raise ValueError("lora.dropout: must be 0 for stacked training (dropout masks come from the global RNG, "
                         "so they could not match sequential runs)")
    if cfg.target_set not in (None, "facts"):
        raise ValueError(f"train.target_set={cfg.target_set!r}: must be None or 'facts' (each run's own data)")
    role_map = role_map if role_map is not None else role_modules(base)
    adapters: list[Adapter | None] = [None] * len(runs)
    results: list[TrainResult | None] = [None] * len(runs)
    by_batch: dict[int, list[int]] = {}
    for i, (data, _) in enumerate(runs):
        by_batch.setdefault(min(cfg.batch_size, len(data)), []).append(i)
    for group in by_batch.values():
        group_adapters, group_results = _train_group(base, [runs[i] for i in group], [loras[i] for i in group],
                                                     cfg, role_map, device)
        for i, adapter, result in zip(group, group_adapters, group_results):
            adapters[i], results[i] = adapter, result
    return adapters, results


def _train_group(base: nn.Module, runs: Sequence[tuple[Examples, torch.Generator]], loras: list[LoRAConfig],
                 cfg: TrainConfig, role_map: RoleMap, device: str) -> tuple[list[Adapter], list[TrainResult]]:
    """:func:`train_stacked_loras` for runs of one batch size: one :func:`train_stacked`."""
    models = [inject_lora(base, l, role_map, gen) for l, (_, gen) in zip(loras, runs)]  # train_lora's init
    template, params, frozen = stack_loras(models)
    decay = decay_flags(models[0], cfg)
    paths = list(lora_modules(models[0]))
    del models
    adapters: list[Adapter | None] = [None] * len(runs)

    def forward(state: dict[str, Tensor], tokens: Tensor) -> Tensor:
        logits = functional_call(template, state, (tokens.flatten(0, 1),))  # (K * B, T, V)
        return logits.unflatten(0, tokens.shape[:2])  # (K, B, T, V)

    def finish(k: int, state: dict[str, Tensor]) -> nn.Module:
        r = loras[k].rank
        adapters[k] = Adapter(loras[k], {p: Factors(state[f"{p}.A"][:r], state[f"{p}.B"][:, :r],
                                                    loras[k].scale) for p in paths})
        return apply_adapter(base, adapters[k]).to(state[f"{paths[0]}.A"].device)

    template.to(resolve_device(device))
    results = train_stacked(forward, params, decay, [d for d, _ in runs], [g for _, g in runs], cfg, finish,
                            [{"facts": d} for d, _ in runs], frozen, device)
    return adapters, results
