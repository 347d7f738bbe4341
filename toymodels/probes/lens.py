"""Logit lens (nostalgebraist 2020): decode the residual stream after every layer through
the model's own ``ln_final`` and ``W_U``. If a one-pass model resolves the bridge entity of
"A r1 r2" before using it (what T2 says one layer cannot do), the bridge should become
decodable at some middle layer at the last prompt position."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from toymodels.probes.capture import Position, at_position, run_with_cache


def logit_lens(model: nn.Module, idx: Tensor, position: Position) -> Tensor:
    """``(n_layers + 1, B, d_vocab)``: ``W_U(ln_final(resid[l]))`` at ``position`` for the
    residual stream entering block ``l`` (``l = 0``: the embeddings) and, last, the stream
    entering ``ln_final``, whose row IS the model's own logits (bit for bit: the same modules
    on the same ``(B, T, d_model)`` tensor, read at ``position`` afterwards)."""
    _, cache, pos = run_with_cache(model, idx, position)
    with torch.no_grad():
        return torch.stack([at_position(model.W_U(model.ln_final(r)), pos)  # (B, d_vocab)
                            for r in cache.resid])  # (n_layers + 1, B, d_vocab)


def target_rank(lens: Tensor, target: Tensor, candidates: Tensor | None = None) -> dict[str, Tensor]:
    """How well each layer's decoding picks ``target: (B,)`` token ids, from
    ``lens: (L, B, d_vocab)``; with ``candidates`` (token ids, e.g. every entity token) the
    competition is restricted to them and every target must be one of them.

    Returns ``rank (L, B)`` (number of competitors with a strictly larger logit; 0 = top-1),
    ``top1 (L,)`` (share of rows with rank 0), ``prob (L, B)`` (softmax probability of the
    target among the competitors) and ``mean_reciprocal_rank (L,)``."""
    if candidates is not None:
        where = (candidates[None, :] == target[:, None])  # (B, n_candidates)
        if not where.any(1).all():
            raise ValueError("target_rank: some targets are not among the candidates")
        lens, target = lens[..., candidates], where.int().argmax(1)  # (L, B, n_candidates), (B,)
    gold = lens.gather(-1, target[None, :, None].expand(lens.shape[0], -1, 1))  # (L, B, 1)
    rank = (lens > gold).sum(-1)  # (L, B)
    prob = torch.softmax(lens.double(), -1).gather(-1, target[None, :, None].expand(lens.shape[0], -1, 1))[..., 0]
    return {"rank": rank, "top1": (rank == 0).double().mean(-1), "prob": prob,
            "mean_reciprocal_rank": (1.0 / (rank + 1).double()).mean(-1)}
