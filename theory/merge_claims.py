"""MERGE-1 .. MERGE-6: the merge algebra of PAPER.md section 1, checked on the functions of
``theory/merge.py`` (the code every reuse method is built from) with NONZERO random
adapters from a seeded ``torch.Generator``, plus SymPy counterparts
(``theory/symbolic_merge.py``) evaluated at the same numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import sympy as sp
import torch

from theory import symbolic_merge as sym
from theory.claims import Check, ClaimSettings, claim
from theory.merge import (Factors, cat, cross_terms, dare, eckart_young_error, factor_average, numerical_rank,
                          svd_truncate, ties, trim_top_k, weighted_delta_sum)

DTYPE = torch.float64
D_OUT, D_IN = 8, 7
RANKS = (2, 1, 2)
WEIGHTS = (0.5, 0.3, 0.2)
SCALES = (0.5, 2.0, 4.0)  # MERGE-3: unequal alpha / r, where scale placement matters
TOL = 1e-12


def random_adapters(ranks: Sequence[int], d_out: int, d_in: int, generator: torch.Generator) -> list[Factors]:
    """Adapters with Gaussian A AND B (nonzero, unlike the LoRA init) and scale 2 / r."""
    return [Factors(A=torch.randn(r, d_in, generator=generator, dtype=DTYPE),
                    B=torch.randn(d_out, r, generator=generator, dtype=DTYPE), scale=2.0 / r) for r in ranks]


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max())


@claim("MERGE-1")
def merge1(settings: ClaimSettings) -> list[Check]:
    """MERGE-1 (PAPER.md section 1; STYLE.md "name the space"): ``cat`` stacks the factors,
    ``A_cat = [A_1; ...]``, ``B_cat = [w_1 s_1 B_1, ...]``, so ``B_cat A_cat = sum_i w_i delta_i``
    exactly, with rank ``sum_i r_i``."""
    gen = torch.Generator().manual_seed(settings.seed)
    ads = random_adapters(RANKS, D_OUT, D_IN, gen)
    merged = cat(ads, WEIGHTS)
    x = torch.randn(16, D_IN, generator=gen, dtype=DTYPE)  # (n, d_in) probe inputs
    unmerged = sum(w * a.scale * (x @ a.A.T) @ a.B.T for w, a in zip(WEIGHTS, ads))  # each adapter applied on its own
    gap = max(_max_abs(merged.delta - weighted_delta_sum(ads, WEIGHTS)), _max_abs(x @ merged.delta.T - unmerged))
    rank = numerical_rank(merged.delta)
    s_ads, s_w = sym.symbolic_adapters(2, 3, (1, 2))
    sym_zero = sym.is_zero(sym.cat_delta(s_ads, s_w) - sym.weighted_sum(s_ads, s_w))
    small = random_adapters((1, 2), 2, 3, gen)
    at_numbers = sym.evaluate(sym.cat_delta(s_ads, s_w), sym.substitution(s_ads, s_w, small, WEIGHTS[:2]))
    sym_gap = _max_abs(at_numbers - cat(small, WEIGHTS[:2]).delta)
    return [
        Check("MERGE-1.exact", f"cat delta = sum_i w_i delta_i and = unmerged outputs (ranks {RANKS})",
              0.0, gap, TOL, gap <= TOL),
        Check("MERGE-1.rank", "rank(cat delta) = sum r_i", sum(RANKS), rank, 0,
              rank == sum(RANKS) == merged.rank),
        Check("MERGE-1.sympy", "symbolic B_cat A_cat - sum w_i s_i B_i A_i == 0; formula = merge.cat at numbers",
              "0 / 0", f"{'0' if sym_zero else 'nonzero'} / {sym_gap:.2g}", TOL, sym_zero and sym_gap <= TOL),
    ]


@claim("MERGE-2")
def merge2(settings: ClaimSettings) -> list[Check]:
    """MERGE-2 (Eckart-Young-Mirsky): ``svd`` truncation of the merged delta to rank r is the
    best rank-r approximation in Frobenius norm, with error ``sqrt(sum_{i>r} sigma_i^2)``;
    every other rank-r approximation is at least as far."""
    gen = torch.Generator().manual_seed(settings.seed)
    ads = random_adapters(RANKS, D_OUT, D_IN, gen)
    delta = weighted_delta_sum(ads, WEIGHTS)
    sigma = torch.linalg.svdvals(delta)  # oracle for the tail, independent of eckart_young_error
    full = sum(RANKS)
    errors = [float(torch.linalg.matrix_norm(delta - svd_truncate(delta, r).delta)) for r in range(1, full + 1)]
    oracle = [float(sigma[r:].square().sum().sqrt()) for r in range(1, full + 1)]
    tail_gap = max(max(abs(e - o), abs(eckart_young_error(delta, r) - o))
                   for r, e, o in zip(range(1, full + 1), errors, oracle))
    r = 2
    merged_cat = cat(ads, WEIGHTS)
    competitors = []
    for _ in range(100):  # random rank-r column spaces, each with its best fit Q Q^T delta
        Q, _ = torch.linalg.qr(torch.randn(D_OUT, r, generator=gen, dtype=DTYPE))  # (d_out, r)
        competitors.append(Q @ Q.T @ delta)
    for keep in torch.combinations(torch.arange(full), r):  # keep r of the cat components
        competitors.append(merged_cat.B[:, keep] @ merged_cat.A[keep])
    best = svd_truncate(delta, r)
    for _ in range(20):  # small perturbations of the optimal factors
        noise = 1e-2 * torch.randn(best.B.shape, generator=gen, dtype=DTYPE)
        competitors.append((best.B + noise) @ best.A)
    excess = min(float(torch.linalg.matrix_norm(delta - c)) for c in competitors) - eckart_young_error(delta, r)
    return [
        Check("MERGE-2.tail", f"||delta - svd_r(delta)||_F = EY tail for r = 1..{full} (0 at r = rank)",
              0.0, tail_gap, 1e-10, tail_gap <= 1e-10 and min(oracle[:-1]) > 1e-3 and errors[-1] <= 1e-10),
        Check("MERGE-2.optimal", f"{len(competitors)} other rank-{r} approximations: min excess error over svd",
              "> 0", excess, 0.0, excess > 0),
    ]


@claim("MERGE-3")
def merge3(settings: ClaimSettings) -> list[Check]:
    """MERGE-3 (PAPER.md section 1; PEFT "linear", LoraHub): averaging the factors separately
    (PEFT "linear": ``sqrt(w_i s_i)`` on both factors) gives
    ``(sum_i sqrt(w_i s_i) B_i)(sum_j sqrt(w_j s_j) A_j) = sum_i w_i delta_i + cross terms``
    with cross terms ``sum_{i != j} sqrt(w_i s_i w_j s_j) B_i A_j``: nonzero for >= 2 adapters,
    zero for a single adapter with weight 1. Checked at unequal scales (unequal alphas)."""
    gen = torch.Generator().manual_seed(settings.seed)
    ads = [dataclasses.replace(a, scale=s) for a, s in zip(random_adapters((2, 2, 2), D_OUT, D_IN, gen), SCALES)]
    target = weighted_delta_sum(ads, WEIGHTS)
    measured = factor_average(ads, WEIGHTS).delta - target
    gap = _max_abs(measured - cross_terms(ads, WEIGHTS))
    ratio = float(torch.linalg.matrix_norm(measured) / torch.linalg.matrix_norm(target))
    one = ads[:1]
    single = max(_max_abs(factor_average(one, [1.0]).delta - one[0].delta), _max_abs(cross_terms(one, [1.0])))
    s_ads, s_w = sym.symbolic_adapters(2, 2, (1, 1))
    s_avg, s_cross = sym.factor_average_delta(s_ads, s_w), sym.cross_terms(s_ads, s_w)
    sym_ok = sym.is_zero(s_avg - sym.weighted_sum(s_ads, s_w) - s_cross) and not sym.is_zero(s_cross)
    small = [dataclasses.replace(a, scale=s) for a, s in zip(random_adapters((1, 1), 2, 2, gen), SCALES)]
    subs = sym.substitution(s_ads, s_w, small, WEIGHTS[:2])
    sym_gap = max(_max_abs(sym.evaluate(s_avg, subs) - factor_average(small, WEIGHTS[:2]).delta),
                  _max_abs(sym.evaluate(s_cross, subs) - cross_terms(small, WEIGHTS[:2])))
    return [
        Check("MERGE-3.gap", "factor-average delta - weighted delta sum = cross_terms (3 adapters)",
              0.0, gap, TOL, gap <= TOL),
        Check("MERGE-3.nonzero", "cross terms are not small: ||gap||_F / ||sum w_i delta_i||_F",
              "> 0", ratio, 0.05, ratio > 0.05),
        Check("MERGE-3.single", "one adapter, weight 1: factor average = delta, cross terms = 0",
              0.0, single, TOL, single <= TOL),
        Check("MERGE-3.sympy", "symbolic identity holds, cross terms not identically 0; = merge code at numbers",
              0.0, sym_gap, TOL, sym_ok and sym_gap <= TOL),
    ]


DROP_RATES = (0.5, 0.9)


@claim("MERGE-4")
def merge4(settings: ClaimSettings) -> list[Check]:
    """MERGE-4 (DARE, Yu et al. 2023): dropping each entry with probability p and rescaling
    the rest by ``1/(1-p)`` is unbiased, ``E[dare(delta)] = delta``; without the rescale the
    mean is ``(1-p) delta``. Statistical test over ``settings.instances`` seeded draws: the
    fitted scale ``c = <mean, delta> / ||delta||^2`` against its standard error
    ``sqrt(p / ((1-p) n) * sum delta^4) / ||delta||^2``."""
    gen = torch.Generator().manual_seed(settings.seed)
    delta = random_adapters((2,), D_OUT, D_IN, gen)[0].delta
    n = settings.instances
    z_scaled, z_unscaled, z_reject = [], [], []
    for p in DROP_RATES:
        draws = dare(delta.expand(n, *delta.shape), p, gen)  # (n, d_out, d_in), independent masks
        mean = draws.mean(dim=0)
        se = math.sqrt(p / ((1 - p) * n) * float(delta.pow(4).sum())) / float(delta.square().sum())
        c = float((mean * delta).sum() / delta.square().sum())
        masked = (1 - p) * dare(delta.expand(n, *delta.shape), p, gen).mean(dim=0)  # fresh draws, mask only
        c_mask = float((masked * delta).sum() / delta.square().sum())
        se_mask = (1 - p) * se
        z_scaled.append(abs(c - 1.0) / se)
        z_unscaled.append(abs(c_mask - (1 - p)) / se_mask)
        z_reject.append(abs(c_mask - 1.0) / se_mask)
    return [
        Check("MERGE-4.unbiased", f"E[dare] = delta: |c - 1| / se over {n} draws, p in {DROP_RATES} (max)",
              0.0, max(z_scaled), 4.0, max(z_scaled) <= 4.0),
        Check("MERGE-4.unscaled", "without 1/(1-p): c = 1-p (max |z|), and c = 1 is rejected (min |z|)",
              "<= 4 / > 4", f"{max(z_unscaled):.2f} / {min(z_reject):.3g}", 4.0,
              max(z_unscaled) <= 4.0 and min(z_reject) > 4.0),
    ]


@claim("MERGE-5")
def merge5(settings: ClaimSettings) -> list[Check]:
    """MERGE-5 (TIES, Yadav et al. 2023): after trimming, each entry's sign is elected by
    MASS (the sign of the summed trimmed values, not a head count) and only the values that
    agree with it are averaged."""
    gen = torch.Generator().manual_seed(settings.seed)
    deltas = [a.delta for a in random_adapters((2, 2, 2), D_OUT, D_IN, gen)]
    merged = ties(deltas, density=0.5)
    trimmed = [trim_top_k(d, 0.5) for d in deltas]
    bad = 0
    for i in range(D_OUT):  # entry-by-entry oracle
        for j in range(D_IN):
            values = [float(t[i, j]) for t in trimmed]
            mass = sum(values)
            agree = [v for v in values if v != 0 and math.copysign(1, v) == math.copysign(1, mass)]
            expected = sum(agree) / len(agree) if mass != 0 and agree else 0.0
            bad += abs(float(merged[i, j]) - expected) > 1e-12
    # worked example, no trimming: entry 0 has 2 positive votes but negative mass
    votes = [torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[-5.0, -1.0, 0.5]])]
    example = ties(votes, density=1.0)
    expected = torch.tensor([[-5.0, 2.0, 0.0]])  # mass -3 -> keep -5; mass 3 -> mean(2, 2); mass 0 -> 0
    return [
        Check("MERGE-5.sign",
              f"every entry = mean of trimmed values with the sign of their sum ({D_OUT * D_IN} entries)",
              0, bad, 0, bad == 0),
        Check("MERGE-5.mass", "votes (+1, +1, -5) elect '-' (mass, not count): merged [-5, 2, 0]",
              "[-5, 2, 0]", str([round(v, 6) for v in example.flatten().tolist()]), 0,
              bool(torch.equal(example, expected))),
    ]


@claim("MERGE-6")
def merge6(settings: ClaimSettings) -> list[Check]:
    """MERGE-6: ``rank(sum_i delta_i) <= sum_i r_i`` since ``sum_i B_i A_i = [B_1 ...][A_1; ...]``:
    equality for generic adapters, strict when column (or row) spaces overlap, where the rank
    is ``min(rank[B_1 ...], rank[A_1; ...])`` generically."""
    gen = torch.Generator().manual_seed(settings.seed)
    ads = random_adapters(RANKS, D_OUT, D_IN, gen)
    generic = numerical_rank(weighted_delta_sum(ads, WEIGHTS), rtol=1e-9)
    a1, a2 = random_adapters((2, 2), D_OUT, D_IN, gen)
    C = torch.randn(2, 2, generator=gen, dtype=DTYPE)
    fresh = torch.randn(D_OUT, 1, generator=gen, dtype=DTYPE)
    cases = {  # name: (adapter 2, predicted rank of delta_1 + delta_2)
        "shared columns": Factors(A=a2.A, B=a1.B @ C, scale=a2.scale),
        "shared rows": Factors(A=C @ a1.A, B=a2.B, scale=a2.scale),
        "one shared column": Factors(A=a2.A, B=torch.cat([a1.B[:, :1], fresh], dim=1), scale=a2.scale),
    }
    measured, predicted = [], []
    for b in cases.values():
        pair = [a1, b]
        measured.append(numerical_rank(weighted_delta_sum(pair, [1.0, 1.0]), rtol=1e-9))
        merged = cat(pair, [1.0, 1.0])
        predicted.append(min(numerical_rank(merged.B, rtol=1e-9), numerical_rank(merged.A, rtol=1e-9)))
    s_ads, _ = sym.symbolic_adapters(3, 3, (1, 1))
    c = sp.Symbol("c")
    shared = sym.SymAdapter(A=s_ads[1].A, B=c * s_ads[0].B, scale=s_ads[1].scale)
    sym_ranks = (sym.generic_rank(s_ads[0].delta + s_ads[1].delta), sym.generic_rank(s_ads[0].delta + shared.delta))
    return [
        Check("MERGE-6.generic", f"generic adapters, ranks {RANKS}: rank(sum) = sum r_i",
              sum(RANKS), generic, 0, generic == sum(RANKS)),
        Check("MERGE-6.overlap", f"overlapping spaces ({', '.join(cases)}), r = 2 + 2: rank strictly below 4",
              str(predicted), str(measured), 0, measured == predicted and max(measured) < 4),
        Check("MERGE-6.sympy", "3x3 symbolic, r = 1 + 1: generic rank 2 (det == 0); B_2 = c B_1: rank 1",
              "(2, 1)", str(sym_ranks), 0, sym_ranks == (2, 1)),
    ]
