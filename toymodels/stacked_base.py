"""S models of one architecture (e.g. S base seeds) trained at once (issue 11, item 2).

The models' parameters are stacked along a new leading axis and one forward pass runs all
of them: ``torch.func.vmap`` over ``torch.func.functional_call`` turns every linear map into
one batched matmul. Each model keeps its own init (the caller builds it from its seed's
generator, as ``pipeline.train_base`` does), its own data, batch order, AdamW state and stop
rule (:func:`toymodels.stacked.train_stacked`); the result equals S sequential
``toymodels.train.train`` runs up to float rounding (``tests/test_stacked.py``).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from toymodels.stacked import decay_flags, train_stacked
from toymodels.tasks import Examples
from toymodels.train import TrainConfig, TrainResult, resolve_device


def train_stacked_models(models: Sequence[nn.Module], data: Sequence[Examples],
                         generators: Sequence[torch.Generator], cfg: TrainConfig,
                         eval_sets: Sequence[dict[str, Examples]] | None = None,
                         device: str = "auto") -> list[TrainResult]:
    """``train(models[s], data[s], cfg, generators[s], eval_sets[s], device)`` for every s, at
    once. The models must share one architecture (parameter names and shapes; buffers are
    taken from ``models[0]``); each is trained in place, moved to ``device``, and returned
    as its ``TrainResult.model``. ``seconds`` is the wall time of the whole stacked run."""
    if not models:
        raise ValueError("train_stacked_models: need >= 1 model")
    shapes = [{n: p.shape for n, p in m.named_parameters()} for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("train_stacked_models: every model must have the same parameter names and shapes")
    trainable = [n for n, p in models[0].named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("train_stacked_models: the models have no parameter with requires_grad=True")
    named = [dict(m.named_parameters()) for m in models]
    stack = lambda names: {n: torch.stack([p[n].detach() for p in named]) for n in names}  # noqa: E731
    params = stack(trainable)  # name -> (S, ...)
    frozen = stack([n for n in shapes[0] if n not in params])
    template = copy.deepcopy(models[0]).to(resolve_device(device))

    def one(state: dict[str, Tensor], tokens: Tensor) -> Tensor:
        return functional_call(template, state, (tokens,))  # (B, T) -> (B, T, V)

    def finish(s: int, state: dict[str, Tensor]) -> nn.Module:
        model = models[s].to(state[trainable[0]].device)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(state[name])
        return model

    return train_stacked(vmap(one), params, decay_flags(models[0], cfg), data, generators, cfg, finish,
                         eval_sets, frozen, device)
