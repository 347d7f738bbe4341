"""What the hidden states' geometry predicts for the keys of the recall model (T2's overlap
checks): the arc-cosine kernel for raw keys, and the key cosine with fresh random units
for any key regime and readout (split from theory/recall.py)."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from theory.recall import RELATION_CENTRED, RecallModel, centred_offset


def relu_key_cosine(cos_h: Tensor) -> Tensor:
    """Cosine of two RAW keys ``ReLU(U h), ReLU(U h')`` for ``U ~ N(0, 1)`` as ``m -> inf``
    (degree-1 arc-cosine kernel, Cho & Saul 2009): ``(sin t + (pi - t) cos t) / pi`` with
    ``cos t = cos(h, h')``. Independent inputs (t = pi/2) give 1/pi: never near-orthogonal."""
    t = torch.arccos(cos_h.clamp(-1.0, 1.0))
    return (torch.sin(t) + (math.pi - t) * torch.cos(t)) / math.pi


def fresh_unit_cosine(model: RecallModel, h: Tensor, h2: Tensor, g: torch.Generator,
                      rel: Tensor | None = None, rel2: Tensor | None = None) -> Tensor:
    """Prediction of ``cos(key(h), key(h2))`` from the hidden states alone: the same key map
    with FRESH units ``U' ~ N(0, 1)`` (m of them, drawn from ``g``, independent of the
    model's ``U``), per instance of a batch: ``h, h2 (n, d)`` -> ``(n,)``; the offset is
    recomputed for U' (``relation`` regime: from the prompts' relation parts ``rel, rel2
    (n, d)``). It says what the hidden states' geometry implies for the keys, finite-m
    effects included (the m -> inf arc-cosine limit is biased by about -1/m for centred keys)."""
    c = model.config
    U = torch.randn(h.shape[0], c.d_mlp, c.d_model, generator=g, dtype=h.dtype)  # (n, m, d)
    fresh = replace(model, U=U)
    if c.keys == RELATION_CENTRED:
        if rel is None or rel2 is None:
            raise ValueError("rel, rel2: the relation regime needs the prompts' relation parts")
        mu, mu2 = (fresh.relation_mean(r[:, None, :])[:, 0] for r in (rel, rel2))  # (n, m) each
    elif c.keys == "centred":
        mu = mu2 = centred_offset(U, model.V, model.M[..., 1, :, :])  # (n, m)
    else:
        mu = mu2 = torch.zeros(h.shape[0], c.d_mlp, dtype=h.dtype)
    k, k2 = (torch.relu((U @ v[..., None])[..., 0]) - o for v, o in ((h, mu), (h2, mu2)))  # (n, m) each
    return (k * k2).sum(-1) / (k.norm(dim=-1) * k2.norm(dim=-1))
