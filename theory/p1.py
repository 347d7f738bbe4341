"""P1: a single-fact edit is rank one (paper: Proposition 1), checked on the recall model.

The closed form is :func:`theory.recall.rank_one_edit`; this module adds gradient descent
(the independent route to the same matrix), the predicted effect of an edit on every other
stored fact, and the claim's checks.
"""
from __future__ import annotations

import torch
from torch import Tensor

from theory.claims import Check, ClaimSettings, claim, within
from theory.merge import numerical_rank
from theory.recall import KEY_REGIMES, RecallConfig, RecallModel, build_recall_model, one_hot, rank_one_edit

EXACT = 1e-9  # float64 tolerance for identities
LR = 0.5  # GD step LR / ||v||^2: any LR in (0, 2) converges, at rate 1 - LR per step
EDITS = 20  # random single-fact edits per key regime (P1 is exact: no statistics needed)


def gd_edit(model: RecallModel, key: Tensor, new: int, steps: int = 60, lr: float = LR,
            init: Tensor | None = None) -> Tensor:
    """Gradient descent on ``L(DW) = 1/2 ||(W + DW) v - i_new||^2`` (gradient by autograd)
    with step ``lr / ||v||^2`` from ``init`` (default 0). Returns the iterates
    ``(steps + 1, |E|, m)``. Any ``0 < lr < 2`` converges; each step multiplies the distance
    to the limit ``DW* + init (I - v v^T/||v||^2)`` by exactly ``1 - lr``."""
    if not 0 < lr < 2:
        raise ValueError(f"lr={lr}: must be in (0, 2) (step lr/||v||^2 converges only there)")
    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    target = one_hot(new, model.config.n_entities)
    DW = (torch.zeros_like(model.W) if init is None else init.clone()).requires_grad_(True)
    iterates = [DW.detach().clone()]
    for _ in range(steps):
        loss = 0.5 * (model.logits(key, DW) - target).square().sum()
        (grad,) = torch.autograd.grad(loss, DW)
        with torch.no_grad():
            DW -= lr / key.dot(key) * grad
        iterates.append(DW.detach().clone())
    return torch.stack(iterates)  # (steps + 1, |E|, m)


def predicted_flips(a: Tensor, answers: Tensor, old: int, new: int) -> Tensor:
    """Which other stored facts change their answer after the edit old -> new, from P1's
    locality alone: logits become ``i_j + a (i_new - i_old)`` for a fact with answer j and
    overlap ``a = <v,v'>/||v||^2``, so j == old flips iff a > 1/2, j == new iff a < -1/2,
    any other j iff |a| > 1."""
    return torch.where(answers == old, a > 0.5, torch.where(answers == new, a < -0.5, a.abs() > 1))


def _edits(model: RecallModel, n: int, g: torch.Generator) -> list[tuple[int, int, int]]:
    """n random stored facts ``k`` with a new answer != the old one: ``(k, old, new)``."""
    out = []
    for k in torch.randperm(model.facts.shape[0], generator=g)[:n].tolist():
        old = int(model.answers[k])
        new = (old + 1 + int(torch.randint(model.config.n_entities - 1, (1,), generator=g))) % model.config.n_entities
        out.append((k, old, new))
    return out


def _measure(model: RecallModel, k: int, old: int, new: int, g: torch.Generator) -> dict[str, float]:
    K = model.stored_keys  # (m, N)
    v = K[:, k]
    edit = rank_one_edit(model, v, new)
    DW, delta = edit.delta, edit.B[:, 0]  # (|E|, m), (|E|,)
    others = torch.arange(K.shape[1]) != k
    a = v @ K[:, others] / v.dot(v)  # (N-1,) overlaps with every other stored key
    moved = DW @ K[:, others]  # (|E|, N-1)
    ortho = K[:, others] - v[:, None] * a[None, :]  # the other keys with their v component removed
    after = model.logits(K[:, others], DW).argmax(dim=0)
    flips = after != model.answers[others]
    M = torch.randn(model.W.shape, generator=g, dtype=v.dtype)  # random exact solutions DW + M (I - P_v)
    alt = [DW + s * (M - (M @ v)[:, None] * v[None, :] / v.dot(v)) for s in (1e-3, 1e-1, 1.0)]
    return {
        "exact": float((model.logits(v, DW) - one_hot(new, model.config.n_entities)).abs().max()),
        "locality": float((moved - delta[:, None] * a[None, :]).abs().max()),
        "orthogonal": float((DW @ ortho).abs().max()),
        "moved_mean": float(moved.norm(dim=0).mean()),
        "overlap_mean": float(a.abs().mean()),
        "flip_mismatch": int((flips != predicted_flips(a, model.answers[others], old, new)).sum()),
        "flip_rate": float(flips.double().mean()),
        "pinv": float((DW - delta[:, None] @ torch.linalg.pinv(v[:, None])).abs().max()),
        "norm_pred": float(delta.norm() / v.norm()),
        "norm": float(DW.norm()),
        "alt_exact": max(float((X @ v - delta).abs().max()) for X in alt),
        "alt_excess": min(float(X.norm() - DW.norm()) for X in alt),
    }


