"""T2: merged or routed one-hop adapters on two-hop prompts (paper: Theorem 2).

Construction of one instance (a fresh random :class:`~theory.recall.RecallModel` each):
adapter 1 edits the stored fact ``(x, r1)`` to a bridge entity ``y~``, adapter 2 edits
``(y~, r2)`` to ``z~`` (both P1 rank-one edits). Four prompts are read by the merged or
routed model (:data:`PROMPTS`):

- ``true``:    "x r1 r2", key ``v' = key(x, r1, r2)``; the correct answer is ``z~``.
- ``control``: "x' r1 r2" for another subject ``x'`` with ``r1(x') != y~``; it shares both
  relations but its correct answer is not ``z~``. A ``z~`` here is broadcast.
- ``bridge_true`` / ``bridge_control``: the same prompts after a hypothetical earlier
  layer (or pretraining on the two-hop template) has resolved the first hop, so the last
  position reads ``h = V e_b + e_r2`` with ``b = y~`` (true: then ``v' = v2``) or
  ``b = r1(x')`` (control). This is where composition WOULD succeed.

z~'s outcome on a prompt is three-way (theory/t2_regimes.py): it wins (``margin(z~) >
TIE``), ties the best other entity (``|margin| <= TIE``) or loses; a tie is never counted
as "no composition".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from theory.claims import Check, ClaimSettings, claim, within
from theory.merge import weighted_delta_sum
from theory.key_geometry import fresh_unit_cosine
from theory.recall import (READOUTS, RELATION_CENTRED, RecallConfig, RecallModel, build_recall_model, margin,
                           rank_one_edit)
from theory.routing import arrow_prototype_lowrank, arrow_weights, routed_output

METHODS = ("sum", "average", "weighted", "routing")
PROMPTS = ("true", "control", "bridge_true", "bridge_control")
REGIMES = ("centred", RELATION_CENTRED, "raw")  # key regimes of the claim (theory/recall.py)
TIE = 1e-9  # margins within float error of 0 are ties, not answers


@dataclass(frozen=True)
class T2Config:
    """One T2 experiment: the recall model and the reuse methods' knobs."""

    recall: RecallConfig = field(default_factory=RecallConfig)
    top_k: int = 1  # Arrow routing: adapters kept per token
    temperature: float = 1.0  # Arrow routing: softmax temperature over |<h, p_i>|
    weight_range: tuple[float, float] = (0.25, 1.5)  # "weighted": c_i ~ U(lo, hi) per instance

    def __post_init__(self):
        if self.recall.n_relations < 2:
            raise ValueError(f"recall.n_relations={self.recall.n_relations}: T2 needs >= 2 (r1 != r2)")
        if self.recall.n_facts not in (None, self.recall.n_entities * self.recall.n_relations):
            raise ValueError(f"recall.n_facts={self.recall.n_facts}: T2 needs every (x, r) stored "
                             "(n_facts=None), so that every hop has a stored answer")
        if self.top_k not in (1, 2):
            raise ValueError(f"top_k={self.top_k!r}: must be 1 or 2 (the bank holds 2 adapters)")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r}: must be > 0")
        lo, hi = self.weight_range
        if not 0 < lo <= hi:
            raise ValueError(f"weight_range={self.weight_range!r}: need 0 < lo <= hi")


@dataclass(frozen=True)
class TwoHop:
    """Indices of a batch of T2 instances, each ``(n,)`` long: the prompt "x r1 r2", bridge
    y~, answer z~ and control subject x'."""

    x: Tensor
    r1: Tensor
    r2: Tensor
    y: Tensor  # y~, the new bridge entity (adapter 1's answer)
    z: Tensor  # z~, the two-hop answer (adapter 2's answer)
    x_control: Tensor


def _draw(g: torch.Generator, n_choices: int, shape, bad) -> Tensor:
    """Uniform over the admissible choices: redraw entries where ``bad(draw)`` holds."""
    out = torch.randint(n_choices, shape, generator=g)
    for _ in range(10_000):
        redo = bad(out)
        if not redo.any():
            return out
        out = torch.where(redo, torch.randint(n_choices, shape, generator=g), out)
    raise ValueError(f"no admissible draw among {n_choices} entities: use more entities")


