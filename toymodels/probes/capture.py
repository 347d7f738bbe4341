"""Reading activations out of a model: read positions, the residual stream, and the input
of any linear map (the "key" an adapter on that map acts on).

``model`` is a :class:`~toymodels.model.GPT` or anything built from one by
``toymodels.adapters`` / ``toymodels.reuse`` / ``toymodels.routing`` (unmerged LoRA,
merged, routed): all keep ``GPT.forward(idx, cache)``, ``ln_final`` and ``W_U``.
A position is an ``int`` (the same for every row; negative counts from the end of
``idx``) or a ``(B,)`` long tensor (one per row). Only ``idx[:, :max(position) + 1]`` is
fed in: a causal model's activations there do not depend on later tokens, and padded
rows may be longer than ``n_ctx`` allows.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from toymodels.model import ActivationCache
from toymodels.tasks import Examples

Position = int | Tensor


def prompt_end(examples: Examples) -> Tensor:
    """``(N,)`` position of each row's last prompt token (SEP in the two-hop task): its
    logits predict the first answer token, so it is where the bridge must be resolved."""
    return examples.answer_mask.int().argmax(1) - 1


def positions(position: Position, B: int, T: int) -> Tensor:
    """``(B,)`` non-negative read positions; raises ValueError outside ``[-T, T)``."""
    pos = torch.full((B,), position) if isinstance(position, int) else position.long().flatten()
    if pos.shape != (B,) or pos.min() < -T or pos.max() >= T:
        raise ValueError(f"position {position!r}: need an int or a ({B},) tensor with values in [-{T}, {T})")
    return pos % T


def at_position(x: Tensor, pos: Tensor) -> Tensor:
    """``x: (B, T, ...)`` read at ``pos: (B,)`` -> ``(B, ...)``."""
    return x[torch.arange(x.shape[0], device=x.device), pos.to(x.device)]


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """``eval()`` (no LoRA dropout, no global RNG draws) and no grad; afterwards every
    submodule gets the model's previous ``training`` flag back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def run_with_cache(model: nn.Module, idx: Tensor, position: Position) -> tuple[Tensor, ActivationCache, Tensor]:
    """Forward ``idx`` up to the last read position: ``(logits (B, T', d_vocab), cache, pos (B,))``."""
    pos = positions(position, *idx.shape)
    cache = ActivationCache()
    with inference(model):
        logits = model(idx[:, :int(pos.max()) + 1], cache)  # (B, T', d_vocab)
    return logits, cache, pos


def residual_stream(model: nn.Module, idx: Tensor, position: Position) -> Tensor:
    """``(n_layers + 1, B, d_model)``: the residual stream entering each block, then the one
    entering ``ln_final``, at ``position``."""
    _, cache, pos = run_with_cache(model, idx, position)
    return torch.stack([at_position(r, pos) for r in cache.resid])  # (n_layers + 1, B, d_model)


def map_inputs(model: nn.Module, idx: Tensor, position: Position, paths: Sequence[str]) -> dict[str, Tensor]:
    """``path -> (B, d_in)``: the input of the linear map at each module path (a plain
    ``nn.Linear``, a ``LoRALinear`` or a ``RoutedLinear``) at ``position``, read by a
    forward hook (removed afterwards). For ``blocks.l.mlp.W_out`` this is
    ``ActivationCache.mlp_keys[l]`` (pinned by ``tests/test_probes.py``)."""
    pos = positions(position, *idx.shape)
    seen: dict[str, Tensor] = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda module, args, out, path=path: seen.__setitem__(path, args[0])) for path in paths]
    try:
        with inference(model):
            model(idx[:, :int(pos.max()) + 1])
    finally:
        for hook in hooks:
            hook.remove()
    if missing := [path for path in paths if path not in seen]:
        raise ValueError(f"{missing}: not called in the forward pass up to position {int(pos.max())}")
    return {path: at_position(seen[path], pos) for path in paths}  # each (B, d_in)
