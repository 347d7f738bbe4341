"""T2 key overlaps in the toy GPT (PAPER.md section 1, T2; P1).

An adapter on a linear map ``W: (d_out, d_in)`` changes the map's output at a token by
``key @ delta.T``, where the KEY is the map's input at that token. So the key of each role
(``toymodels.model.ROLES``) is:

- ``mlp_out`` (``W_out``): the post-GELU MLP hidden ``(d_mlp,)`` = ``ActivationCache.mlp_keys``;
  this is the key ``v`` of P1/T2 (``W`` there is ``W_out`` read through ``W_U``).
- ``mlp_in`` (``W_in``): ``ln_mlp`` of the residual stream after the block's attention.
- ``q``, ``k``, ``v``: ``ln_attn`` of the residual stream entering the block. For ``k`` and
  ``v`` the change reaches the read position only through attention, from every position
  it attends to, so the overlap at one position is a partial account there.
- ``o`` (``W_O``): the concatenated head outputs ``pattern @ V`` ``(d_model,)``.

T2: a merged update ``sum_i c_i delta_i`` moves the output at a prompt with key ``v'`` by
``sum_i c_i delta_i v'``; for a rank-one expert ``delta_2 = d2 v2^T / ||v2||^2`` (P1) that is
``c_2 (<v2, v'> / ||v2||^2) d2``. :func:`t2_key_overlap` measures this coefficient between
the BC expert's key ``v2`` (last prompt position of its own prompt "B r2") and the key
``v'`` of other prompts: the two-hop prompts "A r1 r2" (T2: no access to ``e_B``), the
expert's own prompts (coefficient 1 by construction) and control prompts (other subjects,
same relation: a large coefficient there is broadcast, not composition).
"""
from __future__ import annotations

from typing import Collection, Mapping

import torch
from torch import Tensor, nn

from toymodels.probes.capture import Position, map_inputs

Prompts = tuple[Tensor, Position]  # (idx (N, T), read position)


def adapter_keys(model: nn.Module, path: str, idx: Tensor, position: Position) -> Tensor:
    """``(B, d_in)``: the key of an adapter on the linear map at ``path`` (its input)."""
    return map_inputs(model, idx, position, [path])[path]


def key_overlap(v: Tensor, v_prime: Tensor) -> dict[str, Tensor]:
    """``coef[i, j] = <v_i, v'_j> / ||v_i||^2`` (the T2 coefficient of key ``v_i``'s edit on a
    prompt with key ``v'_j``) and ``cos[i, j]``, both ``(n, m)``, from ``v: (n, d)``,
    ``v_prime: (m, d)`` (float64)."""
    v, v_prime = v.double(), v_prime.double()
    dots = v @ v_prime.T  # (n, m)
    norms = v.norm(dim=-1)  # (n,)
    return {"coef": dots / norms[:, None] ** 2, "cos": dots / (norms[:, None] * v_prime.norm(dim=-1)[None, :])}


def t2_key_overlap(model: nn.Module, path: str, expert: Prompts, sets: Mapping[str, Prompts],
                   paired: Collection[str] = (), expert_model: nn.Module | None = None) -> dict:
    """Key overlaps at the adapted map ``path`` between the expert's keys ``v2_i`` (``expert``:
    its own prompts, read by ``expert_model``, default ``model``) and each set's keys ``v'_j``
    (read by ``model``: e.g. the merged or routed model).

    Returns ``{"expert_key_norm": (n,), name: {"coef": (n, m), "cos": (n, m)}}``; for names in
    ``paired`` (row ``i`` of the set belongs to expert prompt ``i``, e.g. two-hop prompt
    ``A_i r1 r2`` to ``B_i r2``) also ``coef_paired``/``cos_paired`` ``(n,)`` (the diagonals)
    and ``coef_unpaired`` (the mean off-diagonal coefficient, a within-set control)."""
    v2 = adapter_keys(expert_model if expert_model is not None else model, path, *expert)  # (n, d_in)
    out: dict = {"expert_key_norm": v2.double().norm(dim=-1)}
    for name, (idx, position) in sets.items():
        stats = key_overlap(v2, adapter_keys(model, path, idx, position))
        if name in paired:
            n, m = stats["coef"].shape
            if n != m:
                raise ValueError(f"set {name!r} has {m} prompts: a paired set needs one per expert prompt ({n})")
            off = ~torch.eye(n, dtype=torch.bool)  # (n, n)
            stats.update(coef_paired=stats["coef"].diagonal(), cos_paired=stats["cos"].diagonal(),
                         coef_unpaired=stats["coef"][off].mean() if n > 1 else torch.tensor(float("nan")))
        out[name] = stats
    return out


def answer_direction(model: nn.Module, answers: Tensor, candidates: Tensor | None = None) -> Tensor:
    """``(m, d_model)`` residual-stream direction of each answer token: its ``W_U`` row minus
    the mean row of ``candidates`` (e.g. every entity token; None: no centring). Its dot
    product with a vector written into the final residual stream is that vector's direct
    effect on the answer's logit margin over the average candidate, before ``ln_final``'s
    scaling. Meaningful for the residual-writing roles ``o`` and ``mlp_out`` only."""
    W_U = model.W_U.weight.detach().double()  # (d_vocab, d_model)
    centre = W_U[candidates].mean(0) if candidates is not None else torch.zeros_like(W_U[0])
    return W_U[answers] - centre  # (m, d_model)


def delta_readout(delta: Tensor, keys: Tensor, directions: Tensor) -> dict[str, Tensor]:
    """What an adapter's dense ``delta: (d_out, d_in)`` writes at each key ``keys: (m, d_in)``,
    read along ``directions: (m, d_out)`` (e.g. :func:`answer_direction` of the expert's
    answers, or the expert's own output ``delta v2``): ``dot (m,)`` = ``<delta k, u>``,
    ``projection`` = ``dot / ||u||``, ``cos``, and ``norm`` = ``||delta k||``. For a P1 edit
    ``delta = u v2^T / ||v2||^2``, ``dot / ||u||^2`` is the T2 coefficient ``<v2, k>/||v2||^2``."""
    out = keys.double() @ delta.double().T  # (m, d_out)
    u = directions.double()
    dot = (out * u).sum(-1)  # (m,)
    norm, u_norm = out.norm(dim=-1), u.norm(dim=-1)
    return {"dot": dot, "projection": dot / u_norm, "cos": dot / (norm * u_norm), "norm": norm}