def sample_two_hop(model: RecallModel, g: torch.Generator) -> TwoHop:
    """Uniform draws per instance of a batched model with ``r1 != r2``, ``y~ not in
    {x, r1(x)}``, ``z~ not in {y~, r2(y~)}``, ``x' not in {x, y~}`` with ``r1(x') != y~``, so
    that x and x' are exchangeable given y~ (the overlap test of T2 relies on it)."""
    n, n_e, n_r = model.batch, model.config.n_entities, model.config.n_relations
    x = torch.randint(n_e, (n,), generator=g)
    r1 = torch.randint(n_r, (n,), generator=g)
    r2 = (r1 + 1 + torch.randint(n_r - 1, (n,), generator=g)) % n_r  # uniform over r != r1
    y = _draw(g, n_e, (n,), lambda e: (e == x) | (e == model.answer(x, r1)))
    z = _draw(g, n_e, (n,), lambda e: (e == y) | (e == model.answer(y, r2)))
    xc = _draw(g, n_e, (n,), lambda e: (e == x) | (e == y) | (model.answer(e, r1) == y))
    return TwoHop(x, r1, r2, y, z, xc)


def prompt_keys(model: RecallModel, t: TwoHop, hidden: bool = False) -> Tensor:
    """Keys of :data:`PROMPTS` as columns ``(n, m, 4)``; ``hidden=True``: their hidden
    states ``h`` as rows ``(n, 4, d)`` instead."""
    read, axis = (model.hidden, -2) if hidden else (model.key, -1)
    two_hop = read(torch.stack([t.x, t.x_control], dim=1), t.r1[:, None], t.r2[:, None])  # 2 prompts
    bridge = torch.stack([t.y, model.answer(t.x_control, t.r1)], dim=1)  # (n, 2) bridge entities
    return torch.cat([two_hop, read(bridge, t.r2[:, None])], dim=axis)


def decomposition(base: Tensor, deltas: Tensor, c: Tensor, a: Tensor) -> Tensor:
    """T2 identity, right-hand side: ``W v' + sum_i c_i a_i delta_i`` with key overlaps
    ``a_i = <v_i, v'>/||v_i||^2``: ``base (*B, |E|, P)``, ``deltas (*B, |E|, 2)``,
    ``c, a (*B, 2, P)``."""
    return base + deltas @ (c * a)


def _reuse(adapters, K: Tensor, weights: Tensor, cfg: T2Config) -> dict[str, tuple[Tensor, Tensor]]:
    """The adapters' contribution to the logits, computed by theory.merge (merge the deltas,
    then apply) and theory.routing, instance by instance: ``{method: (change (n, |E|, P),
    c (n, 2, P))}``."""
    n, P = K.shape[0], K.shape[-1]
    c = {"sum": torch.ones_like(weights), "average": torch.full_like(weights, 0.5), "weighted": weights}  # (n, 2)
    change: dict[str, list[Tensor]] = {m: [] for m in METHODS}
    routed_c = []
    B, A = (torch.stack([torch.stack([getattr(ad, f) for ad in ads]) for ads in adapters], dim=1) for f in "BA")
    protos = arrow_prototype_lowrank(B, A)  # (n, 2, m) from B (n, 2, |E|, 1), A (n, 2, 1, m)
    for i in range(n):
        ads = [adapters[0][i], adapters[1][i]]
        for method in ("sum", "average", "weighted"):
            w = None if method == "average" else c[method][i].tolist()  # None: merge.py's uniform average
            change[method].append(weighted_delta_sum(ads, w) @ K[i])
        deltas = [ad.delta for ad in ads]
        routed_c.append(arrow_weights(K[i].T, protos[i], cfg.top_k, cfg.temperature).T)  # (2, P)
        change["routing"].append(routed_output(K[i].T, deltas, routed_c[-1].T).T)  # (|E|, P)
    c = {m: w[:, :, None].expand(n, 2, P) for m, w in c.items()}
    c["routing"] = torch.stack(routed_c)
    return {m: (torch.stack(change[m]), c[m]) for m in METHODS}