@claim("P1")
def p1_claim(settings: ClaimSettings) -> list[Check]:
    """P1 (paper: Proposition 1). To change the answer of fact (x, r) from r(x) to r~(x), with
    ``v = key(x, r)`` and ``delta = i_{r~(x)} - i_{r(x)}``, the minimum-Frobenius-norm update
    is ``DW = delta v^T / ||v||^2`` (rank one). Gradient descent on the squared error from
    ``DW = 0`` converges to it. Its effect on another prompt with key ``v'`` is
    ``delta <v, v'>/||v||^2``: keys orthogonal to v are untouched."""
    from theory.symbolic_recall import p1_sympy_check

    g = torch.Generator().manual_seed(settings.seed)
    rows, flip_rates = [], {}
    for regime in KEY_REGIMES:
        model = build_recall_model(RecallConfig(keys=regime), g)
        ms = [_measure(model, k, old, new, g) for k, old, new in _edits(model, EDITS, g)]
        flip_rates[regime] = sum(m["flip_rate"] for m in ms) / len(ms)
        rows += [dict(m, regime=regime) for m in ms]
        if regime == "centred":
            gd_model, (k, _, gd_new) = model, _edits(model, 1, g)[0]
    worst = {key: max(r[key] for r in rows) for key in ("exact", "locality", "orthogonal", "pinv", "alt_exact")}
    norm_err = max(abs(r["norm"] - r["norm_pred"]) for r in rows)
    excess = min(r["alt_excess"] for r in rows)
    mismatches = sum(r["flip_mismatch"] for r in rows)

    v = gd_model.stored_keys[:, k]
    star = rank_one_edit(gd_model, v, gd_new).delta
    path0 = gd_edit(gd_model, v, gd_new)
    err0 = (path0 - star).flatten(1).norm(dim=1)  # (steps + 1,) distance to DW*
    init = torch.randn(star.shape, generator=g, dtype=star.dtype)
    init = init * 3 * star.norm() / init.norm()  # a random DW0 three times as large as DW*
    limit = star + init - (init @ v)[:, None] * v[None, :] / v.dot(v)  # DW* + init (I - P_v)
    path1 = gd_edit(gd_model, v, gd_new, init=init)
    err1 = (path1 - limit).flatten(1).norm(dim=1)
    rate = float((err0[10] / err0[0]) ** 0.1)  # per-step contraction over the first 10 steps
    excess1, excess1_pred = float(path1[-1].norm() ** 2 - star.norm() ** 2), float((limit - star).norm() ** 2)
    gd_data = {"step": list(range(len(err0))), "error_zero_init": err0, "error_nonzero_init": err1,
               "predicted": err0[0] * (1 - LR) ** torch.arange(len(err0), dtype=star.dtype)}
    return [
        Check("P1.exact", "edited fact answered exactly: (W + DW) v = i_new", 0.0, worst["exact"],
              EXACT, within(worst["exact"], 0.0, EXACT)),
        Check("P1.locality", f"others move by delta <v,v'>/||v||^2 (mean |a| centred "
              f"{_mean(rows, 'centred', 'overlap_mean'):.2f}, raw {_mean(rows, 'raw', 'overlap_mean'):.2f})",
              0.0, worst["locality"], EXACT, within(worst["locality"], 0.0, EXACT)),
        Check("P1.orthogonal", f"keys _|_ v untouched (overlapping ones moved by "
              f"{sum(r['moved_mean'] for r in rows) / len(rows):.2f})", 0.0, worst["orthogonal"],
              EXACT, within(worst["orthogonal"], 0.0, EXACT)),
        Check("P1.retention", f"others flip iff locality says (rate centred "
              f"{flip_rates['centred']:.3f}, raw {flip_rates['raw']:.3f}): misses", 0, mismatches, 0,
              mismatches == 0, {"flip_rate": flip_rates}),
        Check("P1.min_norm_oracle", "DW = delta pinv(v) (oracle) and ||DW||_F = ||delta||/||v||",
              0.0, max(worst["pinv"], norm_err), EXACT, within(max(worst["pinv"], norm_err), 0.0, EXACT)),
        Check("P1.min_norm", f"other exact solutions (err {worst['alt_exact']:.0e}) larger: ||X||-||DW||",
              "> 0", excess, 0.0,
              excess > 0 and worst["alt_exact"] <= EXACT),
        Check("P1.gd_zero_init", "GD from DW = 0 converges to DW*: ||DW_T - DW*||_F", 0.0, float(err0[-1]),
              EXACT, within(float(err0[-1]), 0.0, EXACT), gd_data),
        Check("P1.gd_rate", f"GD step lr/||v||^2 (lr = {LR}) contracts the error by 1 - lr per step",
              1 - LR, rate, 1e-9, within(rate, 1 - LR, 1e-9), gd_data),
        Check("P1.gd_rank", "GD solution from 0 is rank one", 1, numerical_rank(path0[-1]), 0,
              numerical_rank(path0[-1]) == 1),
        Check("P1.gd_nonzero_init", "GD from DW0 != 0 -> DW* + DW0(I-P_v): ||DW_T||^2 - ||DW*||^2",
              excess1_pred, excess1, EXACT * max(1.0, excess1_pred),
              within(excess1, excess1_pred, EXACT * max(1.0, excess1_pred)) and float(err1[-1]) <= EXACT, gd_data),
        p1_sympy_check(),
    ]


def _mean(rows: list[dict], regime: str, key: str) -> float:
    vals = [r[key] for r in rows if r["regime"] == regime]
    return sum(vals) / len(vals)
