"""T2 under both readouts of the recall model (theory/recall.py, :data:`~theory.recall.READOUTS`).

The additive readout ``h' = V e_x + e_r1 + e_r2`` makes the two-hop key CONTAIN the input of
adapter 1's key ``v1 = key(V e_x + e_r1)``: on the true prompt adapter 1 pushes the first hop
y~ (``a1`` large), which crowds out z~. So part of "z~ no more often on the true prompt than
on controls" is built into the readout. With independent random maps
``h' = V e_x + M_1 e_r1 + M_2 e_r2`` (one-hop ``V e_x + M_2 e_r``) the two-hop key shares
only the subject part with v1 and only the last relation's part with v2.

Every T2 conclusion (theory/t2_regimes.py) is checked under both readouts; this module
compares them:

- ``T2.readout.conclusions``: which conclusions get a different verdict (none expected;
  any listed is a finding, and its own check fails too).
- ``T2.readout.first_hop``: FINDING, measured: the first hop y~ wins on sum-merged true
  prompts far more often under the additive readout.
- ``T2.readout.gap``: FINDING, measured: the true-minus-control z~ gap is more negative
  under the additive readout; "true < control" is partly structural, "true <= control"
  (no composition) holds under both.
"""
from __future__ import annotations

import numpy as np

from theory.claims import Check
from theory.recall import READOUTS
from theory.t2 import METHODS, TIE
from theory.t2_regimes import Z1, outcomes


def _pooled(runs: dict, readout: str, values) -> np.ndarray:
    """``values(r)`` (one number per instance) over every key regime of one readout."""
    return np.concatenate([np.asarray(values(r), dtype=float) for (ro, _), (_, r) in runs.items() if ro == readout])


def _gap(r: dict[str, np.ndarray]) -> np.ndarray:
    """Per instance: z~ reaches the top on the true minus the control prompt, mean over methods."""
    reach = [outcomes(r[f"{m}.margin_z"])["reach"] for m in METHODS]  # (n, P) each
    return np.mean([o[:, 0].astype(float) - o[:, 1] for o in reach], axis=0)


def _differ(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of a minus mean of b and the standard error of that difference (independent samples)."""
    return float(a.mean() - b.mean()), float(np.hypot(a.std(ddof=1) / np.sqrt(a.size), b.std(ddof=1) / np.sqrt(b.size)))


def readout_checks(runs: dict, checks: list[Check]) -> list[Check]:
    """``runs[(readout, regime)] = (T2Config, run_t2 arrays)``; ``checks`` are the per-regime
    checks of every readout (IDs ``T2.<regime>...`` for additive, ``T2.<readout>.<regime>...``)."""
    base, other = READOUTS
    verdict = {base: {}, other: {}}
    for c in checks:
        parts = c.id.split(".")
        readout = other if parts[1] == other else base
        verdict[readout][".".join(parts[2 if readout == other else 1:])] = c.passed
    shared = sorted(set(verdict[base]) & set(verdict[other]))
    changed = [k for k in shared if verdict[base][k] != verdict[other][k]]
    y = {ro: _pooled(runs, ro, lambda r: r["sum.margin_y"][:, 0] > TIE) for ro in READOUTS}
    a1 = {ro: float(_pooled(runs, ro, lambda r: r["a1"][:, 0]).mean()) for ro in READOUTS}
    dy, se_y = _differ(y[base], y[other])
    gap = {ro: _pooled(runs, ro, _gap) for ro in READOUTS}
    dg, se_g = _differ(gap[base], gap[other])
    data = {"changed": changed, "compared": len(shared), "first_hop_rate": {k: float(v.mean()) for k, v in y.items()},
            "a1_true": a1, "gap": {k: float(v.mean()) for k, v in gap.items()}}
    return [
        Check("T2.readout.conclusions", f"same verdict under {base} and {other} readouts for all {len(shared)} "
              f"conclusions; changed: {', '.join(changed) or 'none'}", 0, len(changed), 0, not changed, data),
        Check("T2.readout.first_hop", f"FINDING: sum, true prompts: first hop y~ wins {y[base].mean():.0%} "
              f"({base}) vs {y[other].mean():.0%} ({other}); mean a1 {a1[base]:.2f} vs {a1[other]:.2f}: "
              "the additive two-hop key contains v1's input", "> 0", dy, Z1 * se_y, dy > Z1 * se_y, data),
        Check("T2.readout.gap", f"FINDING: z~ true-control gap, mean over regimes x methods: {gap[base].mean():.3f} "
              f"({base}) < {gap[other].mean():.3f} ({other}): 'true < control' partly structural",
              "< 0", dg, Z1 * se_g, dg < -Z1 * se_g, data),
    ]