def run_t2(cfg: T2Config, instances: int, g: torch.Generator) -> dict[str, np.ndarray]:
    """``instances`` independent instances, each with its own random model. Returns arrays
    with a leading instance axis: overlaps ``a1, a2, cos2 (n, P)`` (``cos2 = cos(v2, v')``,
    ``cos_h2`` the same for the hidden states; ``cos2_fresh (n,)``, the
    true prompt's cos2 predicted from the hidden states by
    :func:`~theory.key_geometry.fresh_unit_cosine`),
    ``base.margin_z (n, P)`` and per method ``<method>.margin_z``, ``.margin_y (n, P)``,
    ``.c (n, 2, P)``, ``.identity_err``, ``.span_err (n,)``; P indexes :data:`PROMPTS`."""
    model = build_recall_model(cfg.recall, g, batch=instances)
    t = sample_two_hop(model, g)
    lo, hi = cfg.weight_range
    weights = lo + (hi - lo) * torch.rand(instances, 2, generator=g, dtype=torch.float64)
    v1, v2 = model.key(t.x, t.r1), model.key(t.y, t.r2)  # (n, m)
    adapters = [rank_one_edit(model, v1, t.y), rank_one_edit(model, v2, t.z)]
    deltas = torch.stack([torch.cat([a1.B, a2.B], dim=1) for a1, a2 in zip(*adapters)])  # (n, |E|, 2)
    K = prompt_keys(model, t)  # (n, m, P)
    base = model.logits(K)  # (n, |E|, P)
    a = torch.stack([(v[:, None, :] @ K)[:, 0] / v.square().sum(-1, keepdim=True) for v in (v1, v2)],
                    dim=1)  # (n, 2, P): a_i = <v_i, v'>/||v_i||^2
    Q, _ = torch.linalg.qr(deltas)  # (n, |E|, 2): basis of span{delta1, delta2}
    H, h2 = prompt_keys(model, t, hidden=True), model.hidden(t.y, t.r2)  # (n, P, d), (n, d)
    out = {"a1": a[:, 0], "a2": a[:, 1], "base.margin_z": margin(base.mT, t.z[:, None]),
           "cos2": (v2[:, None, :] @ K)[:, 0] / (v2.norm(dim=-1)[:, None] * K.norm(dim=-2)),
           "cos_h2": (H @ h2[..., None])[..., 0] / (H.norm(dim=-1) * h2.norm(dim=-1)[:, None])}
    rels = model.relation_part(t.x, t.r1, t.r2), model.relation_part(t.y, t.r2)  # (n, d) each
    out["cos2_fresh"] = fresh_unit_cosine(model, H[:, 0], h2, g, *rels)
    for method, (change, c) in _reuse(adapters, K, weights, cfg).items():
        logits = base + change  # (W + DW) v' = W v' + DW v'
        out[f"{method}.c"] = c
        out[f"{method}.margin_z"] = margin(logits.mT, t.z[:, None])
        out[f"{method}.margin_y"] = margin(logits.mT, t.y[:, None])
        out[f"{method}.identity_err"] = (logits - decomposition(base, deltas, c, a)).abs().amax(dim=(-2, -1))
        out[f"{method}.span_err"] = (change - Q @ (Q.mT @ change)).abs().amax(dim=(-2, -1))
    return {k: v.detach().numpy() for k, v in out.items()}


@claim("T2")
def t2_claim(settings: ClaimSettings) -> list[Check]:
    """T2 (paper: Theorem 2). Adapters ``DW1`` (x -r1-> y~) and ``DW2`` (y~ -r2-> z~), merged
    as ``c1 DW1 + c2 DW2`` (sum c = 1, average c = 1/2, arbitrary c) or routed per token
    (Arrow: c input-dependent), give on a two-hop prompt with key ``v'``
    ``(W + DW) v' = W v' + c1 <v1,v'>/||v1||^2 delta1 + c2 <v2,v'>/||v2||^2 delta2``.
    The output moves only inside span{delta1, delta2}; ``z~`` gains only through ``<v2, v'>``,
    and the prompt never contains ``y~``, so this gain is the same on control prompts about
    other subjects: where keys are near-orthogonal the merged model does not output ``z~``;
    where they overlap it may, but as broadcast, not composition. A prompt key aligned with
    ``v2`` (a bridge) makes composition succeed. Run in three key regimes (theory/recall.py):
    globally centred (PAPER's example of near-orthogonal keys, which fails here),
    relation-centred (zero mean overlap by construction) and raw; see theory/t2_regimes.py.
    Each under both readouts (additive: IDs ``T2.<regime>...``; independent random maps:
    ``T2.random_maps.<regime>...``), compared in theory/t2_readout.py."""
    from theory.symbolic_recall import t2_sympy_check
    from theory.t2_readout import readout_checks
    from theory.t2_regimes import regime_checks

    g = torch.Generator().manual_seed(settings.seed)
    runs = {}
    for readout in READOUTS:  # additive first: its draws do not depend on the other readout
        for regime in REGIMES:
            cfg = T2Config(recall=RecallConfig(keys=regime, readout=readout))
            runs[readout, regime] = (cfg, run_t2(cfg, settings.instances, g))
    ident = max(float(r[f"{m}.identity_err"].max()) for _, r in runs.values() for m in METHODS)
    span = max(float(r[f"{m}.span_err"].max()) for _, r in runs.values() for m in METHODS)
    checks = [
        Check("T2.identity", "output = W v' + sum_i c_i <v_i,v'>/||v_i||^2 delta_i, all methods",
              0.0, ident, 1e-9, within(ident, 0.0, 1e-9)),
        Check("T2.span", "output change lies in span{delta1, delta2}, all methods",
              0.0, span, 1e-9, within(span, 0.0, 1e-9)),
        t2_sympy_check(),
    ]
    per_regime = []
    for (readout, regime), (cfg, r) in runs.items():
        per_regime += regime_checks(regime, r, cfg, "T2" if readout == READOUTS[0] else f"T2.{readout}")
    return checks + per_regime + readout_checks(runs, per_regime)
