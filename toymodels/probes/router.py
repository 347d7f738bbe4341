"""Arrow router weights per token and layer, for a heatmap (Ostapenko et al. 2024; T2: a
routed combination is again ``sum_i c_i delta_i``, with ``c`` read off here)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from toymodels.model import ROLES, role_modules
from toymodels.probes.capture import inference
from toymodels.routing import routing_weights


def router_heatmap(model: nn.Module, idx: Tensor) -> dict:
    """Run ``idx: (B, T)`` through a routed GPT (``toymodels.routing.arrow_model`` /
    ``oracle_model``) and collect every routed map's weights, rows ordered by role
    (``toymodels.model.ROLES`` order), then layer. Returns ``paths``, ``roles``, ``layers``
    (lists, one per row), ``weights (P, B, T, n)`` and ``mean (P, T, n)`` over the batch
    (average padded rows out beforehand: pass equal-length prompts)."""
    with inference(model):
        model(idx)
    found = routing_weights(model)  # path -> (B, T, n)
    if not found:
        raise ValueError("model has no RoutedLinear: build it with toymodels.routing.arrow_model or oracle_model")
    rows = sorted(((role, layer, path) for (role, layer), path in role_modules(model).items() if path in found),
                  key=lambda row: (ROLES.index(row[0]), row[1]))
    weights = torch.stack([found[path] for _, _, path in rows])  # (P, B, T, n)
    return {"paths": [p for _, _, p in rows], "roles": [r for r, _, _ in rows], "layers": [l for _, l, _ in rows],
            "weights": weights, "mean": weights.mean(1)}
